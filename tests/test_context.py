"""SecurityContext and Principal: immutable, fresh per call, closed when the call ends."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from types import MappingProxyType

import pytest
from fastmcp import Client

import securemcp
from securemcp import CurrentSecurityContext, FastMCP, Principal, SecurityContext, current
from securemcp.context import bind
from securemcp.errors import ContextClosed, NoActiveCall


def _context(subject: str = "alice") -> SecurityContext:
    return SecurityContext(
        call_id="c1",
        method="tools/call",
        target="t",
        principal=Principal(subject=subject, issuer="https://idp"),
        transport="in-memory",
        started_at=datetime.now(UTC),
    )


def test_current_outside_a_call_is_a_clear_error() -> None:
    with pytest.raises(NoActiveCall, match="only available inside a tool"):
        current()
    assert NoActiveCall.code == "no_active_call"


def test_context_is_immutable_and_holds_no_token_field() -> None:
    ctx = _context()
    with pytest.raises(AttributeError):
        ctx.principal = Principal(subject="mallory", issuer="x")  # type: ignore[misc]
    with pytest.raises(AttributeError):
        ctx._open = True  # type: ignore[misc]
    principal = ctx.principal
    with pytest.raises(AttributeError):
        principal.subject = "mallory"  # type: ignore[misc]
    names = set(SecurityContext.__slots__) | set(Principal.__dataclass_fields__)
    assert not {n for n in names if "token" in n.lower()}


def test_principal_claims_are_deeply_read_only() -> None:
    principal = Principal(
        subject="a", issuer="i", claims={"roles": ["x"], "org": {"id": 1}}, scopes=["b", "a"]
    )
    assert isinstance(principal.claims, MappingProxyType)
    assert principal.claims["roles"] == ("x",)
    with pytest.raises(TypeError):
        principal.claims["org"]["id"] = 2  # type: ignore[index]
    assert principal.scopes == frozenset({"a", "b"})


def test_development_wildcard_only_counts_for_unverified_principals() -> None:
    verified = Principal(subject="a", issuer="i", scopes=["*"])
    dev = Principal(subject="d", issuer="dev", scopes=["*"], verified=False)
    assert verified.missing_scopes(["admin"]) == {"admin"}
    assert dev.missing_scopes(["admin"]) == frozenset()


def test_bind_resets_and_closes() -> None:
    ctx = _context()
    with bind(ctx):
        assert current() is ctx
    assert ctx.closed
    with pytest.raises(NoActiveCall):
        current()
    with pytest.raises(ContextClosed):
        _ = ctx.principal
    assert ctx.call_id == "c1"  # still readable for logging


def _server(counter: dict[str, int]) -> FastMCP:
    mcp = FastMCP("ctx")

    @mcp.tool
    async def who() -> dict[str, str]:
        counter["who"] += 1
        sec = current()
        return {"call_id": sec.call_id, "subject": sec.principal.subject, "target": sec.target}

    @mcp.tool
    def who_sync() -> str:
        assert threading.current_thread() is not threading.main_thread()
        return current().principal.subject

    @mcp.tool
    def injected(x: int, sec: SecurityContext = CurrentSecurityContext()) -> str:
        return f"{x}:{sec.principal.subject}:{sec.method}:{sec.target}"

    return mcp


def test_the_pipelines_constructor_sets_every_slot() -> None:
    principal = Principal(subject="alice", issuer="https://idp")
    before = datetime.now(UTC)
    ctx = SecurityContext._begin("c1", "tools/call", "t", principal, "stdio", None, "s", "p1")
    for name in SecurityContext.__slots__:
        getattr(ctx, name)  # set: no AttributeError
    started = ctx.started_at
    assert started.tzinfo is UTC and before <= started <= datetime.now(UTC)
    assert ctx.started_at is started  # converted once
    assert (ctx.call_id, ctx.method, ctx.target, ctx.principal) == (
        "c1",
        "tools/call",
        "t",
        principal,
    )
    assert (ctx.transport, ctx.trace_id, ctx.server_name, ctx.parent_call_id) == (
        "stdio",
        None,
        "s",
        "p1",
    )
    ctx._close()
    with pytest.raises(ContextClosed):
        _ = ctx.started_at


def test_call_ids_are_unique_hex_and_differ_per_process() -> None:
    from securemcp import pipeline

    ids = [pipeline._new_call_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    pipeline._reseed_call_ids()  # what a forked child does: a new random prefix
    fresh = pipeline._new_call_id()
    assert fresh not in ids and fresh[:16] != ids[0][:16]


async def test_each_call_gets_a_fresh_context() -> None:
    counter = {"who": 0}
    mcp = _server(counter)
    async with Client(mcp) as client:
        first = (await client.call_tool("who", {})).data
        second = (await client.call_tool("who", {})).data
    assert first["call_id"] != second["call_id"]
    assert first["subject"] == "local-developer"
    assert first["target"] == "who"
    assert counter["who"] == 2


async def test_sync_tools_in_worker_threads_see_the_context() -> None:
    mcp = _server({"who": 0})
    async with Client(mcp) as client:
        assert (await client.call_tool("who_sync", {})).data == "local-developer"


async def test_context_is_injectable_and_absent_from_the_input_schema() -> None:
    mcp = _server({"who": 0})
    async with Client(mcp) as client:
        tools = {t.name: t for t in await client.list_tools()}
        assert set(tools["injected"].input_schema["properties"]) == {"x"}
        result = await client.call_tool("injected", {"x": 7})
        assert result.data == "7:local-developer:tools/call:injected"
        # a client cannot smuggle a value for the injected parameter
        spoof = await client.call_tool("injected", {"x": 1, "sec": "mallory"}, raise_on_error=False)
        assert spoof.is_error


async def test_background_task_cannot_use_the_identity_after_the_call() -> None:
    mcp = FastMCP("bg")
    leaked: dict[str, object] = {}
    started = asyncio.Event()
    done = asyncio.Event()
    body_runs = {"n": 0}

    async def later() -> None:
        started.set()
        await asyncio.sleep(0.05)  # the call has returned by now
        try:
            leaked["subject"] = current().principal.subject
        except Exception as exc:
            leaked["error"] = exc
        try:
            leaked["kept"] = kept["ctx"].principal.subject
        except Exception as exc:
            leaked["kept_error"] = exc
        done.set()

    kept: dict[str, SecurityContext] = {}

    @mcp.tool
    async def spawn() -> str:
        body_runs["n"] += 1
        kept["ctx"] = current()
        asyncio.get_running_loop().create_task(later())
        await started.wait()
        return "spawned"

    async with Client(mcp) as client:
        assert (await client.call_tool("spawn", {})).data == "spawned"
        await asyncio.wait_for(done.wait(), 5)
    assert "subject" not in leaked and "kept" not in leaked
    assert isinstance(leaked["error"], ContextClosed)
    assert isinstance(leaked["kept_error"], ContextClosed)
    assert body_runs["n"] == 1


def test_public_names() -> None:
    for name in ("FastMCP", "Server", "current", "SecurityContext", "Principal", "Client"):
        assert getattr(securemcp, name) is not None
    assert securemcp.Server is securemcp.FastMCP
    with pytest.raises(AttributeError):
        _ = securemcp.DoesNotExist  # type: ignore[attr-defined]


def test_the_pseudonym_is_a_stable_hash_of_issuer_and_subject_never_the_subject() -> None:
    import hashlib

    alice = Principal(subject="alice", issuer="https://idp.example")
    expected = hashlib.sha256(b"https://idp.example\x00alice").hexdigest()[:16]
    assert alice.pseudonym == expected == Principal("alice", "https://idp.example").pseudonym
    assert "alice" not in alice.pseudonym
    assert Principal("alice", "https://other.example").pseudonym != alice.pseudonym
    # the separator keeps (issuer, subject) pairs apart that concatenate alike
    assert Principal("c", "ab").pseudonym != Principal("bc", "a").pseudonym


def test_same_subject_in_two_tenants_of_one_issuer_are_two_pseudonyms() -> None:
    """A multi-tenant issuer's ``sub`` may be unique only within its tenant: two such users
    must not look like one caller in telemetry."""
    issuer = "https://idp.example"
    acme = Principal("u1", issuer, tenant="acme")
    evil = Principal("u1", issuer, tenant="evil")
    assert acme.pseudonym != evil.pseudonym
    assert acme.pseudonym != Principal("u1", issuer).pseudonym
    assert acme.pseudonym == Principal("u1", issuer, tenant="acme").pseudonym
    # no spelling of subject and tenant makes two callers one
    assert Principal("u1\x00a", issuer, tenant="b").pseudonym != (
        Principal("u1", issuer, tenant="a\x00b").pseudonym
    )
