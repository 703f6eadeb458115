"""The issuer's signing keys: discovery, JWKS fetch and cache (RFC 7517, RFC 8414, OIDC Discovery).

Keys are only ever taken from the configured issuer's own JWKS (RFC 8725 §3.8), never from token
headers (``jku``, ``x5u``, ``jwk`` and ``x5c`` are refused before this module is reached).

* ``jwks_uri`` is discovered from ``{issuer}/.well-known/openid-configuration`` (OpenID Connect
  Discovery 1.0 §4), falling back to ``/.well-known/oauth-authorization-server{path}``
  (RFC 8414 §3); the metadata's ``issuer`` must equal the configured issuer exactly (RFC 8414 §3.3).
* The key set is cached for a TTL. An unknown ``kid`` triggers at most one refresh per cooldown,
  and concurrent callers share one in-flight fetch (single flight), so a flood of tokens with
  random ``kid`` values cannot turn into a flood of requests to the IdP.
* A failed refresh (whatever the failure, including an unexpected exception) keeps the cached keys
  (CVE-2026-48524) and is not retried for a short backoff.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from securemcp.auth._algorithms import (
    MAX_KID_LENGTH,
    PublicJWK,
    key_fits_algorithm,
    parse_jwk,
)
from securemcp.auth._http import (
    DEFAULT_MAX_BYTES,
    DEFAULT_POLICY,
    DEFAULT_TIMEOUT,
    FetchError,
    FetchPolicy,
    check_fetch_url,
    fetch_json,
)
from securemcp.errors import InvalidCredential

__all__ = ["JWKSCache", "discovery_urls", "keys_from_jwks"]

logger = logging.getLogger("securemcp.auth.jwks")

#: Longest wait before retrying after a failed fetch, in seconds.
MAX_FAILURE_BACKOFF: Final = 5.0


def discovery_urls(issuer: str) -> tuple[str, ...]:
    """Metadata URLs for ``issuer``: OIDC Discovery first, then RFC 8414 (path inserted)."""
    parts = urlsplit(issuer)
    origin = f"{parts.scheme}://{parts.netloc}"
    path = parts.path.rstrip("/")
    oidc = f"{origin}{path}/.well-known/openid-configuration"
    rfc8414 = f"{origin}/.well-known/oauth-authorization-server{path}"
    return (oidc, rfc8414)


def keys_from_jwks(document: Mapping[str, Any]) -> tuple[PublicJWK, ...]:
    """The usable public keys of a JWKS document (RFC 7517 §5). Unusable entries are skipped.

    An entry is skipped whatever goes wrong parsing it (logged at DEBUG with its ``kid`` and the
    reason, never its key material), so one malformed key cannot hide the issuer's other keys.

    Raises:
        ValueError: the document is not a JWKS (no ``keys`` array).
    """
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError('a JWKS is a JSON object with a "keys" array')
    keys: list[PublicJWK] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            keys.append(parse_jwk(entry))
        except ValueError as exc:
            logger.debug("skipping unusable JWKS entry (kid=%r): %s", _kid_of(entry), exc)
        except Exception as exc:  # parse_jwk should raise only ValueError; never trust that
            logger.debug(
                "skipping unusable JWKS entry (kid=%r): %s", _kid_of(entry), type(exc).__name__
            )
    return tuple(keys)


def _kid_of(entry: Mapping[str, Any]) -> str | None:
    """The entry's ``kid`` for a log line: a bounded string, else ``None``."""
    kid = entry.get("kid")
    return kid if isinstance(kid, str) and len(kid) <= MAX_KID_LENGTH else None


