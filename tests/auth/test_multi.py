"""MultiIssuerVerifier: routing by the unverified iss, each issuer with its own rules."""

from __future__ import annotations

from typing import Any, cast

import pytest
from auth_support import AUDIENCE

from securemcp.auth import JWTVerifier, MultiIssuerVerifier
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import FakeIdentityProvider


@pytest.fixture
def okta() -> FakeIdentityProvider:
    return FakeIdentityProvider("https://okta.example.test", audience=AUDIENCE)


@pytest.fixture
def entra() -> FakeIdentityProvider:
    return FakeIdentityProvider(
        "https://entra.example.test/v2.0", algorithm="ES256", audience=AUDIENCE
    )


@pytest.fixture
def multi(okta: FakeIdentityProvider, entra: FakeIdentityProvider) -> MultiIssuerVerifier:
    return MultiIssuerVerifier(
        [okta.verifier(), entra.verifier(profile="relaxed", tenant_claim="tid")]
    )


async def reason(verifier: MultiIssuerVerifier, token: str) -> str:
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(token)
    assert info.value.reason is not None
    return info.value.reason


async def test_each_issuer_with_its_own_rules(
    multi: MultiIssuerVerifier, okta: FakeIdentityProvider, entra: FakeIdentityProvider
) -> None:
    alice = await multi.authenticate(okta.token("alice", scopes=["a"]))
    assert (alice.issuer, alice.subject, alice.tenant) == (okta.issuer, "alice", None)
    typ_jwt = entra.sign(
        {"alg": "ES256", "typ": "JWT", "kid": entra.current_kid},
        entra.claims("bob", scopes=["a"], tid="contoso", client_id=None, azp="app"),
    )
    bob = await multi.authenticate(typ_jwt)
    assert (bob.issuer, bob.tenant, bob.client_id) == (entra.issuer, "contoso", "app")
    # the relaxed profile is entra's only: okta still requires at+jwt
    untyped = okta.sign({"alg": "RS256", "typ": "JWT", "kid": okta.current_kid}, okta.claims("c"))
    assert await reason(multi, untyped) == "typ_mismatch"
    # entra still requires its tenant claim
    assert await reason(multi, entra.token("d", scopes=["a"])) == "missing_claim:tid"


async def test_unknown_issuer_needs_no_network(
    multi: MultiIssuerVerifier, okta: FakeIdentityProvider, entra: FakeIdentityProvider
) -> None:
    stranger = FakeIdentityProvider("https://evil.example.test", audience=AUDIENCE)
    for _ in range(50):
        assert await reason(multi, stranger.token("mallory")) == "unknown_issuer"
    fetches = (okta.jwks_fetch_count, okta.metadata_fetch_count, entra.jwks_fetch_count)
    assert fetches == (0, 0, 0)


async def test_one_issuers_key_cannot_sign_for_another(
    multi: MultiIssuerVerifier, okta: FakeIdentityProvider, entra: FakeIdentityProvider
) -> None:
    # claims say okta, signed with entra's key and kid: okta's JWKS does not have it
    forged = entra.sign(
        {"alg": "ES256", "typ": "at+jwt", "kid": entra.current_kid},
        okta.claims("mallory"),
    )
    assert await reason(multi, forged) in {"alg_not_allowed", "unknown_kid"}


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("garbage", "malformed"),
        ("e30.e30.", "missing_claim:iss"),  # {} . {}
        ("eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOjF9.", "invalid_claim:iss"),  # iss: 1
    ],
)
async def test_unparseable_or_issuerless(
    multi: MultiIssuerVerifier, token: str, expected: str
) -> None:
    assert await reason(multi, token) == expected


async def test_cached_route_and_refusal(
    multi: MultiIssuerVerifier, okta: FakeIdentityProvider
) -> None:
    token = okta.token("alice")
    first = await multi.authenticate(token)
    assert await multi.authenticate(token) is first
    assert multi.verifier_for(okta.issuer) is not None
    assert await multi.verify_token(okta.bad_token("expired")) is None
    access = await multi.verify_token(token)
    assert access is not None and access.resource == AUDIENCE


def test_advertises_every_issuer(multi: MultiIssuerVerifier) -> None:
    assert multi.issuers == ("https://okta.example.test", "https://entra.example.test/v2.0")
    assert multi.audiences == (AUDIENCE,)
    assert "okta" in repr(multi)


@pytest.mark.parametrize(
    ("verifiers", "message"),
    [
        ([], "list of JWTVerifier"),
        ("not a list", "JWTVerifier"),
        ([object()], "JWTVerifier instances"),
    ],
)
def test_configuration_errors(verifiers: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        MultiIssuerVerifier(verifiers)


def test_duplicate_issuer_refused(okta: FakeIdentityProvider) -> None:
    with pytest.raises(ConfigurationError, match="configured twice"):
        MultiIssuerVerifier([okta.verifier(), okta.verifier()])


def test_single_verifier_not_a_list(okta: FakeIdentityProvider) -> None:
    verifier = okta.verifier()
    assert isinstance(verifier, JWTVerifier)
    with pytest.raises(ConfigurationError):
        MultiIssuerVerifier(cast(Any, verifier))
