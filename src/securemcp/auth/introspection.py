"""``IntrospectionVerifier``: opaque access tokens through OAuth 2.0 Token Introspection (RFC 7662).

The resource server asks the authorization server about each token it has not seen recently:

* it **authenticates** to the introspection endpoint (RFC 7662 §2.1, "to prevent token scanning
  attacks"), with ``client_secret_basic`` (RFC 6749 §2.3.1: form-urlencoded, then Basic);
* the token is active only when ``active`` is exactly JSON ``true`` (RFC 7662 §2.2);
* the response is still checked like a JWT's claims: ``aud`` must contain this server's
  canonical resource URI (RFC 8707, MCP "Token Handling"), ``iss`` must equal the configured
  issuer, ``exp`` is required by default and honoured with ``nbf``/``iat``, scopes are exact
  RFC 6749 §3.3 tokens, and a DPoP-bound token (``token_type: DPoP`` or ``cnf``) is refused as a
  bearer token (RFC 9449 §7.2);
* results are cached by SHA-256 of the token for at most ``cache_ttl`` seconds and never past the
  token's ``exp`` (RFC 7662 §4); concurrent requests for one token share one introspection call;
* an endpoint that is down, slow, oversized or malformed means **refusal**
  (``introspection_unavailable``), never acceptance, and is never cached.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import quote, urlsplit

import httpx

from securemcp._singleflight import SingleFlight
from securemcp.auth._config import MAX_LEEWAY, check_audience, check_policy, check_scopes
from securemcp.auth._env import is_production
from securemcp.auth._fastmcp import VerifierBase
from securemcp.auth._http import (
    DEFAULT_TIMEOUT,
    FetchError,
    check_fetch_url,
    post_form_json,
)
from securemcp.auth.claims import (
    actor_chain,
    audiences_of,
    number_claim,
    scopes_of,
    string_claim,
)
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential

__all__ = ["IntrospectionVerifier"]

logger = logging.getLogger("securemcp.auth.introspection")

#: Largest introspection response accepted.
MAX_RESPONSE_BYTES: Final = 64 * 1024
#: Longest a positive result may be configured to be cached, in seconds.
MAX_CACHE_TTL: Final = 3600.0
#: Seconds an ``active: false`` answer is remembered (stops floods of one dead token).
NEGATIVE_CACHE_TTL: Final = 5.0

_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1 b64token


def _refuse(reason: str) -> InvalidCredential:
    return InvalidCredential(reason=reason)


def _basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1 ``client_secret_basic``: urlencode each part, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class IntrospectionVerifier(VerifierBase):
    """Verifies opaque access tokens with the authorization server's introspection endpoint.

    Usable as FastMCP ``auth=`` and as securemcp's :class:`~securemcp.auth.IdentityVerifier`.

    Args:
        introspection_url: the RFC 7662 endpoint (``https://``).
        client_id: this resource server's client id at the authorization server.
        client_secret: its secret (sent with ``client_secret_basic``; never logged).
        audience: this server's canonical resource URI(s); ``aud`` must contain one.
        issuer: the authorization server's issuer; when set, ``iss`` must equal it (and is
            advertised in RFC 9728 metadata).
        required_scopes: scopes every token must carry.
        tenant_claim: response member holding the tenant; when set, tokens without it are refused.
        leeway: clock skew tolerated for ``exp``/``nbf``/``iat``, in seconds (at most 300).
        require_exp: refuse active tokens whose response has no ``exp`` (default).
        cache_ttl: longest a positive result is reused, in seconds (never past ``exp``;
            0 disables caching).
        cache_size: most results remembered.
        timeout: total time allowed for one introspection request, in seconds.
        max_token_bytes: longer tokens are refused without a request.
        http_client: client for introspection requests (default: an SSRF-guarded client).
        allow_insecure_loopback: allow an ``http://`` endpoint on a loopback host (development).
        allowed_networks: private networks (CIDR) the endpoint may be on.
        base_url: this server's base URL (forwarded to FastMCP's ``TokenVerifier``).
        clock: current POSIX time in seconds.
    """

    def __init__(
        self,
        introspection_url: str,
        client_id: str,
        client_secret: str,
        *,
        audience: str | Sequence[str],
        issuer: str | None = None,
        required_scopes: Sequence[str] | None = None,
        tenant_claim: str | None = None,
        leeway: float = 60,
        require_exp: bool = True,
        cache_ttl: float = 60,
        cache_size: int = 10_000,
        timeout: float = DEFAULT_TIMEOUT,
        max_token_bytes: int = 8192,
        http_client: httpx.AsyncClient | None = None,
        allow_insecure_loopback: bool = False,
        allowed_networks: Sequence[str] = (),
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        policy = check_policy(allow_insecure_loopback, allowed_networks)
        try:
            self.introspection_url: Final = check_fetch_url(introspection_url, policy)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"introspection_url {exc}. Give the authorization server's RFC 7662 "
                "introspection endpoint, e.g. 'https://login.example.com/oauth2/introspect'."
            ) from None
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError(
                "IntrospectionVerifier needs client_id= and client_secret=: the credentials this "
                "server uses to authenticate to the introspection endpoint (RFC 7662 §2.1)."
            )
        if not isinstance(client_secret, str) or not client_secret:
            raise ConfigurationError(
                "IntrospectionVerifier needs a non-empty client_secret= (RFC 7662 §2.1: the "
                "endpoint must not answer unauthenticated callers)."
            )
        if issuer is not None and (not isinstance(issuer, str) or not issuer.strip()):
            raise ConfigurationError("issuer= must be the authorization server's issuer URL.")
        if not 0 <= leeway <= MAX_LEEWAY:
            raise ConfigurationError(f"leeway={leeway!r} is out of range: use 0 to 300 seconds.")
        if not 0 <= cache_ttl <= MAX_CACHE_TTL:
            raise ConfigurationError(
                f"cache_ttl={cache_ttl!r} is out of range: use 0 to {MAX_CACHE_TTL:g} seconds "
                "(a longer cache delays revocation)."
            )
        if not 0 < timeout <= 60 or cache_size < 1 or not 512 <= max_token_bytes <= 1_048_576:
            raise ConfigurationError(
                "timeout must be in (0, 60] s, cache_size >= 1, max_token_bytes in [512, 1048576]."
            )
        if tenant_claim is not None and (not isinstance(tenant_claim, str) or not tenant_claim):
            raise ConfigurationError("tenant_claim must be a claim name, e.g. tenant_claim='tid'.")
        scopes = check_scopes(required_scopes)
        super().__init__(base_url=base_url, required_scopes=list(scopes))
        self.audiences = check_audience(audience)
        self.issuer: Final = issuer
        self.issuers = (issuer,) if issuer is not None else ()
        self.leeway: Final = float(leeway)
        self.require_exp: Final = require_exp
        self.cache_ttl: Final = float(cache_ttl)
        self.tenant_claim: Final = tenant_claim
        self._required_scopes = frozenset(scopes)
        self._client_id = client_id
        self._authorization = _basic(client_id, client_secret)
        self._policy = policy
        self._timeout = float(timeout)
        self._max_token_bytes = max_token_bytes
        self._http_client = http_client
        self._clock = clock
        self._cache_size = cache_size
        self._cache: dict[bytes, tuple[Principal, float]] = {}
        self._inactive: dict[bytes, float] = {}
        self._inflight: SingleFlight[bytes, Principal] = SingleFlight()
        if is_production() and urlsplit(self.introspection_url).scheme != "https":
            raise ConfigurationError(  # pragma: no cover - check_fetch_url already refuses
                "introspection_url must be https in production."
            )

    def __repr__(self) -> str:
        return (
            f"IntrospectionVerifier({self.introspection_url!r}, client_id={self._client_id!r}, "
            f"audience={list(self.audiences)!r}, issuer={self.issuer!r})"
        )

    # --- IdentityVerifier ----------------------------------------------------------------

    async def authenticate(self, token: str) -> Principal:
        """Introspect ``token`` (or reuse a fresh cached answer) and return its principal.

        Raises:
            InvalidCredential: inactive, not for this server, expired, or the endpoint could not
                answer (``introspection_unavailable``); ``reason`` says which (internal only).
        """
        if not isinstance(token, str) or not token:
            raise _refuse("malformed")
        if len(token) > self._max_token_bytes:
            raise _refuse("too_large")
        if _B64TOKEN.fullmatch(token) is None:
            raise _refuse("malformed")
        now = self._clock()
        key = hashlib.sha256(token.encode("ascii")).digest()
        hit = self._cache.get(key)
        if hit is not None:
            principal, valid_until = hit
            if now < valid_until:
                return principal
            del self._cache[key]
        dead_until = self._inactive.get(key)
        if dead_until is not None:
            if now < dead_until:
                raise _refuse("inactive")
            del self._inactive[key]
        return await self._inflight.run(key, lambda: self._introspect(token, key))

    async def _introspect(self, token: str, key: bytes) -> Principal:
        try:
            response = await post_form_json(
                self._http_client,
                self.introspection_url,
                {"token": token, "token_type_hint": "access_token"},
                headers={"Authorization": self._authorization},
                policy=self._policy,
                max_bytes=MAX_RESPONSE_BYTES,
                time_limit=self._timeout,
            )
        except FetchError as exc:
            logger.warning("token introspection failed (refusing the token): %s", exc)
            raise _refuse("introspection_unavailable") from None
        now = self._clock()
        active = response.get("active")
        if active is not True:
            if active is False:
                self._remember_inactive(key, now)
                raise _refuse("inactive")
            raise _refuse("introspection_malformed")  # missing, "true", 1, ...
        principal = self._principal(response, now)
        if self.cache_ttl > 0:
            valid_until = now + self.cache_ttl
            if principal.expires_at is not None:
                valid_until = min(valid_until, principal.expires_at)
            self._remember(key, principal, valid_until, now)
        return principal

    def _principal(self, response: Mapping[str, Any], now: float) -> Principal:
        """Check an active introspection response like a JWT's claims; build the principal."""
        exp = number_claim(response, "exp")
        nbf = number_claim(response, "nbf")
        iat = number_claim(response, "iat")
        if exp is None and self.require_exp:
            raise _refuse("missing_claim:exp")
        if exp is not None and exp <= now - self.leeway:
            raise _refuse("expired")
        if nbf is not None and nbf > now + self.leeway:
            raise _refuse("nbf_in_future")
        if iat is not None and iat > now + self.leeway:
            raise _refuse("iat_in_future")
        issuer = string_claim(response, "iss", required=self.issuer is not None)
        if self.issuer is not None and issuer != self.issuer:
            raise _refuse("issuer_mismatch")
        audiences = audiences_of(response)
        if not any(a in audiences for a in self.audiences):
            raise _refuse("audience_mismatch")
        subject = string_claim(response, "sub", required=True)
        assert subject is not None
        token_type = response.get("token_type")
        if "cnf" in response or (isinstance(token_type, str) and token_type.lower() == "dpop"):
            raise _refuse("dpop_bound_token")  # RFC 9449 §7.2: not usable as a bearer token
        client_id = string_claim(response, "client_id", required=False)
        granted = scopes_of(response) or frozenset()
        if not self._required_scopes <= granted:
            raise _refuse("missing_required_scope")
        tenant = None
        if self.tenant_claim is not None:
            tenant = string_claim(response, self.tenant_claim, required=True)
        claims = {k: v for k, v in response.items() if k != "active"}
        return Principal(
            subject=subject,
            issuer=issuer or self.issuer or self.introspection_url,
            client_id=client_id,
            scopes=granted,
            tenant=tenant,
            claims=claims,
            act=actor_chain(response),
            verified=True,
            authenticated_by="introspection",
            expires_at=exp,
        )

    def _remember(self, key: bytes, principal: Principal, valid_until: float, now: float) -> None:
        cache = self._cache
        if len(cache) >= self._cache_size:
            for stale in [k for k, (_, until) in cache.items() if until <= now]:
                del cache[stale]
            while len(cache) >= self._cache_size:
                del cache[next(iter(cache))]
        cache[key] = (principal, valid_until)

    def _remember_inactive(self, key: bytes, now: float) -> None:
        if len(self._inactive) >= self._cache_size:
            self._inactive.clear()
        self._inactive[key] = now + NEGATIVE_CACHE_TTL
