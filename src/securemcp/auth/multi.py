"""``MultiIssuerVerifier``: trust several authorization servers at once, each with its own rules.

The token's *unverified* ``iss`` only selects which configured :class:`JWTVerifier` checks it
(standards digest §2.3 step 4); that verifier then re-checks ``iss`` exactly and verifies the
signature with that issuer's keys only (RFC 8725 §3.8), so naming another issuer cannot borrow
its keys. A token from an issuer that is not configured is refused before any key lookup or
network I/O (``unknown_issuer``), and so is a token that is not a well-formed JWS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Final

from securemcp.auth import _compact
from securemcp.auth._fastmcp import VerifierBase
from securemcp.auth.jwt import JWTVerifier
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential

__all__ = ["MultiIssuerVerifier"]

_ROUTE_CACHE_SIZE: Final = 10_000


class MultiIssuerVerifier(VerifierBase):
    """Accepts tokens from any of several issuers, each verified by its own :class:`JWTVerifier`.

    Usable as FastMCP ``auth=`` and as securemcp's :class:`~securemcp.auth.IdentityVerifier`.

    Args:
        verifiers: one verifier per issuer (issuers must be distinct). Each keeps its own
            audience, algorithms, profile (e.g. ``relaxed`` for Entra ID), tenant claim, leeway
            and key source.
        max_token_bytes: longer tokens are refused before they are parsed.
        base_url: this server's base URL (forwarded to FastMCP's ``TokenVerifier``).
    """

    def __init__(
        self,
        verifiers: Sequence[JWTVerifier],
        *,
        max_token_bytes: int = 8192,
        base_url: str | None = None,
    ) -> None:
        if isinstance(verifiers, JWTVerifier) or not verifiers:
            raise ConfigurationError(
                "MultiIssuerVerifier needs a list of JWTVerifier, one per issuer, e.g. "
                "MultiIssuerVerifier([JWTVerifier(issuer=A, audience=R), "
                "JWTVerifier(issuer=B, audience=R)])."
            )
        by_issuer: dict[str, JWTVerifier] = {}
        for verifier in verifiers:
            if not isinstance(verifier, JWTVerifier):
                raise ConfigurationError(
                    f"MultiIssuerVerifier accepts JWTVerifier instances, got "
                    f"{type(verifier).__name__}."
                )
            if verifier.issuer in by_issuer:
                raise ConfigurationError(
                    f"issuer {verifier.issuer!r} is configured twice; give each issuer exactly "
                    "one JWTVerifier (merge their settings)."
                )
            by_issuer[verifier.issuer] = verifier
        super().__init__(base_url=base_url)
        self._by_issuer: Final = by_issuer
        self.issuers = tuple(by_issuer)
        self.audiences = tuple(dict.fromkeys(a for v in verifiers for a in v.audiences))
        self._max_token_bytes = max_token_bytes
        self._routes: dict[bytes, JWTVerifier] = {}

    def __repr__(self) -> str:
        return f"MultiIssuerVerifier(issuers={list(self.issuers)!r})"

    @property
    def verifiers(self) -> tuple[JWTVerifier, ...]:
        """The configured verifiers, one per issuer."""
        return tuple(self._by_issuer.values())

    def verifier_for(self, issuer: str) -> JWTVerifier | None:
        """The verifier configured for ``issuer`` (exact match), if any."""
        return self._by_issuer.get(issuer)

    async def authenticate(self, token: str) -> Principal:
        """Route ``token`` to its issuer's verifier and return the principal it proves.

        Raises:
            InvalidCredential: ``unknown_issuer``, a parse failure, or the chosen verifier's
                refusal; ``reason`` says which (internal only).
        """
        if not isinstance(token, str):
            raise InvalidCredential(reason="malformed")
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        verifier = self._routes.get(key)
        if verifier is None:
            payload = _compact.parse_compact(token, max_bytes=self._max_token_bytes).payload
            issuer = payload.get("iss")
            if not isinstance(issuer, str):
                raise InvalidCredential(
                    reason="missing_claim:iss" if issuer is None else "invalid_claim:iss"
                )
            verifier = self._by_issuer.get(issuer)
            if verifier is None:
                raise InvalidCredential(reason="unknown_issuer")
            principal = await verifier.authenticate(token)
            if len(self._routes) >= _ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[key] = verifier
            return principal
        try:
            return await verifier.authenticate(token)
        except InvalidCredential:
            self._routes.pop(key, None)
            raise
