"""The bridge from securemcp verifiers to FastMCP's ``TokenVerifier`` interface.

Every securemcp verifier is both an :class:`~securemcp.auth.base.IdentityVerifier`
(``authenticate(token) -> Principal``) and a FastMCP ``TokenVerifier``
(``verify_token(token) -> AccessToken | None``), so it can be passed as ``auth=`` to FastMCP or
securemcp alike. The ``AccessToken`` carries the RFC 8707 resource the token was accepted for.
This is the only module in :mod:`securemcp.auth` that builds FastMCP types.

No raw token outlives its request here: the verified-token caches are keyed by a hash of the
token (DESIGN.md, "Performance"), and the ``AccessToken`` view reused between requests is kept
without its token; each request gets its own copy carrying the token it presented.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastmcp.server.auth import AccessToken, TokenVerifier

from securemcp.context import Principal

__all__ = ["VerifierBase", "access_token_for", "thaw"]

logger = logging.getLogger("securemcp.auth")

#: Token-less ``AccessToken`` views kept per verifier (cleared when full).
_ACCESS_TOKEN_CACHE_LIMIT = 1024

_new_access_token = AccessToken.__new__
_set_slot = object.__setattr__


def thaw(value: Any) -> Any:
    """A plain ``dict``/``list`` copy of frozen claims (for FastMCP's ``AccessToken``)."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [thaw(v) for v in value]
    return value


def _resource(principal: Principal, audiences: Sequence[str]) -> str | None:
    aud = principal.claims.get("aud")
    values = (aud,) if isinstance(aud, str) else aud
    if not isinstance(values, tuple | list):
        return None
    return next((a for a in audiences if a in values), None)


def access_token_for(principal: Principal, token: str, audiences: Sequence[str]) -> AccessToken:
    """FastMCP's view of a verified ``principal`` (``resource`` = the matched audience).

    The MCP SDK and FastMCP know a caller by ``principal_components(access_token)`` = (client_id,
    ``iss`` claim, subject): it binds streamable HTTP and SSE sessions to their creator, keys
    FastMCP's per-user state (``UserSession``, the 2026-07-28 session scope) and seals
    ``requestState``. Under a multi-tenant issuer (``tenant_claim=``) ``sub`` may be unique only
    within its tenant, so for a principal with a tenant ``client_id`` is the compact JSON pair
    ``["<client id>", "<tenant>"]`` and the OAuth client id moves to ``original_client_id``
    (the field FastMCP's ``MultiAuth`` qualifies the same way). ``subject`` and ``claims`` stay
    as the token says; ``securemcp.current().principal`` is untouched.
    """
    expires_at = principal.expires_at
    client_id = principal.client_id or principal.subject
    original_client_id = None
    if principal.tenant is not None:
        original_client_id = client_id
        client_id = json.dumps([client_id, principal.tenant], separators=(",", ":"))
    return AccessToken(
        token=token,
        client_id=client_id,
        original_client_id=original_client_id,
        scopes=sorted(principal.scopes),
        expires_at=int(expires_at) if expires_at is not None else None,
        subject=principal.subject,
        claims=thaw(principal.claims),
        resource=_resource(principal, audiences),
    )


def _with_token(view: AccessToken, token: str) -> AccessToken:
    """A shallow copy of the token-less ``view`` that carries ``token`` (one request's own).

    pydantic's ``__copy__`` for a model with no extra fields and no private attributes (as
    FastMCP's ``AccessToken`` is; pinned by ``tests/auth/test_token_retention.py``), minus its
    generic steps: under 1 µs where ``model_copy(update=...)`` costs 2.5 µs and building the
    model 9.6 µs. Like every shallow copy it shares ``scopes`` and ``claims`` with ``view`` (as
    the single reused ``AccessToken`` did before); securemcp decides on the frozen ``Principal``.
    """
    access = _new_access_token(AccessToken)
    _set_slot(access, "__dict__", {**view.__dict__, "token": token})
    _set_slot(access, "__pydantic_fields_set__", set(view.__pydantic_fields_set__))
    _set_slot(access, "__pydantic_extra__", None)
    _set_slot(access, "__pydantic_private__", None)
    return access


class VerifierBase(TokenVerifier):
    """Base of securemcp's verifiers: FastMCP's ``verify_token`` on top of ``authenticate``.

    Subclasses set :attr:`audiences` (this server's canonical resource URIs, RFC 8707) and
    :attr:`issuers` (the authorization servers they trust, advertised in RFC 9728 metadata).
    """

    audiences: tuple[str, ...]
    issuers: tuple[str, ...]

    async def authenticate(self, token: str) -> Principal:  # pragma: no cover - abstract
        """Verify ``token`` and return the principal it proves."""
        raise NotImplementedError

    async def verify_token(self, token: str) -> AccessToken | None:
        """FastMCP's hook: the verified token as an ``AccessToken``, or ``None`` if refused.

        The token is verified (``authenticate``) on every request. FastMCP's view of the result
        is built once per ``Principal`` object ``authenticate`` returns (its own verified-token
        cache hit), since building the pydantic ``AccessToken`` costs more than the cached
        verification itself; it is kept *without* the token, and each request gets a copy
        carrying its own token, so no raw token stays in the verifier after its request.
        """
        try:
            principal = await self.authenticate(token)
        except Exception as exc:  # fail closed: a verifier bug must never let a token through
            from securemcp.identity import failed_verification

            logger.info("bearer token refused: %r", failed_verification(exc, token).reason)
            return None
        # id(principal) -> (principal, token-less view); holding the principal keeps its id
        # from being reused while the entry exists.
        cache: dict[int, tuple[Principal, AccessToken]] | None = self.__dict__.get(
            "_securemcp_access_tokens"
        )
        if cache is None:
            cache = self.__dict__["_securemcp_access_tokens"] = {}
        cached = cache.get(id(principal))
        if cached is not None and cached[0] is principal:
            return _with_token(cached[1], token)
        view = access_token_for(principal, "", self.audiences)
        if len(cache) >= _ACCESS_TOKEN_CACHE_LIMIT:
            cache.clear()
        cache[id(principal)] = (principal, view)
        return _with_token(view, token)
