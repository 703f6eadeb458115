"""FakeIdentityProvider: real signed tokens, public-only JWKS, metadata, rotation, loopback HTTP."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from securemcp import FastMCP
from securemcp.auth import JWTVerifier
from securemcp.errors import InvalidCredential
from securemcp.testing import connect
from securemcp.testing.idp import (
    BAD_TOKEN_KINDS,
    DEFAULT_AUDIENCE,
    DEFAULT_CLIENT_ID,
    DEFAULT_ISSUER,
    FakeIdentityProvider,
)

PRIVATE_JWK_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    head, payload, _ = token.split(".")

    def part(segment: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "==="))
        return data

    return part(head), part(payload)


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(algorithm="ES256")


# --- minting ---------------------------------------------------------------------------------


def test_token_is_an_rfc9068_access_token(idp: FakeIdentityProvider) -> None:
    before = int(time.time())
    header, claims = decode(idp.token("alice", scopes=["read", "write"], expires_in=120))

    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": idp.current_kid}
    assert claims["iss"] == DEFAULT_ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == DEFAULT_AUDIENCE
    assert claims["client_id"] == DEFAULT_CLIENT_ID
    assert claims["scope"] == "read write"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 120
    assert isinstance(claims["jti"], str)
    assert claims["jti"] != decode(idp.token("alice"))[1]["jti"]


def test_token_claims_override_and_extend(idp: FakeIdentityProvider) -> None:
    _, claims = decode(
        idp.token(
            "alice",
            audience=["https://a.example", "https://b.example"],
            tenant="acme",
            act={"sub": "agent"},
            client_id="other-client",
            jti=None,
        )
    )
    assert claims["aud"] == ["https://a.example", "https://b.example"]
    assert claims["tenant"] == "acme"
    assert claims["act"] == {"sub": "agent"}
    assert claims["client_id"] == "other-client"
    assert "jti" not in claims
    assert "scope" not in claims  # no scopes granted


def test_constructor_defaults() -> None:
    idp = FakeIdentityProvider(
        "https://as.example.test", audience="https://api.example.test", client_id="c1"
    )
    _, claims = decode(idp.token("bob"))
    assert (claims["iss"], claims["aud"], claims["client_id"]) == (
        "https://as.example.test",
        "https://api.example.test",
        "c1",
    )


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
async def test_tokens_verify_for_each_algorithm(alg: Any) -> None:
    idp = FakeIdentityProvider(algorithm=alg)
    principal = await idp.verifier().authenticate(idp.token("alice", scopes=["x"]))
    assert (principal.subject, principal.scopes) == ("alice", frozenset({"x"}))
    assert decode(idp.token("a"))[0]["alg"] == alg


def test_unknown_algorithm_refused() -> None:
    with pytest.raises(ValueError, match="unsupported algorithm"):
        FakeIdentityProvider(algorithm="HS256")  # type: ignore[arg-type]


def test_bad_token_kinds_cover_the_required_attacks() -> None:
    required = {
        "expired",
        "not_yet_valid",
        "wrong_audience",
        "wrong_issuer",
        "no_exp",
        "no_iat",
        "alg_none",
        "bad_signature",
        "signed_by_stranger",
        "unknown_kid",
        "hs256_with_public_key",
        "wrong_typ",
        "jku_header",
        "crit_header",
        "duplicate_claim",
        "nan_exp",
        "jwe_shaped",
        "oversized",
        "garbage",
    }
    assert required <= set(BAD_TOKEN_KINDS)
    assert len(BAD_TOKEN_KINDS) == len(set(BAD_TOKEN_KINDS))


def test_bad_token_unknown_kind(idp: FakeIdentityProvider) -> None:
    with pytest.raises(ValueError, match="BAD_TOKEN_KINDS"):
        idp.bad_token("slightly_off")


def test_bad_token_shapes(idp: FakeIdentityProvider) -> None:
    stranger = decode(idp.bad_token("signed_by_stranger"))[0]
    assert stranger["kid"] == idp.current_kid
    assert decode(idp.bad_token("unknown_kid"))[0]["kid"] not in idp.kids
    assert decode(idp.bad_token("alg_none"))[0]["alg"] == "none"
    assert idp.bad_token("alg_none").endswith(".")
    assert decode(idp.bad_token("hs256_with_public_key"))[0]["alg"] == "HS256"
    assert idp.bad_token("jwe_shaped").count(".") == 4
    assert len(idp.bad_token("oversized")) > 8192
    assert (
        '"sub":"admin"'
        in base64.urlsafe_b64decode(idp.bad_token("duplicate_claim").split(".")[1] + "===").decode()
    )
    assert decode(idp.bad_token("wrong_audience", audience="https://mine.example"))[1]["aud"] != (
        "https://mine.example"
    )


def test_hs256_token_is_keyed_with_the_public_key() -> None:
    """The classic confusion: HMAC over the token using the PEM public key as secret."""
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    idp = FakeIdentityProvider()
    token = idp.bad_token("hs256_with_public_key")
    signing_input, _, signature = token.rpartition(".")
    pem = idp._current.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    expected = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    assert base64.urlsafe_b64decode(signature + "=") == expected


# --- keys, JWKS and metadata ------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256", "EdDSA"])
def test_jwks_is_public_only(alg: Any) -> None:
    idp = FakeIdentityProvider(algorithm=alg)
    idp.rotate_key()
    keys = idp.jwks["keys"]
    assert [k["kid"] for k in keys] == list(idp.kids)
    for key in keys:
        assert not PRIVATE_JWK_MEMBERS & key.keys()
        assert key["alg"] == alg
        assert key["use"] == "sig"


def test_rotate_and_retire(idp: FakeIdentityProvider) -> None:
    first = idp.current_kid
    second = idp.rotate_key()

    assert second != first
    assert idp.current_kid == second
    assert idp.kids == (first, second)
    assert decode(idp.token("a"))[0]["kid"] == second

    idp.retire_key(first)
    assert idp.kids == (second,)
    with pytest.raises(ValueError, match="current signing key"):
        idp.retire_key(second)
    with pytest.raises(KeyError):
        idp.retire_key("never-existed")


async def test_asgi_endpoints(idp: FakeIdentityProvider) -> None:
    async with idp.http_client() as client:
        oidc = await client.get("/.well-known/openid-configuration")
        rfc8414 = await client.get("/.well-known/oauth-authorization-server")
        jwks = await client.get("/jwks")
        missing = await client.get("/token")

    assert oidc.status_code == rfc8414.status_code == jwks.status_code == 200
    assert oidc.json() == rfc8414.json() == idp.metadata
    assert oidc.json()["issuer"] == DEFAULT_ISSUER
    assert oidc.json()["jwks_uri"] == f"{DEFAULT_ISSUER}/jwks"
    assert jwks.json() == idp.jwks
    assert missing.status_code == 404
    assert idp.jwks_fetch_count == 1
    assert idp.metadata_fetch_count == 2


async def test_outage_and_disabled_openid_configuration(idp: FakeIdentityProvider) -> None:
    idp.jwks_outage = True
    idp.openid_configuration_enabled = False
    async with idp.http_client() as client:
        assert (await client.get("/jwks")).status_code == 503
        assert (await client.get("/.well-known/openid-configuration")).status_code == 404
        assert (await client.get("/.well-known/oauth-authorization-server")).status_code == 200


async def test_verifier_uses_discovery_in_process(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    assert isinstance(verifier, JWTVerifier)
    assert verifier.jwks_cache.jwks_uri is None  # nothing fetched yet

    await verifier.authenticate(idp.token("alice"))

    assert verifier.jwks_cache.jwks_uri == f"{DEFAULT_ISSUER}/jwks"
    assert (idp.metadata_fetch_count, idp.jwks_fetch_count) == (1, 1)


async def test_verifier_forwards_options(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier(audience="https://elsewhere.example", tenant_claim="tenant")
    assert verifier.audiences == ("https://elsewhere.example",)
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(idp.token("alice", tenant="acme"))
    assert info.value.reason == "audience_mismatch"


async def test_token_from_another_idp_with_same_issuer_refused(idp: FakeIdentityProvider) -> None:
    impostor = FakeIdentityProvider(algorithm="ES256")
    with pytest.raises(InvalidCredential) as info:
        await idp.verifier().authenticate(impostor.token("alice"))
    assert info.value.reason == "unknown_kid"


def test_issuer_none_requires_serving() -> None:
    idp = FakeIdentityProvider(None)
    with pytest.raises(RuntimeError, match="serve_http"):
        _ = idp.issuer
    with pytest.raises(RuntimeError, match="serve_http"):
        idp.token("alice")


def test_repr_shows_no_key_material(idp: FakeIdentityProvider) -> None:
    assert (
        repr(idp) == "FakeIdentityProvider(issuer='https://idp.securemcp.test', algorithm='ES256')"
    )


# --- loopback HTTP -----------------------------------------------------------------------------


@pytest.mark.http
async def test_serve_http_discovery_over_real_http() -> None:
    idp = FakeIdentityProvider(None, algorithm="EdDSA")
    async with idp.serve_http() as url:
        assert url.startswith("http://127.0.0.1:")
        assert idp.issuer == url
        verifier = idp.verifier(over_http=True)  # no http_client: real sockets

        principal = await verifier.authenticate(idp.token("alice", scopes=["s"]))

        assert principal.issuer == url
        assert verifier.jwks_cache.jwks_uri == f"{url}/jwks"
        assert (idp.metadata_fetch_count, idp.jwks_fetch_count) == (1, 1)
        async with httpx.AsyncClient() as client:
            metadata = (await client.get(f"{url}/.well-known/openid-configuration")).json()
        assert metadata["issuer"] == url

    with pytest.raises(RuntimeError):
        _ = idp.issuer  # back to "no issuer" once the server is gone
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(f"{url}/jwks")


@pytest.mark.http
async def test_serve_http_with_fixed_issuer() -> None:
    idp = FakeIdentityProvider(audience="https://mcp.example.test")
    async with idp.serve_http() as url:
        assert idp.issuer == DEFAULT_ISSUER
        verifier = idp.verifier(over_http=True)
        principal = await verifier.authenticate(idp.token("alice"))
        assert principal.subject == "alice"
        assert verifier.jwks_cache.jwks_uri == f"{url}/jwks"
        assert idp.jwks_fetch_count == 1


def test_over_http_requires_serving(idp: FakeIdentityProvider) -> None:
    with pytest.raises(RuntimeError, match="serve_http"):
        idp.verifier(over_http=True)


_SERVE_WITH_FAKE_IDP = """
import asyncio
from securemcp import FastMCP
from securemcp.testing import FakeIdentityProvider, connect
idp = FakeIdentityProvider()
server = FastMCP("x", auth=idp.verifier(), audit=False)
@server.tool
def who() -> str:
    return "ran"
