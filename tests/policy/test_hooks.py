"""The policy hook: sync/async callables and objects, fail-closed evaluation, combinators."""

from __future__ import annotations

import asyncio
import logging

import pytest
from policy_helpers import request

from securemcp.errors import PolicyDenied
from securemcp.policy import (
    CallRequest,
    Decision,
    Effect,
    PolicyError,
    all_of,
    any_of,
    evaluate,
    first_match,
    refusal,
    risk_defaults,
)


def allow_adds(req: CallRequest) -> Decision | None:
    return Decision.allow(rule="adds") if req.target == "add" else None


async def async_deny(req: CallRequest) -> Decision:
    await asyncio.sleep(0)
    return Decision.deny("async says no", rule="async")


class ObjectPolicy:
    name = "object-policy"

    def evaluate(self, req: CallRequest) -> bool:
        return req.principal.subject == "alice"


async def test_forms_of_hook() -> None:
    req = request("add")
    assert (await evaluate(allow_adds, req)).rule == "adds"
    assert (await evaluate(async_deny, req)).reason == "async says no"
    decision = await evaluate(ObjectPolicy(), req)
    assert decision.effect is Effect.ALLOW and decision.rule == "object-policy"
    decision = await evaluate(lambda r: False, req)
    assert decision.effect is Effect.DENY


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda r: 1 / 0, id="raises"),
        pytest.param(lambda r: "allow", id="wrong-type"),
        pytest.param(lambda r: None, id="abstains-at-top-level"),
    ],
)
async def test_failing_hooks_deny(hook: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="securemcp.policy"):
        decision = await evaluate(hook, request())  # type: ignore[arg-type]
    assert decision.effect is Effect.DENY
    assert decision.reason == "policy_error"
    assert decision.detail


async def test_raising_hook_is_logged_and_maps_to_policy_error() -> None:
    def broken(req: CallRequest) -> Decision:
        raise KeyError("secret-internal-detail")

    decision = await evaluate(broken, request())
    assert decision.reason == "policy_error" and decision.detail == "raised KeyError"
    error = refusal(decision)
    assert isinstance(error, PolicyError) and error.code == "policy_error"
    assert "secret-internal-detail" not in str(error)
    plain = refusal(Decision.deny("not on weekends", rule="weekday"))
    assert isinstance(plain, PolicyDenied) and plain.reason == "weekday: not on weekends"


async def test_slow_async_hook_times_out_closed() -> None:
    async def slow(req: CallRequest) -> Decision:
        await asyncio.sleep(10)
        return Decision.allow()

    decision = await evaluate(slow, request(), timeout=0.05)
    assert decision.effect is Effect.DENY and decision.reason == "policy_error"
    assert "timed out" in decision.detail


async def test_all_of() -> None:
    allow = Decision.allow(rule="a")
    c1 = Decision.constrain(rule="c1", timeout_seconds=10, arguments={"n": {"max": 100}})
    c2 = Decision.constrain(rule="c2", timeout_seconds=3, arguments={"n": {"min": 1}})
    req = request()
    assert (await evaluate(all_of(lambda r: allow, lambda r: allow), req)).rule == "a"
    merged = await evaluate(all_of(lambda r: c1, lambda r: allow, lambda r: c2), req)
    assert merged.effect is Effect.CONSTRAIN and merged.rule == "c1"
    assert merged.constraints.timeout_seconds == 3
    assert merged.constraints.arguments["n"].min == 1
    assert merged.constraints.arguments["n"].max == 100
    deny = Decision.deny("no", rule="d")
    assert (await evaluate(all_of(lambda r: allow, lambda r: deny, lambda r: c1), req)).rule == "d"
    approval = Decision.require_approval("check", rule="ap")
    mixed = await evaluate(all_of(lambda r: c1, lambda r: approval), req)
    assert mixed.effect is Effect.REQUIRE_APPROVAL and mixed.constraints.timeout_seconds == 10
    # a raising member is a deny
    assert (await evaluate(all_of(lambda r: allow, lambda r: 1 / 0), req)).reason == "policy_error"
    # abstentions are ignored; all abstaining is no decision -> fail closed
    assert (await evaluate(all_of(lambda r: None, lambda r: allow), req)).rule == "a"
    assert (await evaluate(all_of(lambda r: None), req)).reason == "policy_error"


async def test_any_of() -> None:
    req = request()
    deny = Decision.deny("no", rule="d")
    approval = Decision.require_approval("check", rule="ap")
    allow = Decision.allow(rule="a")
    assert (await evaluate(any_of(lambda r: deny, lambda r: allow), req)).rule == "a"
    assert (await evaluate(any_of(lambda r: deny, lambda r: approval), req)).rule == "ap"
    assert (await evaluate(any_of(lambda r: deny, lambda r: False), req)).rule == "d"
    assert (await evaluate(any_of(lambda r: 1 / 0, async_deny), req)).reason == "policy_error"


async def test_first_match_and_risk_defaults() -> None:
    policy = first_match(allow_adds, risk_defaults, name="app")
    assert policy.name == "app"  # type: ignore[attr-defined]
    assert (await evaluate(policy, request("add"))).rule == "adds"
    destructive = request("drop", annotations={"destructiveHint": True})
    decision = await evaluate(policy, destructive)
    assert decision.effect is Effect.REQUIRE_APPROVAL and decision.rule == "risk:destructive"
    admin = await evaluate(policy, request("reboot", risk="admin"))
    assert admin.effect is Effect.REQUIRE_APPROVAL
    read = await evaluate(policy, request("get", annotations={"readOnlyHint": True}))
    assert read.effect is Effect.ALLOW
    with pytest.raises(ValueError):
        first_match()


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda r: Decision("denied", "typo"), id="invalid-effect"),  # type: ignore[arg-type]
        pytest.param(lambda r: Decision(Effect.ALLOW, constraints=None), id="constraints-none"),  # type: ignore[arg-type]
        pytest.param(
            lambda r: Decision(Effect.CONSTRAIN, constraints={"timeout_seconds": 1}),  # type: ignore[arg-type]
            id="constraints-dict",
        ),
    ],
)
async def test_a_malformed_decision_is_a_policy_error(hook: object) -> None:
    for policy in (hook, all_of(lambda r: True, hook), first_match(hook)):  # type: ignore[arg-type]
        decision = await evaluate(policy, request())  # type: ignore[arg-type]
        assert decision.effect is Effect.DENY
        assert decision.reason == "policy_error"


async def test_a_string_effect_inside_a_combinator_denies() -> None:
    hook = lambda r: Decision("deny", "no")  # type: ignore[arg-type]  # noqa: E731
    for policy in (hook, all_of(lambda r: True, hook), any_of(hook, lambda r: None)):
        decision = await evaluate(policy, request())  # type: ignore[arg-type]
        assert decision.effect is Effect.DENY and decision.reason == "no"


async def test_a_decision_changed_behind_its_back_is_a_policy_error() -> None:
    tampered = Decision.deny("x")
    object.__setattr__(tampered, "effect", "allow")
    decision = await evaluate(lambda r: tampered, request())
    assert decision.effect is Effect.DENY and decision.reason == "policy_error"
