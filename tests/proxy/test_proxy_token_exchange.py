"""On-behalf-of calls: the proxy exchanges the caller's token (RFC 8693) instead of forwarding it.

The upstream must receive a token minted for *it* (its audience), naming the caller as subject
and the proxy as actor (``act``), and never the caller's own token. Exchanged tokens are cached
per identity; a caller whose token cannot be exchanged is refused before the upstream is called.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import upstream_app
from fastmcp.exceptions import ToolError
from proxy_support import (
    OPEN_TOOLS,
    HttpRequest,
    audited_proxy,
    config,
    http_upstream,
    locked,
    recorded_http_upstream,
    text_of,
)

from securemcp.auth._compact import b64url_decode
from securemcp.proxy.credentials import SecretSource, TokenExchange
from securemcp.testing import FakeIdentityProvider, connect

pytestmark = pytest.mark.http

UPSTREAM_AUDIENCE = "https://vendor.example/mcp"


def claims_of(authorization: str) -> dict[str, Any]:
    token = authorization.removeprefix("Bearer ")
    return json.loads(b64url_decode(token.split(".")[1]))  # type: ignore[no-any-return]


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


def exchange(idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch) -> TokenExchange:
    monkeypatch.setenv("PROXY_CLIENT_SECRET", idp.register_client("securemcp-proxy"))
    return TokenExchange(
        token_endpoint=f"{idp.issuer}/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="PROXY_CLIENT_SECRET"),
        audience=UPSTREAM_AUDIENCE,
        http_client=idp.http_client(),
    )


async def test_upstream_receives_an_exchanged_token_never_the_callers(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url}}))  # lock without creds
        cfg = config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}})
        auth = exchange(idp, monkeypatch)
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth={"vendor": auth})
        alice_token, bob_token = idp.token("alice"), idp.token("bob")
        upstream_app.RECEIVED.clear()
        async with connect(proxy, alice_token) as client:
            for _ in range(3):
                assert text_of(await client.call_tool("status", {})) == "ok"
        async with connect(proxy, bob_token) as client:
            assert text_of(await client.call_tool("status", {})) == "ok"

    seen = [r["authorization"] for r in upstream_app.RECEIVED]
    assert all(seen)
    assert alice_token not in json.dumps(seen) and bob_token not in json.dumps(seen)
    subjects = [claims_of(a)["sub"] for a in seen]
    assert subjects == ["alice", "alice", "alice", "bob"]
    for authorization in seen:
        claims = claims_of(authorization)
        assert claims["aud"] == UPSTREAM_AUDIENCE
        assert claims["act"] == {"sub": "securemcp-proxy"}
    # Cached per identity: one exchange for alice's three calls, one for bob's.
    assert idp.token_exchange_count == 2
    assert idp.last_exchange is not None and idp.last_exchange["subject_token"] == "***"


async def test_exchange_failure_refuses_before_the_upstream(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:

    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        auth = exchange(idp, monkeypatch)
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth={"vendor": auth})
        idp.token_exchange_outage = True
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="upstream_auth_failed") as refused:
                await client.call_tool("status", {})
        assert "token" not in str(refused.value).lower().replace("upstream_auth_failed", "")
        assert upstream_app.RECEIVED == []


# --- the upstream sessions: ended with their own exchanged credential ------------------------


async def authenticated_proxy(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> tuple[Any, TokenExchange]:
    """A proxy in front of an upstream that accepts only tokens issued for it (by exchange)."""
    auth = exchange(idp, monkeypatch)
    cfg = config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}})
    await locked(cfg, upstream_auth={"vendor": auth}, subject_token=idp.token("operator"))
    proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth={"vendor": auth})
    return proxy, auth


def sessions_of(seen: list[HttpRequest]) -> dict[str, list[HttpRequest]]:
    """The requests of each upstream MCP session, by session id."""
    sessions: dict[str, list[HttpRequest]] = {}
    for request in seen:
        if request.session_id is not None:
            sessions.setdefault(request.session_id, []).append(request)
    return sessions


def terminations(requests: list[HttpRequest]) -> list[HttpRequest]:
    return [r for r in requests if r.method == "DELETE"]


async def test_upstream_sessions_are_ended_with_their_own_callers_credential(
    idp: FakeIdentityProvider,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: the session's caller token was dropped before the client closed, so the close's
    HTTP DELETE could not be authenticated and was never sent ("Session termination failed:
    upstream_auth_failed"); every upstream session lived on until the upstream's own timeout.
    Now each session is ended by a DELETE the upstream accepts, carrying the exchanged token of
    the caller it belongs to."""
    async with recorded_http_upstream(auth=idp.verifier(audience=UPSTREAM_AUDIENCE)) as (
        url,
        seen,
    ):
        proxy, _ = await authenticated_proxy(idp, tmp_path, monkeypatch, url)
        seen.clear()
        both_called = asyncio.Barrier(2)

        async def as_user(subject: str) -> None:
            async with connect(proxy, idp.token(subject)) as client:
                for _ in range(2):
                    assert text_of(await client.call_tool("status", {})) == "ok"
                await both_called.wait()  # both sessions are open when the proxy closes them

        with caplog.at_level(logging.WARNING):
            await asyncio.gather(as_user("alice"), as_user("bob"))

    sessions = sessions_of(seen)
    assert len(sessions) == 2
    owners = set()
    for requests in sessions.values():
        posts = [r for r in requests if r.method == "POST"]
        ended = terminations(requests)
        assert len(ended) == 1 and ended[0].status == 200, [dataclasses.asdict(r) for r in ended]
        owner = claims_of(posts[0].authorization or "")["sub"]
        owners.add(owner)
        assert {claims_of(r.authorization or "")["sub"] for r in requests} == {owner}
        assert ended[0].authorization == posts[-1].authorization  # its own latest credential
    assert owners == {"alice", "bob"}
    assert "Session termination failed" not in caplog.text


