"""JWTVerifier: RFC 9068 / RFC 8725 verification, claims → Principal, caches and JWKS handling.

Every refusal is asserted by its internal ``reason``, so a test fails if the check it targets is
removed even when a later check would still refuse the token.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from auth_support import BAD_KIND_REASONS
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from fastmcp.server.auth import AccessToken, TokenVerifier

from securemcp.auth import IdentityVerifier, JWTVerifier
from securemcp.auth import _algorithms as algorithms_module
from securemcp.auth.jwks import keys_from_jwks
from securemcp.context import Actor, Principal
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing.idp import BAD_TOKEN_KINDS, Algorithm, FakeIdentityProvider

AUDIENCE = "https://mcp.example.test/mcp"

EXPECTED_REASONS = BAD_KIND_REASONS

ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256", "EdDSA")


class FakeClock:
    """A settable clock, starting at the real time (tokens are minted with real ``iat``)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def idps() -> dict[str, FakeIdentityProvider]:
    """One IdP per algorithm, shared by the module (key generation is the slow part)."""
    return {alg: FakeIdentityProvider(algorithm=alg, audience=AUDIENCE) for alg in ALGORITHMS}


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def verifications(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records every signature verification the verifier performs."""
    calls: list[str] = []
    real = algorithms_module.verify_signature

    def counting(alg: str, jwk: Any, signing_input: bytes, signature: bytes) -> bool:
        calls.append(alg)
        return real(alg, jwk, signing_input, signature)

    monkeypatch.setattr(algorithms_module, "verify_signature", counting)
    return calls


async def reason(verifier: JWTVerifier, token: str) -> str:
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(token)
    assert info.value.reason is not None
    return info.value.reason


def header(idp: FakeIdentityProvider, **changes: Any) -> dict[str, Any]:
    base = {"alg": idp.algorithm, "typ": "at+jwt", "kid": idp.current_kid}
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- valid tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_valid_token_for_each_algorithm(
    idps: dict[str, FakeIdentityProvider], alg: str
) -> None:
    idp = idps[alg]
    verifier = idp.verifier()
    token = idp.token("alice", scopes=["notes:read", "notes:write"])

    principal = await verifier.authenticate(token)

    assert isinstance(verifier, TokenVerifier)
    assert isinstance(verifier, IdentityVerifier)
    assert principal.subject == "alice"
    assert principal.issuer == idp.issuer
    assert principal.client_id == "securemcp-test-client"
    assert principal.scopes == frozenset({"notes:read", "notes:write"})
    assert principal.verified is True
    assert principal.authenticated_by == "jwt"
    assert principal.expires_at == principal.claims["exp"]
    assert token not in repr(principal)


async def test_verify_token_maps_principal_to_access_token(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier(audience=["https://other.example/mcp", AUDIENCE])
    token = idp.token("alice", scopes=["b", "a"], act={"sub": "agent"})

    access = await verifier.verify_token(token)

    assert isinstance(access, AccessToken)
    assert access.token == token
    assert access.client_id == "securemcp-test-client"
    assert access.scopes == ["a", "b"]
    assert access.subject == "alice"
    assert access.resource == AUDIENCE
    assert isinstance(access.expires_at, int)
    assert access.claims["act"] == {"sub": "agent"}
    assert isinstance(access.claims["act"], dict)  # thawed for FastMCP


async def test_verify_token_returns_none_on_refusal(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    assert await verifier.verify_token(idp.bad_token("expired")) is None
    assert await verifier.verify_token(idp.token("alice", audience="https://x.test")) is None


async def test_verify_token_client_id_falls_back_to_subject(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier(profile="relaxed")
    token = idp.sign(header(idp, typ="JWT"), idp.claims("alice", scopes=["a"], client_id=None))

    access = await verifier.verify_token(token)

    assert access is not None
    assert access.client_id == "alice"


@pytest.mark.parametrize("typ", ["at+jwt", "AT+JWT", "application/at+jwt", "Application/AT+JWT"])
async def test_typ_compared_case_insensitively(idp: FakeIdentityProvider, typ: str) -> None:
    token = idp.sign(header(idp, typ=typ), idp.claims("alice"))
    assert (await idp.verifier().authenticate(token)).subject == "alice"


# --- every crafted bad token -----------------------------------------------------------------


def test_expected_reasons_cover_every_bad_token_kind() -> None:
    assert set(EXPECTED_REASONS) == set(BAD_TOKEN_KINDS)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("kind", BAD_TOKEN_KINDS)
async def test_bad_token_refused_with_precise_reason(
    idps: dict[str, FakeIdentityProvider], alg: str, kind: str
) -> None:
    idp = idps[alg]
    verifier = idp.verifier()
    bad = idp.bad_token(kind)

    assert await reason(verifier, bad) == EXPECTED_REASONS[kind]
    assert await verifier.verify_token(bad) is None


async def test_bad_tokens_are_otherwise_valid(idp: FakeIdentityProvider) -> None:
    """The control: the same IdP's good token passes, so refusals are due to the defect."""
    verifier = idp.verifier()
    assert (await verifier.authenticate(idp.token("mallory"))).subject == "mallory"


# --- strict parsing --------------------------------------------------------------------------


async def test_non_canonical_base64_refused(idp: FakeIdentityProvider) -> None:
    token = idp.token("alice")
    head, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    # A 256-byte RSA signature is 342 characters whose last one carries 4 unused bits.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) ^ 1]
    tampered = f"{head}.{payload}.{signature[:-1]}{last}"
    assert tampered != token
    assert base64.urlsafe_b64decode(tampered.split(".")[2] + "==") == raw  # same bytes

    assert await reason(idp.verifier(), tampered) == "malformed"


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("", "malformed"),
        ("a.b", "malformed"),
        ("a.b.c.d", "malformed"),
        ("a.b.c.d.e", "jwe_not_supported"),
        ("a+.b.c.d.e", "malformed"),  # charset is checked before the segment count
        ("a.b.c.d.e ", "malformed"),
        ("eyJhbGciOiJSUzI1NiJ9..c2ln", "malformed"),
        ("eyJ+bGci.e30.c2ln", "malformed"),
        ("eyJhbGciOiJSUzI1NiJ9.e30.c2ln=", "malformed"),
        ("ëyJhbGciOiJSUzI1NiJ9.e30.c2ln", "malformed"),
    ],
)
async def test_shape_and_charset(idp: FakeIdentityProvider, token: str, expected: str) -> None:
    assert await reason(idp.verifier(), token) == expected


