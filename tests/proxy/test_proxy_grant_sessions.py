"""With token exchange, an upstream session belongs to one identity *and one grant*.

Before: sessions (and the credential each presents) were keyed by identity only. Two calls of
one caller presenting different tokens (``files:read files:write`` and a token down-scoped to
``files:read``; another audience; an ``act`` chain; a ``cnf`` key) shared one upstream session
and its latest exchanged credential, so a call made with the narrow token was sent upstream with
the credential exchanged for the broad one, and found the upstream state the broad one created.
Tokens here are real signed tokens, verified by the real verifier and exchanged (RFC 8693) at the
fake IdP's token endpoint.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
import upstream_app
from proxy_support import (
    OPEN_TOOLS,
    HttpRequest,
    audited_proxy,
    config,
    locked,
    recorded_http_upstream,
    text_of,
)

from securemcp.auth._compact import b64url_decode
from securemcp.context import Principal, SecurityContext, bind
from securemcp.proxy.config import upstream_from
from securemcp.proxy.credentials import SecretSource, TokenExchange
from securemcp.proxy.grants import grant_key
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.sessions import Session
from securemcp.proxy.upstream import Upstream
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://vendor.example/mcp"
BROAD = ("files:read", "files:write")


def claims_of(token: str) -> dict[str, Any]:
    token = token.removeprefix("Bearer ")
    return json.loads(b64url_decode(token.split(".")[1]))  # type: ignore[no-any-return]


def token_exchange(idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch) -> TokenExchange:
    monkeypatch.setenv("PROXY_CLIENT_SECRET", idp.register_client("securemcp-proxy"))
    return TokenExchange(
        token_endpoint=f"{idp.issuer}/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="PROXY_CLIENT_SECRET"),
        audience=AUDIENCE,
        http_client=idp.http_client(),
    )


def narrow_token(idp: FakeIdentityProvider, how: str) -> str:
    """alice's other token: one way or another, not the broad token's grant."""
    if how == "down-scoped":
        return idp.token("alice", scopes=["files:read"])
    if how == "audience":
        return idp.token(
            "alice", scopes=BROAD, audience=[idp.default_audience, "https://b.example"]
        )
    if how == "act":
        return idp.token("alice", scopes=BROAD, act={"sub": "agent-7"})
    assert how == "cnf"
    return idp.token(
        "alice", scopes=BROAD, cnf={"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}
    )


class Harness:
    """An :class:`Upstream` whose sessions' "clients" are the sessions themselves, so a request
    tells what its session would send at that moment (what the HTTP auth flow injects)."""

    def __init__(self, tmp_path: Path, idp: FakeIdentityProvider, exchange: TokenExchange) -> None:
        self.idp = idp
        self.verifier = idp.verifier()
        self.token: contextvars.ContextVar[str] = contextvars.ContextVar("token")
        self.upstream = Upstream(
            upstream_from("vendor", url="http://127.0.0.1:9/mcp"),
            exchange,
            PinState(tmp_path / "lock.json", quiet=True),
            credential_of_call=self.token.get,
        )

        async def open_session(session: Session[Any]) -> Any:
            return session

        async def nothing(*_: Any) -> None:
            return None

        upstream = self.upstream
        upstream.sessions._connect = open_session
        upstream._verify_pins = nothing  # type: ignore[method-assign]
        upstream._check_blocked = lambda *_: None  # type: ignore[method-assign]
        upstream._check_live = lambda *_: None  # type: ignore[method-assign]

    async def call(self, token: str, send: Any) -> Any:
        principal = await self.verifier.authenticate(token)
        self.token.set(token)
        context = SecurityContext(
            call_id="call",
            method="tools/call",
            target="echo",
            principal=principal,
            transport="in-memory",
            started_at=datetime.now(UTC),
        )
        with bind(context):
            return await self.upstream.request("tool", "echo", send)


def ok() -> t.CallToolResult:
    return t.CallToolResult(content=[t.TextContent(type="text", text="ok")])


@pytest.mark.parametrize("how", ["down-scoped", "audience", "act", "cnf"])
async def test_a_narrower_token_never_rides_on_a_broader_tokens_exchange(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """alice's call with the narrow token is still running (its next request not yet sent) when
    her call with the broad token leases: the narrow call's request must still carry the
    credential exchanged for the narrow token."""
    idp = FakeIdentityProvider()
    exchange = token_exchange(idp, monkeypatch)
    harness = Harness(tmp_path, idp, exchange)
    broad, narrow = idp.token("alice", scopes=BROAD), narrow_token(idp, how)
    sent: dict[str, str] = {}
    send_now, narrow_started = asyncio.Event(), asyncio.Event()

    async def narrow_send(session: Session[Any]) -> t.CallToolResult:
        sent["narrow at start"] = session.credential.token
        narrow_started.set()
        await send_now.wait()
        sent["narrow"] = session.credential.token
        return ok()

    async def broad_send(session: Session[Any]) -> t.CallToolResult:
        sent["broad"] = session.credential.token
        return ok()

    narrow_call = asyncio.create_task(harness.call(narrow, narrow_send))
    await narrow_started.wait()
    await harness.call(broad, broad_send)
    send_now.set()
    await narrow_call

    narrow_claims, broad_claims = claims_of(sent["narrow"]), claims_of(sent["broad"])
    own = sent["narrow"] == sent["narrow at start"] and sent["narrow"] != sent["broad"]
    assert own, f"the narrow call was sent with another credential: {narrow_claims}"
    assert broad_claims["scope"] == "files:read files:write"
    if how == "down-scoped":
        assert narrow_claims["scope"] == "files:read"
    if how == "act":
        assert narrow_claims["act"] == {"sub": "securemcp-proxy", "act": {"sub": "agent-7"}}
    assert len(harness.upstream.sessions) == 2
    # Every token a live session may send is searched for in answers.
    for session in harness.upstream.sessions._sessions.values():
        assert session.credential is not None and session.credential.token is not None
        assert exchange.issued_jwt(session.credential.token)
    await harness.upstream.aclose()
    assert len(exchange.issued) == len(exchange._cache)


async def test_a_refreshed_token_of_the_same_grant_reuses_the_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new token with the same grant (new ``jti``, ``iat``, ``exp``) is exchanged afresh, and
    its credential replaces the session's: the upstream session (and its state) lives on."""
    idp = FakeIdentityProvider()
    exchange = token_exchange(idp, monkeypatch)
    harness = Harness(tmp_path, idp, exchange)
    used: list[tuple[Session[Any], str]] = []

    async def send(session: Session[Any]) -> t.CallToolResult:
        used.append((session, session.credential.token))
        return ok()

    first, refreshed = idp.token("alice", scopes=BROAD), idp.token("alice", scopes=BROAD[::-1])
    assert first != refreshed
    await harness.call(first, send)
    await harness.call(refreshed, send)
    (session_1, token_1), (session_2, token_2) = used
    assert session_2 is session_1 and harness.upstream.sessions.opened == 1
    assert token_2 != token_1 and idp.token_exchange_count == 2
    await harness.upstream.aclose()


