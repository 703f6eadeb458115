"""``JWTVerifier``: strict JWT access-token verification (RFC 9068 under RFC 8725 rules).

Verification order follows the project standard (reference ``standards.md`` §2.3), cheapest and
least trusting first, so malformed input costs no cryptography and no network I/O:

1. size cap, ``[A-Za-z0-9_-.]`` charset, exactly three segments (a five-segment JWE is refused);
2. canonical base64url and strict JSON for header and payload (RFC 7515 §4: duplicate names are
   refused; ``NaN``/``Infinity`` refused) — see :mod:`securemcp.auth._compact`;
3. header policy: ``alg`` in the configured asymmetric allowlist (case-sensitive, never ``none``),
   ``typ`` ``at+jwt`` (RFC 9068 §2.1, RFC 8725 §3.11), no ``crit`` (RFC 7515 §4.1.11), no
   ``jku``/``x5u``/``jwk``/``x5c`` (RFC 8725 §2.9), no ``cty`` (nested JWTs), no ``b64``
   (RFC 7797);
4. ``iss`` equals the configured issuer (before any key lookup);
5. key selection by ``kid`` in that issuer's JWKS (:mod:`securemcp.auth.jwks`);
6. signature (:mod:`securemcp.auth._algorithms`);
7. claims and the principal (:mod:`securemcp.auth.claims`), with RFC 8707 audience binding.

Verified tokens are cached by SHA-256 of the token until they expire, so the per-call cost of a
repeated token is a dict lookup.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import httpx

from securemcp.auth import _algorithms, _compact
from securemcp.auth._algorithms import SUPPORTED_ALGORITHMS, PublicJWK
from securemcp.auth._config import (
    MAX_LEEWAY,
    check_audience,
    check_issuer_config,
    check_policy,
    check_scopes,
)
from securemcp.auth._fastmcp import VerifierBase
from securemcp.auth._http import FetchPolicy, check_fetch_url
from securemcp.auth.claims import ClaimRules, build_principal, check_issuer
from securemcp.auth.jwks import JWKSCache, keys_from_jwks
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential

__all__ = ["DEFAULT_ALGORITHMS", "JWTVerifier"]

logger = logging.getLogger("securemcp.auth.jwt")

#: Algorithms accepted unless configured otherwise.
DEFAULT_ALGORITHMS: Final = ("RS256", "ES256", "EdDSA")

_AT_JWT_TYPES: Final = frozenset({"at+jwt", "application/at+jwt"})
_UNTYPED_JWT_TYPES: Final = frozenset({"jwt", "application/jwt"})
_KEY_SOURCE_HEADERS: Final = ("jku", "x5u", "jwk", "x5c")
_JWE_HEADERS: Final = ("enc", "zip")


def _refuse(reason: str) -> InvalidCredential:
    return InvalidCredential(reason=reason)


class JWTVerifier(VerifierBase):
    """Verifies RFC 9068 JWT access tokens from one issuer for one resource server.

    Usable as FastMCP ``auth=`` (it is a ``TokenVerifier``) and as securemcp's
    :class:`~securemcp.auth.IdentityVerifier` (:meth:`authenticate`).

    Args:
        issuer: the authorization server's issuer identifier; ``iss`` must equal it exactly.
        audience: this server's canonical resource URI(s) (RFC 8707); ``aud`` must contain one.
        jwks_uri: the issuer's JWKS URL; discovered from the issuer's metadata when ``None``.
        jwks: a static JWKS document (no network); exclusive with ``jwks_uri``.
        algorithms: accepted asymmetric JWS algorithms (HMAC and ``none`` are refused).
        leeway: clock skew tolerated for ``exp``/``iat``/``nbf``, in seconds (at most 300).
        profile: ``"strict"`` requires ``typ: at+jwt``; ``"relaxed"`` also accepts ``typ: JWT``
            or no ``typ`` (then ``scope``/``scp`` is required and ``nonce`` refused).
        tenant_claim: claim holding the tenant; when set, tokens without it are refused.
        required_scopes: scopes every token must carry (also advertised by FastMCP).
        http_client: client for discovery and JWKS requests.
        jwks_cache_ttl: seconds a fetched JWKS is used before it is refreshed.
        max_token_bytes: longer tokens are refused before parsing.
        base_url: this server's base URL (forwarded to FastMCP's ``TokenVerifier``).
        jwks_refresh_cooldown: minimum seconds between refreshes forced by an unknown ``kid``.
        cache_size: most verified tokens remembered.
        clock: current POSIX time in seconds (tests inject a fake clock).
        allow_insecure_loopback: allow an ``http://`` issuer or JWKS URL on a loopback host
            (local development and tests; refused when ``SECUREMCP_ENV=production``).
        allowed_networks: private networks (CIDR) discovery and JWKS requests may reach; by
            default only public addresses are contacted (SSRF guard, :mod:`securemcp.auth._http`).
    """

    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str],
        jwks_uri: str | None = None,
        jwks: Mapping[str, Any] | None = None,
        algorithms: Sequence[str] = DEFAULT_ALGORITHMS,
        leeway: float = 60,
        profile: Literal["strict", "relaxed"] = "strict",
        tenant_claim: str | None = None,
        required_scopes: Sequence[str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        jwks_cache_ttl: float = 300,
        max_token_bytes: int = 8192,
        base_url: str | None = None,
        jwks_refresh_cooldown: float = 30,
        cache_size: int = 10_000,
        clock: Callable[[], float] = time.time,
        allow_insecure_loopback: bool = False,
        allowed_networks: Sequence[str] = (),
    ) -> None:
        self.issuer: Final = check_issuer_config(issuer)
        self.audiences: tuple[str, ...] = check_audience(audience)
        self.algorithms: Final = _check_algorithms(algorithms)
        scopes = check_scopes(required_scopes)
        _check_numbers(leeway, jwks_cache_ttl, jwks_refresh_cooldown, max_token_bytes, cache_size)
        if profile not in ("strict", "relaxed"):
            raise ConfigurationError(
                f'profile must be "strict" or "relaxed", not {profile!r}. Use "relaxed" only '
                "for issuers that do not type their access tokens at+jwt (e.g. Entra ID)."
            )
        if tenant_claim is not None and (not isinstance(tenant_claim, str) or not tenant_claim):
            raise ConfigurationError("tenant_claim must be a claim name, e.g. tenant_claim='tid'.")
        super().__init__(base_url=base_url, required_scopes=list(scopes))
        self.issuers: tuple[str, ...] = (self.issuer,)
        self.leeway: Final = float(leeway)
        self.profile: Final = profile
        policy = check_policy(allow_insecure_loopback, allowed_networks)
        self.tenant_claim: Final = tenant_claim
        self._rules = ClaimRules(
            issuer=self.issuer,
            audiences=self.audiences,
            leeway=self.leeway,
            profile=profile,
            tenant_claim=tenant_claim,
            required_scopes=frozenset(scopes),
        )
        self._max_token_bytes = max_token_bytes
        self._cache_size = cache_size
        self._clock = clock
        self._cache: dict[bytes, tuple[Principal, PublicJWK]] = {}
        self._jwks = JWKSCache(
            issuer=self.issuer,
            jwks_uri=_check_key_source(self.issuer, jwks_uri, jwks, policy),
            static_keys=_static_keys(jwks) if jwks is not None else None,
            http_client=http_client,
            ttl=float(jwks_cache_ttl),
            refresh_cooldown=float(jwks_refresh_cooldown),
            clock=clock,
            policy=policy,
        )

    def __repr__(self) -> str:
        return (
            f"JWTVerifier(issuer={self.issuer!r}, audience={list(self.audiences)!r}, "
            f"profile={self.profile!r})"
        )

    @property
    def jwks_cache(self) -> JWKSCache:
        """The issuer's key cache."""
        return self._jwks

    # --- IdentityVerifier ----------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """Verify ``token`` and return the principal it proves.

        Raises:
            InvalidCredential: the token is not a valid access token for this server;
                ``reason`` says why (internal only).
        """
        if not isinstance(token, str):
            raise _refuse("malformed")
        now = self._clock()
        cache_key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        hit = self._cache.get(cache_key)
        if hit is not None:
            principal, jwk = hit
            if (principal.expires_at or 0.0) <= now - self.leeway:
                self._cache.pop(cache_key, None)
                raise _refuse("expired")
            if self._jwks.refresh_due():
                await self._jwks.refresh_if_due()
            if self._jwks.trusts(jwk):
                return principal
            self._cache.pop(cache_key, None)  # its key left the JWKS: verify afresh
        principal, jwk = await self._verify(token, now)
        self._remember(cache_key, principal, jwk, now)
        return principal

    async def _verify(self, token: str, now: float) -> tuple[Principal, PublicJWK]:
        jws = _compact.parse_compact(token, max_bytes=self._max_token_bytes)
        alg, typed = self._check_header(jws.header)
        check_issuer(jws.payload, self.issuer)
        jwk = await self._jwks.select(jws.header.get("kid"), alg)
        if not _algorithms.verify_signature(alg, jwk, jws.signing_input, jws.signature):
            raise _refuse("bad_signature")
        principal = build_principal(jws.payload, self._rules, now=now, typed=typed)
        return principal, jwk

    def _check_header(self, header: Mapping[str, Any]) -> tuple[str, bool]:
        """Apply the header policy; return the algorithm and whether ``typ`` was ``at+jwt``."""
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _refuse("missing_header:alg" if alg is None else "invalid_header:alg")
        if alg.lower() == "none":
            raise _refuse("alg_none")
        if alg not in self.algorithms:
            raise _refuse("alg_not_allowed")
        if any(name in header for name in _JWE_HEADERS):
            raise _refuse("jwe_not_supported")
        typ = header.get("typ")
        typed = isinstance(typ, str) and typ.lower() in _AT_JWT_TYPES
        if not typed:
            untyped = typ is None or (isinstance(typ, str) and typ.lower() in _UNTYPED_JWT_TYPES)
            if not (self.profile == "relaxed" and untyped):
                raise _refuse("typ_mismatch")
        if "crit" in header:
            raise _refuse("crit_unsupported")
        for name in _KEY_SOURCE_HEADERS:
            if name in header:
                raise _refuse(f"header_forbidden:{name}")
        if "cty" in header:
            raise _refuse("nested_jwt")
        if "b64" in header:
            raise _refuse("header_forbidden:b64")
        kid = header.get("kid")
        if kid is not None and (
            not isinstance(kid, str) or not kid or len(kid) > _algorithms.MAX_KID_LENGTH
        ):
            raise _refuse("invalid_header:kid")
        return alg, typed

    def _remember(self, key: bytes, principal: Principal, jwk: PublicJWK, now: float) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            horizon = now - self.leeway
            for stale in [k for k, (p, _) in cache.items() if (p.expires_at or 0) <= horizon]:
                del cache[stale]
            target = self._cache_size * 9 // 10
            while len(cache) > target:  # still full of live tokens: drop the oldest tenth
                del cache[next(iter(cache))]
        cache[key] = (principal, jwk)


# --- configuration checks (all raise ConfigurationError saying how to fix it) ------------


def _check_algorithms(algorithms: object) -> frozenset[str]:
    values = (algorithms,) if isinstance(algorithms, str) else algorithms
    if not isinstance(values, Sequence) or not values:
        raise ConfigurationError(
            "algorithms= must list at least one asymmetric JWS algorithm, e.g. ('RS256',)."
        )
    for alg in values:
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            symmetric = isinstance(alg, str) and (alg.upper().startswith("HS") or alg == "none")
            hint = (
                "Symmetric (HS*) and unsigned (none) tokens are never accepted: an access token "
                "must be signed by the authorization server's private key."
                if symmetric
                else f"Supported: {', '.join(sorted(SUPPORTED_ALGORITHMS))}."
            )
            raise ConfigurationError(f"algorithm {alg!r} is not allowed. {hint}")
    return frozenset(values)


def _check_numbers(
    leeway: float, ttl: float, cooldown: float, max_token_bytes: int, cache_size: int
) -> None:
    if not 0 <= leeway <= MAX_LEEWAY:
        raise ConfigurationError(
            f"leeway={leeway!r} is out of range: use 0 to {MAX_LEEWAY:g} seconds (RFC 9068 §4 "
            "allows 'a few minutes' of clock skew; fix the clocks rather than widen it)."
        )
    if not ttl > 0 or not cooldown >= 0:
        raise ConfigurationError("jwks_cache_ttl must be > 0 and jwks_refresh_cooldown >= 0.")
    if not 512 <= max_token_bytes <= 1_048_576:
        raise ConfigurationError("max_token_bytes must be between 512 and 1048576.")
    if cache_size < 1:
        raise ConfigurationError("cache_size must be at least 1.")


def _check_key_source(
    issuer: str, jwks_uri: str | None, jwks: Mapping[str, Any] | None, policy: FetchPolicy
) -> str | None:
    if jwks_uri is not None and jwks is not None:
        raise ConfigurationError("Pass either jwks_uri= or jwks=, not both.")
    if jwks_uri is not None:
        try:
            return check_fetch_url(jwks_uri, policy)
        except ValueError as exc:
            raise ConfigurationError(
                f"jwks_uri {exc}. Give the https:// URL of the issuer's JWKS, or jwks= with the "
                "key set itself."
            ) from None
    if jwks is None:
        try:
            check_fetch_url(issuer, policy)
            if urlsplit(issuer).query or urlsplit(issuer).fragment:
                raise ValueError("an issuer URL has no query or fragment")
        except ValueError as exc:
            raise ConfigurationError(
                f"Cannot discover keys for issuer {issuer!r} ({exc}). Discovery needs an "
                "https:// issuer URL: pass jwks_uri= (the issuer's JWKS URL) or jwks= (a static "
                "key set)."
            ) from None
    return None


def _static_keys(jwks: Mapping[str, Any]) -> tuple[PublicJWK, ...]:
    entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if isinstance(entries, list) and any(
        isinstance(e, Mapping) and e.get("kty") == "oct" for e in entries
    ):
        raise ConfigurationError(
            "jwks= contains a symmetric (kty 'oct') key: HMAC secrets cannot be mixed with the "
            "issuer's public keys (RFC 8725 §2.1, CVE-2026-48526). Remove it; access tokens must "
            "be signed with the authorization server's private key."
        )
    try:
        keys = keys_from_jwks(jwks)
    except ValueError as exc:
        raise ConfigurationError(f"jwks= is not a JWKS document: {exc}.") from None
    if not keys:
        raise ConfigurationError(
            "jwks= contains no usable public signing key (RSA >= 2048 bits, EC P-256/384/521, "
            "Ed25519/Ed448; private keys are never accepted)."
        )
    return keys