@pytest.mark.parametrize(
    ("header_json", "expected"),
    [
        ('{"alg":"RS256","typ":"at+jwt","alg":"none"}', "duplicate_key"),
        ("[1,2]", "malformed"),
        ('"at+jwt"', "malformed"),
        ('{"alg":"RS256",', "malformed"),
        ('{"alg":"RS256","typ":"at+jwt","x":Infinity}', "non_finite_number"),
        ('{"alg":"RS256","typ":"at+jwt","x":-Infinity}', "non_finite_number"),
        ('{"alg":"RS256","typ":"at+jwt","x":1e400}', "non_finite_number"),
        ('{"alg":"RS256","typ":"at+jwt","x":"\\ud800"}', "malformed"),
        ('{"alg":"RS256","typ":"at+jwt","x":' + "[" * 40 + "]" * 40 + "}", "too_deep"),
        ('{"alg":"RS256","typ":"at+jwt","x":' + "[" * 3000 + "]" * 3000 + "}", "too_large"),
    ],
)
async def test_strict_header_json(
    idp: FakeIdentityProvider, header_json: str, expected: str
) -> None:
    token = idp.sign(header_json, idp.claims("alice"))
    assert await reason(idp.verifier(max_token_bytes=8192), token) == expected


async def test_deep_nesting_refused_without_recursion_error(idp: FakeIdentityProvider) -> None:
    claims = json.dumps(idp.claims("alice"))[:-1] + ',"x":' + "[" * 5000 + "]" * 5000 + "}"
    token = idp.sign(header(idp), claims)
    assert await reason(idp.verifier(max_token_bytes=65536), token) == "too_deep"


async def test_payload_must_be_an_object(idp: FakeIdentityProvider) -> None:
    assert await reason(idp.verifier(), idp.sign(header(idp), "[]")) == "malformed"


async def test_invalid_utf8_refused(idp: FakeIdentityProvider) -> None:
    token = f"{b64(json.dumps(header(idp)).encode())}.{b64(bytes([123, 34, 255, 34, 125]))}.c2ln"
    assert await reason(idp.verifier(), token) == "malformed"


# --- header policy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"alg": None}, "missing_header:alg"),
        ({"alg": 256}, "invalid_header:alg"),
        ({"alg": "NONE"}, "alg_none"),
        ({"alg": "rs256"}, "alg_not_allowed"),
        ({"alg": "HS256"}, "alg_not_allowed"),
        ({"alg": "PS256"}, "alg_not_allowed"),
        ({"enc": "A256GCM"}, "jwe_not_supported"),
        ({"typ": None}, "typ_mismatch"),
        ({"typ": "JWT"}, "typ_mismatch"),
        ({"typ": "dpop+jwt"}, "typ_mismatch"),
        ({"typ": 1}, "typ_mismatch"),
        ({"crit": []}, "crit_unsupported"),
        ({"crit": ["exp"]}, "crit_unsupported"),
        ({"x5u": "https://attacker.example/cert"}, "header_forbidden:x5u"),
        ({"x5c": ["MIIB"]}, "header_forbidden:x5c"),
        ({"jku": "https://attacker.example/jwks"}, "header_forbidden:jku"),
        ({"cty": "at+jwt"}, "nested_jwt"),
        ({"kid": 7}, "invalid_header:kid"),
        ({"kid": ""}, "invalid_header:kid"),
        ({"kid": "k" * 300}, "invalid_header:kid"),
    ],
)
async def test_header_policy(
    idp: FakeIdentityProvider, changes: dict[str, Any], expected: str
) -> None:
    verifier = idp.verifier()
    token = idp.sign(header(idp, **changes), idp.claims("alice"))
    assert await reason(verifier, token) == expected
    assert idp.jwks_fetch_count == 0  # refused before any key lookup


async def test_algorithm_outside_allowlist_refused(
    idps: dict[str, FakeIdentityProvider],
) -> None:
    es = idps["ES256"]
    verifier = es.verifier(algorithms=["RS256", "EdDSA"])
    assert await reason(verifier, es.token("alice")) == "alg_not_allowed"


async def test_other_issuer_refused_before_any_network(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    token = idp.bad_token("wrong_issuer")
    assert await reason(verifier, token) == "issuer_mismatch"
    assert idp.jwks_fetch_count == 0
    assert idp.metadata_fetch_count == 0


# --- claims -----------------------------------------------------------------------------------


async def test_leeway_on_exp_iat_nbf(idp: FakeIdentityProvider, clock: FakeClock) -> None:
    verifier = idp.verifier(leeway=60, clock=clock)
    now = int(clock.now)

    assert await verifier.authenticate(idp.token("a", exp=now - 30, iat=now - 300))
    assert await verifier.authenticate(idp.token("b", iat=now + 30))
    assert await verifier.authenticate(idp.token("c", nbf=now + 30))
    assert await reason(verifier, idp.token("d", exp=now - 61, iat=now - 300)) == "expired"
    assert await reason(verifier, idp.token("e", iat=now + 61)) == "iat_in_future"
    assert await reason(verifier, idp.token("f", nbf=now + 61)) == "nbf_in_future"


async def test_zero_leeway(idp: FakeIdentityProvider, clock: FakeClock) -> None:
    verifier = idp.verifier(leeway=0, clock=clock)
    now = int(clock.now)
    clock.now = now
    assert await reason(verifier, idp.token("a", exp=now)) == "expired"
    assert await reason(verifier, idp.token("b", iat=now + 1)) == "iat_in_future"


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"exp": True}, "invalid_claim:exp"),
        ({"iat": "0"}, "invalid_claim:iat"),
        ({"nbf": [1]}, "invalid_claim:nbf"),
        # NumericDates that cannot be a time: a clean refusal, not an OverflowError.
        ({"exp": 10**400}, "invalid_claim:exp"),
        ({"nbf": 10**400}, "invalid_claim:nbf"),
        ({"iat": -(10**400)}, "invalid_claim:iat"),
        ({"exp": 1e20}, "invalid_claim:exp"),
        ({"iss": None}, "missing_claim:iss"),
        ({"iss": ["https://idp.securemcp.test"]}, "invalid_claim:iss"),
        ({"aud": []}, "invalid_claim:aud"),
        ({"aud": [AUDIENCE, 3]}, "invalid_claim:aud"),
        ({"aud": AUDIENCE + "/"}, "audience_mismatch"),
        ({"aud": AUDIENCE[:-1]}, "audience_mismatch"),
        ({"aud": AUDIENCE.upper()}, "audience_mismatch"),
        ({"aud": ["https://a.example", "https://b.example"]}, "audience_mismatch"),
        ({"sub": ""}, "invalid_claim:sub"),
        ({"sub": 42}, "invalid_claim:sub"),
        ({"client_id": None}, "missing_claim:client_id"),
        ({"client_id": 5}, "invalid_claim:client_id"),
        ({"jti": None}, "missing_claim:jti"),
        ({"scope": ["a", "b"]}, "invalid_claim:scope"),
        ({"scope": 'a "quoted" b'}, "invalid_claim:scope"),
        ({"scope": "a\tb"}, "invalid_claim:scope"),
        ({"scp": [1]}, "invalid_claim:scp"),
        ({"act": {"iss": "x"}}, "invalid_claim:act"),
        ({"act": "agent"}, "invalid_claim:act"),
        ({"act": {"sub": "a", "client_id": 3}}, "invalid_claim:act"),
    ],
)
async def test_claim_types_and_values(
    idp: FakeIdentityProvider, claims: dict[str, Any], expected: str
) -> None:
    assert await reason(idp.verifier(), idp.token("alice", **claims)) == expected


