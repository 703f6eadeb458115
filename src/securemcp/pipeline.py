"""The per-call security pipeline: one outermost FastMCP middleware.

For every ``tools/call``, ``resources/read`` and ``prompts/get`` it runs, in order::

    authenticate ─▶ bind a fresh SecurityContext ─▶ resolve the target's requirements
    ─▶ authorize (scopes) ─▶ admit ─▶ run ─▶ reset and close the context (finally)

and it filters ``tools/list``, ``resources/list``, ``resources/templates/list`` and
``prompts/list`` down to what the caller may use (unless the server opts out).

Two tripwires make the pipeline impossible to skip silently:

* *admission*: the core of ``call_tool``/``read_resource``/``render_prompt`` (the
  ``run_middleware=False`` path) refuses to run unless this pipeline admitted exactly that call
  on exactly that server, once (:func:`require_admission`);
* *re-resolution*: the component FastMCP actually resolves for an admitted call is re-checked
  against the scopes that were authorized (:func:`recheck_resolved`), so a stale requirements
  cache or a component swapped mid-flight can never widen access.

This is one of the few modules that speaks FastMCP's middleware API; everything else in
securemcp talks to :mod:`securemcp.context` and :mod:`securemcp.auth`.
"""

from __future__ import annotations

import contextvars
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastmcp.exceptions import NotFoundError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from mcp import MCPError
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.types import INTERNAL_ERROR
from opentelemetry import trace

from securemcp.auth.base import IdentityVerifier
from securemcp.context import _CURRENT, Principal, SecurityContext
from securemcp.errors import (
    CallRefused,
    ConfigurationError,
    InsufficientScope,
    PipelineBypassed,
    PolicyDenied,
    Unauthenticated,
)
from securemcp.scopes import InvalidScopeDeclaration, declared_scopes
from securemcp.telemetry import Telemetry

if TYPE_CHECKING:
    from securemcp.server import FastMCP

__all__ = ["SecurityPipeline", "is_production"]

logger = logging.getLogger("securemcp.pipeline")

_KIND_BY_METHOD = {"tools/call": "tool", "resources/read": "resource", "prompts/get": "prompt"}
_REQUIREMENT_CACHE_LIMIT = 4096


def is_production() -> bool:
    """``True`` when ``SECUREMCP_ENV=production``: development identity is refused."""
    return os.environ.get("SECUREMCP_ENV", "").strip().lower() == "production"


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


@dataclass(slots=True, eq=False)
class _Admission:
    """The pipeline's permission for the FastMCP core to run one component, once."""

    server: FastMCP
    method: str
    target: str
    context: SecurityContext
    scopes: frozenset[str]
    open: bool = True
    consumed: bool = False
    rechecked: bool = False


_ADMISSION: contextvars.ContextVar[_Admission | None] = contextvars.ContextVar(
    "securemcp.admission", default=None
)

#: (server, principal) while a securemcp server lists components, so that mounted securemcp
#: servers filter their own listings for the caller the parent verified.
_LISTING: contextvars.ContextVar[tuple[FastMCP, Principal] | None] = contextvars.ContextVar(
    "securemcp.listing", default=None
)


def require_admission(server: FastMCP, method: str, target: str) -> None:
    """Called by the core (``run_middleware=False``) paths: refuse unless admitted.

    Raises:
        PipelineBypassed: no open, unconsumed admission for this server, method and target.
    """
    admission = _ADMISSION.get()
    if (
        admission is None
        or admission.server is not server
        or admission.method != method
        or admission.target != target
        or not admission.open
        or admission.consumed
    ):
        logger.warning(
            "securemcp refused %s %r on server %r: it did not pass through the security "
            "pipeline (run_middleware=False or a reordered middleware chain)",
            method,
            target,
            server.name,
        )
        raise PipelineBypassed(reason=f"{method} {target!r} reached the core without admission")
    admission.consumed = True


def recheck_resolved(server: FastMCP, method: str, target: str, component: Any) -> None:
    """Re-check the component FastMCP resolved for an admitted call against what was authorized.

    The pipeline authorizes with cached requirements; this runs on the component the core
    actually executes. If its declared scopes differ (the component changed since it was
    cached), the cache is dropped and the caller must hold the component's real scopes.
    """
    admission = _ADMISSION.get()
    if (
        component is None
        or admission is None
        or admission.server is not server
        or admission.method != method
        or admission.target != target
        or not admission.consumed
        or admission.rechecked
    ):
        return
    admission.rechecked = True
    try:
        actual = declared_scopes(component)
    except InvalidScopeDeclaration as exc:
        raise PolicyDenied(reason=str(exc)) from None
    if actual == admission.scopes:
        return
    server._securemcp_pipeline.forget_requirements()
    missing = admission.context.principal.missing_scopes(actual)
    if missing:
        raise InsufficientScope(actual, missing)


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


