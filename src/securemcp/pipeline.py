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

import itertools
import logging
import os
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from fastmcp.exceptions import FastMCPError, NotFoundError, PromptError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.server.middleware import middleware as _fastmcp_middleware
from fastmcp.utilities.versions import VersionSpec
from mcp import MCPError
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.types import INTERNAL_ERROR
from opentelemetry import trace

from securemcp._log_limits import policy_failures
from securemcp._request_spans import name_outer_reads, needs_request_span, request_span
from securemcp._resource_reads import audited_read, unresolved_target
from securemcp._session_state import install as _skip_absent_session_transforms
from securemcp._span_exceptions import guard_span
from securemcp._span_exceptions import install as _redact_span_exceptions
from securemcp.admission import ADMISSION, LISTING, Admission, forwards_to
from securemcp.auth.base import IdentityVerifier
from securemcp.components import ComponentFacts, facts_of_cached
from securemcp.context import _CURRENT, Principal, SecurityContext
from securemcp.errors import (
    CallRefused,
    InsufficientScope,
    InvalidArguments,
    PolicyDenied,
    Unauthenticated,
)
from securemcp.identity import (
    development_principal,
    failed_verification,
    is_production,
    presented_token,
    request_meta,
    resolve_verifier,
    transport_of,
    verified_principal,
)
from securemcp.scopes import InvalidScopeDeclaration
from securemcp.telemetry import StepTimer, Telemetry

#: FastMCP's (private) middleware dispatch phase; without it every message takes the inherited
#: Middleware.__call__ path (see SecurityPipeline.__call__).
_dispatch_phase: ContextVar[Any] | None = getattr(_fastmcp_middleware, "_dispatch_phase", None)

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


# Call ids must be unique, not secret (nothing authorizes by one): 32 hex characters like
# token_hex(16), made from a random 64-bit per-process prefix and a 64-bit counter instead of a
# getrandom() syscall per call. A forked child draws a new prefix, so processes never share one.
def _call_id_counter() -> itertools.count[int]:
    # A leading 1 bit: hex() then always has 33 digits, and dropping "0x1" leaves the 32.
    return itertools.count((1 << 128) | (secrets.randbits(64) << 64))


_call_ids = _call_id_counter()


def _new_call_id() -> str:
    return hex(next(_call_ids))[3:]


def _reseed_call_ids() -> None:
    global _call_ids
    _call_ids = _call_id_counter()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_call_ids)


def _trace_id(span: trace.Span) -> str | None:
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return None
    return format(span_context.trace_id, "032x")


def requested_version(context: MiddlewareContext[Any]) -> VersionSpec | None:
    """The component version the request asks for, as FastMCP's core will resolve it.

    FastMCP puts the version a caller asked for (``version=`` on a server-side call, or
    ``_meta.fastmcp.version`` from a client) into the request's ``_meta`` under
    ``fastmcp.version``: a string (exactly that version) or a ``gte``/``lt``/``eq`` range. The
    pipeline must authorize that version, not the highest one: versions of one component can
    declare different scopes.
    """
    meta = getattr(context.message, "meta", None)
    if not meta or not isinstance(meta, dict):
        return None
    fastmcp_meta = meta.get("fastmcp")
    if not isinstance(fastmcp_meta, dict):
        return None
    version = fastmcp_meta.get("version")
    if isinstance(version, str):
        return VersionSpec(eq=version)
    if isinstance(version, dict):
        bounds = {key: version.get(key) for key in ("gte", "lt", "eq")}
        if all(value is None or isinstance(value, str) for value in bounds.values()):
            return VersionSpec(**bounds)
        # Not a range FastMCP could have built: authorize nothing rather than guess.
        return VersionSpec(eq="__impossible__")
    return None


def version_text(version: VersionSpec | None) -> str | None:
    """A requested version as policies see it (:attr:`CallRequest.requested_version`): the exact
    version as asked (``"2"``), or a range as ``">=1,<3"``; ``None`` when none was asked.

    Policies and approvals decide on the version that runs (:attr:`CallRequest.version`, the
    resolved component's), never on this text."""
    if version is None:
        return None
    if version.eq is not None:
        return version.eq
    parts = []
    if version.gte is not None:
        parts.append(f">={version.gte}")
    if version.lt is not None:
        parts.append(f"<{version.lt}")
    return ",".join(parts)