async def test_issuer_compared_exactly(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    for iss in (idp.issuer + "/", idp.issuer.upper(), "https", idp.issuer + "x"):
        assert await reason(verifier, idp.token("alice", iss=iss)) == "issuer_mismatch"


async def test_audience_list_and_multiple_configured_audiences(
    idp: FakeIdentityProvider,
) -> None:
    verifier = idp.verifier(audience=["https://one.example/mcp", "https://two.example/mcp"])
    token = idp.token("alice", audience=["https://unrelated.example", "https://two.example/mcp"])

    access = await verifier.verify_token(token)

    assert access is not None
    assert access.resource == "https://two.example/mcp"
    assert await reason(verifier, idp.token("bob")) == "audience_mismatch"


async def test_scope_string_and_scp_list(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    by_scope = await verifier.authenticate(idp.token("a", scope="read  write Admin"))
    by_scp_list = await verifier.authenticate(idp.token("b", scp=["read", "write"]))
    by_scp_string = await verifier.authenticate(idp.token("c", scp="read write"))
    scope_wins = await verifier.authenticate(idp.token("d", scope="read", scp=["admin"]))
    none = await verifier.authenticate(idp.token("e"))

    assert by_scope.scopes == frozenset({"read", "write", "Admin"})
    assert by_scp_list.scopes == frozenset({"read", "write"})
    assert by_scp_string.scopes == frozenset({"read", "write"})
    assert scope_wins.scopes == frozenset({"read"})
    assert none.scopes == frozenset()
    assert not by_scope.missing_scopes(["read", "Admin"])
    assert by_scope.missing_scopes(["admin"]) == frozenset({"admin"})  # case-sensitive


async def test_wildcard_scope_grants_nothing(idp: FakeIdentityProvider) -> None:
    principal = await idp.verifier().authenticate(idp.token("a", scopes=["*"]))
    assert principal.missing_scopes(["admin"]) == frozenset({"admin"})


async def test_client_id_and_azp(idp: FakeIdentityProvider) -> None:
    strict = idp.verifier()
    relaxed = idp.verifier(profile="relaxed")
    explicit = idp.token("a", client_id="cli-1", azp="cli-2")
    azp_only = idp.sign(
        header(idp, typ="JWT"), idp.claims("a", scopes=["s"], client_id=None, azp="cli-2")
    )

    assert (await strict.authenticate(explicit)).client_id == "cli-1"
    assert (await relaxed.authenticate(azp_only)).client_id == "cli-2"
    assert (
        await reason(strict, idp.token("a", client_id=None, azp="cli-2"))
        == "missing_claim:client_id"
    )


async def test_tenant_claim(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier(tenant_claim="tid")

    assert (await verifier.authenticate(idp.token("a", tid="acme"))).tenant == "acme"
    assert await reason(verifier, idp.token("b")) == "missing_claim:tid"
    assert await reason(verifier, idp.token("c", tid=["acme"])) == "invalid_claim:tid"
    assert await reason(verifier, idp.token("d", tid="")) == "invalid_claim:tid"
    assert (await idp.verifier().authenticate(idp.token("e", tid="acme"))).tenant is None


async def test_actor_chain(idp: FakeIdentityProvider) -> None:
    act = {
        "sub": "agent-1",
        "client_id": "agent-app",
        "act": {"sub": "orchestrator", "iss": "https://other.example", "act": {"sub": "root"}},
    }
    principal = await idp.verifier().authenticate(idp.token("alice", act=act))

    assert principal.subject == "alice"
    assert principal.act == (
        Actor(subject="agent-1", client_id="agent-app"),
        Actor(subject="orchestrator", issuer="https://other.example"),
        Actor(subject="root"),
    )


async def test_actor_chain_depth_bounded(idp: FakeIdentityProvider) -> None:
    act: dict[str, Any] = {"sub": "a0"}
    for i in range(1, 10):
        act = {"sub": f"a{i}", "act": act}
    assert await reason(idp.verifier(), idp.token("alice", act=act)) == "invalid_claim:act"


async def test_claims_are_read_only(idp: FakeIdentityProvider) -> None:
    principal = await idp.verifier().authenticate(
        idp.token("alice", groups=["x"], profile={"name": "Alice"})
    )

    with pytest.raises(TypeError):
        principal.claims["sub"] = "admin"  # type: ignore[index]
    with pytest.raises(TypeError):
        principal.claims["profile"]["name"] = "Mallory"
    assert principal.claims["groups"] == ("x",)
    with pytest.raises(AttributeError):
        principal.subject = "admin"  # type: ignore[misc]


async def test_required_scopes(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier(required_scopes=["mcp:use"])

    assert verifier.required_scopes == ["mcp:use"]
    assert await verifier.authenticate(idp.token("a", scopes=["mcp:use", "x"]))
    assert await reason(verifier, idp.token("b", scopes=["x"])) == "missing_required_scope"
    assert await verifier.verify_token(idp.token("c")) is None


# --- profiles --------------------------------------------------------------------------------


async def test_relaxed_profile_rules(idp: FakeIdentityProvider) -> None:
    relaxed = idp.verifier(profile="relaxed")
    strict = idp.verifier()
    jwt_typed = header(idp, typ="JWT")
    untyped = header(idp, typ=None)
    ok = idp.claims("alice", scopes=["read"], jti=None, client_id=None)

    assert (await relaxed.authenticate(idp.sign(jwt_typed, ok))).scopes == {"read"}
    assert (await relaxed.authenticate(idp.sign(untyped, ok))).subject == "alice"
    assert await reason(strict, idp.sign(jwt_typed, ok)) == "typ_mismatch"
    assert await reason(strict, idp.sign(untyped, ok)) == "typ_mismatch"

    no_scope = idp.claims("alice")
    with_nonce = {**ok, "nonce": "n-0S6_WzA2Mj"}
    client_is_audience = {**ok, "azp": AUDIENCE}
    assert await reason(relaxed, idp.sign(jwt_typed, no_scope)) == "missing_claim:scope"
    assert await reason(relaxed, idp.sign(jwt_typed, with_nonce)) == "nonce_present"
    assert await reason(relaxed, idp.sign(jwt_typed, client_is_audience)) == "audience_is_client"
    assert await reason(relaxed, idp.sign(header(idp, typ="dpop+jwt"), ok)) == "typ_mismatch"


async def test_relaxed_profile_still_applies_rfc9068_to_at_jwt(idp: FakeIdentityProvider) -> None:
    relaxed = idp.verifier(profile="relaxed")
    token = idp.token("alice", jti=None)
    assert await reason(relaxed, token) == "missing_claim:jti"


# --- verified-token cache --------------------------------------------------------------------


async def test_cache_hit_skips_verification(
    idp: FakeIdentityProvider, verifications: list[str]
) -> None:
    verifier = idp.verifier()
    token = idp.token("alice", scopes=["a"])

    first = await verifier.authenticate(token)
    for _ in range(20):
        assert await verifier.authenticate(token) is first

    assert verifications == [idp.algorithm]
    assert idp.jwks_fetch_count == 1


async def test_cached_token_still_expires(
    idp: FakeIdentityProvider, clock: FakeClock, verifications: list[str]
) -> None:
    verifier = idp.verifier(clock=clock, leeway=10)
    token = idp.token("alice", expires_in=120)
    await verifier.authenticate(token)

    clock.advance(125)
    assert (await verifier.authenticate(token)).subject == "alice"  # within leeway
    clock.advance(10)

    assert await reason(verifier, token) == "expired"
    assert len(verifications) == 1  # refused from the cache
    assert await reason(verifier, token) == "expired"
    assert len(verifications) == 2  # evicted, so verified afresh and refused again


async def test_cache_distinguishes_tokens(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    alice, bob = idp.token("alice"), idp.token("bob")
    assert (await verifier.authenticate(alice)).subject == "alice"
    assert (await verifier.authenticate(bob)).subject == "bob"
    assert (await verifier.authenticate(alice)).subject == "alice"


async def test_failures_are_not_cached(idp: FakeIdentityProvider, clock: FakeClock) -> None:
    verifier = idp.verifier(clock=clock)
    token = idp.token("alice", nbf=int(clock.now) + 120)
    assert await reason(verifier, token) == "nbf_in_future"
    clock.advance(120)
    assert (await verifier.authenticate(token)).subject == "alice"


async def test_cache_is_bounded(idp: FakeIdentityProvider, verifications: list[str]) -> None:
    verifier = idp.verifier(cache_size=10)
    tokens = [idp.token(f"user-{i}") for i in range(30)]
    for token in tokens:
        await verifier.authenticate(token)
    assert len(verifications) == 30

    await verifier.authenticate(tokens[-1])  # recent: still cached
    assert len(verifications) == 30
    await verifier.authenticate(tokens[0])  # evicted: verified again
    assert len(verifications) == 31


async def test_cached_token_refused_once_its_key_leaves_the_jwks(
    idp: FakeIdentityProvider,
) -> None:
    verifier = idp.verifier()
    old_kid = idp.current_kid
    old_token = idp.token("alice")
    await verifier.authenticate(old_token)

    idp.rotate_key()
    idp.retire_key(old_kid)
    await verifier.authenticate(idp.token("bob"))  # new kid: refresh drops the old key

    assert await reason(verifier, old_token) == "unknown_kid"


# --- JWKS fetch, refresh, rotation -----------------------------------------------------------


async def test_jwks_fetched_once_for_many_tokens(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    tokens = [idp.token(f"user-{i}") for i in range(25)]

    principals = await asyncio.gather(*(verifier.authenticate(t) for t in tokens))

    assert [p.subject for p in principals] == [f"user-{i}" for i in range(25)]
    assert idp.jwks_fetch_count == 1
    assert idp.metadata_fetch_count == 1


async def test_unknown_kid_refresh_is_single_flight_and_rate_limited(
    idp: FakeIdentityProvider, clock: FakeClock
) -> None:
    verifier = idp.verifier(clock=clock, jwks_refresh_cooldown=30)
    await verifier.authenticate(idp.token("alice"))
    assert idp.jwks_fetch_count == 1

    flood = [idp.bad_token("unknown_kid") for _ in range(50)]
    results = await asyncio.gather(
        *(verifier.authenticate(t) for t in flood), return_exceptions=True
    )
    assert all(isinstance(r, InvalidCredential) and r.reason == "unknown_kid" for r in results)
    assert idp.jwks_fetch_count == 2

    for token in flood[:10]:
        assert await reason(verifier, token) == "unknown_kid"
    assert idp.jwks_fetch_count == 2  # within the cooldown

    clock.advance(31)
    assert await reason(verifier, flood[0]) == "unknown_kid"
    assert idp.jwks_fetch_count == 3


async def test_concurrent_new_kid_waits_for_the_one_refresh(idp: FakeIdentityProvider) -> None:
    verifier = idp.verifier()
    await verifier.authenticate(idp.token("alice"))
    idp.rotate_key()
    tokens = [idp.token(f"user-{i}") for i in range(20)]

    principals = await asyncio.gather(*(verifier.authenticate(t) for t in tokens))

    assert len(principals) == 20
    assert idp.jwks_fetch_count == 2


async def test_key_rotation_and_retirement(idp: FakeIdentityProvider, clock: FakeClock) -> None:
    verifier = idp.verifier(clock=clock, jwks_cache_ttl=300)
    old_kid = idp.current_kid
    await verifier.authenticate(idp.token("alice"))

    new_kid = idp.rotate_key()
    assert (await verifier.authenticate(idp.token("bob"))).subject == "bob"
    assert idp.jwks_fetch_count == 2

    idp.retire_key(old_kid)
    assert new_kid in idp.kids
    assert old_kid not in idp.kids
    carol, dave = (
        idp.sign(header(idp, kid=old_kid), idp.claims(name), key_id=old_kid)
        for name in ("carol", "dave")
    )
    # The verifier's cached key set keeps the retired key until its TTL runs out...
    assert (await verifier.authenticate(carol)).subject == "carol"
    assert idp.jwks_fetch_count == 2

    # ...then one refresh, and the retired key is refused (no second, forced refresh).
    clock.advance(301)
    assert await reason(verifier, dave) == "unknown_kid"
    assert idp.jwks_fetch_count == 3
    assert (await verifier.authenticate(idp.token("erin"))).subject == "erin"

    # That TTL refresh did not use up the forced refresh: a genuinely new key still works.
    idp.rotate_key()
    assert (await verifier.authenticate(idp.token("frank"))).subject == "frank"
    assert idp.jwks_fetch_count == 4


async def test_refresh_failure_keeps_cached_keys(
    idp: FakeIdentityProvider, clock: FakeClock
) -> None:
    verifier = idp.verifier(clock=clock, jwks_cache_ttl=60)
    await verifier.authenticate(idp.token("alice"))

    idp.jwks_outage = True
    clock.advance(61)
    assert (await verifier.authenticate(idp.token("bob"))).subject == "bob"
    assert idp.jwks_fetch_count == 2  # tried, failed, kept the keys
    assert (await verifier.authenticate(idp.token("carol"))).subject == "carol"
    assert idp.jwks_fetch_count == 2  # backing off

    idp.jwks_outage = False
    clock.advance(10)
    assert (await verifier.authenticate(idp.token("dave"))).subject == "dave"
    assert idp.jwks_fetch_count == 3


async def test_jwks_unavailable_at_start(idp: FakeIdentityProvider, clock: FakeClock) -> None:
    verifier = idp.verifier(clock=clock)
    idp.jwks_outage = True

    assert await reason(verifier, idp.token("alice")) == "jwks_unavailable"
    assert await reason(verifier, idp.token("bob")) == "jwks_unavailable"
    assert idp.jwks_fetch_count == 1

    idp.jwks_outage = False
    clock.advance(6)
    assert (await verifier.authenticate(idp.token("carol"))).subject == "carol"


async def test_no_kid_uses_the_only_fitting_key_but_refuses_ambiguity(
    idp: FakeIdentityProvider,
) -> None:
    verifier = idp.verifier()
    no_kid = header(idp, kid=None)
    assert (await verifier.authenticate(idp.sign(no_kid, idp.claims("alice")))).subject == "alice"

    idp.rotate_key()
    verifier = idp.verifier()
    token = idp.sign(header(idp, kid=None), idp.claims("bob"))
    assert await reason(verifier, token) == "ambiguous_key"


async def test_key_declared_alg_is_enforced() -> None:
    """CVE-2026-48523: an RSA key published for RS256 must not verify a PS256 token."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = private.public_key().public_numbers()
    jwk = {
        "kty": "RSA",
        "kid": "k1",
        "alg": "RS256",
        "n": b64(numbers.n.to_bytes(256, "big")),
        "e": b64(numbers.e.to_bytes(3, "big")),
    }
    verifier = JWTVerifier(
        issuer="https://as.example",
        audience=AUDIENCE,
        jwks={"keys": [jwk]},
        algorithms=["RS256", "PS256"],
    )
    now = int(time.time())
    claims = {
        "iss": "https://as.example",
        "sub": "alice",
        "aud": AUDIENCE,
        "client_id": "c",
        "jti": "j",
        "iat": now,
        "exp": now + 60,
    }

    def token(alg: str, pad: padding.AsymmetricPadding) -> str:
        hdr = {"alg": alg, "typ": "at+jwt", "kid": "k1"}
        signing_input = f"{b64(json.dumps(hdr).encode())}.{b64(json.dumps(claims).encode())}"
        sig = private.sign(signing_input.encode(), pad, hashes.SHA256())
        return f"{signing_input}.{b64(sig)}"

    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
    assert (await verifier.authenticate(token("RS256", padding.PKCS1v15()))).subject == "alice"
    assert await reason(verifier, token("PS256", pss)) == "key_alg_mismatch"

    del jwk["alg"]
    flexible = JWTVerifier(
        issuer="https://as.example",
        audience=AUDIENCE,
        jwks={"keys": [jwk]},
        algorithms=["RS256", "PS256"],
    )
    assert (await flexible.authenticate(token("PS256", pss))).subject == "alice"


@pytest.mark.parametrize("alg", ALGORITHMS)
async def test_key_type_must_fit_algorithm_even_without_declared_alg(
    idps: dict[str, FakeIdentityProvider], alg: str
) -> None:
    idp = idps[alg]
    undeclared = {
        "keys": [{k: v for k, v in key.items() if k != "alg"} for key in idp.jwks["keys"]]
    }
    verifier = JWTVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        jwks=undeclared,
        algorithms=["RS256", "PS256", "ES256", "ES384", "EdDSA"],
    )
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    same_family = {"RS256": {"RS256", "PS256"}}.get(alg, {alg})  # RSA keys serve RS* and PS*
    for other in {"RS256", "PS256", "ES256", "ES384", "EdDSA"} - same_family:
        token = idp.sign(header(idp, alg=other), idp.claims("alice"))
        assert await reason(verifier, token) == "key_alg_mismatch", other


async def test_static_jwks_uses_no_network(idp: FakeIdentityProvider) -> None:
    verifier = JWTVerifier(issuer=idp.issuer, audience=AUDIENCE, jwks=idp.jwks)
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    assert await reason(verifier, idp.bad_token("unknown_kid")) == "unknown_kid"
    assert idp.jwks_fetch_count == 0
    assert idp.metadata_fetch_count == 0


async def test_discovery_falls_back_to_rfc8414(idp: FakeIdentityProvider) -> None:
    idp.openid_configuration_enabled = False
    verifier = idp.verifier()
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    assert verifier.jwks_cache.jwks_uri == f"{idp.issuer}/jwks"


async def test_discovery_for_issuer_with_path() -> None:
    idp = FakeIdentityProvider("https://sso.example.test/realms/acme", audience=AUDIENCE)
    idp.openid_configuration_enabled = False  # RFC 8414: /.well-known/...{path}
    verifier = idp.verifier()
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    assert verifier.jwks_cache.jwks_uri == "https://sso.example.test/realms/acme/jwks"


def _mock_verifier(
    handler: Callable[[httpx.Request], httpx.Response], **kwargs: Any
) -> JWTVerifier:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return JWTVerifier(issuer="https://as.example", audience=AUDIENCE, http_client=client, **kwargs)


async def test_discovery_refuses_metadata_for_another_issuer(idp: FakeIdentityProvider) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(str(request.url))
        if request.url.path.startswith("/.well-known/"):
            return httpx.Response(
                200, json={"issuer": "https://evil.example", "jwks_uri": "https://as.example/k"}
            )
        return httpx.Response(200, json=idp.jwks)

    verifier = _mock_verifier(handler)
    token = idp.token("alice", iss="https://as.example")
    assert await reason(verifier, token) == "jwks_unavailable"
    assert requested == [
        "https://as.example/.well-known/openid-configuration",
        "https://as.example/.well-known/oauth-authorization-server",
    ]


async def test_discovery_skips_metadata_with_a_non_http_jwks_uri(
    idp: FakeIdentityProvider,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/.well-known/openid-configuration":
            return httpx.Response(
                200, json={"issuer": "https://as.example", "jwks_uri": "file:///etc/passwd"}
            )
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(
                200, json={"issuer": "https://as.example", "jwks_uri": "https://as.example/k"}
            )
        return httpx.Response(200, json=idp.jwks)

    verifier = _mock_verifier(handler)
    assert await verifier.authenticate(idp.token("alice", iss="https://as.example"))
    assert verifier.jwks_cache.jwks_uri == "https://as.example/k"


@pytest.mark.parametrize(
    "jwks_uri", ["file:///etc/passwd", "data:application/json,{}", "ftp://as.example/k"]
)
async def test_discovered_non_http_jwks_uri_never_fetched(
    idp: FakeIdentityProvider, jwks_uri: str
) -> None:
    requested: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requested.append(request.url.path)
        return httpx.Response(200, json={"issuer": "https://as.example", "jwks_uri": jwks_uri})

    verifier = _mock_verifier(handler)
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )
    assert all(path.startswith("/.well-known/") for path in requested)


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, content=b'{"keys": [' + b" " * 300_000 + b"]}"),
        httpx.Response(302, headers={"location": "https://as.example/real"}),
        httpx.Response(200, content=b'{"keys": [], "keys": []}'),
        httpx.Response(200, content=b"<html>oops</html>"),
        httpx.Response(200, json={"keys": []}),
        httpx.Response(200, json=[1, 2]),
        httpx.Response(500),
        httpx.Response(503, json={"keys": []}),
    ],
)
async def test_bad_jwks_responses(idp: FakeIdentityProvider, response: httpx.Response) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return response

    verifier = _mock_verifier(handler, jwks_uri="https://as.example/jwks")
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )


async def test_jwks_error_status_refused_even_with_a_valid_body(
    idp: FakeIdentityProvider,
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json=idp.jwks)

    verifier = _mock_verifier(handler, jwks_uri="https://as.example/jwks")
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )


async def test_declared_oversized_jwks_refused_before_reading(idp: FakeIdentityProvider) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = json.dumps(idp.jwks).encode()
        return httpx.Response(200, headers={"content-length": "999999999"}, content=body)

    verifier = _mock_verifier(handler, jwks_uri="https://as.example/jwks")
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )


async def test_streamed_jwks_larger_than_the_cap_refused(idp: FakeIdentityProvider) -> None:
    sent: list[int] = []

    async def chunks() -> Any:
        yield b'{"keys": ['
        for _ in range(100):
            sent.append(1)
            yield b" " * 8192
        yield b"]}"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=chunks())  # no content-length: chunked

    verifier = _mock_verifier(handler, jwks_uri="https://as.example/jwks")
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )
    assert len(sent) < 40  # stopped reading at the cap (256 KiB)


async def test_jwks_ignores_private_weak_and_foreign_keys(idp: FakeIdentityProvider) -> None:
    good = idp.jwks["keys"][0]
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    weak_jwk = {
        "kty": "RSA",
        "kid": "weak",
        "n": b64(weak.public_numbers().n.to_bytes(128, "big")),
        "e": "AQAB",
    }
    document = {
        "keys": [
            {**good, "kid": "with-private", "d": "AAAA"},
            {**good, "kid": "for-encryption", "use": "enc"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            weak_jwk,
            "not a key",
            good,
        ]
    }
    # A *fetched* JWKS may carry entries securemcp cannot use: they are skipped. (A static jwks=
    # with a symmetric key is a configuration error: see test_startup.py.)
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda request: httpx.Response(200, json=document))
    )
    verifier = JWTVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        jwks_uri="https://idp.securemcp.test/jwks",
        http_client=client,
    )
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    for kid in ("with-private", "for-encryption", "hmac", "weak"):
        token = idp.sign(header(idp, kid=kid), idp.claims("alice"))
        assert await reason(verifier, token) == "unknown_kid"


MALFORMED_ENTRIES: list[dict[str, Any]] = [
    {"kty": "RSA", "kid": "alg-list", "alg": ["RS256"], "n": "AQAB", "e": "AQAB"},
    {"kty": "RSA", "kid": "alg-object", "alg": {"RS256": 1}, "n": "AQAB", "e": "AQAB"},
    {"kty": "EC", "kid": "crv-list", "crv": ["P-256"], "x": "AA", "y": "AA"},
    {"kty": "OKP", "kid": "okp-crv-list", "crv": ["Ed25519"], "x": "AA"},
    {"kty": "RSA", "kid": "use-list", "use": ["sig"], "n": "AQAB", "e": "AQAB"},
    {"kty": ["RSA"], "kid": "kty-list"},
    {"kty": "RSA", "kid": ["k"], "n": "AQAB", "e": "AQAB"},
]


@pytest.mark.parametrize("bad", MALFORMED_ENTRIES, ids=lambda e: str(e["kid"]))
def test_malformed_jwks_entry_is_skipped(idp: FakeIdentityProvider, bad: dict[str, Any]) -> None:
    good = idp.jwks["keys"][0]
    for extra in (bad, {**good, **{k: v for k, v in bad.items() if k not in ("n", "e")}}):
        keys = keys_from_jwks({"keys": [extra, good]})
        assert [k.kid for k in keys] == [good["kid"]]


@pytest.mark.parametrize("bad", MALFORMED_ENTRIES, ids=lambda e: str(e["kid"]))
def test_parse_jwk_refuses_non_string_members_with_value_error(
    idp: FakeIdentityProvider, bad: dict[str, Any]
) -> None:
    good = idp.jwks["keys"][0]
    entry = {**good, **{k: v for k, v in bad.items() if k not in ("n", "e")}}
    with pytest.raises(ValueError):
        algorithms_module.parse_jwk(entry)


def test_any_exception_parsing_an_entry_skips_only_that_entry(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    import securemcp.auth.jwks as jwks_module

    real = jwks_module.parse_jwk

    def buggy(entry: Any) -> Any:
        if entry.get("kid") == "buggy":
            raise TypeError("a parser bug")
        return real(entry)

    monkeypatch.setattr(jwks_module, "parse_jwk", buggy)
    good = idp.jwks["keys"][0]
    keys = keys_from_jwks({"keys": [{**good, "kid": "buggy"}, good]})
    assert [k.kid for k in keys] == [good["kid"]]


class CountingJWKS:
    """A JWKS endpoint (over httpx.MockTransport) whose answer can be changed, counting fetches."""

    def __init__(self, idp: FakeIdentityProvider) -> None:
        self.idp = idp
        self.fetches = 0
        self.extra: list[dict[str, Any]] = []
        self.crash: Exception | None = None

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.crash is not None:
            raise self.crash
        return httpx.Response(200, json={"keys": [*self.idp.jwks["keys"], *self.extra]})

    def verifier(self, clock: FakeClock) -> JWTVerifier:
        return JWTVerifier(
            issuer=self.idp.issuer,
            audience=AUDIENCE,
            jwks_uri="https://idp.securemcp.test/jwks",
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(self.handler)),
            clock=clock,
            jwks_cache_ttl=60,
        )


@pytest.mark.parametrize("bad", MALFORMED_ENTRIES, ids=lambda e: str(e["kid"]))
async def test_one_malformed_jwks_entry_locks_nobody_out(
    idp: FakeIdentityProvider, clock: FakeClock, bad: dict[str, Any]
) -> None:
    jwks = CountingJWKS(idp)
    verifier = jwks.verifier(clock)
    token = idp.token("alice")
    assert (await verifier.authenticate(token)).subject == "alice"
    jwks.extra = [bad]  # the issuer publishes one malformed entry next to its real key
    clock.advance(61)  # TTL elapsed: the next calls refresh once
    for _ in range(10):
        assert (await verifier.authenticate(token)).subject == "alice"
        assert (await verifier.authenticate(idp.token("bob"))).subject == "bob"
    assert jwks.fetches == 2  # one refresh, not one per request


async def test_unexpected_refresh_failure_keeps_cached_keys_and_backs_off(
    idp: FakeIdentityProvider, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    jwks = CountingJWKS(idp)
    verifier = jwks.verifier(clock)
    assert (await verifier.authenticate(idp.token("alice"))).subject == "alice"
    jwks.crash = RuntimeError("jwks endpoint bug")  # not an httpx error: not a FetchError
    clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="securemcp.auth.jwks"):
        for n in range(10):
            assert (await verifier.authenticate(idp.token(f"user{n}"))).subject == f"user{n}"
    assert jwks.fetches == 2  # tried once, failed, kept the keys and backed off
    assert "failed unexpectedly (keeping cached keys): RuntimeError" in caplog.text
    assert "jwks endpoint bug" not in caplog.text
    jwks.crash = None
    clock.advance(6)  # past the backoff: refreshed again
    assert (await verifier.authenticate(idp.token("dave"))).subject == "dave"
    assert jwks.fetches == 3


async def test_timeout_fetching_jwks(idp: FakeIdentityProvider) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        return httpx.Response(200, json=idp.jwks)

    client = httpx.AsyncClient(transport=httpx.MockTransport(slow))
    verifier = JWTVerifier(
        issuer="https://as.example",
        audience=AUDIENCE,
        jwks_uri="https://as.example/jwks",
        http_client=client,
    )
    verifier.jwks_cache._timeout = 0.05
    started = time.monotonic()
    assert await reason(verifier, idp.token("alice", iss="https://as.example")) == (
        "jwks_unavailable"
    )
    assert time.monotonic() - started < 2


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"audience": ""}, "audience="),
        ({"audience": []}, "audience="),
        ({"audience": [""]}, "audience="),
        ({"audience": None}, "audience="),
        ({"issuer": ""}, "issuer="),
        ({"algorithms": ["HS256"]}, "HS"),
        ({"algorithms": ["RS256", "HS512"]}, "HS"),
        ({"algorithms": ["none"]}, "none"),
        ({"algorithms": []}, "algorithms="),
        ({"algorithms": ["RSA-OAEP"]}, "Supported"),
        ({"leeway": 301}, "leeway"),
        ({"leeway": -1}, "leeway"),
        ({"jwks_uri": "file:///etc/passwd"}, "jwks_uri"),
        ({"jwks_uri": "data:application/json,{}"}, "jwks_uri"),
        ({"jwks_uri": "https://user:pw@as.example/jwks"}, "jwks_uri"),
        ({"jwks_uri": "https://as.example/jwks", "jwks": {"keys": []}}, "not both"),
        ({"jwks": {"keys": []}}, "no usable"),
        ({"jwks": {"nokeys": 1}}, "JWKS"),
        ({"issuer": "urn:example:as"}, "jwks_uri="),
        ({"issuer": "https://as.example/?tenant=1"}, "jwks_uri="),
        ({"profile": "lenient"}, "profile"),
        ({"required_scopes": "mcp:use"}, "required_scopes"),
        ({"max_token_bytes": 10}, "max_token_bytes"),
        ({"jwks_cache_ttl": 0}, "jwks_cache_ttl"),
        ({"tenant_claim": ""}, "tenant_claim"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"issuer": "https://as.example", "audience": AUDIENCE, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        JWTVerifier(**config)
    assert message in str(info.value)


def test_audience_is_required() -> None:
    with pytest.raises(TypeError):
        JWTVerifier(issuer="https://as.example")  # type: ignore[call-arg]


def test_leeway_limit_is_inclusive() -> None:
    verifier = JWTVerifier(issuer="https://as.example", audience=AUDIENCE, leeway=300)
    assert verifier.leeway == 300


def test_repr(idp: FakeIdentityProvider) -> None:
    assert repr(idp.verifier()) == (
        f"JWTVerifier(issuer='https://idp.securemcp.test', audience=['{AUDIENCE}'], "
        "profile='strict')"
    )


def test_parser_size_cap_on_its_own() -> None:
    from securemcp.auth._compact import parse_compact

    with pytest.raises(InvalidCredential) as info:
        parse_compact("a" * 20 + ".e30.", max_bytes=10)
    assert info.value.reason == "too_large"


def test_build_principal_checks_issuer_on_its_own(idp: FakeIdentityProvider) -> None:
    from securemcp.auth.claims import ClaimRules, build_principal

    rules = ClaimRules(issuer=idp.issuer, audiences=(AUDIENCE,), leeway=60)
    claims = idp.claims("alice", iss="https://evil.example")
    with pytest.raises(InvalidCredential) as info:
        build_principal(claims, rules, now=time.time(), typed=True)
    assert info.value.reason == "issuer_mismatch"


async def test_principal_type(idp: FakeIdentityProvider) -> None:
    assert isinstance(await idp.verifier().authenticate(idp.token("a")), Principal)


# --- as a FastMCP auth= provider -------------------------------------------------------------


async def test_usable_as_fastmcp_auth_provider(idp: FakeIdentityProvider) -> None:
    from fastmcp import FastMCP
    from fastmcp.server.dependencies import get_access_token
    from fastmcp.utilities.tests import asgi_server

    mcp = FastMCP("jwt-auth-test", auth=idp.verifier())

    @mcp.tool
    def whoami() -> str:
        access = get_access_token()
        assert access is not None
        return f"{access.subject}|{access.resource}"

    good = idp.token("alice", scopes=["x"])
    async with asgi_server(mcp) as server:
        async with server.client(auth=good) as client:
            result = await client.call_tool("whoami", {})
        assert result.data == f"alice|{AUDIENCE}"

        async with server.http_client() as http:
            for bad in (idp.bad_token("wrong_audience"), idp.bad_token("alg_none"), "x"):
                response = await http.post(
                    "/mcp",
                    headers={"Authorization": f"Bearer {bad}"},
                    json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                )
                assert response.status_code == 401
                assert 'error="invalid_token"' in response.headers["www-authenticate"]
                assert "audience" not in response.text  # the reason stays internal


async def test_cached_token_refused_within_one_ttl_of_its_key_retiring_even_on_cache_hits(
    idp: FakeIdentityProvider, clock: FakeClock
) -> None:
    """Every call a cache hit (no fresh token ever forces a refresh): the retired key still
    stops being trusted once the key set's TTL runs out."""
    verifier = idp.verifier(clock=clock, jwks_cache_ttl=300)
    old_kid = idp.current_kid
    token = idp.token("alice", expires_in=3600)
    await verifier.authenticate(token)
    idp.rotate_key()
    idp.retire_key(old_kid)  # e.g. the key leaked: the issuer withdrew it

    clock.advance(200)
    assert (await verifier.authenticate(token)).subject == "alice"  # within the TTL
    assert idp.jwks_fetch_count == 1
    clock.advance(101)
    assert await reason(verifier, token) == "unknown_kid"
    assert idp.jwks_fetch_count >= 2  # the TTL refresh (plus the unknown-kid one, rate-limited)


async def test_cache_hits_survive_an_idp_outage_after_the_ttl(
    idp: FakeIdentityProvider, clock: FakeClock
) -> None:
    verifier = idp.verifier(clock=clock, jwks_cache_ttl=300)
    token = idp.token("alice", expires_in=3600)
    await verifier.authenticate(token)
    idp.jwks_outage = True
    clock.advance(301)
    assert (await verifier.authenticate(token)).subject == "alice"  # keys kept
    fetches = idp.jwks_fetch_count
    assert (await verifier.authenticate(token)).subject == "alice"
    assert idp.jwks_fetch_count == fetches  # backoff: no fetch per call during the outage


async def test_fastmcp_access_token_reuse_never_outlives_verification(
    idp: FakeIdentityProvider, clock: FakeClock
) -> None:
    """FastMCP's ``AccessToken`` view is reused per verified principal (copied per request, see
    test_token_retention.py), but every request is still verified: an expired or rotated-out
    token gets ``None`` even after cache hits."""
    verifier = idp.verifier(clock=clock, leeway=0)
    alice = idp.token("alice", scopes=["read"], expires_in=60)
    bob = idp.token("bob", scopes=["write"], expires_in=60)

    first = await verifier.verify_token(alice)
    assert first is not None and first.subject == "alice" and first.token == alice
    assert await verifier.verify_token(alice) == first  # same principal: the view is reused
    other = await verifier.verify_token(bob)
    assert other is not None and other.subject == "bob" and other.scopes == ["write"]
    assert await verifier.verify_token(alice) == first

    clock.advance(61)
    assert await verifier.verify_token(alice) is None  # expired: refused despite the reuse
    assert await verifier.verify_token(bob) is None
