"""Upstream credentials: configured secrets and RFC 8693 token exchange (no token passthrough)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import httpx
import pytest

from securemcp.errors import CallRefused, ConfigurationError
from securemcp.proxy.credentials import (
    ACCESS_TOKEN_TYPE,
    TOKEN_EXCHANGE_GRANT,
    NoAuth,
    OnBehalfOf,
    SecretSource,
    StaticBearer,
    StaticEnv,
    TokenExchange,
    UpstreamAuth,
    UpstreamAuthError,
    auth_from_config,
)
from securemcp.testing.idp import DEFAULT_ISSUER, FakeIdentityProvider

UPSTREAM = "https://upstream.example.test/mcp"
CLIENT_ID = "securemcp-proxy"
ENDPOINT = f"{DEFAULT_ISSUER}/token"
SECRET_ENV = "SECUREMCP_TEST_PROXY_SECRET"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def decode_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "==="))
    return claims


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(algorithm="ES256")


@pytest.fixture
def client_secret(idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch) -> str:
    secret = idp.register_client(CLIENT_ID)
    monkeypatch.setenv(SECRET_ENV, secret)
    return secret


def make_exchange(idp: FakeIdentityProvider, **kwargs: Any) -> TokenExchange:
    kwargs.setdefault("token_endpoint", idp.metadata["token_endpoint"])
    kwargs.setdefault("client_id", CLIENT_ID)
    kwargs.setdefault("client_secret", SecretSource(env=SECRET_ENV))
    kwargs.setdefault("audience", UPSTREAM)
    kwargs.setdefault("http_client", idp.http_client())
    return TokenExchange(**kwargs)


def obo(token: str, identity: str = "idp|alice") -> OnBehalfOf:
    return OnBehalfOf(subject_token=token, identity_key=identity)


def assert_safe(exc: UpstreamAuthError, *secrets: str) -> None:
    """A stable code, the generic client message, and no token or secret anywhere in it."""
    assert exc.code == "upstream_auth_failed"
    assert isinstance(exc, CallRefused)
    assert exc.client_message == "The upstream server's credentials could not be obtained."
    assert str(exc) == f"upstream_auth_failed: {exc.client_message}"
    for secret in secrets:
        assert secret not in str(exc)
        assert secret not in repr(exc)
        assert secret not in (exc.reason or "")


# --- token exchange against the fake IdP (in-process) ------------------------------------------


async def test_exchange_issues_an_upstream_token_on_behalf_of_the_caller(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    subject = idp.token("alice", scopes=["files:read", "files:write"], tenant="acme")
    exchange = make_exchange(idp)

    headers = await exchange.http_headers(obo(subject))

    assert list(headers) == ["Authorization"]
    scheme, _, token = headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    assert token != subject
    assert subject not in headers["Authorization"]
    principal = await idp.verifier(audience=UPSTREAM).authenticate(token)
    assert principal.subject == "alice"
    assert principal.client_id == CLIENT_ID
    assert principal.scopes == frozenset({"files:read", "files:write"})
    assert [a.subject for a in principal.act] == [CLIENT_ID]
    claims = decode_claims(token)
    assert claims["act"] == {"sub": CLIENT_ID}
    assert claims["aud"] == UPSTREAM
    assert claims["tenant"] == "acme"
    # the caller's own token is not valid at the upstream: that is why it is never forwarded
    from securemcp.errors import InvalidCredential

    with pytest.raises(InvalidCredential):
        await idp.verifier(audience=UPSTREAM).authenticate(subject)
    assert idp.last_exchange == {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": "***",
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "requested_token_type": ACCESS_TOKEN_TYPE,
        "audience": UPSTREAM,
        "client_id": CLIENT_ID,
    }


async def test_exchange_with_resource_and_narrowed_scope(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    subject = idp.token("alice", scopes=["files:read", "files:write"])
    exchange = make_exchange(idp, audience=None, resource=UPSTREAM, scope=["files:read"])

    token = await exchange.exchange(obo(subject))

    claims = decode_claims(token)
    assert claims["aud"] == UPSTREAM
    assert claims["scope"] == "files:read"
    assert idp.last_exchange is not None
    assert idp.last_exchange["resource"] == UPSTREAM
    assert idp.last_exchange["scope"] == "files:read"
    assert "audience" not in idp.last_exchange


async def test_existing_actor_chain_is_nested(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    subject = idp.token("alice", act={"sub": "agent-7"})
    token = await make_exchange(idp).exchange(obo(subject))

    assert decode_claims(token)["act"] == {"sub": CLIENT_ID, "act": {"sub": "agent-7"}}
    principal = await idp.verifier(audience=UPSTREAM).authenticate(token)
    assert [a.subject for a in principal.act] == [CLIENT_ID, "agent-7"]


async def test_client_secret_basic_and_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic; RFC 8693 §2.1 form."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=success("upstream-token"))

    monkeypatch.setenv(SECRET_ENV, "s3c:r/t+ &x")
    exchange = TokenExchange(
        token_endpoint=ENDPOINT,
        client_id="proxy:client",
        client_secret=SecretSource(env=SECRET_ENV),
        audience="vendor-api",
        resource=UPSTREAM,
        scope=["a", "b"],
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    assert await exchange.exchange(obo("subject.jwt.token")) == "upstream-token"

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == ENDPOINT
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    scheme, _, encoded = request.headers["authorization"].partition(" ")
    assert scheme == "Basic"
    raw_id, _, raw_secret = base64.b64decode(encoded).decode().partition(":")
    assert (raw_id, raw_secret) == ("proxy%3Aclient", "s3c%3Ar%2Ft%2B%20%26x")
    assert (unquote(raw_id), unquote(raw_secret)) == ("proxy:client", "s3c:r/t+ &x")
    form = parse_qs(request.content.decode(), strict_parsing=True)
    assert form == {
        "grant_type": [TOKEN_EXCHANGE_GRANT],
        "subject_token": ["subject.jwt.token"],
        "subject_token_type": [ACCESS_TOKEN_TYPE],
        "requested_token_type": [ACCESS_TOKEN_TYPE],
        "audience": ["vendor-api"],
        "resource": [UPSTREAM],
        "scope": ["a b"],
    }


# --- caching ----------------------------------------------------------------------------------


async def test_cached_per_identity_and_subject_token(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    exchange = make_exchange(idp)
    first = idp.token("alice")

    one = await exchange.exchange(obo(first))
    two = await exchange.exchange(obo(first))
    assert one == two
    assert idp.token_exchange_count == 1

    await exchange.exchange(obo(idp.token("alice")))  # a new subject token: exchange again
    assert idp.token_exchange_count == 2
    await exchange.exchange(obo(first, identity="idp|bob"))  # another partition
    assert idp.token_exchange_count == 3
    await exchange.exchange(obo(first))
    assert idp.token_exchange_count == 3


async def test_refreshed_before_expiry(idp: FakeIdentityProvider, client_secret: str) -> None:
    clock = Clock()
    exchange = make_exchange(idp, clock=clock, refresh_skew=30)
    subject = idp.token("alice")

    first = await exchange.exchange(obo(subject))
    clock.now += 300 - 30 - 1
    assert await exchange.exchange(obo(subject)) == first
    assert idp.token_exchange_count == 1
    clock.now += 2  # inside the refresh window
    second = await exchange.exchange(obo(subject))
    assert second != first
    assert idp.token_exchange_count == 2


async def test_short_lived_tokens_are_not_cached(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    idp.token_exchange_expires_in = 20  # shorter than the refresh skew
    exchange = make_exchange(idp, refresh_skew=30)
    subject = idp.token("alice")
    await exchange.exchange(obo(subject))
    await exchange.exchange(obo(subject))
    assert idp.token_exchange_count == 2


async def test_concurrent_calls_share_one_exchange(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    idp.latency = 0.05
    exchange = make_exchange(idp)
    subject = idp.token("alice")

    tokens = await asyncio.gather(*(exchange.exchange(obo(subject)) for _ in range(20)))

    assert len(set(tokens)) == 1
    assert idp.token_exchange_count == 1


async def test_concurrent_failure_is_shared_and_not_cached(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    idp.latency = 0.05
    idp.token_exchange_outage = True
    exchange = make_exchange(idp)
    subject = idp.token("alice")

    results = await asyncio.gather(
        *(exchange.exchange(obo(subject)) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, UpstreamAuthError) for r in results)
    assert idp.token_exchange_count == 1

    idp.token_exchange_outage = False
    await exchange.exchange(obo(subject))
    assert idp.token_exchange_count == 2


async def test_cancelled_first_caller_does_not_fail_the_others(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    idp.latency = 0.1
    exchange = make_exchange(idp)
    subject = idp.token("alice")
    first = asyncio.create_task(exchange.exchange(obo(subject)))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(exchange.exchange(obo(subject)))
    await asyncio.sleep(0.01)
    first.cancel()
    token = await second
    assert decode_claims(token)["sub"] == "alice"
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_cache_is_bounded(idp: FakeIdentityProvider, client_secret: str) -> None:
    exchange = make_exchange(idp, max_cache_entries=2)
    tokens = [idp.token(name) for name in ("a", "b", "c")]
    for name, token in zip("abc", tokens, strict=True):
        await exchange.exchange(obo(token, name))
    assert idp.token_exchange_count == 3
    await exchange.exchange(obo(tokens[2], "c"))  # newest: still cached
    assert idp.token_exchange_count == 3
    await exchange.exchange(obo(tokens[0], "a"))  # oldest was evicted
    assert idp.token_exchange_count == 4
    assert len(exchange.secret_values()) <= 3  # two cached tokens + the client secret


async def test_secret_values_include_cached_tokens_and_client_secret(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    exchange = make_exchange(idp)
    assert exchange.secret_values() == (client_secret,)
    subject = idp.token("alice")
    token = await exchange.exchange(obo(subject))
    values = exchange.secret_values()
    assert token in values
    assert client_secret in values
    assert subject not in values  # the caller's token is the caller's, not an injected secret


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("defect", "status"),
    [
        ("signed_by_stranger", "400"),
        ("expired", "400"),
        ("unknown_kid", "400"),
        ("alg_none", "400"),
        ("wrong_issuer", "400"),
        ("garbage", "400"),
    ],
)
async def test_invalid_subject_tokens_fail(
    idp: FakeIdentityProvider, client_secret: str, defect: str, status: str
) -> None:
    subject = idp.bad_token(defect, "alice")
    exchange = make_exchange(idp)
    with pytest.raises(UpstreamAuthError) as info:
        await exchange.http_headers(obo(subject))
    assert_safe(info.value, subject, client_secret)
    assert f"HTTP {status}" in (info.value.reason or "")
    assert exchange.secret_values() == (client_secret,)  # nothing cached


async def test_wrong_client_secret_fails(idp: FakeIdentityProvider, client_secret: str) -> None:
    idp.register_client(CLIENT_ID, "rotated-at-the-idp")
    subject = idp.token("alice")
    with pytest.raises(UpstreamAuthError) as info:
        await make_exchange(idp).exchange(obo(subject))
    assert_safe(info.value, subject, client_secret, "rotated-at-the-idp")
    assert "HTTP 401" in (info.value.reason or "")


async def test_scope_escalation_fails(idp: FakeIdentityProvider, client_secret: str) -> None:
    subject = idp.token("alice", scopes=["files:read"])
    with pytest.raises(UpstreamAuthError) as info:
        await make_exchange(idp, scope=["files:read", "admin"]).exchange(obo(subject))
    assert_safe(info.value, subject, client_secret)
    assert idp.token_exchange_count == 1


async def test_outage_fails_and_is_not_cached(
    idp: FakeIdentityProvider, client_secret: str
) -> None:
    exchange = make_exchange(idp)
    subject = idp.token("alice")
    idp.token_exchange_outage = True
    with pytest.raises(UpstreamAuthError) as info:
        await exchange.exchange(obo(subject))
    assert_safe(info.value, subject, client_secret)
    assert "HTTP 503" in (info.value.reason or "")
    idp.token_exchange_outage = False
    await exchange.exchange(obo(subject))
    assert idp.token_exchange_count == 2


async def test_missing_on_behalf_of_fails(idp: FakeIdentityProvider, client_secret: str) -> None:
    exchange = make_exchange(idp)
    with pytest.raises(UpstreamAuthError) as info:
        await exchange.http_headers(None)
    assert_safe(info.value)
    with pytest.raises(UpstreamAuthError):
        await exchange.exchange(obo(""))
    assert idp.token_exchange_count == 0


async def test_missing_client_secret_fails_the_call_not_the_server(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    with pytest.raises(UpstreamAuthError) as info:
        await make_exchange(idp).exchange(obo(idp.token("alice")))
    assert SECRET_ENV in (info.value.reason or "")
    assert SECRET_ENV not in str(info.value)
    assert idp.token_exchange_count == 0


def success(token: str = "upstream-token", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "access_token": token,
        "issued_token_type": ACCESS_TOKEN_TYPE,
        "token_type": "Bearer",
        "expires_in": 300,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


def mock_exchange(
    handler: Callable[[httpx.Request], Any], monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> TokenExchange:
    monkeypatch.setenv(SECRET_ENV, "client-secret-value")
    return TokenExchange(
        token_endpoint=ENDPOINT,
        client_id=CLIENT_ID,
        client_secret=SecretSource(env=SECRET_ENV),
        audience=UPSTREAM,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        **kwargs,
    )


SUBJECT = "eyJhbGciOiJFUzI1NiJ9.c3ViamVjdA.c2lnbmF0dXJl"

BAD_RESPONSES: dict[str, tuple[httpx.Response, str]] = {
    "invalid_grant": (httpx.Response(400, json={"error": "invalid_grant"}), "HTTP 400"),
    "server_error": (httpx.Response(500, text="oops"), "HTTP 500"),
    "redirect": (
        httpx.Response(302, headers={"Location": "https://elsewhere.example/token"}),
        "HTTP 302",
    ),
    "not_json": (httpx.Response(200, text="<html>hello</html>"), "strict JSON"),
    "json_array": (httpx.Response(200, json=[success()]), "JSON object"),
    "duplicate_member": (
        httpx.Response(
            200, content=b'{"access_token":"a","access_token":"b","token_type":"Bearer"}'
        ),
        "strict JSON",
    ),
    "oversized": (httpx.Response(200, json=success(padding="x" * (64 * 1024))), "larger than"),
    "no_access_token": (httpx.Response(200, json=success(access_token=None)), "no access_token"),
    "empty_access_token": (httpx.Response(200, json=success("")), "no access_token"),
    "numeric_access_token": (httpx.Response(200, json=success(access_token=1)), "no access_token"),
    "header_injection": (
        httpx.Response(200, json=success("tok\r\nX-Evil: 1")),
        "not a valid bearer token",
    ),
    "token_type_n_a": (httpx.Response(200, json=success(token_type="N_A")), "token_type"),
    "token_type_dpop": (httpx.Response(200, json=success(token_type="DPoP")), "token_type"),
    "no_token_type": (httpx.Response(200, json=success(token_type=None)), "token_type"),
    "no_issued_token_type": (
        httpx.Response(200, json=success(issued_token_type=None)),
        "issued_token_type is missing",
    ),
    "refresh_token_issued": (
        httpx.Response(
            200, json=success(issued_token_type="urn:ietf:params:oauth:token-type:refresh_token")
        ),
        "issued_token_type",
    ),
    "negative_expires_in": (httpx.Response(200, json=success(expires_in=-5)), "expires_in"),
    "zero_expires_in": (httpx.Response(200, json=success(expires_in=0)), "expires_in"),
    "string_expires_in": (httpx.Response(200, json=success(expires_in="300")), "expires_in"),
    "bool_expires_in": (httpx.Response(200, json=success(expires_in=True)), "expires_in"),
    "passthrough": (httpx.Response(200, json=success(SUBJECT)), "is the subject token"),
}


@pytest.mark.parametrize("kind", sorted(BAD_RESPONSES))
async def test_bad_token_endpoint_responses_fail(
    kind: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return BAD_RESPONSES[kind][0]

    exchange = mock_exchange(handler, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="securemcp.proxy.credentials"):
        with pytest.raises(UpstreamAuthError) as info:
            await exchange.http_headers(obo(SUBJECT))
        with pytest.raises(UpstreamAuthError):
            await exchange.http_headers(obo(SUBJECT))
    assert calls == 2  # failures are never cached
    assert BAD_RESPONSES[kind][1] in (info.value.reason or "")
    assert_safe(info.value, SUBJECT, "client-secret-value")
    assert SUBJECT not in caplog.text
    assert "client-secret-value" not in caplog.text
    assert exchange.secret_values() == ("client-secret-value",)


async def test_timeout_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(5)
        return httpx.Response(200, json=success())

    exchange = mock_exchange(slow, monkeypatch, timeout=0.05)
    with pytest.raises(UpstreamAuthError) as info:
        await exchange.exchange(obo(SUBJECT))
    assert "timed out" in (info.value.reason or "")
    assert_safe(info.value, SUBJECT)


async def test_connection_error_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(UpstreamAuthError) as info:
        await mock_exchange(refuse, monkeypatch).exchange(obo(SUBJECT))
    assert "ConnectError" in (info.value.reason or "")
    assert_safe(info.value, SUBJECT)


@pytest.mark.parametrize(
    ("body", "lifetime"),
    [
        (success(expires_in=None), 300.0),  # absent: a conservative default
        (success(expires_in=10**9), 24 * 3600.0),  # capped at a day
        (success(expires_in=120.5), 120.5),
        (success(token_type="bearer"), 300.0),  # case-insensitive (RFC 6749 §5.1)
    ],
)
async def test_expires_in_handling(
    body: dict[str, Any], lifetime: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(200, json=body)

    clock = Clock()
    exchange = mock_exchange(handler, monkeypatch, clock=clock, refresh_skew=30)
    await exchange.exchange(obo(SUBJECT))
    clock.now += lifetime - 30 - 0.1
    await exchange.exchange(obo(SUBJECT))
    assert calls == 1
    clock.now += 0.2
    await exchange.exchange(obo(SUBJECT))
    assert calls == 2


async def test_client_secret_is_reread_for_each_exchange(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=success(expires_in=1))  # not cached (skew 30)

    exchange = mock_exchange(handler, monkeypatch)
    await exchange.exchange(obo(SUBJECT))
    monkeypatch.setenv(SECRET_ENV, "rotated")
    await exchange.exchange(obo(SUBJECT))
    decoded = [base64.b64decode(h.split()[1]).decode() for h in seen]
    assert decoded == [f"{CLIENT_ID}:client-secret-value", f"{CLIENT_ID}:rotated"]


# --- real loopback HTTP -------------------------------------------------------------------------


@pytest.mark.http
async def test_exchange_over_loopback_http(monkeypatch: pytest.MonkeyPatch) -> None:
    idp = FakeIdentityProvider(None, algorithm="EdDSA")
    monkeypatch.setenv(SECRET_ENV, idp.register_client(CLIENT_ID))
    async with idp.serve_http() as url:
        exchange = TokenExchange(
            token_endpoint=f"{url}/token",
            client_id=CLIENT_ID,
            client_secret=SecretSource(env=SECRET_ENV),
            resource=UPSTREAM,
            allow_insecure_loopback=True,  # no http_client: the SSRF-guarded client
        )
        subject = idp.token("alice", scopes=["s"])
        headers = await exchange.http_headers(obo(subject))
        token = headers["Authorization"].removeprefix("Bearer ")
        principal = await idp.verifier(audience=UPSTREAM, over_http=True).authenticate(token)
        assert (principal.subject, principal.issuer) == ("alice", url)
        assert [a.subject for a in principal.act] == [CLIENT_ID]
        assert idp.token_exchange_count == 1

        idp.token_exchange_outage = True
        with pytest.raises(UpstreamAuthError):
            await exchange.exchange(obo(idp.token("alice")))


@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [
        ("http://idp.example.com/token", False),  # plain http
        ("http://127.0.0.1:8080/token", False),  # loopback needs the development flag
        ("http://idp.example.com/token", True),  # ... and is only for loopback
        ("https://10.0.0.5/token", False),  # a private address
        ("https://169.254.169.254/token", True),  # cloud metadata
        ("https://user:pw@idp.example.com/token", False),  # credentials in the URL
        ("file:///etc/passwd", False),
        ("https://idp.example.com/token?x=1", False),
        ("not a url", False),
    ],
)
def test_token_endpoint_is_ssrf_checked(endpoint: str, loopback: bool) -> None:
    with pytest.raises(ConfigurationError):
        TokenExchange(
            token_endpoint=endpoint,
            client_id=CLIENT_ID,
            client_secret=SecretSource(env=SECRET_ENV),
            allow_insecure_loopback=loopback,
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": ""},
        {"client_secret": "inline-secret"},
        {"scope": "a b"},
        {"scope": ["has space"]},
        {"resource": "not-absolute"},
        {"resource": "https://api.example/mcp#frag"},
        {"audience": ""},
        {"timeout": 0},
        {"refresh_skew": -1},
        {"max_cache_entries": 0},
    ],
)
def test_token_exchange_configuration_errors(kwargs: dict[str, Any]) -> None:
    options: dict[str, Any] = {
        "token_endpoint": ENDPOINT,
        "client_id": CLIENT_ID,
        "client_secret": SecretSource(env=SECRET_ENV),
        **kwargs,
    }
    with pytest.raises(ConfigurationError):
        TokenExchange(**options)


def test_token_exchange_repr_has_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "very-secret-value")
    exchange = TokenExchange(
        token_endpoint=ENDPOINT, client_id=CLIENT_ID, client_secret=SecretSource(env=SECRET_ENV)
    )
    assert "very-secret-value" not in repr(exchange)
    assert f"env:{SECRET_ENV}" in repr(exchange)
    assert exchange.process_env() == {}
    assert "tok-value" not in repr(obo("tok-value"))


# --- secret sources -----------------------------------------------------------------------------


def test_secret_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    source = SecretSource(env="SECUREMCP_TEST_SECRET")
    monkeypatch.setenv("SECUREMCP_TEST_SECRET", "  value with spaces\n")
    assert source.read() == "  value with spaces\n"  # env values are used as given
    assert source.describe() == "env:SECUREMCP_TEST_SECRET"
    monkeypatch.setenv("SECUREMCP_TEST_SECRET", "rotated")
    assert source.read() == "rotated"


@pytest.mark.parametrize("value", [None, ""])
def test_missing_env_secret(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("SECUREMCP_TEST_SECRET", raising=False)
    else:
        monkeypatch.setenv("SECUREMCP_TEST_SECRET", value)
    with pytest.raises(ConfigurationError) as info:
        SecretSource(env="SECUREMCP_TEST_SECRET").read()
    assert info.value.code == "configuration_error"
    assert "SECUREMCP_TEST_SECRET" in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"tok", "tok"),
        (b"tok\n", "tok"),
        (b"tok\r\n", "tok"),
        (b"tok\n\n", "tok\n"),  # only one trailing newline is removed
        (b"  tok  \n", "  tok  "),
    ],
)
def test_secret_from_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    path.chmod(0o600)
    source = SecretSource(file=str(path))
    assert source.read() == expected
    assert source.describe() == f"file:{path}"


def test_secret_file_rotation(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("one\n")
    path.chmod(0o600)
    source = SecretSource(file=str(path))
    assert source.read() == "one"
    path.write_text("two\n")
    assert source.read() == "two"


def test_secret_file_errors_name_the_path_not_the_value(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigurationError, match="does not exist") as info:
        SecretSource(file=str(missing)).read()
    assert str(missing) in str(info.value)

    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigurationError, match="empty"):
        SecretSource(file=str(empty)).read()

    with pytest.raises(ConfigurationError, match="not a regular file"):
        SecretSource(file=str(tmp_path)).read()

    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfesecret-bytes")
    with pytest.raises(ConfigurationError, match="UTF-8") as info:
        SecretSource(file=str(binary)).read()
    assert "secret-bytes" not in str(info.value)

    huge = tmp_path / "huge"
    huge.write_bytes(b"x" * (64 * 1024 + 1))
    with pytest.raises(ConfigurationError, match="larger"):
        SecretSource(file=str(huge)).read()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_secret_fifo_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigurationError, match="not a regular file"):
        SecretSource(file=str(fifo)).read()


def test_group_readable_secret_file_warns_but_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "shared-secret"
    path.write_text("the-secret-value\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="securemcp.proxy.credentials"):
        assert SecretSource(file=str(path)).read() == "the-secret-value"
        SecretSource(file=str(path)).read()
    warnings = [r for r in caplog.records if "group or others" in r.getMessage()]
    assert len(warnings) == 1  # once per path and mode, not on every read
    assert str(path) in warnings[0].getMessage()
    assert "the-secret-value" not in caplog.text


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"env": "A", "file": "/b"}, {"env": ""}, {"env": "A=B"}, {"file": ""}],
)
def test_secret_source_needs_exactly_one_reference(kwargs: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        SecretSource(**kwargs)


# --- static credentials -------------------------------------------------------------------------


async def test_no_auth() -> None:
    auth = NoAuth()
    assert isinstance(auth, UpstreamAuth)
    assert await auth.http_headers(None) == {}
    assert auth.process_env() == {}
    assert auth.secret_values() == ()


async def test_static_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VENDOR_TOKEN", "vendor-secret")
    source = SecretSource(env="VENDOR_TOKEN")
    bearer = StaticBearer(source)
    assert isinstance(bearer, UpstreamAuth)
    assert await bearer.http_headers(None) == {"Authorization": "Bearer vendor-secret"}
    on_behalf = obo("caller-token")
    assert await bearer.http_headers(on_behalf) == {"Authorization": "Bearer vendor-secret"}
    assert bearer.process_env() == {}
    assert bearer.secret_values() == ("vendor-secret",)
    assert "vendor-secret" not in repr(bearer)

    api_key = StaticBearer(source, header="X-API-Key", scheme=None)
    assert await api_key.http_headers(None) == {"X-API-Key": "vendor-secret"}
    assert await StaticBearer(source, scheme="").http_headers(None) == {
        "Authorization": "vendor-secret"
    }
    assert await StaticBearer(source, scheme="Token").http_headers(None) == {
        "Authorization": "Token vendor-secret"
    }


@pytest.mark.parametrize(
    "header",
    [
        "Host",
        "content-length",
        "Connection",
        "Transfer-Encoding",
        "Cookie",
        "Mcp-Session-Id",
        "X Bad",
        "X-Bad:",
        "",
    ],
)
def test_static_bearer_refuses_unsafe_headers(header: str) -> None:
    with pytest.raises(ConfigurationError):
        StaticBearer(SecretSource(env="VENDOR_TOKEN"), header=header)


def test_static_bearer_refuses_bad_scheme() -> None:
    with pytest.raises(ConfigurationError):
        StaticBearer(SecretSource(env="VENDOR_TOKEN"), scheme="Bear er")


async def test_static_bearer_missing_or_unsafe_secret_refuses_the_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bearer = StaticBearer(SecretSource(env="VENDOR_TOKEN"))
    monkeypatch.delenv("VENDOR_TOKEN", raising=False)
    with pytest.raises(UpstreamAuthError) as info:
        await bearer.http_headers(None)
    assert "VENDOR_TOKEN" in (info.value.reason or "")
    assert "VENDOR_TOKEN" not in str(info.value)
    assert bearer.secret_values() == ()

    monkeypatch.setenv("VENDOR_TOKEN", "abc\r\nX-Injected: 1")
    with pytest.raises(UpstreamAuthError) as info:
        await bearer.http_headers(None)
    assert_safe(info.value, "abc\r\nX-Injected: 1")


async def test_static_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GH_PAT", "ghp_secret")
    key_file = tmp_path / "key"
    key_file.write_text("file-secret\n")
    key_file.chmod(0o600)
    auth = StaticEnv(
        {"GITHUB_TOKEN": SecretSource(env="GH_PAT"), "API_KEY": SecretSource(file=str(key_file))}
    )
    assert isinstance(auth, UpstreamAuth)
    assert auth.process_env() == {"GITHUB_TOKEN": "ghp_secret", "API_KEY": "file-secret"}
    assert await auth.http_headers(None) == {}
    assert set(auth.secret_values()) == {"ghp_secret", "file-secret"}
    assert "ghp_secret" not in repr(auth)
    monkeypatch.delenv("GH_PAT")
    with pytest.raises(ConfigurationError, match="GH_PAT"):
        auth.process_env()
    assert auth.secret_values() == ("file-secret",)


@pytest.mark.parametrize("name", ["1ABC", "A-B", "", "LD_PRELOAD", "PATH", "DYLD_INSERT_LIBRARIES"])
def test_static_env_refuses_bad_names(name: str) -> None:
    with pytest.raises(ConfigurationError):
        StaticEnv({name: SecretSource(env="X")})


# --- configuration ------------------------------------------------------------------------------


def test_config_none() -> None:
    assert isinstance(auth_from_config({"type": "none"}), NoAuth)


def test_config_bearer() -> None:
    auth = auth_from_config({"type": "bearer", "secret_env": "VENDOR_TOKEN"})
    assert isinstance(auth, StaticBearer)
    assert (auth.secret, auth.header, auth.scheme) == (
        SecretSource(env="VENDOR_TOKEN"),
        "Authorization",
        "Bearer",
    )
    api_key = auth_from_config(
        {"type": "bearer", "secret_file": "/run/secrets/x", "header": "X-API-Key", "scheme": ""}
    )
    assert isinstance(api_key, StaticBearer)
    assert (api_key.secret, api_key.header, api_key.scheme) == (
        SecretSource(file="/run/secrets/x"),
        "X-API-Key",
        None,
    )


def test_config_env() -> None:
    auth = auth_from_config(
        {
            "type": "env",
            "variables": {"GITHUB_TOKEN": {"env": "GH_PAT"}, "X": {"file": "/run/secrets/x"}},
        }
    )
    assert isinstance(auth, StaticEnv)
    assert dict(auth.variables) == {
        "GITHUB_TOKEN": SecretSource(env="GH_PAT"),
        "X": SecretSource(file="/run/secrets/x"),
    }


def test_config_token_exchange() -> None:
    auth = auth_from_config(
        {
            "type": "token_exchange",
            "token_endpoint": "https://login.example.com/oauth2/token",
            "client_id": "proxy",
            "client_secret_env": "PROXY_SECRET",
            "audience": "vendor",
            "resource": UPSTREAM,
            "scope": ["a", "b"],
            "timeout": 3,
        }
    )
    assert isinstance(auth, TokenExchange)
    assert auth.token_endpoint == "https://login.example.com/oauth2/token"
    assert auth.client_id == "proxy"
    assert auth.client_secret == SecretSource(env="PROXY_SECRET")
    assert (auth.audience, auth.resource, auth.scope) == ("vendor", UPSTREAM, ("a", "b"))

    loopback = {
        "type": "token_exchange",
        "token_endpoint": "http://127.0.0.1:9000/token",
        "client_id": "proxy",
        "client_secret_file": "/run/secrets/proxy",
    }
    with pytest.raises(ConfigurationError):
        auth_from_config(loopback)
    assert isinstance(auth_from_config(loopback, allow_insecure_loopback=True), TokenExchange)


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ({}, "auth.type"),
        ({"type": "basic"}, "auth.type"),
        ({"type": "none", "colour": "red"}, "'colour'"),
        ({"type": "bearer", "secret": "hunter2"}, "'secret'"),
        ({"type": "bearer", "token": "hunter2", "secret_env": "X"}, "'token'"),
        ({"type": "bearer"}, "secret_env"),
        ({"type": "bearer", "secret_env": "X", "secret_file": "/y"}, "secret_env"),
        ({"type": "bearer", "secret_env": 5}, "auth.secret_env"),
        ({"type": "bearer", "secret_env": "X", "header": 1}, "auth.header"),
        ({"type": "bearer", "secret_env": "X", "scheme": None}, "auth.scheme"),
        ({"type": "bearer", "secret_env": "X", "header": "Host"}, "Host"),
        ({"type": "env"}, "auth.variables"),
        ({"type": "env", "variables": {"A": "GH_PAT"}}, "auth.variables.A"),
        ({"type": "env", "variables": {"A": {"env": "X", "file": "/y"}}}, "auth.variables.A"),
        ({"type": "env", "variables": {"A": {"vault": "X"}}}, "'vault'"),
        ({"type": "env", "variables": {"LD_PRELOAD": {"env": "X"}}}, "LD_PRELOAD"),
        ({"type": "token_exchange", "client_id": "c", "client_secret_env": "S"}, "token_endpoint"),
        (
            {"type": "token_exchange", "token_endpoint": ENDPOINT, "client_secret_env": "S"},
            "client_id",
        ),
        ({"type": "token_exchange", "token_endpoint": ENDPOINT, "client_id": "c"}, "client_secret"),
        (
            {
                "type": "token_exchange",
                "token_endpoint": ENDPOINT,
                "client_id": "c",
                "client_secret": "inline!",
            },
            "'client_secret'",
        ),
        (
            {
                "type": "token_exchange",
                "token_endpoint": ENDPOINT,
                "client_id": "c",
                "client_secret_env": "S",
                "scope": "a b",
            },
            "auth.scope",
        ),
        (
            {
                "type": "token_exchange",
                "token_endpoint": ENDPOINT,
                "client_id": "c",
                "client_secret_env": "S",
                "timeout": "10",
            },
            "auth.timeout",
        ),
        (
            {
                "type": "token_exchange",
                "token_endpoint": "http://idp.example.com/token",
                "client_id": "c",
                "client_secret_env": "S",
            },
            "token_endpoint",
        ),
    ],
)
def test_config_errors_name_the_key(table: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        auth_from_config(table)
    assert named in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "inline!" not in str(info.value)


def test_config_inline_secret_gets_a_hint() -> None:
    with pytest.raises(ConfigurationError, match="never written in configuration"):
        auth_from_config({"type": "bearer", "secret": "hunter2"})


def test_config_where_prefix_and_non_table() -> None:
    with pytest.raises(ConfigurationError, match=r"upstreams\.github\.auth\.type"):
        auth_from_config({"type": "?"}, where="upstreams.github.auth")
    with pytest.raises(ConfigurationError, match="must be a table"):
        auth_from_config("bearer")  # type: ignore[arg-type]
