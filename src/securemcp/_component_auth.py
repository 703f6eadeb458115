"""FastMCP's per-component ``auth`` check, without the unused token lookup on securemcp servers.

A FastMCP component may carry its own ``auth`` check (``@mcp.tool(auth=require_scopes(...))``).
FastMCP applies it through ``fastmcp.server.server._component_auth_allows``, which first fetches
the caller's access token (``get_access_token()``: the HTTP request, then the MCP SDK's context
variable; outside HTTP that raises and catches a ``RuntimeError``) and only then looks whether
the component has a check at all. Every ``tools/call`` resolves its tool through it twice, so a
component without a check, the common case, costs a server-side call about 3% on our benchmark
host for a token that is never read. (securemcp's scopes and policy are enforced by its pipeline
and do not use this hook.)

:func:`install` routes FastMCP's calls through :func:`component_auth_allows`: for a component
without a check, served by a securemcp server (the server of the current FastMCP context), it
admits the component at once, which is the answer FastMCP gives it. Every other case (a
component with a check, any other server, no context) is FastMCP's function. The one case where
FastMCP's own answer differs is a token of a foreign type FastMCP cannot convert (it raises
``TypeError`` there); on a securemcp server the pipeline has already verified the caller before
any component is resolved for a call.

**On stdio FastMCP skips every component check** (``_get_auth_context`` answers "skip": it
trusts the local process), so a tool declared with ``auth=require_scopes("admin")`` would run
for any stdio caller. securemcp verifies the stdio caller's credential like any other
(DESIGN guarantee 6: one model for every transport), so :func:`get_auth_context` gives the
checks of a securemcp server on stdio the verified caller instead: the principal of the call
(or listing) the pipeline is serving, as FastMCP's ``AccessToken`` (its ``token`` text is left
empty: the credential itself is never handed to component code). A check made outside any
call or listing gets no token (a check then refuses); a development server (no verifier) keeps
FastMCP's own answer.

This module relies on FastMCP internals (``_component_auth_allows``, ``_get_auth_context``,
``_current_context`` and the context's server reference); ``tests/test_component_auth.py`` and
``tests/auth/test_stdio.py`` pin them.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server import server as _fastmcp_server
from fastmcp.server.context import _current_context

from securemcp.admission import LISTING
from securemcp.context import _CURRENT, Principal

__all__ = ["AdmitsUncheckedComponents", "component_auth_allows", "get_auth_context", "install"]

#: FastMCP's own check, used for every component with an ``auth`` check and every other server.
_fastmcp_component_auth_allows = _fastmcp_server._component_auth_allows

#: FastMCP's "skip checks on stdio, else the request's token", used for every other case.
_fastmcp_get_auth_context = _fastmcp_server._get_auth_context


class AdmitsUncheckedComponents:
    """Server mixin marking the servers whose components without a check skip the token lookup."""


async def component_auth_allows(component: Any) -> bool:
    """FastMCP's ``_component_auth_allows``, answered at once for a securemcp server's component
    without an ``auth`` check."""
    if component.auth is None:
        context = _current_context.get()
        if context is not None and isinstance(context._fastmcp(), AdmitsUncheckedComponents):
            return True
    return await _fastmcp_component_auth_allows(component)


def get_auth_context() -> tuple[bool, Any]:
    """FastMCP's ``_get_auth_context``, except on stdio for a securemcp server: its component
    checks run against the caller the pipeline verified (see the module docstring)."""
    skip, token = _fastmcp_get_auth_context()
    if not skip:
        return skip, token
    context = _current_context.get()
    server: Any = context._fastmcp() if context is not None else None
    if not isinstance(server, AdmitsUncheckedComponents):
        return skip, token
    verifier = server._securemcp_pipeline.verifier()  # type: ignore[attr-defined]
    if verifier is None:
        return skip, token  # a development server: nothing is verified, FastMCP's answer
    principal = _verified_caller(server)
    if principal is None:
        return False, None  # no verified caller here (a check outside any call): no token
    from securemcp.auth._fastmcp import access_token_for

    return False, access_token_for(principal, "", getattr(verifier, "audiences", ()))


def _verified_caller(server: Any) -> Principal | None:
    """The verified principal of the listing or call ``server``'s pipeline is serving."""
    listing = LISTING.get()
    if listing is not None and listing[0] is server:
        principal: Principal = listing[1]
    else:
        bound = _CURRENT.get()
        if bound is None or bound.closed:
            return None
        principal = bound.principal
    return principal if principal.verified else None


def install() -> None:
    """Route FastMCP's component ``auth`` checks through :func:`component_auth_allows` and
    :func:`get_auth_context` (idempotent)."""
    if getattr(_fastmcp_server, "_component_auth_allows", None) is not component_auth_allows:
        _fastmcp_server._component_auth_allows = component_auth_allows
    if getattr(_fastmcp_server, "_get_auth_context", None) is not get_auth_context:
        _fastmcp_server._get_auth_context = get_auth_context
