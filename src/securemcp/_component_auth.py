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

This module relies on FastMCP internals (``_component_auth_allows``, ``_current_context`` and
the context's server reference); ``tests/test_component_auth.py`` pins them.
"""

from __future__ import annotations

from typing import Any

from fastmcp.server import server as _fastmcp_server
from fastmcp.server.context import _current_context

__all__ = ["AdmitsUncheckedComponents", "component_auth_allows", "install"]

#: FastMCP's own check, used for every component with an ``auth`` check and every other server.
_fastmcp_component_auth_allows = _fastmcp_server._component_auth_allows


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


def install() -> None:
    """Route FastMCP's component ``auth`` checks through :func:`component_auth_allows`
    (idempotent)."""
    if getattr(_fastmcp_server, "_component_auth_allows", None) is not component_auth_allows:
        _fastmcp_server._component_auth_allows = component_auth_allows
