"""The enforcement point re-checks the decision a policy returns before acting on it."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from policy_helpers import request

from securemcp.policy import Decision
from securemcp.policy.enforcement import PolicyEnforcement
from securemcp.policy.errors import PolicyError


class _NoLimits:
    """Quacks like ``Constraints`` in every use the enforcement point makes, and limits nothing."""

    arguments: Any = MappingProxyType({})
    timeout_seconds = None
    max_result_bytes = None

    def __bool__(self) -> bool:
        return False

    def violations(self, arguments: Any) -> tuple[str, ...]:
        return ()


def _swapped() -> Decision:
    """A well-built ``constrain`` whose constraints were swapped afterwards (a frozen dataclass
    still yields to ``object.__setattr__``): the answer a buggy or hostile hook can give."""
    decision = Decision.constrain("cap the answer", max_result_bytes=10)
    object.__setattr__(decision, "constraints", _NoLimits())
    return decision


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_decision_with_swapped_constraints_is_a_policy_error(
    asynchronous: bool, tmp_path: Path
) -> None:
    """A sync hook's Decision reaches the enforcement point with only its effect checked on the
    way, so ``decide`` itself must refuse a malformed one rather than run the call without the
    limits the policy set (an async hook's is caught by the hook machinery as well)."""

    def hook(r: Any) -> Decision:
        return _swapped()

    async def async_hook(r: Any) -> Decision:
        return _swapped()

    enforcement = PolicyEnforcement(
        policy=async_hook if asynchronous else hook, approvals=str(tmp_path / "a.sqlite3")
    )
    with pytest.raises(PolicyError) as caught:
        await enforcement.decide(request("big"))
    assert caught.value.code == "policy_error"


async def test_a_call_outside_its_bounds_is_denied_before_any_approver_is_asked(
    tmp_path: Path,
) -> None:
    """``require_approval`` with argument bounds: a call outside the bounds cannot run whatever
    an approver says, so it is denied at once, with no pending approval request created (an
    approver would otherwise be asked about it, and a granted approval then spent on a call
    that is refused anyway)."""
    from securemcp.errors import PolicyDenied
    from securemcp.policy import ArgumentBound, Constraints
    from securemcp.policy.errors import ApprovalRequired

    def hook(r: Any) -> Decision:
        return Decision.require_approval(
            "payments need a human",
            constraints=Constraints(arguments={"amount": ArgumentBound(max=1000)}),
        )

    enforcement = PolicyEnforcement(policy=hook, approvals=str(tmp_path / "a.sqlite3"))
    with pytest.raises(PolicyDenied) as denied:
        await enforcement.decide(request("pay", {"amount": 5000}))
    assert "constraint violated" in (denied.value.reason or "")
    assert await enforcement.gate.store.list(include_decided=True) == []
    # inside the bounds, the approval is asked for as before
    with pytest.raises(ApprovalRequired):
        await enforcement.decide(request("pay", {"amount": 10}))
    assert len(await enforcement.gate.store.list()) == 1
