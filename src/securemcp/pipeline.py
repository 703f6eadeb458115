"""The per-call security pipeline: one outermost FastMCP middleware.

For every ``tools/call``, ``resources/read`` and ``prompts/get`` it runs, in order::

    authenticate ─▶ bind a fresh SecurityContext ─▶ resolve the target's facts ─▶ rate limit
    ─▶ scopes ─▶ policy ─▶ approval ─▶ admit ─▶ run (under constraints) ─▶ record ─▶ close

and it filters ``tools/list``, ``resources/list``, ``resources/templates/list`` and
``prompts/list`` down to what the caller may use (unless the server opts out).

Identity comes from :mod:`securemcp.identity`, the admission tripwires from
:mod:`securemcp.admission`, policy enforcement from :mod:`securemcp.policy.enforcement` and
spans/metrics from :mod:`securemcp.telemetry`. This is one of the few modules that speaks
FastMCP's middleware API.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastmcp.exceptions import FastMCPError, NotFoundError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from mcp import MCPError
from mcp.types import INTERNAL_ERROR
from opentelemetry import trace

from securemcp.admission import ADMISSION, LISTING, Admission
from securemcp.auth.base import IdentityVerifier
from securemcp.components import ComponentFacts, facts_of
from securemcp.context import _CURRENT, Principal, SecurityContext
from securemcp.errors import CallRefused, InsufficientScope, PolicyDenied, Unauthenticated
from securemcp.identity import (
    development_principal,
    is_production,
    presented_token,
    request_meta,
    resolve_verifier,
    transport_of,
)
from securemcp.scopes import InvalidScopeDeclaration, declared_scopes
from securemcp.telemetry import Telemetry

if TYPE_CHECKING:
    from securemcp.auditing import CallAuditor
    from securemcp.policy.enforcement import PolicyEnforcement
    from securemcp.server import FastMCP

__all__ = ["SecurityPipeline"]

logger = logging.getLogger("securemcp.pipeline")

_KIND_BY_METHOD = {"tools/call": "tool", "resources/read": "resource", "prompts/get": "prompt"}
_FACTS_CACHE_LIMIT = 4096


class _HiddenRefusal(NotFoundError):
    """A scope refusal answered as "unknown" (``disclose_required_scopes=False``), still audited."""

    code = "insufficient_scope"


def _new_call_id() -> str:
    return secrets.token_hex(16)


def _trace_id(span: trace.Span) -> str | None:
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")


def _arguments(method: str, context: MiddlewareContext[Any]) -> dict[str, Any]:
    if method == "resources/read":
        return {}
    arguments = getattr(context.message, "arguments", None)
    return dict(arguments) if arguments else {}


class _CallRecord:
    """What the pipeline learns about one call as it goes (for telemetry and the audit log)."""

    __slots__ = (
        "allowed",
        "call_id",
        "error_type",
        "facts",
        "method",
        "outcome_recorded",
        "policy_version",
        "principal",
        "target",
        "trace_id",
    )

    def __init__(self, method: str, target: str, trace_id: str | None) -> None:
        self.method = method
        self.target = target
        self.trace_id = trace_id
        self.principal: Principal | None = None
        self.call_id: str | None = None
        self.facts: ComponentFacts | None = None
        self.allowed = False
        self.error_type: str | None = None
        self.policy_version: str | None = None
        self.outcome_recorded = False


class SecurityPipeline(Middleware):
    """securemcp's outermost middleware. Installed and kept at index 0 by :class:`FastMCP`."""

    def __init__(
        self,
        server: FastMCP,
        *,
        hide_unauthorized: bool = True,
        disclose_required_scopes: bool = True,
        development_scopes: Sequence[str] | None = None,
        enforcement: PolicyEnforcement | None = None,
    ) -> None:
        self._server = server
        self.hide_unauthorized = hide_unauthorized
        self.disclose_required_scopes = disclose_required_scopes
        self._development_scopes = development_scopes
        self.enforcement = enforcement
        self.auditor: CallAuditor | None = None  # set by the server once it has a name
        self._facts: dict[tuple[str, str], ComponentFacts] = {}
        self._verifier_source: object = None
        self._verifier: IdentityVerifier | None = None
        self._development_principal: Principal | None = None
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
        if token is None and transport_of(context) == "stdio":
            token = self._server._securemcp_stdio.credential(request_meta(context))
        if verifier is None:
            if is_production():
                raise Unauthenticated(
                    reason="no verifier configured and SECUREMCP_ENV=production refuses "
                    "the development identity"
                )
            if self._development_principal is None:
                self._development_principal = development_principal(self._development_scopes)
            return self._development_principal
        if not token:
            raise Unauthenticated(reason="no credential presented")
        # The credential found may come from the caller's own ContextVars (in-memory transports
        # run handlers in the sender's context), so only the raw token is used and identity is
        # always re-established by this server's verifier (cached by token hash).
        return await verifier.authenticate(token)

    async def _identify(self, context: MiddlewareContext[Any]) -> tuple[Principal, str | None]:
        """The caller: inherited from a mounting securemcp server, or freshly authenticated."""
        outer = ADMISSION.get()
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

    # --- component facts ------------------------------------------------------------------

    def forget_requirements(self) -> None:
        """Drop cached component facts (after any registration change)."""
        self._facts.clear()

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

    async def facts(self, method: str, target: str) -> ComponentFacts | None:
        """The target's facts, or ``None`` if no such component exists for this caller."""
        key = (method, target)
        cached = self._facts.get(key)
        if cached is not None:
            return cached
        component = await self._resolve(method, target)
        if component is None:
            return None
        try:
            facts = facts_of(component)
        except InvalidScopeDeclaration as exc:
            raise PolicyDenied(reason=str(exc)) from None
        if method != "resources/read":  # resource URIs are unbounded; tools/prompts are not
            if len(self._facts) >= _FACTS_CACHE_LIMIT:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    async def required_scopes(self, method: str, target: str) -> frozenset[str] | None:
        """Scopes the target requires, or ``None`` if no such component exists for this caller."""
        facts = await self.facts(method, target)
        return facts.scopes if facts is not None else None

    def _not_found(self, method: str, target: str) -> NotFoundError:
        return NotFoundError(f"Unknown {_KIND_BY_METHOD[method]}: {target!r}")

    def _check_scopes(
        self, method: str, target: str, principal: Principal, scopes: frozenset[str]
    ) -> None:
        """Refuse a caller missing any declared scope (the body never runs)."""
        missing = principal.missing_scopes(scopes)
        if not missing:
            return
        logger.info(
            "securemcp refused %s %r for %s: missing scope(s) %s",
            method,
            target,
            principal.pseudonym,
            " ".join(sorted(missing)),
        )
        if not self.disclose_required_scopes:
            raise _HiddenRefusal(f"Unknown {_KIND_BY_METHOD[method]}: {target!r}")
        raise InsufficientScope(scopes, missing)

    # --- the guarded call -----------------------------------------------------------------

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
        trace_id = _trace_id(current_span)
        transport = transport_of(context)
        call = _CallRecord(method, target, trace_id)
        try:
            try:
                principal, parent_call_id = await self._identify(context)
            except Unauthenticated as exc:
                if self.auditor is not None:
                    self.auditor.auth_failure(
                        reason=exc.reason,
                        method=method,
                        target=target,
                        transport=transport,
                        trace_id=trace_id,
                    )
                raise
            call.principal = principal
            # A call delegated by a mounting securemcp server is audited once, by that server.
            auditor = self.auditor if parent_call_id is None else None
            security_context = SecurityContext(
                call_id=_new_call_id(),
                method=method,
                target=target,
                principal=principal,
                transport=transport,
                started_at=datetime.now(UTC),
                trace_id=trace_id,
                server_name=self._server.name,
                parent_call_id=parent_call_id,
            )
            call.call_id = security_context.call_id
            arguments = _arguments(method, context)
            bound = _CURRENT.set(security_context)
            try:
                try:
                    decision = await self._authorize(
                        method, target, principal, arguments, transport, call
                    )
                except (CallRefused, _HiddenRefusal) as exc:
                    if exc.code == "approval_required":
                        self._telemetry.approval("requested")
                    if auditor is not None:
                        auditor.refusal(
                            call_id=call.call_id,
                            method=method,
                            target=target,
                            principal=principal,
                            arguments=arguments,
                            code=exc.code,
                            trace_id=trace_id,
                        )
                    raise
                if auditor is not None:
                    # Written before the body runs; AuditUnavailable refuses the call.
                    auditor.decision(
                        call_id=call.call_id,
                        method=method,
                        target=target,
                        principal=principal,
                        arguments=arguments,
                        result=decision if decision is not None else "allow",
                        trace_id=trace_id,
                    )
                call.allowed = True
                result = await self._run(call_next, context, security_context, call, decision)
                if getattr(result, "is_error", False):
                    call.error_type = "tool_error"
                if auditor is not None:
                    call.outcome_recorded = True  # attempted: a failed write is not retried
                    auditor.outcome(
                        call_id=call.call_id,
                        method=method,
                        target=target,
                        principal=principal,
                        outcome="tool_error" if call.error_type else "ok",
                        duration_ms=(time.perf_counter() - started) * 1000,
                        error=call.error_type,
                        trace_id=trace_id,
                    )
                return result
            except BaseException as exc:
                if call.allowed and auditor is not None and not call.outcome_recorded:
                    self._record_failure(auditor, call, principal, exc, started)
                raise
            finally:
                _CURRENT.reset(bound)
                security_context._close()
        except CallRefused as exc:
            call.error_type = exc.code
            if exc.reason:
                logger.info("securemcp refused %s %r: %s", method, target, exc.reason)
            raise
        except NotFoundError:
            call.error_type = "not_found"
            raise
        except Exception as exc:
            call.error_type = call.error_type or _classify_failure(exc)
            raise
        finally:
            self._telemetry.record(
                span,
                method=method,
                target=target,
                decision="allow" if call.allowed else "deny",
                reason=call.error_type or "ok",
                error_type=call.error_type,
                duration_s=time.perf_counter() - started,
                principal=call.principal,
                call_id=call.call_id,
                policy_version=call.policy_version,
            )

    async def _authorize(
        self,
        method: str,
        target: str,
        principal: Principal,
        arguments: dict[str, Any],
        transport: str,
        call: _CallRecord,
    ) -> Any:
        """Resolve the target and run rate limits, scopes and policy; returns the decision."""
        facts = await self.facts(method, target)
        if facts is None:
            raise self._not_found(method, target)
        call.facts = facts
        enforcement = self.enforcement
        if enforcement is None or not enforcement.active:
            self._check_scopes(method, target, principal, facts.scopes)
            return None
        from securemcp.policy.request import CallRequest

        request = CallRequest.build(
            principal,
            target,
            arguments,
            method=method,
            tags=facts.tags,
            annotations=facts.annotations,
            risk=facts.risk,
            transport=transport,
        )
        await enforcement.rate_limit(request)
        self._check_scopes(method, target, principal, facts.scopes)
        decision = await enforcement.decide(request)
        call.policy_version = decision.policy_version if decision is not None else None
        if decision is not None and decision.effect == "require_approval":
            self._telemetry.approval("consumed")  # the gate admitted it: an approval was used
        return decision

    async def _run(
        self,
        call_next: CallNext[Any, Any],
        context: MiddlewareContext[Any],
        security_context: SecurityContext,
        call: _CallRecord,
        decision: Any,
    ) -> Any:
        """Admit exactly this call to the FastMCP core and run it (under any constraints)."""
        assert call.facts is not None
        admission = Admission(
            self._server,
            call.method,
            call.target,
            security_context,
            call.facts,
            policy_active=decision is not None,
        )
        token = ADMISSION.set(admission)
        try:
            if decision is not None and decision.constraints:
                from securemcp.policy.enforcement import PolicyEnforcement

                return await PolicyEnforcement.run(decision.constraints, lambda: call_next(context))
            return await call_next(context)
        finally:
            admission.open = False
            ADMISSION.reset(token)

    @staticmethod
    def _record_failure(
        auditor: CallAuditor,
        call: _CallRecord,
        principal: Principal,
        exc: BaseException,
        started: float,
    ) -> None:
        """Outcome record for an admitted call that raised (best effort: it is failing anyway)."""
        code = getattr(exc, "code", None)
        kind = _classify_failure(exc) if not isinstance(code, str) else code
        outcome = {"timeout": "timeout", "tool_error": "tool_error"}.get(kind, "error")
        if isinstance(exc, CallRefused):
            outcome = "refused"
        call.error_type = call.error_type or kind
        try:
            auditor.outcome(
                call_id=call.call_id or "",
                method=call.method,
                target=call.target,
                principal=principal,
                outcome=outcome,
                duration_ms=(time.perf_counter() - started) * 1000,
                error=kind,
                trace_id=call.trace_id,
            )
        except Exception:
            logger.exception("securemcp could not audit the outcome of a failed call")

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
        outer = ADMISSION.get()
        listing = LISTING.get()
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
        token = LISTING.set((self._server, principal))
        try:
            components = await call_next(context)
        finally:
            LISTING.reset(token)
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
    if isinstance(exc, TimeoutError) or "timed out" in str(exc).lower():
        return "timeout"
    if isinstance(exc, FastMCPError):
        return "tool_error"
    return "_OTHER"


def _may_use(principal: Principal, component: Any) -> bool:
    try:
        return not principal.missing_scopes(declared_scopes(component))
    except InvalidScopeDeclaration:
        return False
