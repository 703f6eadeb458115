"""The policy enforcement point (PEP) the per-call pipeline runs.

Order, per call (after authentication and before the body runs)::

    rate limit ─▶ scopes (in the pipeline) ─▶ policy decision ─▶ approval ─▶ constraints

A ``deny`` raises the matching refusal; ``require_approval`` consumes an approval bound to this
exact call or raises :class:`ApprovalRequired` with the approval id; ``constrain`` (and an
approved call's constraints) is enforced here: argument bounds before the call, a timeout around
it, a result size limit after it. Every failure mode refuses (XACML's PEP rule).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import anyio

from securemcp._log_limits import policy_failures
from securemcp.errors import CallRefused, CallTimedOut, PolicyDenied, ResultTooLarge
from securemcp.policy.approvals import ApprovalGate, ApprovalStore, open_store
from securemcp.policy.decision import Constraints, Decision, Effect
from securemcp.policy.errors import PolicyError
from securemcp.policy.hooks import PolicyLike, refusal, settle, start, strictest
from securemcp.policy.ratelimit import RateLimit, RateLimiter
from securemcp.policy.request import CallRequest, resource_target, same_json

if TYPE_CHECKING:
    from securemcp._prompt_values import ArgumentForms, ArgumentRespelling
    from securemcp._template_values import Respelling
    from securemcp._tool_values import ToolArgumentRespelling
    from securemcp.components import ComponentFacts
    from securemcp.context import Principal

__all__ = ["PolicyEnforcement"]

logger = logging.getLogger("securemcp.policy")

RateLimitsSetting = RateLimiter | Iterable[RateLimit | Mapping[str, Any]] | None
ApprovalsSetting = ApprovalGate | ApprovalStore | str | os.PathLike[str] | None


def _policy(setting: Any) -> PolicyLike | None:
    if setting is None:
        return None
    if isinstance(setting, str | os.PathLike):
        if os.fspath(setting).endswith(".cedar"):
            from securemcp.policy.cedar import CedarPolicy

            return CedarPolicy.from_file(setting)
        from securemcp.policy.rules import RulesPolicy

        return RulesPolicy.from_file(setting)
    return setting  # type: ignore[no-any-return]


def _limiter(setting: RateLimitsSetting) -> RateLimiter | None:
    if setting is None or isinstance(setting, RateLimiter):
        return setting
    return RateLimiter(setting)


class PolicyEnforcement:
    """Rate limits, the policy hook, approvals and constraints for one server.

    Args:
        policy: any policy (function, object, combinator), or a path to a TOML rules file or
            to a Cedar policy file (``*.cedar``).
        rate_limits: a :class:`RateLimiter`, or the rules to build an in-memory one.
        approvals: an :class:`ApprovalGate`, an :class:`ApprovalStore`, or a store spec
            (``redis://...`` or a SQLite path). Default: the local SQLite store, opened the first
            time a decision requires approval.
    """

    def __init__(
        self,
        *,
        policy: Any = None,
        rate_limits: RateLimitsSetting = None,
        approvals: ApprovalsSetting = None,
    ) -> None:
        self.policy = _policy(policy)
        self.rate_limiter = _limiter(rate_limits)
        self._approvals_setting = approvals
        self._gate: ApprovalGate | None = None
        self._initial_policy_event: Any = None
        self._audit_policy_changed: Any = None
        self.active = self.policy is not None or self.rate_limiter is not None

    @property
    def gate(self) -> ApprovalGate:
        """The approval gate (opened on first use)."""
        if self._gate is None:
            setting = self._approvals_setting
            if isinstance(setting, ApprovalGate):
                self._gate = setting
            elif setting is None or isinstance(setting, str | os.PathLike):
                self._gate = ApprovalGate(open_store(setting))
            else:
                self._gate = ApprovalGate(setting)
        return self._gate

    def connect_audit(self, log: Any) -> None:
        """Record policy loads, reloads, failed reloads and rate-limit storage failures in ``log``.

        ``log`` is a :class:`securemcp.audit.AuditLog`. Recording is best effort: these events
        are also logged, and a failure to audit them never changes a call's decision.
        """
        from securemcp.policy._hot_reload import HotReloadedPolicy, PolicyChange
        from securemcp.policy.ratelimit import StorageFailure

        def policy_changed(event: PolicyChange) -> None:
            try:
                if event.kind == "reload_failed":
                    log.config_change(
                        what="policy_reload_failed",
                        details={"source": event.source, "errors": list(event.errors)},
                        config_version=event.policy_version,
                    )
                else:
                    log.policy_change(
                        policy_version=event.policy_version or "",
                        previous_version=event.previous_version,
                        source=event.source,
                    )
            except Exception:
                logger.exception("securemcp could not audit a policy change")

        def storage_failed(failure: StorageFailure) -> None:
            try:
                log.config_change(
                    what="rate_limit_storage_failure",
                    details={
                        "limit": failure.limit,
                        "error": failure.error,
                        "behaviour": failure.behaviour,
                    },
                )
            except Exception:
                logger.exception("securemcp could not audit a rate-limit storage failure")

        policy: Any = self.policy
        if isinstance(policy, HotReloadedPolicy):  # a rules file or a Cedar policy file
            policy.subscribe(policy_changed)
            self._initial_policy_event = PolicyChange("loaded", policy.source, policy.version)
        if self.rate_limiter is not None:
            self.rate_limiter.subscribe(storage_failed)
        self._audit_policy_changed = policy_changed

    def audit_initial_policy(self) -> None:
        """Record the rules file in force at start-up (called once the log is open)."""
        event = self._initial_policy_event
        callback = self._audit_policy_changed
        if event is not None and callback is not None:
            callback(event)
            self._initial_policy_event = None

    async def rate_limit(self, request: CallRequest) -> None:
        """Count the call against every applicable limit.

        Raises:
            RateLimited: a limit refused it (with ``retry_after``).
        """
        if self.rate_limiter is not None:
            (await self.rate_limiter.hit(request)).raise_if_refused()

    @staticmethod
    def call_request(
        principal: Principal,
        method: str,
        target: str,
        arguments: Mapping[str, Any] | None,
        facts: ComponentFacts,
        transport: str,
        requested_version: str | None = None,
    ) -> CallRequest:
        """The :class:`CallRequest` that rate limits and the policy see for one call.

        ``facts`` are those of the component the call resolved to, so the request's ``version``
        is the version that runs, whatever ``requested_version`` (the caller's text) says; a
        forwarder to versioned components elsewhere leaves it unresolved.

        A resource template read's target is its URI the way FastMCP reads it
        (:func:`resource_target`), so percent-encoding cannot dodge a rule (nor, judged with
        :meth:`spellings`, re-spelling a typed value); its ``template``
        names the template that serves it, which rate limits count (no spelling of a value, and
        no other value, gets a fresh bucket). A concrete resource, which FastMCP finds by its
        exact URI only, keeps that URI.
        """
        uri = template = None
        if method == "resources/read" and facts.uri_template is not None:
            # a template read; a concrete resource is found by its exact URI, which stays
            uri, template = target, facts.uri_template
            if "#" in template:  # FastMCP matches the whole URI: no fragment to drop
                from securemcp._template_values import template_target

                target = template_target(target, template, facts.query_names)
            else:
                target = resource_target(target, facts.query_names)
        return CallRequest.build(
            principal,
            target,
            arguments,
            method=method,
            tags=facts.tags,
            annotations=facts.annotations,
            risk=facts.risk,
            transport=transport,
            version=facts.version,
            uri=uri,
            requested_version=requested_version,
            version_resolved=not facts.forwards_versions,
            template=template,
        )

    @staticmethod
    async def spellings(
        facts: ComponentFacts, uri: str
    ) -> tuple[tuple[str, ...], Respelling | None]:
        """The canonical spelling of a template read of ``uri`` (``()`` for any other call, or
        when every value is written as the function receives it): the URI with each value
        FastMCP converts for the template function (``id: int``) written as the function
        receives it, see :mod:`securemcp._template_values`; and the template's
        :class:`~securemcp._template_values.Respelling`, with which a rules file writes the
        URIs its rules name canonically too. A mount's forwarder is followed to the mounted
        server's template (one lookup there).

        Raises:
            PolicyError: how the template converts a value cannot be told (fail closed).
        """
        found = facts.template_values
        if found is None:
            return (), None
        from securemcp._template_values import MountedTemplate, Respelling, UnknownConversion

        try:
            values = await found.values(uri) if isinstance(found, MountedTemplate) else found
            if values is None:
                return (), None
            spellings = values.spellings(uri, facts.query_names)
            return spellings, Respelling(values, facts.query_names)
        except UnknownConversion as exc:
            policy_failures.log(
                logger,
                logging.ERROR,
                ("template values", found.uri_template, str(exc)),
                "securemcp cannot tell how %r converts a read: %s",
                found.uri_template,
                exc,
            )
            raise PolicyError(reason=f"policy_error (template values: {exc})") from None
        except Exception as exc:  # failing unlike FastMCP's own conversion: fail closed
            policy_failures.log(
                logger,
                logging.ERROR,
                ("template conversion", found.uri_template, type(exc).__name__),
                "securemcp could not convert a read of %r: %s",
                found.uri_template,
                type(exc).__name__,
            )
            raise PolicyError(
                reason=f"policy_error (template values: {type(exc).__name__})"
            ) from None

    @staticmethod
    async def argument_forms(
        facts: ComponentFacts, arguments: Mapping[str, Any] | None
    ) -> tuple[ArgumentForms | None, ArgumentRespelling | ToolArgumentRespelling | None]:
        """The other forms of a prompt call's or tool call's ``arguments`` (``None`` for any
        other call, or when every argument reaches the function as sent): as the function
        receives them and canonically written as text, see :mod:`securemcp._prompt_values`
        and, for a tool parameter the validation converts (``Decimal``, ``int | str``, a
        ``UUID``), :mod:`securemcp._tool_values`; and the function's respelling
        (:class:`~securemcp._prompt_values.ArgumentRespelling`,
        :class:`~securemcp._tool_values.ToolArgumentRespelling`), with which a rules file
        writes the text values its conditions name canonically too. A mount's forwarder is
        followed to the mounted server's prompt or tool (one lookup there).

        Raises:
            PolicyError: how the function converts an argument cannot be told (fail closed).
        """
        found = facts.argument_values
        if found is None:
            return None, None
        from securemcp._prompt_values import ArgumentRespelling, PromptValues
        from securemcp._template_values import UnknownConversion
        from securemcp._tool_values import ToolArgumentRespelling

        try:
            # a mount's forwarder (MountedPrompt, MountedTool): the mounted server's own
            values = await found.values() if hasattr(found, "values") else found
            if values is None:
                return None, None
            if isinstance(values, PromptValues):
                return values.forms(arguments), ArgumentRespelling(values)
            return values.forms(arguments), ToolArgumentRespelling(values)
        except UnknownConversion as exc:
            what = _converting(found)
            policy_failures.log(
                logger,
                logging.ERROR,
                (f"{what} arguments", str(exc)),
                "securemcp cannot tell how a %s converts its arguments: %s",
                what,
                exc,
            )
            raise PolicyError(reason=f"policy_error ({what} arguments: {exc})") from None
        except Exception as exc:  # failing unlike FastMCP's own conversion: fail closed
            what = _converting(found)
            policy_failures.log(
                logger,
                logging.ERROR,
                (f"{what} conversion", type(exc).__name__),
                "securemcp could not convert a %s's arguments: %s",
                what,
                type(exc).__name__,
            )
            raise PolicyError(
                reason=f"policy_error ({what} arguments: {type(exc).__name__})"
            ) from None

    async def decide(
        self,
        request: CallRequest,
        spellings: tuple[str, ...] = (),
        forms: ArgumentForms | None = None,
        respelling: Respelling | None = None,
        argument_respelling: ArgumentRespelling | ToolArgumentRespelling | None = None,
    ) -> Decision | None:
        """The policy decision for ``request`` (``None`` when no policy is configured).

        ``spellings`` (from :meth:`spellings`) are other texts of the same read, as the
        template function receives it: the policy judges each as the request's target too,
        and the strictest decision wins (:func:`~securemcp.policy.hooks.strictest`). An
        approval is then bound to the first, the read's canonical spelling.

        ``respelling`` (from :meth:`spellings`) is set as the request's
        ``canonical_spelling``: a rules file then writes the URIs its rules name canonically
        too, so ``grid://7/1.0`` holds for ``grid://7.0/1``.

        ``forms`` (from :meth:`argument_forms`) are other forms of a prompt call's or tool
        call's arguments: the policy judges the request with each as its arguments too (each
        form unlike the arguments sent, once), the strictest decision wins, argument bounds hold
        on the arguments as the function receives them, and an approval is bound to the
        canonical form (``forms.binding``, else the canonical text).

        Raises:
            PolicyDenied / PolicyError: the policy denied the call or failed.
            ApprovalRequired / ApprovalInvalid: approval is needed, pending, denied or misused.
        """
        policy = self.policy
        if policy is None:
            return None
        if respelling is not None:
            request = dataclasses.replace(request, canonical_spelling=respelling)
        elif argument_respelling is not None:
            request = request.with_canonical_argument(argument_respelling)
        # hooks.evaluate in its two steps: a sync policy's decision needs no coroutine.
        decision = start(policy, request)
        if type(decision) is not Decision:
            decision = await settle(policy, decision)
        bounded = request.arguments
        approval_arguments: Mapping[str, Any] | None = None
        if spellings:
            request, decision = await self._judge_spellings(policy, request, decision, spellings)
            bounded = request.arguments
        elif forms is not None:
            judged: list[Mapping[str, Any]] = []  # each form unlike the arguments sent, once
            for form in (forms.received, *forms.texts):
                if not same_json(form, request.arguments) and not any(
                    same_json(form, other) for other in judged
                ):
                    judged.append(form)
            if judged:
                others = [request.with_arguments(form) for form in judged]
                decision = await self._strictest(policy, decision, others)
            bounded = forms.received
            approval_arguments = forms.binding if forms.binding is not None else forms.texts[0]
        if not decision.well_formed:
            # Fields changed behind the dataclass's back: fail closed, as for a raising hook.
            policy_failures.log(
                logger,
                logging.ERROR,
                ("malformed",),
                "securemcp policy returned a malformed Decision; denying (fail closed)",
            )
            raise PolicyError(reason="policy_error (malformed decision)")
        if decision.effect is Effect.DENY:
            raise refusal(decision)
        # Bounds before the approval gate: a call outside them cannot run, so no approver is
        # asked about it and no granted approval is spent on it.
        constraints = decision.constraints
        violations = constraints.violations(bounded) if constraints.arguments else ()
        if violations:
            raise PolicyDenied(reason=f"constraint violated: {'; '.join(violations)}").decided_by(
                decision
            )
        if decision.effect is Effect.REQUIRE_APPROVAL:
            if approval_arguments is not None:  # bound to the canonical form
                request = request.with_arguments(approval_arguments)
            try:
                await self.gate.check(request, decision)
            except CallRefused as exc:
                exc.decided_by(decision)
                raise
        return decision

    @staticmethod
    async def _judge_spellings(
        policy: PolicyLike, request: CallRequest, decision: Decision, spellings: tuple[str, ...]
    ) -> tuple[CallRequest, Decision]:
        """``request`` as its canonical spelling, and the strictest decision on every spelling."""
        canonical = request
        variants = []
        for target in spellings:
            if target == request.target:
                continue
            variant = dataclasses.replace(request, target=target)
            if canonical is request and target == spellings[0]:
                canonical = variant
            variants.append(variant)
        return canonical, await PolicyEnforcement._strictest(policy, decision, variants)

    @staticmethod
    async def _strictest(
        policy: PolicyLike, decision: Decision, variants: Iterable[CallRequest]
    ) -> Decision:
        """The strictest of ``decision`` and the policy's decision on each of ``variants``."""
        decisions = [decision]
        for variant in variants:
            judged = start(policy, variant)
            if type(judged) is not Decision:
                judged = await settle(policy, judged)
            decisions.append(judged)
        if not all(judged.well_formed for judged in decisions):
            policy_failures.log(
                logger,
                logging.ERROR,
                ("malformed",),
                "securemcp policy returned a malformed Decision; denying (fail closed)",
            )
            raise PolicyError(reason="policy_error (malformed decision)")
        combined = strictest(decisions)
        if combined is None:  # cannot happen: settle never abstains
            raise PolicyError(reason="policy_error (no decision)")
        return combined

    @staticmethod
    async def run(constraints: Constraints | None, call: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``call`` under ``constraints`` (timeout around it, result size after it)."""
        if constraints is None or (
            constraints.timeout_seconds is None and constraints.max_result_bytes is None
        ):
            return await call()
        if constraints.timeout_seconds is not None:
            try:
                with anyio.fail_after(constraints.timeout_seconds):
                    result = await call()
            except TimeoutError:
                raise CallTimedOut(
                    f"The call exceeded its time limit of {constraints.timeout_seconds:g} s "
                    "set by policy and was cancelled."
                ) from None
        else:
            result = await call()
        limit = constraints.max_result_bytes
        if limit is not None and _result_size(result) > limit:
            raise ResultTooLarge(reason=f"result larger than {limit} bytes")
        return result


def _converting(found: Any) -> str:
    """What converts a call's arguments, for logs: a prompt or a tool."""
    from securemcp._prompt_values import MountedPrompt, PromptValues

    return "prompt" if isinstance(found, PromptValues | MountedPrompt) else "tool"


def _result_size(result: Any) -> int:
    """Serialized size of a tool, resource or prompt result, in bytes."""
    import pydantic_core

    parts: list[Any] = []
    for attribute in ("content", "structured_content", "contents", "messages"):
        value = getattr(result, attribute, None)
        if value is not None:
            parts.append(value)
    if not parts:
        parts.append(result)
    return sum(len(pydantic_core.to_json(part, fallback=str)) for part in parts)
