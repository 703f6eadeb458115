"""Upstream sessions kept per identity, so upstream state never crosses users.

Each caller identity (issuer, subject, tenant, client) gets its own connected upstream MCP
client: its own streamable-HTTP session, or its own stdio subprocess. Whatever the upstream keeps
per session (a working directory, a login, a cursor, cached data) therefore stays with the user
who created it. The pool is bounded (least recently used idle sessions are closed first), idle
sessions are closed after ``idle_seconds``, and a session whose transport failed is discarded so
the next call starts a fresh one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from securemcp.context import Principal

__all__ = ["PoolExhausted", "Session", "SessionPool", "identity_key"]

logger = logging.getLogger("securemcp.proxy")

ClientT = TypeVar("ClientT")


def identity_key(principal: Principal) -> str:
    """A stable key for one caller identity (never the token: tokens rotate, identities do not)."""
    parts = (
        principal.issuer or "",
        principal.subject,
        principal.tenant or "",
        principal.client_id or "",
        "verified" if principal.verified else "unverified",
    )
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()


class PoolExhausted(Exception):
    """Every session slot is busy with an in-flight call."""


@dataclass(eq=False)
class Session(Generic[ClientT]):
    """One identity's connected upstream client and what the proxy knows about it."""

    key: str
    client: ClientT
    created: float
    last_used: float
    in_use: int = 0
    checked_generation: int = -1
    checked_at: float = 0.0
    live_digests: dict[tuple[str, str], str] = field(default_factory=dict)
    stale: bool = False
    subject_token: str | None = None
    check_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


class SessionPool(Generic[ClientT]):
    """A bounded pool of per-identity upstream sessions.

    Args:
        connect: opens a connected client for an identity key (awaited once per session).
        close: closes a client (errors are logged, never raised).
        max_sessions: most sessions kept open at once.
        idle_seconds: sessions unused this long are closed.
        clock: monotonic clock (tests inject one).
    """

    def __init__(
        self,
        connect: Callable[[Session[Any]], Awaitable[ClientT]],
        close: Callable[[ClientT], Awaitable[None]],
        *,
        max_sessions: int = 64,
        idle_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._close = close
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._sessions: OrderedDict[str, Session[ClientT]] = OrderedDict()
        self._opening: dict[str, asyncio.Future[Session[ClientT]]] = {}
        self.opened = 0  # sessions ever opened (observability and tests)

    def __len__(self) -> int:
        return len(self._sessions)

    def keys(self) -> list[str]:
        return list(self._sessions)

    @asynccontextmanager
    async def lease(
        self, key: str, *, subject_token: str | None = None
    ) -> AsyncIterator[Session[ClientT]]:
        """The identity's session, opened on first use, held for the duration of one call.

        ``subject_token`` (the caller's current credential, for token exchange only) is stored on
        the session before it connects, so even the upstream handshake is made on the caller's
        behalf; it is dropped when the session closes.
        """
        session = await self._get(key, subject_token)
        if subject_token:
            session.subject_token = subject_token
        session.in_use += 1
        try:
            yield session
        finally:
            session.in_use -= 1
            session.last_used = self._clock()

    async def _get(self, key: str, subject_token: str | None = None) -> Session[ClientT]:
        await self._reap()
        session = self._sessions.get(key)
        if session is not None and not session.closed:
            self._sessions.move_to_end(key)
            return session
        pending = self._opening.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Session[ClientT]] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            await self._make_room()
            now = self._clock()
            session = Session(key=key, client=None, created=now, last_used=now)  # type: ignore[arg-type]
            session.subject_token = subject_token
            session.client = await self._connect(session)
            self._sessions[key] = session
            self.opened += 1
            future.set_result(session)
            return session
        except BaseException as exc:
            if isinstance(exc, Exception):
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, nobody else needs to
            else:
                future.cancel()
            raise
        finally:
            del self._opening[key]

    async def _make_room(self) -> None:
        while len(self._sessions) + len(self._opening) > self.max_sessions:
            victim = next((s for s in self._sessions.values() if s.in_use == 0), None)
            if victim is None:
                raise PoolExhausted(f"all {self.max_sessions} upstream sessions are in use")
            await self.discard(victim)

    async def _reap(self) -> None:
        now = self._clock()
        idle = [
            s
            for s in self._sessions.values()
            if s.in_use == 0 and now - s.last_used >= self.idle_seconds
        ]
        for session in idle:
            await self.discard(session)

    async def discard(self, session: Session[ClientT]) -> None:
        """Close one session (after a transport failure, eviction or idling out)."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        if session.closed:
            return
        session.closed = True
        session.subject_token = None
        try:
            await self._close(session.client)
        except Exception:  # closing a broken session must not fail the caller
            logger.debug("securemcp proxy: error closing an upstream session", exc_info=True)

    async def aclose(self) -> None:
        """Close every session."""
        for session in list(self._sessions.values()):
            await self.discard(session)