def _credential_origin(context: MiddlewareContext[Any]) -> object:
    """The request a call's credential arrives with.

    FastMCP's request context (one per MCP request, over every transport), else, for a
    server-side call made outside any request, the MCP SDK's in-memory auth carrier. A task
    started while a call runs inherits both, so when such a task calls a component after the
    call ended, its origin is the ended call's: the pipeline refuses it instead of acting as
    that caller again (DESIGN guarantee 1). A genuinely new request has an origin of its own.
    """
    fastmcp_context = context.fastmcp_context
    request_context = fastmcp_context.request_context if fastmcp_context is not None else None
    if request_context is not None:
        return request_context
    return auth_context_var.get()


def _arguments(method: str, context: MiddlewareContext[Any]) -> dict[str, Any]:
    if method == "resources/read":
        return {}
    arguments = getattr(context.message, "arguments", None)
    return dict(arguments) if arguments else {}


class _CallRecord:
    """What the pipeline learns about one call as it goes (for telemetry and the audit log)."""

    __slots__ = (
        "allowed",
        "audited",
        "call_id",
        "error_type",
        "method",
        "outcome_recorded",
        "policy_version",
        "principal",
        "resolved",
        "target",
        "trace_id",
    )

    def __init__(self, method: str, target: str, trace_id: str | None) -> None:
        self.method = method
        self.target = target
        # The target audit records name: a resource read is named once its URI is resolved
        # (securemcp._resource_reads); until then by its scheme only.
        self.audited = target if method != "resources/read" else unresolved_target(target)
        self.trace_id = trace_id
        self.principal: Principal | None = None
        self.call_id: str | None = None
        self.allowed = False
        self.error_type: str | None = None
        self.policy_version: str | None = None
        self.outcome_recorded = False
        self.resolved = False  # the target is a registered component (telemetry may name it)


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
        _redact_span_exceptions()  # FastMCP's span exception events drop their messages
        _skip_absent_session_transforms()  # no identity serialized per lookup while no rule
        # NO_CONSTRAINTS, to skip testing a decision's constraints when it has none (the policy
        # modules are only imported when a policy or rate limit is configured).
        self._no_constraints: object = None
        if enforcement is not None:
            from securemcp.policy.decision import NO_CONSTRAINTS

            self._no_constraints = NO_CONSTRAINTS
        cls = type(self)
        # Messages may skip Middleware.__call__'s per-message handler chain only while its
        # method-agnostic hooks are the inherited pass-throughs (see __call__).
        self._direct_dispatch = (
            _dispatch_phase is not None
            and cls._dispatch_handler is Middleware._dispatch_handler
            and cls.on_message is Middleware.on_message
            and cls.on_request is Middleware.on_request
            and cls.on_notification is Middleware.on_notification
            and cls.on_call_tool is SecurityPipeline.on_call_tool
            and cls.on_read_resource is SecurityPipeline.on_read_resource
            and cls.on_get_prompt is SecurityPipeline.on_get_prompt
        )

    async def __call__(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        # The inherited dispatch wraps call_next in on_message -> on_request/on_notification (all
        # pass-throughs here) and, except in the "outer" phase, the typed hook. So the "outer"
        # phase is call_next itself, and a guarded method is _guard: call them directly and
        # save building and running up to three wrappers per message.
        if self._direct_dispatch and _dispatch_phase is not None:
            if _dispatch_phase.get() == "outer":
                return await call_next(context)
            method = context.method
            if method == "tools/call":
                return await self._guard(method, context.message.name, context, call_next)
            if method == "resources/read":
                return await self._guard(method, str(context.message.uri), context, call_next)
            if method == "prompts/get":
                return await self._guard(method, context.message.name, context, call_next)
        return await super().__call__(context, call_next)

    # --- identity -------------------------------------------------------------------------

    def verifier(self) -> IdentityVerifier | None:
        """The verifier in force, tracking later assignments to ``server.auth``."""
        auth = self._server.auth
        if auth is not self._verifier_source:
            self._verifier = resolve_verifier(auth)
            self._verifier_source = auth
        return self._verifier

    async def authenticate(
        self, context: MiddlewareContext[Any] | None = None, transport: str | None = None
    ) -> Principal:
        """Establish the caller from a verified credential, or the development principal.

        ``transport`` is the request's transport when the caller already knows it.

        Raises:
            Unauthenticated: no credential, an invalid one, or development mode in production.
        """
        verifier = self.verifier()
        if verifier is None:
            return self._development()
        token = self._credential(context, transport)
        verified = verified_principal(context, verifier, token)
        if verified is not None:
            return verified
        try:
            return await verifier.authenticate(token)
        except Exception as exc:
            raise failed_verification(exc, token) from None

    def _development(self) -> Principal:
        """The development principal (no verifier configured), refused in production."""
        if is_production():
            raise Unauthenticated(
                reason="no verifier configured and SECUREMCP_ENV=production refuses "
                "the development identity"
            )
        if self._development_principal is None:
            self._development_principal = development_principal(self._development_scopes)
        return self._development_principal

    def _credential(self, context: MiddlewareContext[Any] | None, transport: str | None) -> str:
        """The raw credential presented with this request, for the verifier to check.

        The credential found may come from the caller's own ContextVars (in-memory transports
        run handlers in the sender's context), so only the raw token is used and identity is
        always re-established by this server's verifier (cached by token hash).

        Raises:
            Unauthenticated: no credential presented.
        """
        token = presented_token(context)
        if token is None and (transport or transport_of(context)) == "stdio":
            token = self._server._securemcp_stdio.credential(request_meta(context))
        if not token:
            raise Unauthenticated(reason="no credential presented")
        return token

    def _delegator(self, target: str) -> SecurityContext | None:
        """The context of the mounting securemcp server's call this one was delegated by.

        Only the mount's own forwarding delegates: the parent admitted a call to the component
        that forwards to ``target`` on this server, and its core is running that component.
        Anything else the parent's call runs (a tool body calling this server directly) is a
        call of its own, authenticated and audited here.
        """
        outer = ADMISSION.get()
        if (
            outer is not None
            and outer.open
            and outer.consumed
            and outer.server in self._server._securemcp_parents
            and forwards_to(outer.component, self._server, target)
        ):
            return outer.context
        return None

    # --- component facts ------------------------------------------------------------------

    def forget_requirements(self) -> None:
        """Drop cached component facts (after any registration change)."""
        self._facts.clear()

    async def _resolve(self, method: str, target: str, version: VersionSpec | None) -> Any:
        server = self._server
        if method == "tools/call":
            return await server.get_tool(target, version)
        if method == "prompts/get":
            return await server.get_prompt(target, version)
        resource: Any = await server.get_resource(target, version)
        if resource is None:
            resource = await server.get_resource_template(target, version)
        return resource

    async def facts(
        self, method: str, target: str, version: VersionSpec | None = None
    ) -> ComponentFacts | None:
        """The facts of the target (of ``version``, else its highest version), or ``None`` if no
        such component exists for this caller."""
        key = (method, target)
        if version is None:
            cached = self._facts.get(key)
            if cached is not None:
                return cached
        component = await self._resolve(method, target, version)
        if component is None:
            return None
        try:
            # The memoized facts object: admission's re-check of an unchanged component then
            # finds the very same object and skips comparing field by field.
            facts = facts_of_cached(component)
        except InvalidScopeDeclaration as exc:
            raise PolicyDenied(reason=str(exc)) from None
        # Resource URIs are unbounded, tools and prompts are not; a requested version is any
        # text the caller chose, so only the highest versions are cached.
        if method != "resources/read" and version is None:
            if len(self._facts) >= _FACTS_CACHE_LIMIT:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    async def requested_facts(
        self, method: str, target: str, version: str | None = None
    ) -> ComponentFacts | None:
        """The facts of the target (exactly ``version``, if given), or ``None`` if no such
        component exists for this caller."""
        spec = VersionSpec(eq=version) if version is not None else None
        return await self.facts(method, target, spec)

    async def required_scopes(
        self, method: str, target: str, version: str | None = None
    ) -> frozenset[str] | None:
        """Scopes the target (exactly ``version``, if given) requires, or ``None`` if no such
        component exists for this caller."""
        facts = await self.requested_facts(method, target, version)
        return facts.scopes if facts is not None else None

    def _not_found(self, method: str, target: str) -> NotFoundError:
        return NotFoundError(f"Unknown {_KIND_BY_METHOD[method]}: {target!r}")

    def _check_scopes(
        self,
        method: str,
        target: str,
        principal: Principal,
        scopes: frozenset[str],
        logged: str | None = None,
    ) -> None:
        """Refuse a caller missing any declared scope (the body never runs). ``logged``: the
        target as the log names it (a template read by its URI template, as audit records do)."""
        missing = principal.missing_scopes(scopes)
        if not missing:
            return
        logger.info(
            "securemcp refused %s %r for %s: missing scope(s) %s",
            method,
            target if logged is None else logged,
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
        current_span = trace.get_current_span()
        if needs_request_span(current_span):  # an in-process or nested call: no span of its own
            with request_span(self._telemetry._tracer, method, target):
                return await self._guard(method, target, context, call_next)
        if method == "resources/read":  # a FastMCP parent's spans name it by the URI it was sent
            name_outer_reads()
        started = time.perf_counter()
        span = None
        steps: StepTimer | None = None  # step timings, only while the span records
        if current_span.is_recording():
            span = current_span
            guard_span(span)
            steps = StepTimer()
        trace_id = _trace_id(current_span)
        transport = transport_of(context)
        call = _CallRecord(method, target, trace_id)
        try:
            try:
                origin = _credential_origin(context)
                inherited = _CURRENT.get()
                if (
                    inherited is not None
                    and inherited._origin is origin
                    and origin is not None
                    and not inherited._open
                ):
                    # Code that outlived its call (a background task) reuses that call's
                    # request and credential: the caller's authority ended with the call.
                    raise Unauthenticated(reason="call_ended")
                delegator = self._delegator(target)
                if delegator is not None:
                    # Delegated from a securemcp server that mounted this one: the caller was
                    # verified there, for this very call. A fresh context is bound all the same.
                    principal, parent_call_id = delegator.principal, delegator.call_id
                else:
                    parent_call_id = None
                    verifier = self.verifier()
                    if verifier is None:
                        principal = self._development()
                    else:
                        token = self._credential(context, transport)
                        verified = verified_principal(context, verifier, token)
                        if verified is not None:
                            principal = verified
                        else:
                            try:
                                principal = await verifier.authenticate(token)
                            except Exception as exc:
                                raise failed_verification(exc, token) from None
            except Unauthenticated as exc:
                if steps is not None:
                    steps.done("securemcp.authenticate", exc.code)
                if self.auditor is not None:
                    self.auditor.auth_failure(
                        reason=exc.reason,
                        method=method,
                        target=call.audited,
                        transport=transport,
                        trace_id=trace_id,
                    )
                raise
            call.principal = principal
            if steps is not None:
                steps.done("securemcp.authenticate")
            # A call delegated by a mounting securemcp server is audited once, by that server.
            auditor = self.auditor if parent_call_id is None else None
            call_id = call.call_id = _new_call_id()
            security_context = SecurityContext._begin(
                call_id,
                method,
                target,
                principal,
                transport,
                trace_id,
                self._server.name,
                parent_call_id,
                origin,
            )
            arguments = audited_arguments = _arguments(method, context)
            bound = _CURRENT.set(security_context)
            component_version: str | None = None  # the version that runs, once resolved
            version_resolved = True  # False: a forwarding component; the upstream picks it
            try:
                try:
                    version = requested_version(context)
                    facts = self._facts.get((method, target)) if version is None else None
                    if facts is None:
                        facts = await self.facts(method, target, version)
                        if facts is None:
                            raise self._not_found(method, target)
                    call.resolved = True
                    component_version = facts.version
                    version_resolved = not facts.forwards_versions
                    if method == "resources/read":  # a template read is named like a tool call
                        call.audited, audited_arguments = audited_read(target, facts.uri_template)
                    enforcement = self.enforcement
                    if enforcement is None or not enforcement.active:
                        self._check_scopes(method, target, principal, facts.scopes, call.audited)
                        decision = None
                    else:
                        decision = await self._enforce(
                            enforcement,
                            method,
                            target,
                            principal,
                            arguments,
                            transport,
                            facts,
                            version,
                            call.audited,
                        )
                        if decision is not None:
                            call.policy_version = decision.policy_version
                except (CallRefused, _HiddenRefusal) as exc:
                    refused_by = getattr(exc, "policy_version", None)
                    if refused_by is not None:  # the policy version that refused it, for the span
                        call.policy_version = refused_by
                    if steps is not None:
                        steps.done("securemcp.authorize", exc.code)
                    if exc.code == "approval_required":
                        self._telemetry.approval("requested")
                    if auditor is not None:
                        auditor.refusal(
                            call_id=call_id,
                            method=method,
                            target=call.audited,
                            principal=principal,
                            arguments=audited_arguments,
                            code=exc.code,
                            trace_id=trace_id,
                            component_version=component_version,
                            rule=getattr(exc, "rule", None),
                            policy_version=getattr(exc, "policy_version", None),
                            version_resolved=version_resolved,
                            requested_version=None if version_resolved else version_text(version),
                        )
                    raise
                if steps is not None:
                    steps.done("securemcp.authorize")
                if auditor is not None:
                    # Written before the body runs; AuditUnavailable refuses the call.
                    try:
                        auditor.log.decision(  # CallAuditor.decision, minus its frame
                            call_id=call_id,
                            method=method,
                            target=call.audited,
                            result=decision if decision is not None else "allow",
                            identity=principal,
                            arguments=audited_arguments,
                            trace_id=trace_id,
                            server=auditor.server_name,
                            component_version=component_version,
                            version_resolved=version_resolved,
                            requested_version=None if version_resolved else version_text(version),
                        )
                    except Exception as exc:
                        if steps is not None:
                            steps.done("securemcp.audit.decision", "audit_unavailable")
                        # The decision line may have reached the local log before a sink
                        # failed: close it with a "refused" outcome (best effort), so no
                        # allow decision is left without an outcome when the log can be written.
                        self._record_failure(auditor, call, principal, exc, started)
                        raise
                if steps is not None and auditor is not None:
                    steps.done("securemcp.audit.decision")
                call.allowed = True
                # Admit exactly this call to the FastMCP core and run it (under any constraints).
                admission = Admission(
                    self._server,
                    method,
                    target,
                    security_context,
                    facts,
                    decision is not None,
                )
                admitted = ADMISSION.set(admission)
                try:
                    if (
                        decision is not None
                        and (constraints := decision.constraints) is not self._no_constraints
                        and constraints
                    ):
                        from securemcp.policy.enforcement import PolicyEnforcement

                        result = await PolicyEnforcement.run(
                            constraints, lambda: call_next(context)
                        )
                    else:
                        result = await call_next(context)
                finally:
                    admission.open = False
                    ADMISSION.reset(admitted)
                if getattr(result, "is_error", False):
                    call.error_type = "tool_error"
                if auditor is not None:
                    if steps is not None:
                        steps.skip()  # the tool ran
                    call.outcome_recorded = True  # attempted: a failed write is not retried
                    auditor.log.outcome(  # CallAuditor.outcome, minus its frame
                        call_id=call_id,
                        method=method,
                        target=call.audited,
                        outcome="tool_error" if call.error_type else "ok",
                        duration_ms=(time.perf_counter() - started) * 1000,
                        identity=principal,
                        error=call.error_type,
                        trace_id=trace_id,
                        server=auditor.server_name,
                    )
                    if steps is not None:
                        steps.done("securemcp.audit.outcome")
                return result
            except BaseException as exc:
                if (
                    steps is not None
                    and call.outcome_recorded
                    and steps.marks[-1][0] != "securemcp.audit.outcome"
                ):
                    steps.done("securemcp.audit.outcome", getattr(exc, "code", "_OTHER"))
                if call.allowed and auditor is not None and not call.outcome_recorded:
                    self._record_failure(auditor, call, principal, exc, started)
                if method == "prompts/get" and (masked := self._masked_prompt_error(exc)):
                    raise masked from exc.__cause__
                raise
            finally:
                _CURRENT.reset(bound)
                security_context._close()
        except CallRefused as exc:
            call.error_type = exc.code
            if exc.reason:
                # %r: the reason may hold a policy hook's text (quoting the caller's arguments);
                # escaped, a line break in it cannot forge a log line.
                if exc.code == "policy_error":  # a caller may repeat it at will: limited
                    policy_failures.log(
                        logger,
                        logging.INFO,
                        ("refused", method, call.audited),
                        "securemcp refused %s %r: %r",
                        method,
                        call.audited,
                        exc.reason,
                    )
                else:
                    logger.info("securemcp refused %s %r: %r", method, call.audited, exc.reason)
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
                # as audited: a template read by its URI template, never the caller's values
                target=call.audited,
                decision="allow" if call.allowed else "deny",
                reason=call.error_type or "ok",
                error_type=call.error_type,
                duration_s=time.perf_counter() - started,
                principal=call.principal,
                call_id=call.call_id,
                policy_version=call.policy_version,
                steps=steps,
                resolved=call.resolved,
            )

    def _masked_prompt_error(self, exc: BaseException) -> PromptError | None:
        """The masked form of a prompt's own exception, when this server masks error details.

        FastMCP 4.1.2's ``FunctionPrompt`` wraps any exception a prompt function raises in a
        ``PromptError`` quoting its text, before the server's ``mask_error_details`` handling
        could mask it (tools and resources are masked by the server). Only that wrapper is
        replaced: a ``PromptError`` raised on purpose has no foreign exception as its cause.
        """
        cause = exc.__cause__
        if (
            type(exc) is not PromptError
            or cause is None
            or isinstance(cause, FastMCPError)
            or not self._server._mask_error_details
        ):
            return None
        name = str(exc).partition(": ")[0]  # "Error rendering prompt 'name'"
        return PromptError(name if name.startswith("Error rendering prompt ") else "Error")

    async def _enforce(
        self,
        enforcement: PolicyEnforcement,
        method: str,
        target: str,
        principal: Principal,
        arguments: dict[str, Any],
        transport: str,
        facts: ComponentFacts,
        version: VersionSpec | None = None,
        logged: str | None = None,
    ) -> Any:
        """Rate limits, scopes and policy for a call to a resolved target; returns the decision.

        ``logged`` is the target as logs name it (see :meth:`_check_scopes`)."""
        request = enforcement.call_request(
            principal, method, target, arguments, facts, transport, version_text(version)
        )
        limiter = enforcement.rate_limiter
        if limiter is not None:
            (await limiter.hit(request)).raise_if_refused()  # as enforcement.rate_limit does
        self._check_scopes(method, target, principal, facts.scopes, logged)
        if enforcement.policy is None:
            return None
        if arguments and facts.input_schema is not None and method == "tools/call":
            # The policy must judge the values the tool will receive: refuse arguments FastMCP's
            # lax validation would coerce ("5000" for an integer). See securemcp.policy.arguments.
            from securemcp.policy.arguments import argument_type_error

            unusable: str | None = None
            try:
                misfit = argument_type_error(facts.input_schema, arguments)
            except Exception as exc:  # a malformed schema ($ref cycle...): refuse, audited
                misfit, unusable = None, type(exc).__name__
            if unusable is not None:
                raise InvalidArguments(reason=f"the tool's input schema is unusable: {unusable}")
            if misfit is not None:
                # Named by its declared parameter only: deeper path parts can be keys the
                # caller chose (a secret, a forged log line).
                declared = facts.input_schema.get("properties")
                top = re.split(r"[.\[]", misfit, maxsplit=1)[0]
                name = top if isinstance(declared, Mapping) and top in declared else "*"
                raise InvalidArguments(
                    f"Argument {name!r} does not have the JSON type the tool's input "
                    "schema declares; send the declared type (no strings for numbers or "
                    "booleans).",
                    reason=f"argument {name!r} has a JSON type the input schema does not "
                    "declare (refused: the tool would receive a coerced value)",
                )
        if facts.template_values is None:
            if facts.argument_values is None:  # every plain typed tool call
                decision = await enforcement.decide(request)
            else:  # a prompt or tool whose arguments FastMCP converts: judge them converted too
                forms, canonical_argument = await enforcement.argument_forms(facts, arguments)
                decision = await enforcement.decide(
                    request, forms=forms, argument_respelling=canonical_argument
                )
        else:  # a template read whose values FastMCP converts: judge its canonical spelling too
            spellings, respelling = await enforcement.spellings(facts, target)
            decision = await enforcement.decide(request, spellings, respelling=respelling)
        if decision is not None and decision.effect == "require_approval":
            self._telemetry.approval("consumed")  # the gate admitted it: an approval was used
        return decision

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
                target=call.audited,
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
                logger.info("securemcp refused %s: %r", context.method, exc.reason)
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
        # The memoized facts: a listing runs per call on the modern HTTP transport (the SDK
        # lists tools to validate Mcp-Param headers), so re-reading each declaration is waste.
        return not principal.missing_scopes(facts_of_cached(component).scopes)
    except InvalidScopeDeclaration:
        return False