def test_grant_key_separates_grants_not_issuances() -> None:
    def principal(**claims: Any) -> Principal:
        base: dict[str, Any] = {"aud": "https://proxy.example", "scope": "a b"}
        base.update(claims)
        scopes = str(base.get("scope", "")).split()
        return Principal(subject="alice", issuer="https://idp", scopes=scopes, claims=base)

    key = grant_key(principal())
    # The same grant, issued again (or spelled otherwise): the same key.
    assert grant_key(principal(jti="other", iat=1, exp=2, nbf=1)) == key
    assert grant_key(principal(scope="b a a")) == key
    assert grant_key(principal(aud=["https://proxy.example"])) == key
    # Anything the exchange depends on: another key.
    others = [
        principal(scope="a"),
        principal(aud=["https://proxy.example", "https://b.example"]),
        principal(act={"sub": "agent"}),
        principal(act={"sub": "agent", "act": {"sub": "outer"}}),
        principal(may_act={"sub": "securemcp-proxy"}),
        principal(cnf={"jkt": "abc"}),
        principal(roles=["admin"]),
        principal(groups=["g"]),
        principal(entitlements=["e"]),
        principal(authorization_details=[{"type": "payment"}]),
        principal(acr="urn:mace:incommon:iap:silver"),
        principal(amr=["mfa"]),
        principal(auth_time=12345),
        Principal(
            subject="alice",
            issuer="https://idp",
            scopes=["a", "b"],
            tenant="t",
            claims={"aud": "https://proxy.example", "scope": "a b"},
        ),
    ]
    keys = {grant_key(p) for p in others}
    assert key not in keys and len(keys) == len(others)


