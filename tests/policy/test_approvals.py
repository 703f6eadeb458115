"""Approvals: binding, expiry, single use, reusable windows, self-approval; SQLite and Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import principal, request

from securemcp.policy import ApprovalInvalid, ApprovalRequired, Decision
from securemcp.policy.approvals import (
    Approval,
    ApprovalGate,
    ApprovalStatus,
    ApprovalStore,
    ApproverRequirement,
    local_operator,
    open_store,
)
from securemcp.policy.approvals_sqlite import SQLiteApprovalStore

ALICE = principal("alice")
MANAGER = principal("mia", scopes=("securemcp:approve",))
POLICY = "sha256:policy-v1"
ARGS = "sha256:args-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["sqlite", "redis"])
async def store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> AsyncIterator[ApprovalStore]:
    if request.param == "sqlite":
        yield SQLiteApprovalStore(tmp_path / "approvals.sqlite3", clock=clock)
        return
    from securemcp.policy.approvals_redis import RedisApprovalStore

    url = request.getfixturevalue("redis_url")
    redis_store = RedisApprovalStore(url, clock=clock)
    try:
        yield redis_store
    finally:
        await redis_store.aclose()


async def pending(store: ApprovalStore, ttl: float = 60) -> str:
    return await store.request(ALICE, "delete_repo", ARGS, POLICY, ttl, reason="destructive")


async def test_approve_then_consume_once(store: ApprovalStore) -> None:
    approval_id = await pending(store)
    assert approval_id.startswith("apr_")
    # a second identical request while pending returns the same id (no flood of requests)
    assert await pending(store) == approval_id
    listed = await store.list()
    assert [a.id for a in listed] == [approval_id]
    assert listed[0].subject == "alice" and listed[0].reason == "destructive"
    with pytest.raises(ApprovalInvalid) as not_yet:
        await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    assert not_yet.value.why == "pending"
    approved = await store.approve(approval_id, MANAGER)
    assert approved.status is ApprovalStatus.APPROVED and approved.decided_by is not None
    assert "mia" in approved.decided_by
    used = await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    assert used.status is ApprovalStatus.USED and used.uses == 1
    with pytest.raises(ApprovalInvalid) as again:
        await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    assert again.value.why == "used"
    assert "already been used" in str(again.value)
    assert await store.list() == []
    assert [a.id for a in await store.list(include_decided=True)] == [approval_id]


@pytest.mark.parametrize(
    ("who", "tool", "args", "policy", "why"),
    [
        (principal("eve"), "delete_repo", ARGS, POLICY, "other_principal"),
        (
            principal("alice", issuer="https://other-idp.example"),
            "delete_repo",
            ARGS,
            POLICY,
            "other_principal",
        ),
        (principal("alice", tenant="globex"), "delete_repo", ARGS, POLICY, "other_principal"),
        (principal("alice", client_id="other-app"), "delete_repo", ARGS, POLICY, "other_principal"),
        (ALICE, "drop_table", ARGS, POLICY, "other_tool"),
        (ALICE, "delete_repo", "sha256:args-2", POLICY, "other_arguments"),
        (ALICE, "delete_repo", ARGS, "sha256:policy-v2", "policy_changed"),
    ],
)
async def test_binding_is_enforced(
    store: ApprovalStore, who: Any, tool: str, args: str, policy: str, why: str
) -> None:
    approval_id = await pending(store)
    await store.approve(approval_id, MANAGER)
    with pytest.raises(ApprovalInvalid) as refused:
        await store.consume(approval_id, who, tool, args, policy)
    assert refused.value.why == why
    # the refused attempt did not use up the approval
    assert (await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)).uses == 1


async def test_expiry(store: ApprovalStore, clock: Clock) -> None:
    stale = await pending(store, ttl=30)
    clock.now += 31
    with pytest.raises(ApprovalInvalid) as too_late:
        await store.approve(stale, MANAGER)
    assert too_late.value.why == "expired"
    fresh = await pending(store, ttl=30)
    assert fresh != stale  # the expired request is replaced by a new one
    await store.approve(fresh, MANAGER)
    clock.now += 31  # single-use approvals last one ttl after approval
    with pytest.raises(ApprovalInvalid) as expired:
        await store.consume(fresh, ALICE, "delete_repo", ARGS, POLICY)
    assert expired.value.why == "expired"


async def test_self_approval_and_non_approvers_refused(store: ApprovalStore) -> None:
    approval_id = await pending(store)
    alice_as_approver = principal("alice", scopes=("securemcp:approve",), client_id="console")
    with pytest.raises(ApprovalInvalid) as own:
        await store.approve(approval_id, alice_as_approver)
    assert own.value.why == "self_approval"
    assert "its own request" in str(own.value)
    with pytest.raises(ApprovalInvalid) as nobody:
        await store.approve(approval_id, principal("bob"))
    assert nobody.value.why == "not_an_approver"
    with pytest.raises(ApprovalInvalid) as unknown:
        await store.approve("apr_nope", MANAGER)
    assert unknown.value.why == "unknown"
    # still pending: nobody managed to approve it
    assert (await store.get(approval_id)).status is ApprovalStatus.PENDING  # type: ignore[union-attr]


async def test_development_wildcard_does_not_make_an_approver(store: ApprovalStore) -> None:
    from securemcp.identity import development_principal

    approval_id = await pending(store)
    with pytest.raises(ApprovalInvalid) as refused:
        await store.approve(approval_id, development_principal())
    assert refused.value.why == "not_an_approver"


async def test_role_based_approvers(tmp_path: Path) -> None:
    store = SQLiteApprovalStore(
        tmp_path / "a.sqlite3",
        approvers=ApproverRequirement(scopes=frozenset(), roles=frozenset({"manager"})),
    )
    approval_id = await pending(store)
    with pytest.raises(ApprovalInvalid):
        await store.approve(approval_id, principal("mia", scopes=("securemcp:approve",)))
    approved = await store.approve(approval_id, principal("mia", roles=["staff", "manager"]))
    assert approved.status is ApprovalStatus.APPROVED


async def test_reusable_window(store: ApprovalStore, clock: Clock) -> None:
    approval_id = await pending(store)
    await store.approve(approval_id, MANAGER, reusable_for=120)
    for _ in range(3):
        await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    with pytest.raises(ApprovalInvalid) as other_args:
        await store.consume(approval_id, ALICE, "delete_repo", "sha256:other", POLICY)
    assert other_args.value.why == "other_arguments"
    clock.now += 121
    with pytest.raises(ApprovalInvalid) as expired:
        await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    assert expired.value.why == "expired"
    assert (await store.get(approval_id)).uses == 3  # type: ignore[union-attr]


async def test_deny(store: ApprovalStore) -> None:
    approval_id = await pending(store)
    denied = await store.deny(approval_id, MANAGER, "not today")
    assert denied.status is ApprovalStatus.DENIED and denied.note == "not today"
    with pytest.raises(ApprovalInvalid) as refused:
        await store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY)
    assert refused.value.why == "denied"
    with pytest.raises(ApprovalInvalid) as twice:
        await store.approve(approval_id, MANAGER)
    assert twice.value.why == "already_decided"


async def test_concurrent_consumers_use_a_single_use_approval_once(store: ApprovalStore) -> None:
    approval_id = await pending(store)
    await store.approve(approval_id, MANAGER)
    results = await asyncio.gather(
        *(store.consume(approval_id, ALICE, "delete_repo", ARGS, POLICY) for _ in range(10)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, Approval) for r in results) == 1
    assert all(
        isinstance(r, ApprovalInvalid) and r.why == "used"
        for r in results
        if not isinstance(r, Approval)
    )


async def test_gate_flow(store: ApprovalStore, clock: Clock) -> None:
    gate = ApprovalGate(store, ttl=60, clock=clock)
    decision = Decision.require_approval("destructive", rule="r", policy_version=POLICY)
    call = request("delete_repo", {"repo": "prod"}, who=ALICE)
    with pytest.raises(ApprovalRequired) as first:
        await gate.check(call, decision)
    approval_id = first.value.approval_id
    with pytest.raises(ApprovalRequired) as still:
        await gate.check(call, decision)
    assert still.value.approval_id == approval_id  # retrying does not create new requests
    # the model cannot approve itself
    with pytest.raises(ApprovalInvalid):
        await store.approve(approval_id, principal("alice", scopes=("securemcp:approve",)))
    await store.approve(approval_id, MANAGER)
    # other arguments are not covered by the approval: a fresh request, not a run
    other = request("delete_repo", {"repo": "staging"}, who=ALICE)
    with pytest.raises(ApprovalRequired) as other_request:
        await gate.check(other, decision)
    assert other_request.value.approval_id != approval_id
    with pytest.raises(ApprovalInvalid) as quoted:
        await gate.check(other, decision, approval_id=approval_id)
    assert quoted.value.why == "other_arguments"
    # another caller quoting the id is refused
    with pytest.raises(ApprovalInvalid) as thief:
        await gate.check(
            request("delete_repo", {"repo": "prod"}, who=principal("eve")),
            decision,
            approval_id=approval_id,
        )
    assert thief.value.why == "other_principal"
    used = await gate.check(call, decision)
    assert used.id == approval_id and used.status is ApprovalStatus.USED
    # the second use needs a new approval
    with pytest.raises(ApprovalRequired) as second:
        await gate.check(call, decision)
    assert second.value.approval_id != approval_id
    await store.deny(second.value.approval_id, MANAGER)
    with pytest.raises(ApprovalInvalid) as denied:
        await gate.check(call, decision)
    assert denied.value.why == "denied"


async def test_open_store_and_default_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SECUREMCP_APPROVAL_STORE", raising=False)
    store = open_store()
    assert isinstance(store, SQLiteApprovalStore)
    await pending(store)
    db = tmp_path / ".securemcp" / "approvals.sqlite3"
    assert db.exists() and (db.stat().st_mode & 0o777) == 0o600
    assert (db.parent.stat().st_mode & 0o777) == 0o700
    monkeypatch.setenv("SECUREMCP_APPROVAL_STORE", str(tmp_path / "elsewhere.db"))
    assert isinstance(open_store(), SQLiteApprovalStore)
    assert type(open_store("redis://127.0.0.1:1/0")).__name__ == "RedisApprovalStore"


def test_local_operator_is_an_approver_distinct_from_callers() -> None:
    operator = local_operator()
    assert operator.issuer == "securemcp:local-operator"
    assert ApproverRequirement().permits(operator)
    roles = ApproverRequirement(scopes=frozenset(), roles=frozenset({"boss"}))
    assert roles.permits(local_operator(roles))
