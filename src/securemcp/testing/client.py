"""Call a securemcp server as a given user, in memory, with no network.

``connect(server, token)`` presents ``token`` the way an HTTP client would present a bearer
token, but in-process: it is placed where FastMCP's in-memory transport makes request credentials
visible to the server (the MCP SDK's ``auth_context_var``, which in-memory handlers inherit from
the sending task). The server does **not** trust anything found there except the raw token, which
its own verifier re-verifies on every call, exactly as over HTTP.

Overlapping ``connect`` calls on one server share one server lifespan, which ends when the last of
them exits. FastMCP 4.1 on its own ties the lifespan to whichever in-memory client connected first
and tears it down when that client leaves, even while other clients are still connected (their
next call then meets closed resources: a proxy's upstream subprocesses, a user's database pool).
Tests of concurrent users are the tests that matter most for a security layer, so the helper holds
the lifespan for them.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
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


@dataclass(eq=False)
class _LifespanHolder:
    """One idle, credential-less in-memory connection that owns a server's lifespan."""

    loop: asyncio.AbstractEventLoop
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    client: Client[Any] | None = None


_holders: weakref.WeakKeyDictionary[Any, _LifespanHolder] = weakref.WeakKeyDictionary()


async def _open_holder(server: Any) -> Client[Any]:
    # The holder never calls anything; it carries no credential, whatever the caller's task has.
    reset = auth_context_var.set(None)
    try:
        holder: Client[Any] = Client(server)
        await holder.__aenter__()  # type: ignore[no-untyped-call]
    finally:
        auth_context_var.reset(reset)
    return holder


@asynccontextmanager
async def _shared_lifespan(server: Any) -> AsyncIterator[None]:
    """Keep ``server``'s lifespan open until the last overlapping ``connect`` exits."""
    loop = asyncio.get_running_loop()
    holder = _holders.get(server)
    if holder is None or holder.loop is not loop:
        holder = _holders[server] = _LifespanHolder(loop)
    async with holder.lock:
        if holder.client is None:
            holder.client = await _open_holder(server)
        holder.users += 1
    try:
        yield
    finally:
        # Shielded: a cancelled test must still release its hold, or the lifespan never ends.
        await asyncio.shield(_release(holder))


async def _release(holder: _LifespanHolder) -> None:
    # Under the lock, so a connect arriving now waits for the old lifespan to end completely
    # instead of joining it as it closes.
    async with holder.lock:
        holder.users -= 1
        if holder.users == 0 and holder.client is not None:
            client, holder.client = holder.client, None
            await client.close()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def connect(
    server: Any, token: str | None = None, **client_kwargs: Any
) -> AsyncIterator[Client[Any]]:
    """Yield a connected in-memory FastMCP ``Client`` calling ``server`` as ``token``'s principal.

    With ``token=None`` the client presents no credential (a server with a verifier refuses it;
    a server in development mode runs it as the development principal).
    """
    async with _shared_lifespan(server):
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