async def test_an_idle_session_is_ended_before_its_credential_lapses(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session is ended (in the background, with no further call) while its credential still
    works: once the exchanged token lapsed, the proxy could no longer end it."""
    idp.token_exchange_expires_in = 31  # refresh_skew is 30: usable for about one second
    async with recorded_http_upstream(auth=idp.verifier(audience=UPSTREAM_AUDIENCE)) as (
        url,
        seen,
    ):
        proxy, _ = await authenticated_proxy(idp, tmp_path, monkeypatch, url)
        seen.clear()
        async with connect(proxy, idp.token("alice")) as client:
            assert text_of(await client.call_tool("status", {})) == "ok"
            for _ in range(100):
                if any(r.method == "DELETE" for r in seen):
                    break
                await asyncio.sleep(0.1)
            (session,) = sessions_of(seen).values()
            assert [r.status for r in terminations(session)] == [200]
            # The caller's next call opens a fresh session with a fresh credential.
            assert text_of(await client.call_tool("status", {})) == "ok"
        assert len(sessions_of(seen)) == 2


async def test_no_session_keeps_the_callers_token(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the caller's raw token was kept on the upstream session (for re-exchange) for as
    long as the session lived. Each call brings its caller's token; the session keeps only the
    upstream credential exchanged for it."""
    async with recorded_http_upstream(auth=idp.verifier(audience=UPSTREAM_AUDIENCE)) as (
        url,
        _,
    ):
        proxy, _ = await authenticated_proxy(idp, tmp_path, monkeypatch, url)
        token = idp.token("alice")
        async with connect(proxy, token) as client:
            assert text_of(await client.call_tool("status", {})) == "ok"
            (session,) = proxy._securemcp_upstreams[0].sessions._sessions.values()
            kept = [getattr(session, f.name) for f in dataclasses.fields(session)]
            assert all(token not in repr(value) for value in kept)
            assert session.credential is not None
            held = session.credential.headers["Authorization"]
            assert token not in held and claims_of(held)["aud"] == UPSTREAM_AUDIENCE
