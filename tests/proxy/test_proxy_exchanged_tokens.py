"""Every exchanged token a call or session may still send upstream is searched for in answers.

Before: the output filter's index held the exchange *cache*, not the tokens sessions send. A
token too short-lived to cache (``expires_in`` <= ``refresh_skew``), a token re-exchanged or
evicted while a call that sent it was still running, or a token a session was given by another
call of the same caller and then replaced, was not searched for: an upstream that echoed the
``Authorization`` header handed the exchanged token to the client.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
from fastmcp.exceptions import ToolError
from proxy_support import OPEN_TOOLS, audited_proxy, config, http_upstream, locked

from securemcp.context import Principal, SecurityContext, bind
from securemcp.errors import UpstreamOutputRejected
from securemcp.proxy.config import upstream_from
from securemcp.proxy.credentials import SecretSource, TokenExchange
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.sessions import Session, SessionCredential, SessionPool
from securemcp.proxy.upstream import Upstream
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://vendor.example/mcp"


def token_exchange(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> TokenExchange:
    monkeypatch.setenv("PROXY_CLIENT_SECRET", idp.register_client("securemcp-proxy"))
    return TokenExchange(
        token_endpoint=f"{idp.issuer}/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="PROXY_CLIENT_SECRET"),
        audience=AUDIENCE,
        http_client=idp.http_client(),
        **kwargs,
    )


@pytest.mark.http
@pytest.mark.parametrize("expires_in", [20, 300])
async def test_a_token_too_short_lived_to_cache_is_still_withheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expires_in: int
) -> None:
    """``expires_in`` <= ``refresh_skew`` (30 s): never cached, but still sent upstream."""
    idp = FakeIdentityProvider()
    auth = token_exchange(idp, monkeypatch)
    idp.token_exchange_expires_in = expires_in
    async with http_upstream() as (url, _):
        await locked(config(tmp_path, {"vendor": {"url": url}}))
        cfg = config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}})
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth={"vendor": auth})
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="upstream_output_rejected"):
                await client.call_tool("whoami", {})  # echoes the Authorization header
    assert len(auth.issued) == len(auth._cache)  # nothing else outlives the call and session


def call_context(subject: str) -> SecurityContext:
    return SecurityContext(
        call_id=f"call-{subject}",
        method="tools/call",
        target="echo",
        principal=Principal(subject=subject, issuer="https://idp.example"),
        transport="in-memory",
        started_at=datetime.now(UTC),
    )


def echo(token: str) -> t.CallToolResult:
    return t.CallToolResult(content=[t.TextContent(type="text", text=f"you sent {token}")])


@pytest.mark.parametrize("how", ["re-exchanged", "evicted"])
async def test_a_token_stays_searched_while_a_call_that_sent_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Call 1 is still running when its token is re-exchanged (the caller's next call, past
    ``valid_until``) or evicted from the cache (another caller, cache full); its answer then
    echoes the token it sent, still valid upstream."""
    idp = FakeIdentityProvider()
    now = [1_000_000.0]
    exchange = token_exchange(idp, monkeypatch, max_cache_entries=1, clock=lambda: now[0])
    upstream = Upstream(
        upstream_from("vendor", url="http://127.0.0.1:9/mcp"),
        exchange,
        PinState(tmp_path / "lock.json", quiet=True),
        credential_of_call=lambda: tokens[current_subject[0]],
    )
    tokens = {s: idp.token(s, expires_in=3600) for s in ("alice", "bob")}
    current_subject = ["alice"]

    async def open_session(session: Session[Any]) -> Any:
        return session  # the "client" tells what its session sends

    async def nothing(*_: Any) -> None:
        return None

    upstream.sessions._connect = open_session
    monkeypatch.setattr(upstream, "_verify_pins", nothing)
    monkeypatch.setattr(upstream, "_check_blocked", lambda *_: None)
    monkeypatch.setattr(upstream, "_check_live", lambda *_: None)
    answer_now = asyncio.Event()

    async def slow_echo(client: Any) -> t.CallToolResult:
        sent = client.credential.token
        await answer_now.wait()
        return echo(sent)

    async def quick(client: Any) -> t.CallToolResult:
        return t.CallToolResult(content=[t.TextContent(type="text", text="ok")])

    async def call_as(subject: str, send: Any) -> Any:
        current_subject[0] = subject
        with bind(call_context(subject)):
            return await upstream.request("tool", "echo", send)

    first = asyncio.create_task(call_as("alice", slow_echo))
    await asyncio.sleep(0.05)
    if how == "re-exchanged":
        now[0] += 271  # past valid_until (300 s - 30 s refresh skew)
        await call_as("alice", quick)
    else:
        await call_as("bob", quick)
    answer_now.set()
    with pytest.raises(UpstreamOutputRejected):
        await first
    await upstream.aclose()
    assert len(exchange.issued) <= 1  # only what the cache still holds


class CountingIndex(Counter[str]):
    def add(self, token: str) -> None:
        self[token] += 1

    def discard(self, token: str) -> None:
        self[token] -= 1
        if not self[token]:
            del self[token]


def credential(token: str) -> SessionCredential:
    return SessionCredential(
        headers={"Authorization": f"Bearer {token}"}, expires_at=1e12, token=token
    )


async def test_a_replaced_credential_is_held_until_every_earlier_call_ended() -> None:
    """One caller's calls share a session; each lease gives it that call's credential, which the
    still-running earlier calls' requests then carry too."""
    index = CountingIndex()

    async def open_session(session: Session[Any]) -> str:
        return "client"

    async def close(client: str) -> None:
        return None

    pool: SessionPool[str] = SessionPool(open_session, close, index=index)
    async with pool.lease("alice", credential=credential("T1")):
        assert set(index) == {"T1"}
        async with pool.lease("alice", credential=credential("T2")):
            pass
        async with pool.lease("alice", credential=credential("T3")):
            pass
        # The first call is still running: its requests may have carried T1, T2 or T3.
        assert set(index) == {"T1", "T2", "T3"}
        async with pool.lease("alice", credential=credential("T3")):
            pass
    assert set(index) == {"T3"}  # the session's own, until the session is closed
    await pool.aclose()
    assert not index
