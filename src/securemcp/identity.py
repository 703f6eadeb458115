"""How a call's caller is established: verifiers, the presented credential, development mode.

Guarantee 2 ("verified identity, never asserted identity"): the only input is the raw credential
presented with the request (the bearer token over HTTP, the in-memory carrier, the stdio
credential source); the only output is the :class:`~securemcp.context.Principal` a verifier
returns. Development mode (no verifier) yields a loudly unverified principal and is refused when
``SECUREMCP_ENV=production``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from fastmcp.server.middleware import MiddlewareContext
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

from securemcp._redaction import redact_secrets, redacted_exception
from securemcp.auth.base import IdentityVerifier
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential, Unauthenticated

__all__ = [
    "FastMCPVerifierAdapter",
    "development_principal",
    "failed_verification",
    "is_production",
    "presented_token",
    "remember_verified",
    "request_meta",
    "resolve_verifier",
    "transport_of",
    "verified_principal",
]

logger = logging.getLogger("securemcp.identity")


def is_production() -> bool:
    """``True`` when ``SECUREMCP_ENV=production``: development identity is refused."""
    return os.environ.get("SECUREMCP_ENV", "").strip().lower() == "production"


def failed_verification(exc: Exception, token: str | None) -> Unauthenticated:
    """The refusal for a credential whose verification raised ``exc``; fail closed.

    A refusal (``Unauthenticated``) keeps its code, with ``token`` cut out of its reason too (an
    opaque token is not recognisable by its shape). Anything else is a verifier fault: it is
    logged with the traceback, credentials cut out, and refused as ``invalid_token`` with the
    reason ``verifier_error``. Verifiers may be third-party code that quotes what it refused.
    """
    known = (token,) if token else ()
    if isinstance(exc, Unauthenticated):
        if exc.reason and known:
            exc.reason = redact_secrets(exc.reason, known)
        return exc
    logger.error(
        "securemcp: the identity verifier failed unexpectedly; the request is refused.\n%s",
        redacted_exception(exc, known),
    )
    return InvalidCredential(reason=f"verifier_error: {type(exc).__name__}")


def development_principal(scopes: Sequence[str] | None = None) -> Principal:
    """The local, **unverified** principal used when no verifier is configured."""
    if scopes is None:
        raw = os.environ.get("SECUREMCP_DEV_SCOPES")
        scopes = raw.split() if raw is not None else ["*"]
    return Principal(
        subject="local-developer",
        issuer="securemcp:development",
        client_id=None,
        scopes=frozenset(scopes),
        verified=False,
        authenticated_by="development",
    )


class FastMCPVerifierAdapter:
    """Wraps a FastMCP ``AuthProvider`` (e.g. FastMCP's ``JWTVerifier``) as an identity verifier.

    FastMCP's verifiers return an ``AccessToken``; securemcp maps it to a verified principal. Prefer
    :class:`securemcp.auth.JWTVerifier`, which enforces the RFC 9068 / RFC 8725 rules FastMCP's
    verifier skips (required ``exp``, ``nbf``, ``typ``, mandatory audience).
    """

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._name = f"fastmcp:{type(provider).__name__}"

    async def authenticate(self, token: str) -> Principal:
        from securemcp.errors import InvalidCredential

        access = await self._provider.verify_token(token)
        if access is None:
            raise InvalidCredential(reason=f"{self._name} rejected the token")
        claims = dict(access.claims or {})
        subject = access.subject or claims.get("sub") or access.client_id
        return Principal(
            subject=str(subject),
            issuer=str(claims.get("iss") or self._name),
            client_id=access.client_id,
            scopes=frozenset(access.scopes),
            claims=claims,
            authenticated_by=self._name,
            expires_at=float(access.expires_at) if access.expires_at is not None else None,
        )


def resolve_verifier(auth: Any) -> IdentityVerifier | None:
    """The identity verifier for a server's ``auth=`` setting (``None`` means development mode)."""
    if auth is None:
        return None
    if isinstance(auth, IdentityVerifier):
        return auth
    if callable(getattr(auth, "verify_token", None)):
        logger.warning(
            "securemcp is verifying identity through %s. It is a FastMCP verifier that does not "
            "require exp or audience; use securemcp.auth.JWTVerifier for the strict RFC 9068 / "
            "RFC 8725 profile.",
            type(auth).__name__,
        )
        return FastMCPVerifierAdapter(auth)
    raise ConfigurationError(
        f"auth= must be a securemcp or FastMCP verifier, got {type(auth).__name__}"
    )


def presented_token(context: MiddlewareContext[Any] | None) -> str | None:
    """The raw bearer credential presented with this request, if any (never trusted as-is).

    Same sources, in the same order, as FastMCP's ``get_access_token()``: the HTTP request's
    authenticated user (set by FastMCP's bearer middleware from the ``Authorization`` header),
    then the MCP SDK's ``auth_context_var`` (the in-memory transport's carrier). Reading the
    request from the middleware context avoids ``get_http_request()``'s exception on the
    in-memory path, which is the hot path in tests and benchmarks.
    """
    fastmcp_context = context.fastmcp_context if context is not None else None
    request_context = fastmcp_context.request_context if fastmcp_context is not None else None
    request = request_context.request if request_context is not None else None
    if request is not None:
        user = request.scope.get("user")
        if isinstance(user, AuthenticatedUser):
            return user.access_token.token
    carrier = auth_context_var.get()
    return carrier.access_token.token if carrier is not None else None


#: ASGI scope key under which the HTTP guard leaves what it verified for this very request.
_VERIFIED_KEY = "securemcp.verified"


def remember_verified(
    scope: dict[str, Any] | Any, verifier: IdentityVerifier, token: str, principal: Principal
) -> None:
    """Leave the HTTP guard's verification of this request's token in its ASGI ``scope``.

    Only server code builds an ASGI scope, so a client cannot put anything under this key; the
    pipeline takes it (:func:`verified_principal`) instead of verifying the same token again
    within the same request.
    """
    scope[_VERIFIED_KEY] = (verifier, token, principal)


def verified_principal(
    context: MiddlewareContext[Any] | None, verifier: IdentityVerifier, token: str
) -> Principal | None:
    """The principal the HTTP guard verified ``token`` as for this request, if ``verifier`` is
    the one in force and the credential has not expired since; else ``None`` (verify it)."""
    fastmcp_context = context.fastmcp_context if context is not None else None
    request_context = fastmcp_context.request_context if fastmcp_context is not None else None
    request = request_context.request if request_context is not None else None
    if request is None:
        return None
    found = request.scope.get(_VERIFIED_KEY)
    if found is None or found[0] is not verifier or found[1] != token:
        return None
    principal: Principal = found[2]
    expires_at = principal.expires_at
    if expires_at is not None and expires_at <= time.time():
        return None
    return principal


def transport_of(context: MiddlewareContext[Any] | None) -> str:
    fastmcp_context = context.fastmcp_context if context is not None else None
    return (fastmcp_context.transport if fastmcp_context is not None else None) or "in-memory"


def request_meta(context: MiddlewareContext[Any] | None) -> dict[str, Any] | None:
    """The caller's raw request ``_meta`` (only ever used for explicitly trusted stdio hosts)."""
    fastmcp_context = context.fastmcp_context if context is not None else None
    request_context = fastmcp_context.request_context if fastmcp_context is not None else None
    meta = getattr(request_context, "meta", None) if request_context is not None else None
    if meta is None:
        return None
    if isinstance(meta, dict):
        return meta
    dump = getattr(meta, "model_dump", None)
    return dump() if callable(dump) else None
