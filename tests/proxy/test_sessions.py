"""The per-identity session pool: one session per identity, bounded, idle sessions closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from securemcp.context import Principal
from securemcp.proxy.sessions import PoolExhausted, Session, SessionPool, identity_key


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


async def test_idle_sessions_are_closed_and_subject_tokens_dropped() -> None:
    clock = Clock()
    sessions, opened, closed = pool(idle_seconds=10, clock=clock)
    async with sessions.lease("a", subject_token="tok") as first:
        assert first.subject_token == "tok"
    clock.now = 11
    async with sessions.lease("b"):
        pass
    assert closed == ["client-a-1"] and first.subject_token is None
    async with sessions.lease("a") as again:
        assert again is not first
    assert opened == ["a", "b", "a"]


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
