"""FakeIdentityProvider's RFC 8693 token endpoint: client auth, subject checks, issued tokens."""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from securemcp.errors import InvalidCredential
from securemcp.testing.idp import (
    ACCESS_TOKEN_TYPE,
    DEFAULT_ISSUER,
    TOKEN_EXCHANGE_GRANT,
    FakeIdentityProvider,
)

UPSTREAM = "https://upstream.example.test/mcp"
CLIENT = "proxy-client"


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    def part(segment: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(segment + "==="))
        return data

    head, payload, _ = token.split(".")
    return part(head), part(payload)


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(algorithm="ES256")


@pytest.fixture
def secret(idp: FakeIdentityProvider) -> str:
    return idp.register_client(CLIENT)


def form(subject_token: str, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": subject_token,
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "resource": UPSTREAM,
    }
    fields.update(extra)
    return {k: v for k, v in fields.items() if v is not None}


async def post(
    idp: FakeIdentityProvider,
    data: Any,
    headers: dict[str, str] | None = None,
    *,
    content: bytes | None = None,
) -> httpx.Response:
    async with idp.http_client() as client:
        if content is not None:
            return await client.post(
                "/token",
                content=content,
                headers={"Content-Type": "application/x-www-form-urlencoded", **(headers or {})},
            )
        return await client.post("/token", data=data, headers=headers)


async def exchange(idp: FakeIdentityProvider, secret: str, **fields: Any) -> httpx.Response:
    subject = fields.pop("subject_token", None) or idp.token("alice", scopes=["read", "write"])
    return await post(idp, form(subject, **fields), basic(CLIENT, secret))


def error_of(response: httpx.Response) -> str:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error", "error_description"}
    assert response.headers["cache-control"] == "no-store"
    error: str = body["error"]
    return error


# --- registration and metadata ------------------------------------------------------------------


def test_metadata_advertises_token_exchange(idp: FakeIdentityProvider) -> None:
    metadata = idp.metadata
    assert TOKEN_EXCHANGE_GRANT in metadata["grant_types_supported"]
    assert {"authorization_code", "client_credentials"} <= set(metadata["grant_types_supported"])
    assert "client_secret_basic" in metadata["token_endpoint_auth_methods_supported"]
    assert metadata["token_endpoint"] == f"{DEFAULT_ISSUER}/token"


def test_register_client(idp: FakeIdentityProvider) -> None:
    generated = idp.register_client("a")
    assert len(generated) >= 32
    assert idp.register_client("b") != generated
    assert idp.register_client("c", "chosen") == "chosen"
    with pytest.raises(ValueError, match="client_id"):
        idp.register_client("")
    with pytest.raises(ValueError, match="secret"):
        idp.register_client("d", "")


# --- the happy path -----------------------------------------------------------------------------


async def test_exchange_issues_an_access_token_for_the_target(
    idp: FakeIdentityProvider, secret: str
) -> None:
    subject = idp.token("alice", scopes=["read", "write"], tenant="acme")
    response = await post(idp, form(subject), basic(CLIENT, secret))

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "issued_token_type", "token_type", "expires_in"}
    assert body["issued_token_type"] == ACCESS_TOKEN_TYPE
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 300
    token = body["access_token"]
    assert token != subject
    header, claims = decode(token)
    _, subject_claims = decode(subject)
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": idp.current_kid}
    assert claims["iss"] == DEFAULT_ISSUER
    assert claims["sub"] == "alice"
    assert claims["aud"] == UPSTREAM
    assert claims["client_id"] == CLIENT
    assert claims["act"] == {"sub": CLIENT}
    assert claims["scope"] == "read write"
    assert claims["tenant"] == "acme"
    assert claims["exp"] - claims["iat"] == 300
    assert claims["jti"] != subject_claims["jti"]

    principal = await idp.verifier(audience=UPSTREAM, tenant_claim="tenant").authenticate(token)
    assert (principal.subject, principal.tenant, principal.client_id) == ("alice", "acme", CLIENT)
    assert [a.subject for a in principal.act] == [CLIENT]
    assert idp.token_exchange_count == 1


async def test_audience_and_multiple_targets(idp: FakeIdentityProvider, secret: str) -> None:
    only_audience = await exchange(idp, secret, resource=None, audience="vendor-api")
    assert decode(only_audience.json()["access_token"])[1]["aud"] == "vendor-api"

    both = await exchange(
        idp, secret, resource=[UPSTREAM, "https://two.example/mcp"], audience="vendor-api"
    )
    assert decode(both.json()["access_token"])[1]["aud"] == [
        UPSTREAM,
        "https://two.example/mcp",
        "vendor-api",
    ]