def _transport_of(context: MiddlewareContext[Any] | None) -> str:
    fastmcp_context = context.fastmcp_context if context is not None else None
    return (fastmcp_context.transport if fastmcp_context is not None else None) or "in-memory"


def _request_meta(context: MiddlewareContext[Any] | None) -> dict[str, Any] | None:
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


def _new_call_id() -> str:
    return secrets.token_hex(16)


def _trace_id(span: trace.Span) -> str | None:
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")


class SecurityPipeline(Middleware):
    """securemcp's outermost middleware. Installed and kept at index 0 by :class:`FastMCP`."""

    def __init__(
        self,
        server: FastMCP,
        *,
        hide_unauthorized: bool = True,
        disclose_required_scopes: bool = True,
        development_scopes: Sequence[str] | None = None,
    ) -> None:
        self._server = server
        self.hide_unauthorized = hide_unauthorized
        self.disclose_required_scopes = disclose_required_scopes
        self._development_scopes = development_scopes
        self._requirements: dict[tuple[str, str], frozenset[str]] = {}
        self._verifier_source: object = None
        self._verifier: IdentityVerifier | None = None
        self._telemetry = Telemetry()

    # --- identity -------------------------------------------------------------------------

    def verifier(self) -> IdentityVerifier | None:
        """The verifier in force, tracking later assignments to ``server.auth``."""
        auth = self._server.auth
        if auth is not self._verifier_source:
            self._verifier = resolve_verifier(auth)
            self._verifier_source = auth
        return self._verifier

    async def authenticate(self, context: MiddlewareContext[Any] | None = None) -> Principal:
        """Establish the caller from a verified credential, or the development principal.

        Raises:
            Unauthenticated: no credential, an invalid one, or development mode in production.
        """
        verifier = self.verifier()
        token = presented_token(context)
        if token is None and _transport_of(context) == "stdio":
            token = self._server._securemcp_stdio.credential(_request_meta(context))
        if verifier is None:
            if is_production():
                raise Unauthenticated(
                    reason="no verifier configured and SECUREMCP_ENV=production refuses "
                    "the development identity"
                )
            return development_principal(self._development_scopes)
        if not token:
            raise Unauthenticated(reason="no credential presented")
        # The credential found may come from the caller's own ContextVars (in-memory transports
        # run handlers in the sender's context), so only the raw token is used and identity is
        # always re-established by this server's verifier (cached by token hash).
        return await verifier.authenticate(token)

    # --- requirements ---------------------------------------------------------------------

    def forget_requirements(self) -> None:
        """Drop cached component requirements (after any registration change)."""
        self._requirements.clear()

    async def _resolve(self, method: str, target: str) -> Any:
        server = self._server
        if method == "tools/call":
            return await server.get_tool(target)
        if method == "prompts/get":
            return await server.get_prompt(target)
        resource: Any = await server.get_resource(target)
        if resource is None:
            resource = await server.get_resource_template(target)
        return resource

    async def required_scopes(self, method: str, target: str) -> frozenset[str] | None:
        """Scopes the target requires, or ``None`` if no such component exists for this caller."""
        key = (method, target)
        cached = self._requirements.get(key)
        if cached is not None:
            return cached
        component = await self._resolve(method, target)
        if component is None:
            return None
        try:
            scopes = declared_scopes(component)
        except InvalidScopeDeclaration as exc:
            raise PolicyDenied(reason=str(exc)) from None
        if method != "resources/read":  # resource URIs are unbounded; tools/prompts are not
            if len(self._requirements) >= _REQUIREMENT_CACHE_LIMIT:
                self._requirements.clear()
            self._requirements[key] = scopes
        return scopes

    def _not_found(self, method: str, target: str) -> NotFoundError:
        kind = _KIND_BY_METHOD[method]
        return NotFoundError(f"Unknown {kind}: {target!r}")

    # --- the guarded call -----------------------------------------------------------------

    async def _identify(self, context: MiddlewareContext[Any]) -> tuple[Principal, str | None]:
        """The caller: inherited from a mounting securemcp server, or freshly authenticated."""
        outer = _ADMISSION.get()
        if (
            outer is not None
            and outer.open
            and outer.consumed
            and outer.server in self._server._securemcp_parents
        ):
            # Delegated from a securemcp server that mounted this one: the caller was verified
            # there, for this very call. A fresh context is bound for this server all the same.
            return outer.context.principal, outer.context.call_id
        return await self.authenticate(context), None

    async def _guard(
        self,
        method: str,
        target: str,
        context: MiddlewareContext[Any],
        call_next: CallNext[Any, Any],
    ) -> Any:
        started = time.perf_counter()
        current_span = trace.get_current_span()
        span = current_span if current_span.is_recording() else None
        principal: Principal | None = None
        call_id: str | None = None
        allowed = False
        error_type: str | None = None
        try:
            principal, parent_call_id = await self._identify(context)
            server = self._server
            transport = _transport_of(context)
            security_context = SecurityContext(
                call_id=_new_call_id(),
                method=method,
                target=target,
                principal=principal,
                transport=transport,
                started_at=datetime.now(UTC),
                trace_id=_trace_id(current_span),
                server_name=server.name,
                parent_call_id=parent_call_id,
            )
            call_id = security_context.call_id
            bound = _CURRENT.set(security_context)
            try:
                scopes = self._authorize(
                    method, target, principal, await self.required_scopes(method, target)
                )
                allowed = True
                admission = _Admission(server, method, target, security_context, scopes)
                token = _ADMISSION.set(admission)
                try:
                    result = await call_next(context)
                finally:
                    admission.open = False
                    _ADMISSION.reset(token)
                if getattr(result, "is_error", False):
                    error_type = "tool_error"
                return result
            finally:
                _CURRENT.reset(bound)
                security_context._close()
        except CallRefused as exc:
            error_type = exc.code
            if exc.reason:
                logger.info("securemcp refused %s %r: %s", method, target, exc.reason)
            raise
        except NotFoundError:
            error_type = "not_found"
            raise
        except Exception as exc:
            error_type = _classify_failure(exc)
            raise
        finally:
            self._telemetry.record(
                span,
                method=method,
                target=target,
                decision="allow" if allowed else "deny",
                reason=error_type or "ok",
                error_type=error_type,
                duration_s=time.perf_counter() - started,
                principal=principal,
                call_id=call_id,
            )

    def _authorize(
        self, method: str, target: str, principal: Principal, scopes: frozenset[str] | None
    ) -> frozenset[str]:
        """Refuse unknown targets and missing scopes (the tool body never runs).

        Returns the target's required scopes, all of which the principal holds.
        """
        if scopes is None:
            raise self._not_found(method, target)
        missing = principal.missing_scopes(scopes)
        if not missing:
            return scopes
        logger.info(
            "securemcp refused %s %r for %s: missing scope(s) %s",
            method,
            target,
            principal.pseudonym,
            " ".join(sorted(missing)),
        )
        if not self.disclose_required_scopes:
            raise self._not_found(method, target)
        raise InsufficientScope(scopes, missing)

    async def on_call_tool(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._guard("tools/call", context.message.name, context, call_next)

    async def on_read_resource(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._guard("resources/read", str(context.message.uri), context, call_next)

    async def on_get_prompt(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._guard("prompts/get", context.message.name, context, call_next)

    # --- listings -------------------------------------------------------------------------

    async def _filtered(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        parents = self._server._securemcp_parents
        outer = _ADMISSION.get()
        listing = _LISTING.get()
        if listing is not None and listing[0] in parents:
            principal = listing[1]
        elif outer is not None and outer.open and outer.server in parents:
            principal = outer.context.principal
        else:
            try:
                principal = await self.authenticate(context)
            except Unauthenticated as exc:
                logger.info("securemcp refused %s: %s", context.method, exc.reason)
                # List handlers mask non-MCP errors as "Internal server error"; say what it is.
                raise MCPError(
                    code=INTERNAL_ERROR, message=str(exc), data={"securemcp_error": exc.code}
                ) from None
        token = _LISTING.set((self._server, principal))
        try:
            components = await call_next(context)
        finally:
            _LISTING.reset(token)
        if not self.hide_unauthorized:
            return components
        return [c for c in components if _may_use(principal, c)]

    async def on_list_tools(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filtered(context, call_next)

    async def on_list_resources(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filtered(context, call_next)

    async def on_list_resource_templates(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filtered(context, call_next)

    async def on_list_prompts(
        self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]
    ) -> Any:
        return await self._filtered(context, call_next)


def _classify_failure(exc: BaseException) -> str:
    """``error.type`` for a failure that is not a securemcp refusal."""
    message = str(exc).lower()
    if isinstance(exc, TimeoutError) or "timed out" in message:
        return "timeout"
    from fastmcp.exceptions import FastMCPError

    if isinstance(exc, FastMCPError):
        return "tool_error"
    return "_OTHER"


def _may_use(principal: Principal, component: Any) -> bool:
    try:
        return not principal.missing_scopes(declared_scopes(component))
    except InvalidScopeDeclaration:
        return False
