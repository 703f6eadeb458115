"""The policy hook: any callable or object that decides a :class:`CallRequest`.

A *policy* is any of:

* a function ``f(request) -> Decision | bool | None`` (sync or ``async``);
* an object with an ``evaluate(request)`` method of that shape (the :class:`Policy` protocol);
* a combination built with :func:`all_of`, :func:`any_of` or :func:`first_match`.

``True``/``False`` mean allow/deny; ``None`` means *no opinion* (abstain), which lets a policy
defer to the next one in :func:`first_match`. :func:`evaluate` always returns a
:class:`Decision` and **fails closed** (the policy-enforcement-point rule of XACML, AGT's
``deny-on-error``, ContextForge's ``PermissionService``): a hook that raises, returns the wrong
type, abstains at the top level or (async) exceeds ``timeout`` yields
``Decision.deny("policy_error")`` with the cause in ``detail`` and in the server log.

Sync hooks run inline on the event loop (they must be fast and must not do I/O); the timeout
applies to async hooks. Errors inside a combinator count as a deny from that member.

Combinators:

* ``all_of(a, b, ...)`` — every member must allow: the first deny wins; otherwise
  ``require_approval`` if any member requires it; otherwise ``constrain`` with all members'
  constraints merged (the tighter of each); otherwise allow. Abstentions are ignored.
* ``any_of(a, b, ...)`` — the first member that allows (or constrains) wins; otherwise the first
  ``require_approval``; otherwise the first deny.
* ``first_match(a, b, ...)`` — the first member that does not abstain decides.

:func:`risk_defaults` is the per-risk-class fallback (destructive and admin require approval,
everything else is allowed); put it last in a :func:`first_match`.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias, runtime_checkable

import anyio

from securemcp._log_limits import policy_failures
from securemcp.errors import CallRefused, PolicyDenied
from securemcp.policy.decision import NO_CONSTRAINTS, Decision, Effect
from securemcp.policy.errors import PolicyError
from securemcp.policy.request import CallRequest, RiskClass

__all__ = [
    "RISK_DEFAULTS",
    "Policy",
    "PolicyLike",
    "PolicyResult",
    "all_of",
    "any_of",
    "decide",
    "evaluate",
    "first_match",
    "policy_name",
    "refusal",
    "risk_defaults",
    "settle",
    "start",
    "strictest",
]

logger = logging.getLogger("securemcp.policy")

PolicyResult: TypeAlias = Decision | bool | None


@runtime_checkable
class Policy(Protocol):
    """An object that decides calls. ``evaluate`` may be sync or async."""

    def evaluate(self, request: CallRequest) -> PolicyResult | Awaitable[PolicyResult]:
        """Decide ``request``: a Decision, ``True``/``False``, or ``None`` to abstain."""
        ...


PolicyLike: TypeAlias = Policy | Callable[[CallRequest], PolicyResult | Awaitable[PolicyResult]]

#: Reason of every fail-closed decision.
POLICY_ERROR: Final = "policy_error"


def policy_name(policy: Any) -> str:
    """A readable name for a policy: its ``name`` attribute, function name or class name."""
    name = getattr(policy, "name", None)
    if isinstance(name, str) and name:
        return name
    qualname = getattr(policy, "__qualname__", None)
    if isinstance(qualname, str):
        return qualname
    return type(policy).__name__


def _failed(policy: Any, detail: str) -> Decision:
    return Decision(Effect.DENY, POLICY_ERROR, rule=policy_name(policy), detail=detail)


def _coerce(policy: Any, result: Any) -> Decision | None:
    if isinstance(result, Decision):
        if result.well_formed:
            return result
        name = policy_name(policy)
        policy_failures.log(
            logger,
            logging.ERROR,
            ("malformed", name),
            "securemcp policy %s returned a malformed Decision; denying (fail closed)",
            name,
        )
        return _failed(policy, "returned a malformed Decision")
    if result is True:
        return Decision.allow(rule=policy_name(policy))
    if result is False:
        return Decision.deny(f"denied by {policy_name(policy)}", rule=policy_name(policy))
    if result is None:
        return None
    name, kind = policy_name(policy), type(result).__name__
    policy_failures.log(
        logger,
        logging.ERROR,
        ("returned", name, kind),
        "securemcp policy %s returned %s, not a Decision or bool; denying (fail closed)",
        name,
        kind,
    )
    return _failed(policy, f"returned {type(result).__name__}, not a Decision or bool")


def _raised(policy: Any, exc: Exception) -> Decision:
    name, kind = policy_name(policy), type(exc).__name__
    policy_failures.log(
        logger,
        logging.ERROR,
        ("raised", name, kind),
        "securemcp policy %s raised %s; denying (fail closed)",
        name,
        kind,
        exc_info=exc,
    )
    return _failed(policy, f"raised {type(exc).__name__}")


def _start(policy: Any, request: CallRequest) -> Decision | Awaitable[Any] | None:
    """Call ``policy``: its decision, or the awaitable an async policy returned (unfinished).

    Sync policies never pay for a coroutine or a timeout scope.
    """
    method = getattr(policy, "evaluate", None)
    target = method if callable(method) else policy
    try:
        result = target(request)
    except Exception as exc:
        return _raised(policy, exc)
    if type(result) is Decision and result.effect.__class__ is Effect:
        return result  # the usual answer, without the Awaitable ABC check
    if inspect.isawaitable(result):
        return result
    return _coerce(policy, result)


async def _finish(policy: Any, pending: Awaitable[Any]) -> Decision | None:
    try:
        result = await pending
    except anyio.get_cancelled_exc_class():
        raise
    except Exception as exc:
        return _raised(policy, exc)
    return _coerce(policy, result)


async def decide(policy: PolicyLike, request: CallRequest) -> Decision | None:
    """Evaluate one policy without a timeout; ``None`` when it abstains.

    Never raises (except cancellation): errors become a fail-closed deny.
    """
    result = _start(policy, request)
    if inspect.isawaitable(result):
        return await _finish(policy, result)
    return result


async def evaluate(
    policy: PolicyLike,
    request: CallRequest,
    *,
    timeout: float | None = 5.0,  # noqa: ASYNC109 - bounds the hook, applied with anyio
) -> Decision:
    """Decide ``request`` with ``policy``; always a :class:`Decision`, failing closed.

    Args:
        policy: a function, a :class:`Policy` object or a combinator.
        request: the call.
        timeout: seconds an async policy may take (``None``: no limit). Sync policies run inline
            and are not timed.
    """
    result = start(policy, request)
    if type(result) is Decision:
        return result
    return await settle(policy, result, timeout=timeout)


#: Run ``policy`` on a request: its decision, ``None``, or the awaitable an async one returned;
#: :func:`settle` turns anything but a decision into one (what :func:`evaluate` does in two
#: steps, so a caller holding a sync policy's decision skips a coroutine).
start = _start


async def settle(
    policy: PolicyLike,
    result: Decision | Awaitable[Any] | None,
    *,
    timeout: float | None = 5.0,  # noqa: ASYNC109 - bounds the hook, applied with anyio
) -> Decision:
    """The decision for what :func:`start` returned (awaited within ``timeout``), failing closed."""
    decision: Decision | None
    if result is None or type(result) is Decision or not inspect.isawaitable(result):
        decision = result
    elif timeout is None:
        decision = await _finish(policy, result)
    else:
        decision = None
        timed_out = True
        with anyio.move_on_after(timeout):
            decision = await _finish(policy, result)
            timed_out = False
        if timed_out:
            name = policy_name(policy)
            policy_failures.log(
                logger,
                logging.ERROR,
                ("timeout", name),
                "securemcp policy %s did not decide within %.3g s; denying (fail closed)",
                name,
                timeout,
            )
            return _failed(policy, f"timed out after {timeout:g} s")
    if decision is None:
        return _failed(policy, "no policy made a decision")
    return decision


class _Continue:
    """Marker: the combinator has not decided yet."""


_CONTINUE: Final = _Continue()
_Step: TypeAlias = "Decision | _Continue | None"


class _Combinator:
    """A combination of policies.

    ``evaluate`` stays synchronous while every member is (no coroutine, no event-loop cost) and
    continues asynchronously from the first member that returns an awaitable.
    """

    kind = ""

    def __init__(self, *policies: PolicyLike, name: str | None = None) -> None:
        if not policies:
            raise ValueError(f"{self.kind}() needs at least one policy")
        self.policies: tuple[PolicyLike, ...] = policies
        self.name = name or f"{self.kind}({', '.join(policy_name(p) for p in policies)})"

    def __repr__(self) -> str:
        return f"<{self.name}>"

    def _state(self) -> list[Any]:
        return []

    def _step(self, state: list[Any], decision: Decision | None) -> _Step:
        raise NotImplementedError

    def _result(self, state: list[Any]) -> Decision | None:
        raise NotImplementedError

    def evaluate(self, request: CallRequest) -> Decision | Awaitable[Decision | None] | None:
        """Decide ``request`` (a coroutine only when a member is async)."""
        state = self._state()
        for index, policy in enumerate(self.policies):
            result = _start(policy, request)
            if inspect.isawaitable(result):
                return self._continue(request, state, index, result)
            step = self._step(state, result)
            if step is not _CONTINUE:
                return step  # type: ignore[return-value]
        return self._result(state)

    async def _continue(
        self, request: CallRequest, state: list[Any], index: int, pending: Awaitable[Any]
    ) -> Decision | None:
        step = self._step(state, await _finish(self.policies[index], pending))
        if step is not _CONTINUE:
            return step  # type: ignore[return-value]
        for policy in self.policies[index + 1 :]:
            step = self._step(state, await decide(policy, request))
            if step is not _CONTINUE:
                return step  # type: ignore[return-value]
        return self._result(state)


def _all_of_state() -> list[Any]:
    return [None, None, None, NO_CONSTRAINTS]  # approval, constrained, allowed, merged


def _all_of_step(state: list[Any], decision: Decision | None) -> _Step:
    if decision is None:
        return _CONTINUE
    if decision.effect is Effect.DENY:
        return decision
    state[3] = state[3].merge(decision.constraints)
    if decision.effect is Effect.REQUIRE_APPROVAL:
        state[0] = state[0] or decision
    elif decision.effect is Effect.CONSTRAIN:
        state[1] = state[1] or decision
    else:
        state[2] = state[2] or decision
    return _CONTINUE


def _all_of_result(state: list[Any]) -> Decision | None:
    decisive: Decision | None = state[0] or state[1] or state[2]
    if decisive is None or state[3] is decisive.constraints:
        return decisive
    return dataclasses.replace(decisive, constraints=state[3])


def strictest(decisions: Iterable[Decision | None]) -> Decision | None:
    """The strictest of several decisions on one call, as :func:`all_of` combines its members'.

    The first deny; otherwise the first ``require_approval``, then the first ``constrain``,
    then the first allow, carrying every decision's constraints merged (the tighter of each).
    ``None`` (abstain) is ignored; ``None`` when every decision abstains.
    """
    state = _all_of_state()
    for decision in decisions:
        step = _all_of_step(state, decision)
        if step is not _CONTINUE:
            return step  # type: ignore[return-value]
    return _all_of_result(state)


class _AllOf(_Combinator):
    kind = "all_of"

    def _state(self) -> list[Any]:
        return _all_of_state()

    def _step(self, state: list[Any], decision: Decision | None) -> _Step:
        return _all_of_step(state, decision)

    def _result(self, state: list[Any]) -> Decision | None:
        return _all_of_result(state)


class _AnyOf(_Combinator):
    kind = "any_of"

    def _state(self) -> list[Any]:
        return [None, None]  # first require_approval, first deny

    def _step(self, state: list[Any], decision: Decision | None) -> _Step:
        if decision is None:
            return _CONTINUE
        if decision.allowed:
            return decision
        if decision.effect is Effect.REQUIRE_APPROVAL:
            state[0] = state[0] or decision
        else:
            state[1] = state[1] or decision
        return _CONTINUE

    def _result(self, state: list[Any]) -> Decision | None:
        result: Decision | None = state[0] or state[1]
        return result


class _FirstMatch(_Combinator):
    kind = "first_match"

    def _step(self, state: list[Any], decision: Decision | None) -> _Step:
        return _CONTINUE if decision is None else decision

    def _result(self, state: list[Any]) -> Decision | None:
        return None


def all_of(*policies: PolicyLike, name: str | None = None) -> Policy:
    """Every member must allow; see the module docstring for the exact rules."""
    return _AllOf(*policies, name=name)


def any_of(*policies: PolicyLike, name: str | None = None) -> Policy:
    """The first member that allows wins; see the module docstring."""
    return _AnyOf(*policies, name=name)


def first_match(*policies: PolicyLike, name: str | None = None) -> Policy:
    """The first member that does not abstain decides."""
    return _FirstMatch(*policies, name=name)


#: The decision for each risk class when no rule decides (destructive/admin need approval).
RISK_DEFAULTS: Final[Mapping[RiskClass, Decision]] = MappingProxyType(
    {
        RiskClass.READ: Decision.allow("read-only tools are allowed by default", rule="risk:read"),
        RiskClass.WRITE: Decision.allow("write tools are allowed by default", rule="risk:write"),
        RiskClass.EXTERNAL: Decision.allow(
            "open-world tools are allowed by default", rule="risk:external"
        ),
        RiskClass.DESTRUCTIVE: Decision.require_approval(
            "destructive tools require approval by default", rule="risk:destructive"
        ),
        RiskClass.ADMIN: Decision.require_approval(
            "admin tools require approval by default", rule="risk:admin"
        ),
    }
)


def risk_defaults(request: CallRequest) -> Decision:
    """The default decision for the request's risk class (:data:`RISK_DEFAULTS`)."""
    return RISK_DEFAULTS[request.risk]


def refusal(decision: Decision) -> CallRefused:
    """The exception the pipeline raises for a ``deny`` decision.

    ``PolicyError`` (code ``policy_error``) when the policy failed, else ``PolicyDenied``. The
    decision's reason and rule go on ``reason`` (internal), never into the client message.
    """
    internal = f"{decision.rule}: {decision.reason}" if decision.rule else decision.reason
    if decision.reason == POLICY_ERROR:
        return PolicyError(reason=f"{internal} ({decision.detail})").decided_by(decision)
    return PolicyDenied(reason=internal).decided_by(decision)