async def test_scope_narrowing_and_escalation(idp: FakeIdentityProvider, secret: str) -> None:
    narrowed = await exchange(idp, secret, scope="read")
    assert decode(narrowed.json()["access_token"])[1]["scope"] == "read"

    escalated = await exchange(idp, secret, scope="read admin")
    assert escalated.status_code == 400
    assert error_of(escalated) == "invalid_scope"

    unscoped = idp.token("alice")
    no_scope = await exchange(idp, secret, subject_token=unscoped)
    assert "scope" not in decode(no_scope.json()["access_token"])[1]
    assert error_of(await exchange(idp, secret, subject_token=unscoped, scope="read")) == (
        "invalid_scope"
    )


async def test_actor_chain_nests(idp: FakeIdentityProvider, secret: str) -> None:
    first = await exchange(idp, secret, subject_token=idp.token("alice", act={"sub": "agent"}))
    first_token = first.json()["access_token"]
    assert decode(first_token)[1]["act"] == {"sub": CLIENT, "act": {"sub": "agent"}}

    second_secret = idp.register_client("second-hop")
    again = await post(
        idp,
        form(first_token, resource="https://next.example/mcp"),
        basic("second-hop", second_secret),
    )
    assert decode(again.json()["access_token"])[1]["act"] == {
        "sub": "second-hop",
        "act": {"sub": CLIENT, "act": {"sub": "agent"}},
    }


async def test_may_act_is_honoured(idp: FakeIdentityProvider, secret: str) -> None:
    allowed = idp.token("alice", may_act={"sub": CLIENT})
    assert (await exchange(idp, secret, subject_token=allowed)).status_code == 200
    refused = idp.token("alice", may_act={"sub": "someone-else"})
    assert error_of(await exchange(idp, secret, subject_token=refused)) == "invalid_grant"


async def test_any_subject_audience_is_accepted(idp: FakeIdentityProvider, secret: str) -> None:
    subject = idp.bad_token("wrong_audience", "alice")  # valid, just for another resource
    assert (await exchange(idp, secret, subject_token=subject)).status_code == 200


async def test_client_secret_basic_urlencoding(idp: FakeIdentityProvider) -> None:
    secret = idp.register_client("proxy:client é", "p@ss:w/rd +&")
    subject = idp.token("alice")
    response = await post(idp, form(subject), basic("proxy:client é", "p@ss:w/rd +&"))
    assert response.status_code == 200, response.text
    assert decode(response.json()["access_token"])[1]["act"] == {"sub": "proxy:client é"}
    assert secret == "p@ss:w/rd +&"


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer whatever"},
        {"Authorization": "Basic !!!not-base64"},
        {"Authorization": "Basic " + base64.b64encode(b"no-colon").decode()},
        basic(CLIENT, "wrong-secret"),
        basic("unknown-client", "x"),
    ],
)
async def test_client_authentication_is_required(
    idp: FakeIdentityProvider, secret: str, headers: dict[str, str]
) -> None:
    response = await post(idp, form(idp.token("alice")), headers)
    assert response.status_code == 401
    assert error_of(response) == "invalid_client"
    assert response.headers["www-authenticate"].startswith("Basic")


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "not_yet_valid",
        "future_iat",
        "wrong_issuer",
        "no_exp",
        "no_iat",
        "no_sub",
        "string_exp",
        "alg_none",
        "alg_none_case",
        "bad_signature",
        "psychic_signature",
        "signed_by_stranger",
        "unknown_kid",
        "alg_key_mismatch",
        "hs256_with_public_key",
        "wrong_typ",
        "jku_header",
        "embedded_jwk",
        "crit_header",
        "nested_jwt",
        "duplicate_claim",
        "nan_exp",
        "jwe_shaped",
        "padded_base64",
        "garbage",
    ],
)
async def test_invalid_subject_tokens_are_invalid_grant(
    idp: FakeIdentityProvider, secret: str, kind: str
) -> None:
    response = await exchange(idp, secret, subject_token=idp.bad_token(kind, "alice"))
    assert response.status_code == 400
    assert error_of(response) == "invalid_grant"