async def main() -> None:
    try:
        async with connect(server, idp.token("alice")) as client:
            print((await client.call_tool("who", {})).data)
    except Exception as exc:
        print("REFUSED", exc)
asyncio.run(main())
"""


@pytest.mark.parametrize("env", ["production", "development"])
def test_a_server_trusting_the_fake_idp_refuses_production(tmp_path: Path, env: str) -> None:
    """Test identity (keys made in this process) must never serve production traffic: under
    SECUREMCP_ENV=production, outside a test, such a server refuses to start."""
    result = subprocess.run(
        [sys.executable, "-c", _SERVE_WITH_FAKE_IDP],
        env={"SECUREMCP_ENV": env, "PATH": os.environ.get("PATH", "/usr/bin")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    if env == "production":
        assert "REFUSED" in result.stdout and "refusing to start" in result.stdout
        assert "ran" not in result.stdout.split()
    else:
        assert result.stdout.split()[-1] == "ran"


async def test_inside_a_test_production_mode_still_works(
    production_mode: None, caplog: pytest.LogCaptureFixture
) -> None:
    """securemcp.testing's production_mode fixture tests production behaviour with the fake
    IdP: allowed inside pytest, with a warning."""
    idp = FakeIdentityProvider()
    server = FastMCP("x", auth=idp.verifier(), audit=False)

    @server.tool
    def who() -> str:
        return "ran"

    async with connect(server, idp.token("alice")) as client:
        assert (await client.call_tool("who", {})).data == "ran"
    assert "trusts a FakeIdentityProvider" in caplog.text
