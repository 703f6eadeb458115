"""Acceptance: hostile tokens and requests, each refused exactly, and no tool body ever runs.

One real loopback HTTP server (uvicorn, streamable HTTP, stateless) backed by a
``FakeIdentityProvider`` serves the whole table. Every case asserts the HTTP status, the
``WWW-Authenticate`` challenge (RFC 6750 §3 / RFC 9728 §5.1), the specific reason logged on
``securemcp.auth`` (never sent to the client) and that the server's body counter did not move.
Token cases are also replayed in memory through the pipeline. The PyPI-ecosystem JWT CVEs of
``standards.md`` §2.2 are pinned as regression tests at the end.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import pytest_asyncio
from auth_support import (
    AUDIENCE,
    BAD_KIND_REASONS,
    Counter,
    FakeIntrospection,
    call_body,
    challenge_params,
    counted_server,
    request_headers,
    set_protected_resource,
    text_of,
)
from cryptography.hazmat.primitives import serialization

from securemcp import FastMCP
from securemcp.auth import (
    IntrospectionVerifier,
    JWTVerifier,
    MultiIssuerVerifier,
    ProtectedResource,
)
from securemcp.auth._compact import b64url_encode
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import FakeIdentityProvider, connect, serve_http

pytestmark = [pytest.mark.http, pytest.mark.asyncio(loop_scope="module")]

METADATA_URL = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"
READ = ["notes:read"]


@dataclass
class Env:
    idp: FakeIdentityProvider
    verifier: JWTVerifier
    server: FastMCP
    counter: Counter
    url: str
    client: httpx.AsyncClient


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env() -> AsyncIterator[Env]:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    verifier = idp.verifier()
    counter = Counter()
    server = counted_server(verifier, counter)
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        yield Env(idp, verifier, server, counter, url, client)


# --- crafting ------------------------------------------------------------------------------------


def raw(header: dict[str, Any] | str, claims: dict[str, Any] | str, signature: bytes = b"") -> str:
    h = header if isinstance(header, str) else json.dumps(header, separators=(",", ":"))
    c = claims if isinstance(claims, str) else json.dumps(claims, separators=(",", ":"))
    return f"{b64url_encode(h.encode())}.{b64url_encode(c.encode())}.{b64url_encode(signature)}"


def hdr(idp: FakeIdentityProvider, **changes: Any) -> dict[str, Any]:
    header = {"alg": idp.algorithm, "typ": "at+jwt", "kid": idp.current_kid, **changes}
    return {k: v for k, v in header.items() if v is not None}


def signed(idp: FakeIdentityProvider, header: Any = None, **claims: Any) -> str:
    return idp.sign(
        header if header is not None else hdr(idp), idp.claims("mallory", scopes=READ, **claims)
    )


def hs256(idp: FakeIdentityProvider, secret: bytes) -> str:
    header = b64url_encode(json.dumps(hdr(idp, alg="HS256")).encode())
    payload = b64url_encode(json.dumps(idp.claims("mallory", scopes=READ)).encode())
    mac = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url_encode(mac)}"


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"n": value}
    return value


def swapped_signature(idp: FakeIdentityProvider) -> str:
    a = signed(idp).split(".")
    b = idp.token("someone-else", scopes=READ).split(".")
    return f"{a[0]}.{a[1]}.{b[2]}"


Token = Callable[[FakeIdentityProvider], str]

#: Hand-crafted hostile tokens beyond the IdP's catalogue: (id, builder, reason).
CRAFTED: list[tuple[str, Token, str]] = [
    (
        "x5u_header",
        lambda i: signed(i, hdr(i, x5u="https://attacker.example/c.pem")),
        "header_forbidden:x5u",
    ),
    ("x5c_header", lambda i: signed(i, hdr(i, x5c=["MIIBIjANBg=="])), "header_forbidden:x5c"),
    ("crit_exp", lambda i: signed(i, hdr(i, crit=["exp"])), "crit_unsupported"),
    ("crit_empty", lambda i: signed(i, hdr(i, crit=[])), "crit_unsupported"),
    ("typ_missing", lambda i: signed(i, hdr(i, typ=None)), "typ_mismatch"),
    ("typ_dpop", lambda i: signed(i, hdr(i, typ="dpop+jwt")), "typ_mismatch"),
    ("kid_too_long", lambda i: signed(i, hdr(i, kid="k" * 300)), "invalid_header:kid"),
    ("kid_not_string", lambda i: signed(i, hdr(i, kid=42)), "invalid_header:kid"),
    ("kid_empty", lambda i: signed(i, hdr(i, kid="")), "invalid_header:kid"),
    (
        "kid_path_traversal",
        lambda i: signed(i, hdr(i, kid="../../../../etc/passwd")),
        "unknown_kid",
    ),
    ("kid_sql_injection", lambda i: signed(i, hdr(i, kid="' OR '1'='1")), "unknown_kid"),
    ("alg_missing", lambda i: signed(i, hdr(i, alg=None)), "missing_header:alg"),
    ("alg_not_string", lambda i: signed(i, hdr(i, alg=["RS256"])), "invalid_header:alg"),
    ("alg_ps256_not_allowed", lambda i: signed(i, hdr(i, alg="PS256")), "alg_not_allowed"),
    ("alg_lowercase", lambda i: signed(i, hdr(i, alg="rs256")), "alg_not_allowed"),
    ("alg_NONE_upper", lambda i: raw(hdr(i, alg="NONE"), i.claims("m", scopes=READ)), "alg_none"),
    ("alg_hs512", lambda i: signed(i, hdr(i, alg="HS512")), "alg_not_allowed"),
    ("enc_in_jws_header", lambda i: signed(i, hdr(i, enc="A256GCM")), "jwe_not_supported"),
    ("iss_array", lambda i: signed(i, iss=["https://idp.securemcp.test"]), "invalid_claim:iss"),
    ("aud_number", lambda i: signed(i, aud=42), "invalid_claim:aud"),
    ("aud_empty_list", lambda i: signed(i, aud=[]), "invalid_claim:aud"),
    ("aud_trailing_slash", lambda i: signed(i, aud=AUDIENCE + "/"), "audience_mismatch"),
    (
        "aud_other_path",
        lambda i: signed(i, aud="https://mcp.example.test/mcp2"),
        "audience_mismatch",
    ),
    ("aud_prefix", lambda i: signed(i, aud="https://mcp.example.test"), "audience_mismatch"),
    ("exp_bool", lambda i: signed(i, exp=True), "invalid_claim:exp"),
    (
        "exp_past_leeway",
        lambda i: signed(i, iat=int(time.time()) - 600, exp=int(time.time()) - 61),
        "expired",
    ),
    ("no_client_id", lambda i: signed(i, client_id=None), "missing_claim:client_id"),
    ("no_jti", lambda i: signed(i, jti=None), "missing_claim:jti"),
    ("empty_sub", lambda i: signed(i, sub=""), "invalid_claim:sub"),
    ("scope_with_quote", lambda i: signed(i, scope='notes:read a"b'), "invalid_claim:scope"),
    ("scope_not_string", lambda i: signed(i, scope=["notes:read"]), "invalid_claim:scope"),
    ("act_not_object", lambda i: signed(i, act="agent"), "invalid_claim:act"),
    ("act_too_deep", lambda i: signed(i, act=nested_act(12)), "invalid_claim:act"),
    (
        "duplicate_header_alg",
        lambda i: i.sign(
            f'{{"alg":"RS256","typ":"at+jwt","kid":"{i.current_kid}","alg":"none"}}',
            i.claims("m", scopes=READ),
        ),
        "duplicate_key",
    ),
    ("header_is_array", lambda i: raw("[]", i.claims("m")), "malformed"),
    ("payload_is_string", lambda i: raw(hdr(i), '"claims"'), "malformed"),
    (
        "payload_infinity",
        lambda i: i.sign(hdr(i), json.dumps(i.claims("m", scopes=READ))[:-1] + ',"x":Infinity}'),
        "non_finite_number",
    ),
    ("deep_nesting", lambda i: signed(i, x=nested(40)), "too_deep"),
    ("four_segments", lambda i: signed(i) + ".e30", "malformed"),
    ("two_segments", lambda i: ".".join(signed(i).split(".")[:2]), "malformed"),
    ("empty_signature", lambda i: ".".join(signed(i).split(".")[:2]) + ".", "bad_signature"),
    ("swapped_signature", swapped_signature, "bad_signature"),
    (
        "jwe_with_zip",
        lambda i: ".".join(
            [b64url_encode(b'{"alg":"RSA-OAEP","enc":"A256GCM","zip":"DEF"}'), "a", "b", "c", "d"]
        ),
        "jwe_not_supported",
    ),
]


def nested_act(depth: int) -> dict[str, Any]:
    act: dict[str, Any] = {"sub": "agent-0"}
    for n in range(1, depth):
        act = {"sub": f"agent-{n}", "act": act}
    return act


TOKEN_CASES: list[tuple[str, Token, str]] = [
    *(
        (f"idp:{kind}", (lambda i, k=kind: i.bad_token(k, scopes=READ)), reason)
        for kind, reason in BAD_KIND_REASONS.items()
    ),
    *CRAFTED,
]


async def post(
    env: Env, headers: list[tuple[str, Any]], body: bytes = call_body(), query: str = ""
) -> httpx.Response:
    return await env.client.post(env.url + query, headers=headers, content=body)


def logged_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().rsplit(": ", 1)[-1]
        for r in caplog.records
        if r.name == "securemcp.auth" and r.getMessage().startswith("refused ")
    ]


@pytest.mark.parametrize(
    ("builder", "reason"), [c[1:] for c in TOKEN_CASES], ids=[c[0] for c in TOKEN_CASES]
)
async def test_hostile_token(
    env: Env, caplog: pytest.LogCaptureFixture, builder: Token, reason: str
) -> None:
    token = builder(env.idp)
    before = env.counter.runs
    # the verifier's own verdict
    with pytest.raises(InvalidCredential) as info:
        await env.verifier.authenticate(token)
    assert info.value.reason == reason
    # over real HTTP: 401 invalid_token, generic, with resource_metadata
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        response = await post(env, request_headers(token))
    if re.fullmatch(r"[A-Za-z0-9\-._~+/]+=*", token) is None:
        expected_reason = "malformed_authorization"  # refused at the header, before the verifier
    else:
        expected_reason = reason
    assert response.status_code == 401
    assert challenge_params(response.headers["www-authenticate"]) == {
        "error": "invalid_token",
        "error_description": "The access token is missing, invalid or expired.",
        "resource_metadata": METADATA_URL,
    }
    assert response.json() == {  # identical for every reason: nothing leaks
        "error": "invalid_token",
        "error_description": "The access token is missing, invalid or expired.",
    }
    assert logged_reasons(caplog) == [expected_reason]
    assert token not in caplog.text
    # in memory, through the pipeline
    async with connect(env.server, token) as client:
        result = await client.call_tool("read_note", {}, raise_on_error=False)
    assert result.is_error and text_of(result).startswith("invalid_token:")
    assert env.counter.runs == before


@dataclass(frozen=True)
class RequestCase:
    id: str
    status: int
    reason: str
    error: str | None = None
    challenge: bool = True
    token: Token | None = None
    authorization: tuple[bytes, ...] = ()
    extra: tuple[tuple[str, str], ...] = ()
    query: str = ""
    body: bytes = field(default_factory=call_body)
    scope: str | None = None


def valid(i: FakeIdentityProvider) -> str:
    return i.token("alice", scopes=READ)


REQUEST_CASES = [
    RequestCase("no_authorization", 401, "no_credential"),
    RequestCase("basic_scheme", 401, "unsupported_scheme", authorization=(b"Basic dXNlcjpwYXNz",)),
    RequestCase("dpop_scheme", 401, "unsupported_scheme", authorization=(b"DPoP {valid}",)),
    RequestCase("token_scheme_only", 401, "unsupported_scheme", authorization=(b"{valid}",)),
    RequestCase(
        "bearer_without_token", 401, "empty_token", "invalid_token", authorization=(b"Bearer",)
    ),
    RequestCase(
        "bearer_double_space",
        401,
        "malformed_authorization",
        "invalid_token",
        authorization=(b"Bearer  {valid}",),
    ),
    RequestCase(
        "token_with_space",
        401,
        "malformed_authorization",
        "invalid_token",
        authorization=(b"Bearer abc def",),
    ),
    RequestCase(
        "token_non_ascii",
        401,
        "malformed_authorization",
        "invalid_token",
        authorization=("Bearer tökén".encode("latin-1"),),
    ),
    RequestCase(
        "query_token_only", 400, "token_in_query", "invalid_request", query="?access_token={valid}"
    ),
    RequestCase(
        "query_and_header",
        400,
        "token_in_query",
        "invalid_request",
        token=valid,
        query="?access_token={valid}",
    ),
    RequestCase(
        "query_token_among_others",
        400,
        "token_in_query",
        "invalid_request",
        token=valid,
        query="?a=1&access_token=&b=2",
    ),
    # The same parameter name percent-encoded (RFC 3986 §2.3): still a token in the query.
    *(
        RequestCase(
            f"query_token_encoded_name:{name}",
            400,
            "token_in_query",
            "invalid_request",
            token=valid,
            query=f"?{name}={{valid}}",
        )
        for name in ("access%5Ftoken", "access%5ftoken", "%61ccess_token", "a=1;access_token")
    ),
    RequestCase(
        "two_bearer_headers",
        400,
        "multiple_authorization",
        "invalid_request",
        authorization=(b"Bearer {valid}", b"Bearer {valid}"),
    ),
    RequestCase(
        "bearer_and_basic",
        400,
        "multiple_authorization",
        "invalid_request",
        authorization=(b"Bearer {valid}", b"Basic dXNlcjpwYXNz"),
    ),
    RequestCase(
        "foreign_origin",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "https://evil.example"),),
    ),
    RequestCase(
        "null_origin",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "null"),),
    ),
    RequestCase(
        "lookalike_origin",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "https://mcp.example.test.evil.example"),),
    ),
    RequestCase(
        "downgraded_origin",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "http://mcp.example.test"),),
    ),
    RequestCase(
        "two_origins",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "https://mcp.example.test"), ("Origin", "https://evil.example")),
    ),
    RequestCase(
        "rebinding_host",
        403,
        "origin_not_allowed",
        challenge=False,
        token=valid,
        extra=(("Origin", "http://evil.example:8000"), ("Host", "evil.example:8000")),
    ),
    RequestCase(
        "missing_write_scope",
        403,
        "insufficient_scope (missing notes:write)",
        "insufficient_scope",
        token=valid,
        body=call_body(target="write_note", text="x"),
        scope="notes:read notes:write",
    ),
    RequestCase(
        "missing_resource_scope",
        403,
        "insufficient_scope (missing notes:admin)",
        "insufficient_scope",
        token=valid,
        body=call_body("resources/read", "notes://secret"),
        scope="notes:admin",
    ),
    RequestCase(
        "missing_prompt_scope",
        403,
        "insufficient_scope (missing prompts:use)",
        "insufficient_scope",
        token=valid,
        body=call_body("prompts/get", "summarize", text="x"),
        scope="prompts:use",
    ),
    RequestCase(
        "scope_case_differs",
        403,
        "insufficient_scope (missing notes:read)",
        "insufficient_scope",
        token=lambda i: i.token("alice", scopes=["NOTES:READ"]),
        scope="notes:read",
    ),
    RequestCase(
        "identity_headers_ignored",
        403,
        "insufficient_scope (missing notes:read)",
        "insufficient_scope",
        token=lambda i: i.token("alice"),
        extra=(("X-User-Id", "admin"), ("X-Scopes", "notes:read")),
        scope="notes:read",
    ),
    RequestCase(
        "meta_client_id_ignored",
        401,
        "no_credential",
        body=json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "read_note", "arguments": {}, "_meta": {"client_id": "admin"}},
            }
        ).encode(),
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
async def test_hostile_request(
    env: Env, caplog: pytest.LogCaptureFixture, case: RequestCase
) -> None:
    good = valid(env.idp)
    headers: list[tuple[str, Any]] = [
        (k, v) for k, v in request_headers(case.token(env.idp) if case.token else None)
    ]
    headers += [("Authorization", a.replace(b"{valid}", good.encode())) for a in case.authorization]
    headers += list(case.extra)
    before = env.counter.runs
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        response = await post(env, headers, case.body, case.query.replace("{valid}", good))
    assert response.status_code == case.status
    assert logged_reasons(caplog) == [case.reason]
    assert good not in caplog.text
    if not case.challenge:
        assert "www-authenticate" not in response.headers
    else:
        params = challenge_params(response.headers["www-authenticate"])
        assert params.get("error") == case.error
        assert params["resource_metadata"] == METADATA_URL
        assert params.get("scope") == case.scope
    assert env.counter.runs == before


async def test_the_table_is_big_enough() -> None:
    assert len(TOKEN_CASES) + len(REQUEST_CASES) + len(INTROSPECTION_CASES) >= 60


async def test_control_a_valid_call_runs(env: Env) -> None:
    before = env.counter.runs
    response = await post(env, request_headers(valid(env.idp)))
    assert response.status_code == 200
    assert env.counter.runs == before + 1


# --- opaque tokens (RFC 7662) and several issuers, over HTTP -----------------------------------


INTROSPECTION_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("inactive", {"active": False}, 401, "inactive"),
    ("active_string_true", {"active": "true"}, 401, "introspection_malformed"),
    ("other_audience", {"aud": "https://other.example/mcp"}, 401, "audience_mismatch"),
    ("other_issuer", {"iss": "https://evil.example"}, 401, "issuer_mismatch"),
    ("expired", {"exp": int(time.time()) - 3600}, 401, "expired"),
    ("dpop_bound_as_bearer", {"token_type": "DPoP"}, 401, "dpop_bound_token"),
    ("endpoint_down", {"_mode": "down"}, 503, "introspection_unavailable"),
    ("endpoint_garbage", {"_mode": "garbage"}, 503, "introspection_unavailable"),
]


@pytest.mark.parametrize(
    ("changes", "status", "reason"),
    [c[1:] for c in INTROSPECTION_CASES],
    ids=[c[0] for c in INTROSPECTION_CASES],
)
async def test_hostile_opaque_token(
    caplog: pytest.LogCaptureFixture, changes: dict[str, Any], status: int, reason: str
) -> None:
    endpoint = FakeIntrospection()
    verifier = IntrospectionVerifier(
        "https://as.example.test/introspect",
        endpoint.client_id,
        endpoint.client_secret,
        audience=AUDIENCE,
        issuer="https://as.example.test",
        http_client=endpoint.client(),
    )
    counter = Counter()
    server = counted_server(verifier, counter)
    token = secrets.token_urlsafe(32)
    endpoint.issue(
        token, **{k: v for k, v in changes.items() if not k.startswith("_") and k != "active"}
    )
    if "active" in changes:
        endpoint.tokens[token]["active"] = changes["active"]
    endpoint.mode = changes.get("_mode", "ok")
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
            response = await client.post(url, headers=request_headers(token), content=call_body())
    assert response.status_code == status
    assert logged_reasons(caplog) == [reason]
    if status == 401:
        assert challenge_params(response.headers["www-authenticate"])["error"] == "invalid_token"
    else:
        assert response.json()["error"] == "temporarily_unavailable"
        assert response.headers["retry-after"] == "5"
    assert token not in caplog.text
    assert counter.runs == 0


async def test_unknown_issuer_over_http(caplog: pytest.LogCaptureFixture) -> None:
    trusted = FakeIdentityProvider("https://a.example.test", audience=AUDIENCE)
    other = FakeIdentityProvider("https://b.example.test", audience=AUDIENCE)
    stranger = FakeIdentityProvider("https://evil.example.test", audience=AUDIENCE)
    counter = Counter()
    server = counted_server(MultiIssuerVerifier([trusted.verifier(), other.verifier()]), counter)
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
            refused = await client.post(
                url, headers=request_headers(stranger.token("m", scopes=READ)), content=call_body()
            )
            document = await client.get(
                url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
            )
            accepted = await client.post(
                url, headers=request_headers(other.token("b", scopes=READ)), content=call_body()
            )
    assert refused.status_code == 401
    assert logged_reasons(caplog)[0] == "unknown_issuer"
    assert document.json()["authorization_servers"] == [trusted.issuer, other.issuer]
    assert accepted.status_code == 200
    assert counter.runs == 1


async def test_allowed_origin_is_accepted() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    counter = Counter()
    server = counted_server(idp.verifier(), counter)
    set_protected_resource(server, ProtectedResource(allowed_origins=["https://app.example.test"]))
    token = idp.token("alice", scopes=READ)
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        for origin in ("https://app.example.test", "https://mcp.example.test"):
            response = await client.post(
                url, headers=request_headers(token, Origin=origin), content=call_body()
            )
            assert response.status_code == 200
        port = url.split(":")[2].split("/")[0]
        same = await client.post(
            url,
            headers=request_headers(token, Origin=f"http://127.0.0.1:{port}"),
            content=call_body(),
        )
        assert same.status_code == 200  # same origin on loopback
    assert counter.runs == 3


# --- CVE regressions (standards.md §2.2) -------------------------------------------------------


@pytest.fixture(scope="module")
def es_idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(algorithm="ES256", audience=AUDIENCE)


def openssh_public(idp: FakeIdentityProvider) -> bytes:
    return idp._current.private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


def jwk_json(idp: FakeIdentityProvider) -> bytes:
    return json.dumps(idp.jwks["keys"][0]).encode()


CVE_CASES: list[tuple[str, bool, Token, str]] = [
    # (id, uses the ES256 IdP, builder, reason)
    (
        "CVE-2024-53861-iss-substring",
        False,
        lambda i: i.bad_token("substring_issuer"),
        "issuer_mismatch",
    ),
    ("CVE-2024-53861-iss-http", False, lambda i: signed(i, iss="http"), "issuer_mismatch"),
    (
        "CVE-2026-32597-unknown-crit",
        False,
        lambda i: signed(i, hdr(i, crit=["x-bind"], **{"x-bind": 1})),
        "crit_unsupported",
    ),
    (
        "CVE-2025-59420-authlib-crit",
        False,
        lambda i: signed(i, hdr(i, crit=["exp"])),
        "crit_unsupported",
    ),
    (
        "CVE-2026-48526-jwk-as-hmac-secret",
        False,
        lambda i: hs256(i, jwk_json(i)),
        "alg_not_allowed",
    ),
    (
        "CVE-2026-48525-b64-false",
        False,
        lambda i: signed(i, hdr(i, b64=False, crit=["b64"])),
        "crit_unsupported",
    ),
    (
        "CVE-2026-48525-b64-huge",
        False,
        lambda i: raw(hdr(i, b64=False, crit=["b64"]), "x" * 2_000_000),
        "too_large",
    ),
    (
        "CVE-2022-29217-openssh-as-hmac",
        False,
        lambda i: hs256(i, openssh_public(i)),
        "alg_not_allowed",
    ),
    (
        "CVE-2024-33663-ecdsa-as-hmac",
        True,
        lambda e: hs256(e, openssh_public(e)),
        "alg_not_allowed",
    ),
    (
        "CVE-2024-33664-jwe-zip-bomb",
        False,
        lambda i: ".".join(
            [b64url_encode(b'{"alg":"dir","enc":"A128GCM","zip":"DEF"}'), "", "a", "b", "c"]
        ),
        "jwe_not_supported",
    ),
    (
        "CVE-2015-9235-rs-to-hs",
        False,
        lambda i: i.bad_token("hs256_with_public_key"),
        "alg_not_allowed",
    ),
    (
        "CVE-2018-0114-embedded-jwk",
        False,
        lambda i: i.bad_token("embedded_jwk"),
        "header_forbidden:jwk",
    ),
    (
        "CVE-2022-21449-psychic-es256",
        True,
        lambda e: e.bad_token("psychic_signature"),
        "bad_signature",
    ),
    ("CVE-2023-51774-jwe-as-jws", False, lambda i: i.bad_token("jwe_shaped"), "jwe_not_supported"),
]


@pytest.mark.parametrize(
    ("elliptic", "builder", "reason"), [c[1:] for c in CVE_CASES], ids=[c[0] for c in CVE_CASES]
)
async def test_cve_regression(
    env: Env, es_idp: FakeIdentityProvider, elliptic: bool, builder: Token, reason: str
) -> None:
    idp = es_idp if elliptic else env.idp
    verifier = es_idp.verifier() if elliptic else env.verifier
    token = builder(idp)
    started = time.perf_counter()
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(token)
    assert info.value.reason == reason
    assert time.perf_counter() - started < 0.5  # refused before any expensive work


async def test_cve_2026_48523_key_alg_pinned(env: Env) -> None:
    """A JWK that declares alg RS256 is never used for PS256 (PyJWK allow-list bypass)."""
    key = {**env.idp.jwks["keys"][0]}
    verifier = JWTVerifier(
        issuer=env.idp.issuer,
        audience=AUDIENCE,
        jwks={"keys": [key]},
        algorithms=["RS256", "PS256"],
    )
    token = signed(env.idp, hdr(env.idp, alg="PS256"))
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(token)
    assert info.value.reason == "key_alg_mismatch"


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "data:application/json,{}", "ftp://x/jwks"])
async def test_cve_2026_48522_non_http_jwks_uri(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="jwks_uri"):
        JWTVerifier(issuer="https://as.example.test", audience=AUDIENCE, jwks_uri=uri)


async def test_cve_2026_48524_jwks_error_keeps_cached_keys() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    clock = [time.time()]
    verifier = idp.verifier(jwks_cache_ttl=60, clock=lambda: clock[0])
    assert (await verifier.authenticate(idp.token("a"))).subject == "a"
    idp.jwks_outage = True
    clock[0] += 120  # the key set is stale: the refresh fails with HTTP 503
    assert (await verifier.authenticate(idp.token("b"))).subject == "b"
    assert idp.jwks_fetch_count == 2


async def test_hmac_secret_cannot_even_be_configured() -> None:
    with pytest.raises(ConfigurationError, match="HS"):
        JWTVerifier(issuer="https://as.example.test", audience=AUDIENCE, algorithms=["HS256"])
