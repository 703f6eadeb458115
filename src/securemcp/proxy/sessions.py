"""Upstream sessions kept per identity, so upstream state never crosses users.

Each caller identity (issuer, subject, tenant, client) gets its own connected upstream MCP
client: its own streamable-HTTP session, or its own stdio subprocess. Whatever the upstream keeps
per session (a working directory, a login, a cursor, cached data) therefore stays with the user
who created it. The pool is bounded (least recently used idle sessions are closed first), idle
sessions are closed after ``idle_seconds``, and a session whose transport failed is discarded so
the next call starts a fresh one. With token exchange the key is finer: the identity *and* the
grant its token carries (:func:`securemcp.proxy.grants.grant_key`), so a session's credential
was always exchanged for a token with the same scopes, audience, actor chain and key binding.

A session is closed in a task of its own with an empty context, whichever call's lease evicted
or reaped it: another caller's security context, span or log fields are never in effect while
it is torn down.

A session reached by token exchange carries a :class:`SessionCredential`: the upstream token its
own caller's latest call obtained. What the session sends outside a call (its termination, the
HTTP ``DELETE`` with its ``Mcp-Session-Id`` of MCP streamable HTTP; a reconnected event stream)
carries that credential, never another caller's. An idle session is closed, at the latest, when
that credential is about to lapse: afterwards the proxy could no longer end it. A background
reaper does the closing, so an idle session ends on time even when no further call arrives.
The caller's own token is never kept on a session: each call brings it, and it is only used, in
the caller's task, to obtain the session's credential.

Every token a session may still send is held in the pool's ``index`` (the exchange's
:class:`~securemcp.proxy.issued.IssuedTokens`, searched in every upstream answer): a session's
current credential until the session is closed, and a credential a later lease replaced until
every call that was in flight when it was replaced has ended (any of their requests may have
carried it, and their answers may echo it).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

from securemcp.context import Principal

__all__ = [
    "CredentialIndex",
    "PoolExhausted",
    "Session",
    "SessionCredential",
    "SessionPool",
    "identity_key",
]

logger = logging.getLogger("securemcp.proxy")

ClientT = TypeVar("ClientT")

#: Shortest wait of the background reaper (a busy session past its deadline is polled this often).
_REAPER_MIN_WAIT: Final = 0.5


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


@dataclass(frozen=True, slots=True)
class SessionCredential:
    """What one session presents upstream, obtained for its own caller (token exchange).

    Attributes:
        headers: the HTTP headers carrying it (never in ``repr``).
        expires_at: when it stops being usable, on the pool's clock; the session is closed
            before then, while its termination can still be authenticated.
    """

    headers: Mapping[str, str] = field(repr=False)
    expires_at: float
    #: The secret the headers carry (the exchanged token), held in the pool's ``index`` while
    #: the session may still send it.
    token: str | None = field(default=None, repr=False)


class CredentialIndex(Protocol):
    """Where the tokens sessions may still send are held (reference counted), to be searched
    for in upstream answers (:class:`securemcp.proxy.issued.IssuedTokens`)."""

    def add(self, token: str) -> None: ...

    def discard(self, token: str) -> None: ...


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
    #: (kind, key) -> the versions the upstream's live listing names (``_meta.fastmcp``)
    live_versions: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)
    stale: bool = False
    credential: SessionCredential | None = None
    check_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False
    #: The calls in flight, by lease number (inserted in increasing order).
    leases: dict[int, None] = field(default_factory=dict)
    #: Credentials replaced by a later lease, with that lease's number: still held in the index
    #: until every earlier lease has ended.
    retired: deque[tuple[int, SessionCredential]] = field(default_factory=deque)


class SessionPool(Generic[ClientT]):
    """A bounded pool of per-identity upstream sessions.

    Args:
        connect: opens a connected client for an identity key (awaited once per session).
        close: closes a client (errors are logged, never raised).
        max_sessions: most sessions kept open at once.
        idle_seconds: sessions unused this long are closed.
        clock: monotonic clock (tests inject one).
        reap_in_background: close idle sessions (and sessions whose credential is about to
            lapse) from a background task when they are due, not only when the next session is
            leased. Off for pools driven by an injected clock.
        index: holds every credential ``token`` a session may still send (see the module
            docstring); ``None`` when credentials are static.
    """

    def __init__(
        self,
        connect: Callable[[Session[Any]], Awaitable[ClientT]],
        close: Callable[[ClientT], Awaitable[None]],
        *,
        max_sessions: int = 64,
        idle_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        reap_in_background: bool = False,
        index: CredentialIndex | None = None,
    ) -> None:
        self._connect = connect
        self._index = index
        self._leases = 0  # lease numbers handed out
        self._close = close
        self.max_sessions = max_sessions
        self.idle_seconds = idle_seconds
        self._clock = clock
        self._reap_in_background = reap_in_background
        self._reaper: asyncio.Task[None] | None = None
        #: When the sleeping reaper wakes up next, and what wakes it earlier.
        self._reaper_due = math.inf
        self._wake_reaper = asyncio.Event()
        self._sessions: OrderedDict[str, Session[ClientT]] = OrderedDict()
        self._opening: dict[str, asyncio.Future[Session[ClientT]]] = {}
        #: Closes under way (awaited by :meth:`aclose`, even those the reaper started).
        self._closing: set[asyncio.Future[None]] = set()
        self.opened = 0  # sessions ever opened (observability and tests)

    def __len__(self) -> int:
        return len(self._sessions)

    def keys(self) -> list[str]:
        return list(self._sessions)

    @asynccontextmanager
    async def lease(
        self, key: str, *, credential: SessionCredential | None = None
    ) -> AsyncIterator[Session[ClientT]]:
        """The identity's session, opened on first use, held for the duration of one call.

        ``credential`` (token exchange only: the upstream credential obtained for this call's
        caller) is set on the session before it connects, so even the upstream handshake is made
        on the caller's behalf, and replaces the session's previous one on every later lease; it
        is dropped once the session has been closed with it.
        """
        session = await self._get(key, credential)
        self._leases += 1
        number = self._leases
        if credential is not None and credential is not session.credential:
            self._replace_credential(session, credential, number)
            self._start_reaper(session)
        session.leases[number] = None
        session.in_use += 1
        try:
            yield session
        finally:
            session.in_use -= 1
            session.last_used = self._clock()
            del session.leases[number]
            if session.retired:
                self._release_retired(session)

    def _hold(self, credential: SessionCredential | None) -> None:
        if credential is not None and credential.token is not None and self._index is not None:
            self._index.add(credential.token)

    def _release(self, credential: SessionCredential | None) -> None:
        if credential is not None and credential.token is not None and self._index is not None:
            self._index.discard(credential.token)

    def _replace_credential(
        self, session: Session[ClientT], credential: SessionCredential, number: int
    ) -> None:
        """Give ``session`` the credential of lease ``number``; the one it replaces stays held
        while a call leased before may have sent it."""
        previous = session.credential
        session.credential = credential
        if previous is not None and previous.token == credential.token:
            return  # the same token (cached): nothing to hold or retire
        self._hold(credential)
        if previous is not None:
            session.retired.append((number, previous))
            self._release_retired(session)

    def _release_retired(self, session: Session[ClientT]) -> None:
        """Release the replaced credentials no call in flight can have sent."""
        oldest = next(iter(session.leases), None)
        retired = session.retired
        while retired and (oldest is None or retired[0][0] <= oldest):
            self._release(retired.popleft()[1])

    async def _get(self, key: str, credential: SessionCredential | None) -> Session[ClientT]:
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
            session.credential = credential
            self._hold(credential)
            try:
                session.client = await self._connect(session)
            except BaseException:
                session.credential = None
                self._release(credential)
                raise
            self._sessions[key] = session
            self.opened += 1
            self._start_reaper(session)
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

    def _deadline(self, session: Session[ClientT]) -> float:
        """When an idle session is closed: idle too long, or its credential about to lapse."""
        deadline = session.last_used + self.idle_seconds
        if session.credential is not None:
            deadline = min(deadline, session.credential.expires_at)
        return deadline

    async def _reap(self) -> None:
        for session in list(self._sessions.values()):
            # Checked right before each close: an earlier close may have let a call lease it.
            if session.in_use == 0 and self._clock() >= self._deadline(session):
                await self.discard(session)

    def _start_reaper(self, session: Session[ClientT]) -> None:
        """Start the background reaper, or wake it if ``session`` is due before it would wake."""
        if not self._reap_in_background:
            return
        if self._reaper is not None and not self._reaper.done():
            if self._deadline(session) < self._reaper_due:
                self._wake_reaper.set()
            return
        # A new event with each reaper: an asyncio.Event is bound to the loop that first waits
        # on it, and a pool may outlive one event loop (a reaper on the next would die at once).
        self._wake_reaper = asyncio.Event()
        # A fresh context: the reaper outlives the call that opened the session and must not
        # run (or close other callers' sessions) inside that caller's security context.
        self._reaper = asyncio.get_running_loop().create_task(
            self._reap_when_due(), context=contextvars.Context()
        )

    async def _reap_when_due(self) -> None:
        try:
            while self._sessions:
                self._reaper_due = min(self._deadline(s) for s in self._sessions.values())
                self._wake_reaper.clear()
                wait = max(self._reaper_due - self._clock(), _REAPER_MIN_WAIT)
                with suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake_reaper.wait()  # an earlier deadline turned up
                try:
                    await self._reap()
                except Exception:  # the reaper must outlive one failed close
                    logger.debug("securemcp proxy: error reaping upstream sessions", exc_info=True)
        finally:
            self._reaper_due = math.inf

    async def discard(self, session: Session[ClientT]) -> None:
        """Close one session (after a transport failure, eviction or idling out).

        The session's credential is kept until its client is closed: the upstream session is
        terminated with the credential of the caller it belongs to. The close runs in a task of
        its own with an empty :class:`contextvars.Context`, whoever triggered it: a lease that
        evicts or reaps other callers' sessions does not lend them its caller's context.
        """
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        if session.closed:
            return
        session.closed = True
        # Shielded: a caller cancelled meanwhile (or the reaper stopped) does not leave the
        # upstream session half closed. In a fresh, empty context: the close may be started by
        # another caller's lease (an idle or evicted session of someone else), and must not run
        # with that caller's security context, span, baggage or log fields in effect.
        closing = asyncio.get_running_loop().create_task(
            self._close_session(session), context=contextvars.Context()
        )
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        await asyncio.shield(closing)

    async def _close_session(self, session: Session[ClientT]) -> None:
        try:
            await self._close(session.client)
        except Exception:  # closing a broken session must not fail the caller
            logger.debug("securemcp proxy: error closing an upstream session", exc_info=True)
        finally:
            self._release(session.credential)
            while session.retired:
                self._release(session.retired.popleft()[1])
            session.credential = None

    async def aclose(self) -> None:
        """Close every session, stop the reaper, and wait for every close under way."""
        reaper, self._reaper = self._reaper, None
        if reaper is not None and not reaper.done():
            reaper.cancel()
            if reaper.get_loop() is asyncio.get_running_loop():
                with suppress(asyncio.CancelledError):
                    await reaper
        for session in list(self._sessions.values()):
            await self.discard(session)
        # A close the reaper started before it was cancelled still runs (shielded): wait for it,
        # or the loop's shutdown would cancel it and the upstream session would never be ended.
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