# --- end to end: a real proxy in front of a real HTTP upstream ------------------------------


def sessions_of(seen: list[HttpRequest]) -> dict[str, list[HttpRequest]]:
    sessions: dict[str, list[HttpRequest]] = {}
    for request in seen:
        if request.session_id is not None:
            sessions.setdefault(request.session_id, []).append(request)
    return sessions


@pytest.mark.http
async def test_a_down_scoped_token_gets_its_own_upstream_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alice stores a value through the proxy with her broad token, then calls with a token
    down-scoped to ``files:read``: that call must not land in the upstream session opened (and
    authorized) with the broad token's exchange, nor see its state."""
    idp = FakeIdentityProvider()
    auth = token_exchange(idp, monkeypatch)
    async with recorded_http_upstream(auth=idp.verifier(audience=AUDIENCE)) as (url, seen):
        cfg = config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}})
        await locked(cfg, upstream_auth={"vendor": auth}, subject_token=idp.token("operator"))
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth={"vendor": auth})
        seen.clear()
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("alice", scopes=BROAD)) as broad:
            assert text_of(await broad.call_tool("remember", {"value": "broad"})) == "stored"
            async with connect(proxy, idp.token("alice", scopes=["files:read"])) as narrow:
                assert text_of(await narrow.call_tool("recall", {})) == "<nothing>"
            async with connect(proxy, idp.token("alice", scopes=BROAD)) as refreshed:
                assert text_of(await refreshed.call_tool("recall", {})) == "broad"

    scopes_by_tool = [
        (r["tool"], claims_of(r["authorization"])["scope"]) for r in upstream_app.RECEIVED
    ]
    assert scopes_by_tool == [
        ("remember", "files:read files:write"),
        ("recall", "files:read"),
        ("recall", "files:read files:write"),
    ]
    sessions = sessions_of(seen)
    assert len(sessions) == 2
    for requests in sessions.values():  # each session only ever carried one grant
        granted = {claims_of(r.authorization or "")["scope"] for r in requests}
        assert len(granted) == 1, granted


def test_grant_key_remembers_a_principal_by_identity_only() -> None:
    """The key is remembered per principal object (the verifier's cached one), never for an
    equal-looking or later principal that happens to reuse a freed object's id."""
    alice = Principal(subject="alice", issuer="https://idp", scopes=["a"], claims={"scope": "a"})
    key = grant_key(alice)
    assert grant_key(alice) == key
    narrow = Principal(subject="alice", issuer="https://idp", scopes=[], claims={})
    assert grant_key(narrow) != key
    for n in range(3000):  # many principals come and go (ids reused): never a stale key
        p = Principal(subject=f"user-{n % 3}", issuer="https://idp", scopes=[str(n % 2)])
        assert grant_key(p) == grant_key(Principal(p.subject, p.issuer, scopes=p.scopes))
