"""Call a securemcp server as a given user, in memory, with no network.

``connect(server, token)`` presents ``token`` the way an HTTP client would present a bearer
token, but in-process: it is placed where FastMCP's in-memory transport makes request credentials
visible to the server (the MCP SDK's ``auth_context_var``, which in-memory handlers inherit from
the sending task). The server does **not** trust anything found there except the raw token, which
its own verifier re-verifies on every call, exactly as over HTTP.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastmcp import Client
from fastmcp.server.auth import AccessToken
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

__all__ = ["connect"]


async def _access_token_for(server: Any, token: str) -> AccessToken:
    """What FastMCP's HTTP auth middleware would have attached for ``token``.

    A token the server's verifier accepts yields its real ``AccessToken`` (so FastMCP-native
    ``auth=`` checks and ``get_access_token()`` behave as over HTTP); anything else yields a bare
    carrier with no scopes, which the securemcp pipeline will refuse on verification.
    """
    verify = getattr(getattr(server, "auth", None), "verify_token", None)
    if verify is not None:
        verified = await verify(token)
        if verified is not None:
            return AccessToken.model_validate(verified.model_dump())
    return AccessToken(token=token, client_id="unverified", scopes=[])


@asynccontextmanager
async def connect(
    server: Any, token: str | None = None, **client_kwargs: Any
) -> AsyncIterator[Client[Any]]:
    """Yield a connected in-memory FastMCP ``Client`` calling ``server`` as ``token``'s principal.

    With ``token=None`` the client presents no credential (a server with a verifier refuses it;
    a server in development mode runs it as the development principal).
    """
    if token is None:
        async with Client(server, **client_kwargs) as client:
            yield client
        return
    access = await _access_token_for(server, token)
    reset = auth_context_var.set(AuthenticatedUser(access))
    try:
        async with Client(server, **client_kwargs) as client:
            yield client
    finally:
        auth_context_var.reset(reset)
