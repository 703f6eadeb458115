"""The per-identity session pool: one session per identity, bounded, idle sessions closed."""

from __future__ import annotations

import asyncio
import contextvars
import time
from typing import Any

import pytest

from securemcp.context import Principal
from securemcp.proxy.sessions import (
    PoolExhausted,
    Session,
    SessionCredential,
    SessionPool,
    identity_key,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def pool(**kwargs: Any) -> tuple[SessionPool[str], list[str], list[str]]:
    opened: list[str] = []
    closed: list[str] = []

    async def connect(session: Session[Any]) -> str:
        await asyncio.sleep(0.01)
        opened.append(session.key)
        return f"client-{session.key}-{len(opened)}"

    async def close(client: str) -> None:
        closed.append(client)

    return SessionPool(connect, close, **kwargs), opened, closed


def test_identity_key_separates_issuer_subject_tenant_and_client() -> None:
    base = Principal(subject="alice", issuer="https://a", client_id="c", tenant="t", scopes=())
    variants = [
        Principal(subject="alice", issuer="https://b", client_id="c", tenant="t", scopes=()),
        Principal(subject="bob", issuer="https://a", client_id="c", tenant="t", scopes=()),
        Principal(subject="alice", issuer="https://a", client_id="d", tenant="t", scopes=()),
        Principal(subject="alice", issuer="https://a", client_id="c", tenant="u", scopes=()),
    ]
    keys = {identity_key(p) for p in [base, *variants]}
    assert len(keys) == 5
    same = Principal(subject="alice", issuer="https://a", client_id="c", tenant="t", scopes=("x",))
    assert identity_key(same) == identity_key(base)  # scopes change; the identity does not


async def test_concurrent_first_calls_open_one_session() -> None:
    sessions, opened, _ = pool()

    async def use() -> str:
        async with sessions.lease("alice") as session:
            return session.client

    clients = await asyncio.gather(*(use() for _ in range(20)))
    assert opened == ["alice"] and len(set(clients)) == 1


async def test_least_recently_used_idle_session_is_evicted() -> None:
    sessions, _, closed = pool(max_sessions=2)
    for key in ("a", "b", "a", "c"):
        async with sessions.lease(key):
            pass
    assert sorted(sessions.keys()) == ["a", "c"]
    assert closed == ["client-b-2"]


async def test_busy_sessions_are_never_evicted() -> None:
    sessions, _, _ = pool(max_sessions=1)
    async with sessions.lease("a"):
        with pytest.raises(PoolExhausted):
            async with sessions.lease("b"):
                pass


async def test_idle_sessions_are_closed_with_their_credential_then_drop_it() -> None:
    clock = Clock()
    opened: dict[str, Session[Any]] = {}
    closed_with: list[tuple[str, SessionCredential | None]] = []

    async def connect(session: Session[Any]) -> str:
        opened[f"client-{session.key}"] = session
        return f"client-{session.key}"

    async def close(client: str) -> None:
        closed_with.append((client, opened[client].credential))

    sessions: SessionPool[str] = SessionPool(connect, close, idle_seconds=10, clock=clock)
    alice = SessionCredential({"Authorization": "Bearer for-alice"}, expires_at=100.0)
    async with sessions.lease("a", credential=alice) as first:
        assert first.credential is alice
    clock.now = 11
    async with sessions.lease("b", credential=SessionCredential({}, expires_at=100.0)):
        pass
    # Closed with its own credential (its upstream termination is authenticated), then dropped.
    assert closed_with == [("client-a", alice)] and first.credential is None
    async with sessions.lease("a") as again:
        assert again is not first


async def test_a_lease_replaces_the_sessions_credential() -> None:
    sessions, _, _ = pool(clock=Clock())
    older = SessionCredential({"Authorization": "Bearer 1"}, expires_at=100.0)
    newer = SessionCredential({"Authorization": "Bearer 2"}, expires_at=50.0)
    async with sessions.lease("a", credential=older) as session:
        pass
    async with sessions.lease("a", credential=newer):
        assert session.credential is newer  # the latest call's, even if it lapses sooner
    async with sessions.lease("a"):
        assert session.credential is newer


async def test_an_idle_session_is_closed_when_its_credential_lapses() -> None:
    clock = Clock()
    sessions, _, closed = pool(idle_seconds=300, clock=clock)
    async with sessions.lease("a", credential=SessionCredential({}, expires_at=20.0)):
        pass
    clock.now = 19
    async with sessions.lease("b"):
        pass
    assert closed == []
    clock.now = 20  # idle for 20s only, but its credential could no longer end it
    async with sessions.lease("b"):
        pass
    assert closed == ["client-a-1"]


async def test_a_busy_session_is_never_reaped() -> None:
    clock = Clock()
    sessions, _, closed = pool(idle_seconds=10, clock=clock)
    async with sessions.lease("a", credential=SessionCredential({}, expires_at=5.0)):
        clock.now = 50
        async with sessions.lease("b"):
            pass
        assert closed == []


async def test_idle_sessions_are_closed_in_the_background() -> None:
    """Before: idle sessions were only closed when some later call leased a session, so on a
    quiet proxy they stayed open upstream indefinitely."""
    sessions, _, closed = pool(idle_seconds=0.05, reap_in_background=True)
    async with sessions.lease("a"):
        pass
    async with sessions.lease("b", credential=SessionCredential({}, time.monotonic() + 0.05)):
        pass
    for _ in range(50):
        if len(closed) == 2:
            break
        await asyncio.sleep(0.05)
    assert sorted(closed) == ["client-a-1", "client-b-2"]
    await sessions.aclose()


@pytest.mark.parametrize("how", ["opened", "re-leased"])
async def test_the_reaper_wakes_for_a_deadline_earlier_than_its_own(how: str) -> None:
    """Before: the reaper slept until the earliest deadline it had seen; a session opened (or
    re-leased with a credential) that lapsed sooner was closed only then, its termination
    carrying an expired token."""
    sessions, _, closed = pool(idle_seconds=300, reap_in_background=True)
    later = SessionCredential({}, time.monotonic() + 3600)
    async with sessions.lease("a", credential=later):
        pass  # the reaper now sleeps until a's idle deadline, 300 s away
    if how == "re-leased":
        async with sessions.lease("b", credential=later):
            pass
    await asyncio.sleep(0.05)
    async with sessions.lease("b", credential=SessionCredential({}, time.monotonic() + 0.1)):
        pass
    for _ in range(60):
        if closed:
            break
        await asyncio.sleep(0.05)
    assert closed == ["client-b-2"]
    await sessions.aclose()


async def test_the_reaper_runs_outside_the_callers_context() -> None:
    """The reaper outlives the call that started it: it must not carry that caller's context."""
    seen: list[str | None] = []
    marker: contextvars.ContextVar[str | None] = contextvars.ContextVar("marker", default=None)

    async def close(client: str) -> None:
        seen.append(marker.get())

    async def connect(session: Session[Any]) -> str:
        return "client"

    sessions: SessionPool[str] = SessionPool(
        connect, close, idle_seconds=0.01, reap_in_background=True
    )
    marker.set("alice's call")
    async with sessions.lease("a"):
        pass
    for _ in range(50):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert seen == [None]


async def test_aclose_stops_the_reaper_and_closes_everything() -> None:
    sessions, _, closed = pool(idle_seconds=300, reap_in_background=True)
    async with sessions.lease("a"):
        pass
    reaper = sessions._reaper
    assert reaper is not None and not reaper.done()
    await sessions.aclose()
    assert reaper.done() and closed == ["client-a-1"] and len(sessions) == 0


async def test_aclose_waits_for_a_close_the_reaper_started() -> None:
    """Before: aclose() cancelled the reaper in the middle of closing an idle session and
    returned at once; the loop's shutdown then cancelled that close, never ending the upstream
    session."""
    events: list[str] = []

    async def connect(session: Session[Any]) -> str:
        return session.key

    async def close(client: str) -> None:
        events.append(f"{client} closing")
        await asyncio.sleep(0.3)  # a slow upstream DELETE
        events.append(f"{client} closed")

    sessions: SessionPool[str] = SessionPool(
        connect, close, idle_seconds=0.01, reap_in_background=True
    )
    async with sessions.lease("alice"):
        pass
    for _ in range(40):
        if events:
            break
        await asyncio.sleep(0.05)
    assert events == ["alice closing"]  # the reaper is inside the close
    await sessions.aclose()
    assert events == ["alice closing", "alice closed"]


async def test_failed_connect_is_not_cached() -> None:
    attempts = 0

    async def connect(session: Session[Any]) -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("down")
        return "client"

    async def close(client: str) -> None:
        return None

    sessions: SessionPool[str] = SessionPool(connect, close)
    with pytest.raises(ConnectionError):
        async with sessions.lease("a"):
            pass
    async with sessions.lease("a") as session:
        assert session.client == "client"


def test_the_reaper_works_on_every_event_loop_the_pool_is_used_from() -> None:
    """An asyncio.Event is bound to the loop that first waits on it: a pool used again from a
    second event loop (a process calling asyncio.run twice, a loop per test) got a reaper that
    died at once there, so idle sessions were no longer closed in the background."""
    sessions, _, closed = pool(idle_seconds=0.05, reap_in_background=True)

    async def use_then_wait(key: str) -> None:
        async with sessions.lease(key):
            pass
        for _ in range(40):
            if any(c.startswith(f"client-{key}-") for c in closed):
                return
            await asyncio.sleep(0.05)

    asyncio.run(use_then_wait("a"))
    asyncio.run(use_then_wait("b"))
    assert sorted(closed) == ["client-a-1", "client-b-2"]


@pytest.mark.parametrize("how", ["idle", "evicted"])
async def test_a_lease_closes_other_callers_sessions_outside_its_context(how: str) -> None:
    """Before: bob's lease closed alice's idle (or least recently used) session inline, in bob's
    task and context: bob's security context, span and log fields were in effect while alice's
    upstream session was torn down (its spans joined bob's trace)."""
    from opentelemetry.sdk.trace import TracerProvider

    marker: contextvars.ContextVar[str | None] = contextvars.ContextVar("caller", default=None)
    tracer = TracerProvider().get_tracer("test")
    clock = Clock()
    seen: list[tuple[str, str | None, bool]] = []

    async def connect(session: Session[Any]) -> str:
        return f"client-{session.key}"

    async def close(client: str) -> None:
        from opentelemetry import trace

        seen.append((client, marker.get(), trace.get_current_span().get_span_context().is_valid))

    sessions: SessionPool[str] = SessionPool(
        connect, close, idle_seconds=10, clock=clock, max_sessions=1 if how == "evicted" else 8
    )
    marker.set("alice's call")
    async with sessions.lease("alice"):
        pass
    clock.now = 11 if how == "idle" else 1
    marker.set("bob's call")
    with tracer.start_as_current_span("bob's call"):
        async with sessions.lease("bob"):
            pass
    assert seen == [("client-alice", None, False)]
    await sessions.aclose()
