"""On-behalf-of calls: the proxy exchanges the caller's token (RFC 8693) instead of forwarding it.

The upstream must receive a token minted for *it* (its audience), naming the caller as subject
and the proxy as actor (``act``), and never the caller's own token. Exchanged tokens are cached
per identity; a caller whose token cannot be exchanged is refused before the upstream is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import upstream_app
from fastmcp.exceptions import ToolError
from proxy_support import OPEN_TOOLS, audited_proxy, config, http_upstream, locked, text_of

from securemcp.auth._compact import b64url_decode
from securemcp.proxy.credentials import SecretSource, TokenExchange
from securemcp.testing import FakeIdentityProvider

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
    from securemcp.testing import connect

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
    from securemcp.testing import connect

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
