"""IntrospectionVerifier (RFC 7662): active exactly true, claims still checked, fail closed."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from auth_support import AUDIENCE, Counter, FakeIntrospection, counted_server, text_of
from fastmcp.server.auth import TokenVerifier

from securemcp.auth import IdentityVerifier, IntrospectionVerifier
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import connect

URL = "https://as.example.test/introspect"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def endpoint() -> FakeIntrospection:
    return FakeIntrospection()


def make(endpoint: FakeIntrospection, **kwargs: Any) -> IntrospectionVerifier:
    kwargs.setdefault("http_client", endpoint.client())
    kwargs.setdefault("audience", AUDIENCE)
    return IntrospectionVerifier(URL, endpoint.client_id, endpoint.client_secret, **kwargs)


async def reason(verifier: IntrospectionVerifier, token: str) -> str:
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(token)
    assert info.value.reason is not None
    return info.value.reason


async def test_active_token(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint, issuer="https://as.example.test", tenant_claim="tid")
    token = endpoint.issue(
        "opaque-1", scopes="notes:read notes:write", tid="acme", act={"sub": "agent"}
    )
    principal = await verifier.authenticate(token)
    assert principal.subject == "alice"
    assert principal.issuer == "https://as.example.test"
    assert principal.client_id == "client-app"
    assert principal.scopes == {"notes:read", "notes:write"}
    assert principal.tenant == "acme"
    assert principal.act[0].subject == "agent"
    assert principal.authenticated_by == "introspection"
    assert "active" not in principal.claims
    assert endpoint.seen_forms == [{"token": "opaque-1", "token_type_hint": "access_token"}]
    assert isinstance(verifier, IdentityVerifier) and isinstance(verifier, TokenVerifier)


async def test_usable_as_fastmcp_verifier(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint)
    access = await verifier.verify_token(endpoint.issue("opaque-2"))
    assert access is not None
    assert access.subject == "alice"
    assert access.resource == AUDIENCE
    assert await verifier.verify_token("unknown") is None


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        ({"active": False}, "inactive"),
        ({"active": "true"}, "introspection_malformed"),
        ({"active": 1}, "introspection_malformed"),
        ({"active": None}, "introspection_malformed"),
        ({"aud": "https://other.example/mcp"}, "audience_mismatch"),
        ({"aud": None}, "missing_claim:aud"),
        ({"iss": "https://evil.example"}, "issuer_mismatch"),
        ({"iss": None}, "missing_claim:iss"),
        ({"exp": None}, "missing_claim:exp"),
        ({"exp": int(time.time()) - 3600}, "expired"),
        ({"exp": "soon"}, "invalid_claim:exp"),
        ({"exp": 10**400}, "invalid_claim:exp"),
        ({"iat": 10**400}, "invalid_claim:iat"),
        ({"nbf": int(time.time()) + 3600}, "nbf_in_future"),
        ({"iat": int(time.time()) + 3600}, "iat_in_future"),
        ({"sub": None}, "missing_claim:sub"),
        ({"scope": ["notes:read"]}, "invalid_claim:scope"),
        ({"token_type": "DPoP"}, "dpop_bound_token"),
        ({"cnf": {"jkt": "abc"}}, "dpop_bound_token"),
    ],
)
async def test_refusals(
    endpoint: FakeIntrospection, response: dict[str, Any], expected: str
) -> None:
    verifier = make(endpoint, issuer="https://as.example.test")
    endpoint.issue("tok", **{k: v for k, v in response.items() if k != "active"})
    if "active" in response:
        endpoint.tokens["tok"]["active"] = response["active"]
    assert await reason(verifier, "tok") == expected


async def test_required_scopes_and_tenant(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint, required_scopes=["mcp:use"], tenant_claim="tid")
    assert await reason(verifier, endpoint.issue("a", tid="acme")) == "missing_required_scope"
    assert await reason(verifier, endpoint.issue("b", scopes="mcp:use")) == "missing_claim:tid"


async def test_require_exp_can_be_relaxed(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint, require_exp=False)
    principal = await verifier.authenticate(endpoint.issue("noexp", exp=None))
    assert principal.expires_at is None


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("down", "introspection_unavailable"),
        ("garbage", "introspection_unavailable"),
        ("array", "introspection_unavailable"),
        ("huge", "introspection_unavailable"),
    ],
)
async def test_endpoint_failures_refuse(
    endpoint: FakeIntrospection, mode: str, expected: str
) -> None:
    verifier = make(endpoint)
    token = endpoint.issue("tok")
    endpoint.mode = mode
    assert await reason(verifier, token) == expected
    endpoint.mode = "ok"
    assert (await verifier.authenticate(token)).subject == "alice"  # failures are not cached


async def test_slow_endpoint_refuses(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint, timeout=0.1)
    endpoint.mode = "slow"
    started = time.monotonic()
    assert await reason(verifier, endpoint.issue("tok")) == "introspection_unavailable"
    assert time.monotonic() - started < 2


async def test_wrong_client_secret_refuses(endpoint: FakeIntrospection) -> None:
    verifier = IntrospectionVerifier(
        URL, "rs-client", "wrong", audience=AUDIENCE, http_client=endpoint.client()
    )
    assert await reason(verifier, endpoint.issue("tok")) == "introspection_unavailable"


async def test_client_secret_basic_encoding() -> None:
    from securemcp.auth.introspection import _basic

    # RFC 6749 §2.3.1: form-urlencode each part before Basic (":" in the id must not split)
    assert (
        _basic("a:b", "p w&")
        == "Basic " + __import__("base64").b64encode(b"a%3Ab:p%20w%26").decode()
    )


@pytest.mark.parametrize("token", ["", "has space", "x" * 9000, "ünïcode"])
async def test_malformed_tokens_never_reach_the_endpoint(
    endpoint: FakeIntrospection, token: str
) -> None:
    verifier = make(endpoint)
    assert await reason(verifier, token) in {"malformed", "too_large"}
    assert endpoint.calls == 0


async def test_cache_never_outlives_the_token(endpoint: FakeIntrospection) -> None:
    clock = Clock()
    verifier = make(endpoint, cache_ttl=600, clock=clock)
    token = endpoint.issue("short", expires_in=30)
    await verifier.authenticate(token)
    await verifier.authenticate(token)
    assert endpoint.calls == 1
    clock.now += 31  # past exp: re-introspect (and the AS now says inactive)
    endpoint.tokens["short"] = {"active": False}
    assert await reason(verifier, token) == "inactive"
    assert endpoint.calls == 2


async def test_cache_ttl_bounds_revocation_delay(endpoint: FakeIntrospection) -> None:
    clock = Clock()
    verifier = make(endpoint, cache_ttl=10, clock=clock)
    token = endpoint.issue("revocable", expires_in=3600)
    await verifier.authenticate(token)
    endpoint.tokens["revocable"] = {"active": False}  # revoked at the AS
    clock.now += 5
    await verifier.authenticate(token)  # still cached
    clock.now += 6
    assert await reason(verifier, token) == "inactive"


async def test_no_cache(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint, cache_ttl=0)
    token = endpoint.issue("t")
    await verifier.authenticate(token)
    await verifier.authenticate(token)
    assert endpoint.calls == 2


async def test_inactive_answers_are_remembered_briefly(endpoint: FakeIntrospection) -> None:
    clock = Clock()
    verifier = make(endpoint, clock=clock)
    for _ in range(5):
        assert await reason(verifier, "dead") == "inactive"
    assert endpoint.calls == 1
    clock.now += 6
    assert await reason(verifier, "dead") == "inactive"
    assert endpoint.calls == 2


async def test_concurrent_requests_share_one_introspection(endpoint: FakeIntrospection) -> None:
    verifier = make(endpoint)
    token = endpoint.issue("popular")
    results = await asyncio.gather(*(verifier.authenticate(token) for _ in range(200)))
    assert {p.subject for p in results} == {"alice"}
    assert endpoint.calls == 1


async def test_pipeline_refuses_and_tool_never_runs(endpoint: FakeIntrospection) -> None:
    counter = Counter()
    server = counted_server(make(endpoint), counter)
    endpoint.issue("good", scopes="notes:read")
    async with connect(server, "good") as client:
        assert (await client.call_tool("read_note", {})).data == "note"
    endpoint.mode = "down"
    async with connect(server, "other") as client:
        result = await client.call_tool("read_note", {}, raise_on_error=False)
        assert result.is_error
        assert text_of(result).startswith("invalid_token:")
    assert counter.runs == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("http://as.example.test/i", "a", "b"), {}, "https://"),
        (("file:///etc/passwd", "a", "b"), {}, "introspection_url"),
        ((URL, "", "b"), {}, "client_id"),
        ((URL, "a", ""), {}, "client_secret"),
        ((URL, "a", "b"), {"audience": None}, "audience="),
        ((URL, "a", "b"), {"leeway": 301}, "leeway"),
        ((URL, "a", "b"), {"cache_ttl": 7200}, "cache_ttl"),
        ((URL, "a", "b"), {"timeout": 0}, "timeout"),
        ((URL, "a", "b"), {"issuer": ""}, "issuer"),
        (("https://10.0.0.5/introspect", "a", "b"), {}, "not a public address"),
    ],
)
def test_configuration_errors(args: tuple[str, ...], kwargs: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"audience": AUDIENCE, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        IntrospectionVerifier(*args, **config)


def test_private_endpoint_when_explicitly_allowed() -> None:
    verifier = IntrospectionVerifier(
        "https://10.0.0.5/introspect",
        "a",
        "b",
        audience=AUDIENCE,
        allowed_networks=["10.0.0.0/8"],
    )
    assert "10.0.0.5" in repr(verifier)
    assert "b'" not in repr(verifier) and "secret" not in repr(verifier)