async def test_retired_key_and_foreign_idp_are_invalid_grant(
    idp: FakeIdentityProvider, secret: str
) -> None:
    old = idp.token("alice")
    old_kid = idp.current_kid
    idp.rotate_key()
    assert (await exchange(idp, secret, subject_token=old)).status_code == 200  # still published
    idp.retire_key(old_kid)
    assert error_of(await exchange(idp, secret, subject_token=old)) == "invalid_grant"

    impostor = FakeIdentityProvider(algorithm="ES256")  # same issuer name, other keys
    forged = impostor.token("alice")
    assert error_of(await exchange(idp, secret, subject_token=forged)) == "invalid_grant"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"subject_token_type": "urn:ietf:params:oauth:token-type:id_token"}, "invalid_request"),
        ({"subject_token_type": None}, "invalid_request"),
        (
            {"requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            "invalid_request",
        ),
        ({"actor_token": "x", "actor_token_type": ACCESS_TOKEN_TYPE}, "invalid_request"),
        ({"subject_token": ""}, "invalid_request"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": None}, "invalid_request"),
        ({"resource": None}, "invalid_target"),
        ({"resource": "relative/path"}, "invalid_target"),
        ({"resource": "https://api.example/mcp#frag"}, "invalid_target"),
        ({"resource": None, "audience": ""}, "invalid_target"),
        ({"scope": ""}, "invalid_scope"),
    ],
)
async def test_request_errors(
    idp: FakeIdentityProvider, secret: str, fields: dict[str, Any], expected: str
) -> None:
    subject = idp.token("alice", scopes=["read"])
    data = form(subject)
    for name, value in fields.items():
        if value is None:
            data.pop(name, None)
        else:
            data[name] = value
    response = await post(idp, data, basic(CLIENT, secret))
    assert response.status_code == 400
    assert error_of(response) == expected


async def test_repeated_and_malformed_parameters(idp: FakeIdentityProvider, secret: str) -> None:
    subject = idp.token("alice")
    data = form(subject)
    data["subject_token"] = [subject, subject]
    repeated = await post(idp, data, basic(CLIENT, secret))
    assert error_of(repeated) == "invalid_request"
    malformed = await post(idp, None, basic(CLIENT, secret), content=b"grant_type=x&&subject_token")
    assert error_of(malformed) == "invalid_request"
    not_utf8 = await post(idp, None, basic(CLIENT, secret), content=b"grant_type=\xff")
    assert error_of(not_utf8) == "invalid_request"


# --- counters, outage, recording ----------------------------------------------------------------


async def test_outage_count_and_last_exchange(idp: FakeIdentityProvider, secret: str) -> None:
    assert idp.last_exchange is None
    subject = idp.token("alice", scopes=["read"])
    idp.token_exchange_outage = True
    down = await post(idp, form(subject, scope="read"), basic(CLIENT, secret))
    assert down.status_code == 503
    assert error_of(down) == "temporarily_unavailable"
    assert idp.token_exchange_count == 1
    assert idp.last_exchange == {
        "grant_type": TOKEN_EXCHANGE_GRANT,
        "subject_token": "***",
        "subject_token_type": ACCESS_TOKEN_TYPE,
        "resource": UPSTREAM,
        "scope": "read",
        "client_id": CLIENT,
    }
    assert subject not in repr(idp.last_exchange)

    idp.token_exchange_outage = False
    await post(idp, form(subject), basic(CLIENT, "wrong"))  # counted, client not recorded
    assert idp.token_exchange_count == 2
    assert "client_id" not in idp.last_exchange
    await post(idp, form(subject, grant_type="client_credentials"), basic(CLIENT, secret))
    assert idp.token_exchange_count == 2  # only token-exchange requests are counted


async def test_other_methods_and_paths(idp: FakeIdentityProvider) -> None:
    async with idp.http_client() as client:
        assert (await client.get("/token")).status_code == 404
        assert (await client.post("/jwks")).status_code == 405
        assert (await client.post("/.well-known/openid-configuration")).status_code == 405
    assert idp.jwks_fetch_count == 0
    assert idp.metadata_fetch_count == 0


async def test_exchanged_token_lifetime_is_configurable(
    idp: FakeIdentityProvider, secret: str
) -> None:
    idp.token_exchange_expires_in = 60
    body = (await exchange(idp, secret)).json()
    assert body["expires_in"] == 60
    claims = decode(body["access_token"])[1]
    assert claims["exp"] - claims["iat"] == 60


# --- real loopback HTTP -------------------------------------------------------------------------


@pytest.mark.http
async def test_token_endpoint_over_loopback() -> None:
    idp = FakeIdentityProvider(None, algorithm="RS256")
    secret = idp.register_client(CLIENT)
    async with idp.serve_http() as url:
        assert idp.metadata["token_endpoint"] == f"{url}/token"
        subject = idp.token("alice", scopes=["read"])
        async with httpx.AsyncClient() as client:
            response = await client.post(
                f"{url}/token", data=form(subject), headers=basic(CLIENT, secret)
            )
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        principal = await idp.verifier(audience=UPSTREAM, over_http=True).authenticate(token)
        assert (principal.subject, principal.issuer) == ("alice", url)
        with pytest.raises(InvalidCredential):
            await idp.verifier(audience=UPSTREAM, over_http=True).authenticate(subject)