class JWKSCache:
    """The verification keys of one issuer, fetched lazily and cached.

    Args:
        issuer: the issuer whose keys these are (used for discovery).
        jwks_uri: where the JWKS lives; discovered from ``issuer`` when ``None``.
        static_keys: a fixed key set; when given, nothing is ever fetched.
        http_client: client for discovery and JWKS requests; a short-lived one per fetch if None.
        ttl: seconds a fetched key set is used before it is refreshed.
        refresh_cooldown: minimum seconds between refreshes forced by an unknown ``kid``.
        clock: returns the current time in seconds.
        policy: where discovery and JWKS requests may go (SSRF guard).
    """

    def __init__(
        self,
        *,
        issuer: str,
        jwks_uri: str | None = None,
        static_keys: tuple[PublicJWK, ...] | None = None,
        http_client: httpx.AsyncClient | None = None,
        ttl: float = 300.0,
        refresh_cooldown: float = 30.0,
        clock: Callable[[], float],
        max_bytes: int = DEFAULT_MAX_BYTES,
        timeout: float = DEFAULT_TIMEOUT,
        policy: FetchPolicy = DEFAULT_POLICY,
    ) -> None:
        self._issuer = issuer
        self._policy = policy
        self._jwks_uri = jwks_uri
        self._static = static_keys is not None
        self._http_client = http_client
        self._ttl = ttl
        self._cooldown = refresh_cooldown
        self._backoff = min(refresh_cooldown, MAX_FAILURE_BACKOFF)
        self._clock = clock
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._keys: tuple[PublicJWK, ...] | None = None
        self._thumbprints: frozenset[str] = frozenset()
        self._fetched_at = -math.inf
        self._last_forced = -math.inf
        self._retry_after = -math.inf
        self._generation = 0
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        if static_keys is not None:
            self._install(static_keys)

    @property
    def jwks_uri(self) -> str | None:
        """The JWKS URL (configured or discovered); ``None`` before discovery or for static keys."""
        return self._jwks_uri

    def trusts(self, jwk: PublicJWK) -> bool:
        """Whether ``jwk`` is still in the current key set (a cheap check, no I/O)."""
        return jwk.thumbprint in self._thumbprints

    def refresh_due(self) -> bool:
        """Whether the key set's TTL ran out and a refresh may be tried now (no I/O)."""
        if self._static:
            return False
        now = self._clock()
        return now - self._fetched_at >= self._ttl and now >= self._retry_after

    async def refresh_if_due(self) -> None:
        """Refresh the key set if its TTL ran out (and no failed fetch asks to wait).

        Verified-token cache hits call this, so a key the issuer retires stops being trusted
        within one TTL even when every call is a cache hit. A failed refresh keeps the current
        keys (an IdP outage does not log everyone out).
        """
        if self._static:
            return
        now = self._clock()
        if now - self._fetched_at >= self._ttl and now >= self._retry_after:
            await self._refresh(self._generation)

    async def select(self, kid: str | None, alg: str) -> PublicJWK:
        """The key that must verify a token with this ``kid`` and ``alg``.

        Raises:
            InvalidCredential: ``jwks_unavailable``, ``unknown_kid``, ``key_alg_mismatch``,
                ``ambiguous_key`` or ``no_matching_key``.
        """
        entry_generation = self._generation
        if not self._static:
            now = self._clock()
            stale = self._keys is None or now - self._fetched_at >= self._ttl
            if stale and now >= self._retry_after:
                await self._refresh(entry_generation)
        if self._keys is None:
            raise InvalidCredential(reason="jwks_unavailable")
        jwk = self._match(kid, alg)
        # Unknown kid: refresh once, unless this call already waited for a fresh key set.
        if jwk is None and kid is not None and self._generation == entry_generation:
            now = self._clock()
            if self._current_lock().locked():
                await self._refresh(entry_generation)  # share the fetch already in flight
            elif (
                not self._static
                and now - self._last_forced >= self._cooldown
                and now >= self._retry_after
            ):
                self._last_forced = now
                await self._refresh(entry_generation)
            jwk = self._match(kid, alg)
        if jwk is None:
            raise InvalidCredential(reason="unknown_kid" if kid is not None else "no_matching_key")
        return jwk

    def _match(self, kid: str | None, alg: str) -> PublicJWK | None:
        keys = self._keys or ()
        if kid is not None:
            same_kid = [k for k in keys if k.kid == kid]
            if not same_kid:
                return None
            fitting = [k for k in same_kid if key_fits_algorithm(k, alg)]
            if not fitting:
                raise InvalidCredential(reason="key_alg_mismatch")
        else:
            fitting = [k for k in keys if key_fits_algorithm(k, alg)]
            if not fitting:
                raise InvalidCredential(reason="no_matching_key")
        if len(fitting) > 1:
            raise InvalidCredential(reason="ambiguous_key")
        return fitting[0]

    def _install(self, keys: tuple[PublicJWK, ...]) -> None:
        self._keys = keys
        self._thumbprints = frozenset(k.thumbprint for k in keys)

    def _current_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    async def _refresh(self, seen_generation: int) -> None:
        """Fetch the key set once; callers that queued behind a fetch reuse its result."""
        async with self._current_lock():
            if self._generation != seen_generation:
                return
            try:
                keys = await self._fetch()
            except Exception as exc:  # any failure: keep the cached keys and back off
                self._retry_after = self._clock() + self._backoff
                kept = "keeping cached keys" if self._keys is not None else "no keys cached"
                if isinstance(exc, FetchError):
                    logger.warning("JWKS refresh for %s failed (%s): %s", self._issuer, kept, exc)
                else:  # a bug or an unforeseen document shape: the type, not the text
                    logger.warning(
                        "JWKS refresh for %s failed unexpectedly (%s): %s",
                        self._issuer,
                        kept,
                        type(exc).__name__,
                    )
                    logger.debug("JWKS refresh failure", exc_info=True)
            else:
                self._install(keys)
                self._fetched_at = self._clock()
            finally:
                self._generation += 1

    async def _fetch(self) -> tuple[PublicJWK, ...]:
        uri = self._jwks_uri or await self._discover()
        document = await fetch_json(
            self._http_client,
            uri,
            policy=self._policy,
            max_bytes=self._max_bytes,
            time_limit=self._timeout,
        )
        try:
            keys = keys_from_jwks(document)
        except ValueError as exc:
            raise FetchError(f"{uri}: {exc}") from exc
        if not keys:
            raise FetchError(f"{uri} has no usable signing keys")
        return keys

    async def _discover(self) -> str:
        problems: list[str] = []
        for url in discovery_urls(self._issuer):
            try:
                metadata = await fetch_json(
                    self._http_client,
                    url,
                    policy=self._policy,
                    max_bytes=self._max_bytes,
                    time_limit=self._timeout,
                )
            except FetchError as exc:
                problems.append(str(exc))
                continue
            if metadata.get("issuer") != self._issuer:
                problems.append(f"{url}: metadata issuer does not match {self._issuer!r}")
                continue
            jwks_uri = metadata.get("jwks_uri")
            if not isinstance(jwks_uri, str):
                problems.append(f"{url}: metadata has no jwks_uri")
                continue
            try:
                check_fetch_url(jwks_uri, self._policy)
            except ValueError as exc:
                problems.append(f"{url}: {exc}")
                continue
            self._jwks_uri = jwks_uri
            return jwks_uri
        raise FetchError("discovery failed: " + "; ".join(problems))
