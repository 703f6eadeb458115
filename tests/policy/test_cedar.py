"""Cedar policies (:class:`securemcp.policy.cedar.CedarPolicy`): ToolHive's entity model, and the
places where Cedar alone would let a call through that securemcp refuses.

Each attack test first shows the plain Cedar engine allowing the request (so the test would pass
without securemcp's guard only if the guard were not needed), then shows securemcp refusing it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import cedarpy
import pytest
from policy_helpers import principal, request

from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.policy import Effect, evaluate
from securemcp.policy._hot_reload import PolicyChange
from securemcp.policy.cedar import (
    NULL,
    NUMBER,
    CedarPolicy,
    CedarPolicyError,
    cedar_value,
    unrepresentable,
)
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"

WEATHER_ONLY = 'permit(principal, action == Action::"call_tool", resource == Tool::"weather");'


def plain_cedar(policies: str, cedar_request: dict[str, Any]) -> bool:
    """What the Cedar engine alone decides, with no securemcp guard."""
    result = cedarpy.is_authorized(cedar_request, policies, [])
    return bool(result.allowed)


def cedar_call(tool: str, context: dict[str, Any]) -> dict[str, Any]:
    return {
        "principal": {"type": "Client", "id": "alice"},
        "action": {"type": "Action", "id": "call_tool"},
        "resource": {"type": "Tool", "id": tool},
        "context": context,
    }


# --- ToolHive's entity model -------------------------------------------------------------------


def test_toolhive_policies_run_unchanged() -> None:
    policy = CedarPolicy(
        WEATHER_ONLY
        + '\npermit(principal, action == Action::"call_tool", resource)'
        + ' when { principal.claim_roles.contains("admin") };'
        + '\npermit(principal, action == Action::"call_tool", resource == Tool::"calculator")'
        + ' when { resource.arg_operation == "add" || context.arg_operation == "subtract" };'
    )
    assert policy.evaluate(request("weather")).effect is Effect.ALLOW
    assert policy.evaluate(request("deploy")).effect is Effect.DENY
    admin = principal(roles=["admin"])
    assert policy.evaluate(request("deploy", who=admin)).effect is Effect.ALLOW
    assert policy.evaluate(request("calculator", {"operation": "add"})).effect is Effect.ALLOW
    assert policy.evaluate(request("calculator", {"operation": "subtract"})).effect is Effect.ALLOW
    denied = policy.evaluate(request("calculator", {"operation": "divide"}))
    assert denied.effect is Effect.DENY
    assert denied.rule == "default"
    assert denied.reason == "no cedar policy permits the call (default deny)"


def test_actions_and_resource_types_follow_the_mcp_method() -> None:
    policy = CedarPolicy(
        'permit(principal, action == Action::"read_resource", resource == Resource::"docs://a");'
        '\npermit(principal, action == Action::"get_prompt", resource == Prompt::"greet");'
    )
    assert policy.evaluate(request("docs://a", method="resources/read")).allowed
    assert not policy.evaluate(request("docs://b", method="resources/read")).allowed
    assert policy.evaluate(request("greet", method="prompts/get")).allowed
    # a tool of the same name as the prompt is another resource type
    assert not policy.evaluate(request("greet")).allowed


def test_principal_attributes_scopes_tenant_and_verification() -> None:
    policy = CedarPolicy(
        'permit(principal, action, resource) when { principal.scopes.contains("files:write")'
        ' && principal.tenant == "acme" && principal.verified && context.tenant == "acme"'
        ' && principal.issuer == "https://idp.example" };'
    )
    ok = principal(scopes=("files:write",), tenant="acme")
    assert policy.evaluate(request("save", who=ok)).allowed
    other_tenant = principal(scopes=("files:write",), tenant="globex")
    assert not policy.evaluate(request("save", who=other_tenant)).allowed
    no_scope = principal(scopes=("files:read",), tenant="acme")
    assert not policy.evaluate(request("save", who=no_scope)).allowed


def test_static_entities_give_groups_and_the_operator_wins_over_claims() -> None:
    entities = [
        {
            "uid": {"type": "Client", "id": "alice"},
            "attrs": {"claim_role": "viewer"},
            "parents": [{"type": "Group", "id": "ops"}],
        },
        {"uid": {"type": "Group", "id": "ops"}, "attrs": {}, "parents": []},
        {"uid": {"type": "Tool", "id": "deploy"}, "attrs": {"owner": "alice"}, "parents": []},
    ]
    policy = CedarPolicy(
        'permit(principal in Group::"ops", action, resource == Tool::"restart");'
        '\npermit(principal, action, resource == Tool::"deploy")'
        " when { resource.owner == principal.claim_sub };"
        '\npermit(principal, action, resource == Tool::"admin")'
        ' when { principal.claim_role == "admin" };',
        entities=entities,
    )
    assert policy.evaluate(request("restart")).allowed  # alice is in ops
    assert not policy.evaluate(request("restart", who=principal("bob"))).allowed
    assert policy.evaluate(request("deploy")).allowed  # alice owns deploy
    assert not policy.evaluate(request("deploy", who=principal("bob"))).allowed
    # alice's token says role=admin, the operator's entity says viewer: the operator wins
    assert not policy.evaluate(request("admin", who=principal(role="admin"))).allowed
    # bob has no operator entity: his verified claim decides
    assert policy.evaluate(request("admin", who=principal("bob", role="admin"))).allowed
    # an argument can never stand in for the operator's attribute
    assert not policy.evaluate(request("deploy", {"owner": "bob"}, who=principal("bob"))).allowed


def test_decisions_name_their_policies_and_version() -> None:
    text = (
        '@id("weather-for-all")\n' + WEATHER_ONLY + '\n@id("no-mallory")'
        ' @reason("mallory is suspended")\n'
        'forbid(principal == Client::"mallory", action, resource);'
    )
    policy = CedarPolicy(text)
    allowed = policy.evaluate(request("weather"))
    assert allowed.rule == "weather-for-all"
    assert allowed.policy_version == "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    denied = policy.evaluate(request("weather", who=principal("mallory")))
    assert (denied.effect, denied.rule, denied.reason) == (
        Effect.DENY,
        "no-mallory",
        "mallory is suspended",
    )


def test_approval_annotation_requires_approval_unless_another_permit_applies() -> None:
    policy = CedarPolicy(
        '@approval("required")\npermit(principal, action, resource == Tool::"wipe");'
        '\npermit(principal, action, resource == Tool::"wipe")'
        ' when { principal.claim_sub == "root" };'
    )
    needs = policy.evaluate(request("wipe"))
    assert needs.effect is Effect.REQUIRE_APPROVAL
    assert policy.evaluate(request("wipe", who=principal("root"))).effect is Effect.ALLOW


# --- where Cedar alone fails open ---------------------------------------------------------------

AMOUNT_LIMIT = (
    "permit(principal, action, resource);\n"
    '@id("no-big-transfers")\n'
    'forbid(principal, action, resource == Tool::"transfer")'
    " when { context.arguments.amount > 1000 };"
)


GUARDED_AMOUNT_LIMIT = (
    "permit(principal, action, resource);\n"
    '@id("no-big-transfers")\n'
    'forbid(principal, action, resource == Tool::"transfer")'
    " when { context.arguments has amount && context.arguments.amount > 1000 };"
)

DODGES = ["5000", 5000.5, 5000.00001, 1e300, 10**30, None, [5000], {"value": 5000}]
DODGE_IDS = ["string", "fraction", "fine-fraction", "huge-float", "beyond-64-bits", "null"]
DODGE_IDS += ["list", "object"]


@pytest.mark.parametrize("policies", [AMOUNT_LIMIT, GUARDED_AMOUNT_LIMIT], ids=["plain", "has"])
@pytest.mark.parametrize("amount", DODGES, ids=DODGE_IDS)
def test_a_forbid_that_cannot_be_evaluated_denies(policies: str, amount: Any) -> None:
    # Cedar alone skips the forbid it cannot evaluate (or, with a `has` guard, never reaches
    # it when a naive adapter leaves the value out), and the permit lets the call through
    assert plain_cedar(policies, cedar_call("transfer", {"arguments": {}}))
    converted = cedar_value(amount)
    if converted != unrepresentable(NUMBER) and converted != unrepresentable(NULL):
        assert plain_cedar(policies, cedar_call("transfer", {"arguments": {"amount": converted}}))
    decision = CedarPolicy(policies).evaluate(request("transfer", {"amount": amount}))
    assert (decision.effect, decision.reason, decision.rule) == (
        Effect.DENY,
        "policy_error",
        "no-big-transfers",
    )


def test_a_reserved_key_cannot_hide_a_record_from_a_guarded_forbid() -> None:
    policies = (
        "permit(principal, action, resource);\n"
        "forbid(principal, action, resource) when { context.arguments has opts &&"
        ' context.arguments.opts has path && context.arguments.opts.path like "/etc/*" };'
    )
    for key in ("__extn", "__entity", "__expr"):
        sneaky = {"opts": {"path": "/etc/passwd", key: 0}}
        assert not CedarPolicy(policies).evaluate(request("read", sneaky)).allowed, key


def test_whole_numbers_are_judged_as_numbers_however_written() -> None:
    policy = CedarPolicy(AMOUNT_LIMIT)
    for amount in (5000, 5000.0, Decimal("5000.000")):
        denied = policy.evaluate(request("transfer", {"amount": amount}))
        assert (denied.effect, denied.rule) == (Effect.DENY, "no-big-transfers"), amount
    for amount in (10, 10.0):
        assert policy.evaluate(request("transfer", {"amount": amount})).allowed


def test_a_failing_permit_grants_nothing_and_denies_nothing() -> None:
    policy = CedarPolicy(
        "permit(principal, action, resource) when { context.arguments.level > 3 };"
        '\npermit(principal, action, resource == Tool::"read");'
    )
    assert policy.evaluate(request("read", {"level": "high"})).allowed
    assert not policy.evaluate(request("write", {"level": "high"})).allowed


def test_an_argument_cannot_forge_an_entity_reference() -> None:
    policies = (
        'permit(principal, action, resource) when { context.arguments.owner == Client::"root" };'
    )
    forged = {"owner": {"__entity": {"type": "Client", "id": "root"}}}
    # a naive adapter that passes arguments through lets the caller forge the reference
    assert plain_cedar(policies, cedar_call("read", {"arguments": forged}))
    assert not CedarPolicy(policies).evaluate(request("read", forged)).allowed
    # a forged member is left out of its record; the record and its other members stay
    extension = {"when": {"__extn": {"fn": "ip", "arg": "10.0.0.1"}}, "city": "Oslo"}
    assert cedar_value(extension) == {"when": {}, "city": "Oslo"}


def test_huge_decimals_are_judged_at_once() -> None:
    # Decimal("1e300000") through int() would cost seconds: it must be judged from its digits
    for huge in (Decimal("1e300000"), Decimal("1e-300000"), Decimal("7." + "0" * 5000)):
        assert cedar_value(huge) == unrepresentable(NUMBER)
    assert cedar_value(Decimal("2.5")) == {"__extn": {"fn": "decimal", "arg": "2.5000"}}
    assert cedar_value(7.0) == 7
    assert cedar_value(2**63) == unrepresentable(NUMBER)
    assert cedar_value(-(2**63)) == -(2**63)


def test_arguments_beyond_the_limits_are_refused_before_cedar_parses_them() -> None:
    policy = CedarPolicy("permit(principal, action, resource);", max_argument_values=100)
    assert policy.evaluate(request("upload", {"items": list(range(50))})).allowed
    refused = policy.evaluate(request("upload", {"items": list(range(500))}))
    assert (refused.effect, refused.reason) == (Effect.DENY, "policy_error")
    small_text = CedarPolicy("permit(principal, action, resource);", max_argument_bytes=1000)
    assert not small_text.evaluate(request("upload", {"blob": "x" * 2000})).allowed
    assert not small_text.evaluate(request("upload", {"k" * 2000: 1})).allowed
    assert small_text.evaluate(request("upload", {"blob": "x" * 500})).allowed


def test_a_principal_without_issuer_is_judged() -> None:
    from securemcp.context import Principal

    anonymous_issuer = Principal(subject="svc", issuer=None)  # type: ignore[arg-type]
    policy = CedarPolicy('permit(principal == Client::"svc", action, resource);')
    assert policy.evaluate(request("read", who=anonymous_issuer)).allowed


def test_a_request_the_engine_refuses_is_denied() -> None:
    policy = CedarPolicy("permit(principal, action, resource);", principal_type="Not A Type")
    decision = policy.evaluate(request("read"))
    assert (decision.effect, decision.reason) == (Effect.DENY, "policy_error")


# --- loading, validation and hot reload -------------------------------------------------------


def test_bad_policies_entities_and_schema_fail_at_start_up() -> None:
    with pytest.raises(CedarPolicyError):
        CedarPolicy("permit(principal, action resource);")
    with pytest.raises(CedarPolicyError):
        CedarPolicy(WEATHER_ONLY, entities=[{"attrs": {}}])
    with pytest.raises(CedarPolicyError):
        CedarPolicy(WEATHER_ONLY, entities="{not json")
    schema = (
        "entity Client; entity Tool;"
        " action call_tool appliesTo { principal: Client, resource: Tool };"
    )
    CedarPolicy(WEATHER_ONLY, schema=schema)  # valid against the schema
    with pytest.raises(CedarPolicyError):
        CedarPolicy('permit(principal, action == Action::"call_tol", resource);', schema=schema)


def test_hot_reload_keeps_the_previous_policies_when_the_file_breaks(tmp_path: Path) -> None:
    file = tmp_path / "policy.cedar"
    file.write_text(WEATHER_ONLY)
    events: list[PolicyChange] = []
    now = [0.0]
    policy = CedarPolicy.from_file(file, on_policy_change=events.append)
    policy._clock = lambda: now[0]
    policy._next_check = 0.0
    assert policy.evaluate(request("weather")).allowed
    assert not policy.evaluate(request("news")).allowed
    file.write_text('permit(principal, action, resource == Tool::"news");')
    now[0] = 5.0
    assert policy.evaluate(request("news")).allowed
    assert not policy.evaluate(request("weather")).allowed
    file.write_text("permit(principal action resource")
    now[0] = 10.0
    assert policy.evaluate(request("news")).allowed  # the previous version stays in force
    assert [e.kind for e in events] == ["loaded", "reloaded", "reload_failed"]
    assert events[-1].errors and str(file) in events[-1].errors[0]


def test_a_policy_deployed_while_the_first_load_reads_is_picked_up(
    tmp_path: Path, monkeypatch: Any
) -> None:
    import securemcp.policy.cedar as cedar_module

    file = tmp_path / "policy.cedar"
    file.write_text('permit(principal, action, resource == Tool::"wipe");')
    read = cedar_module.read_policy_file

    def read_then_deploy(path: Any) -> bytes:
        data = read(path)
        file.write_text('forbid(principal, action, resource == Tool::"wipe");\n' * 2)
        return data

    monkeypatch.setattr(cedar_module, "read_policy_file", read_then_deploy)
    now = [0.0]
    policy = CedarPolicy.from_file(file)
    monkeypatch.setattr(cedar_module, "read_policy_file", read)
    policy._clock = lambda: now[0]
    policy._next_check = 0.0
    assert not policy.evaluate(request("wipe")).allowed  # the deployed version, not the first


# --- in a server ------------------------------------------------------------------------------


async def test_a_server_enforces_cedar_and_audits_its_version(tmp_path: Path) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    file = tmp_path / "policy.cedar"
    file.write_text(WEATHER_ONLY + "\n" + AMOUNT_LIMIT.split("\n", 1)[1])
    audit_dir = tmp_path / "audit"
    mcp = FastMCP(
        "cedar", auth=idp.verifier(audience=AUDIENCE), policy=str(file), audit=AuditLog(audit_dir)
    )
    policy = CedarPolicy.from_file(file)  # the same text: the version the server audits
    runs: list[str] = []

    @mcp.tool
    def weather(city: str) -> str:
        runs.append("weather")
        return f"sunny in {city}"

    @mcp.tool
    def transfer(amount: float) -> str:
        runs.append("transfer")
        return "sent"

    async with connect(mcp, idp.token("alice")) as client:
        result = await client.call_tool("weather", {"city": "Oslo"})
        assert result.content[0].text == "sunny in Oslo"
        refused = await client.call_tool("transfer", {"amount": 5}, raise_on_error=False)
        assert refused.is_error
        assert refused.content[0].text.startswith("policy_denied:")
        assert "cedar" not in refused.content[0].text  # no internal detail
    assert runs == ["weather"]
    mcp_log = [r for r in iter_records(audit_dir) if r["type"] == "decision"]
    assert [r["decision"]["result"] for r in mcp_log] == ["allow", "deny"]
    assert {r["decision"]["policy_version"] for r in mcp_log} == {policy.version}
    changes = [r for r in iter_records(audit_dir) if r["type"] == "policy_change"]
    assert [r["policy_version"] for r in changes] == [policy.version]


async def test_concurrent_callers_are_each_judged_as_themselves() -> None:
    policy = CedarPolicy(
        'permit(principal, action, resource) when { principal.claim_sub == "alice" };'
    )

    async def judge(subject: str) -> tuple[str, bool]:
        decision = await evaluate(policy, request("read", who=principal(subject)))
        return subject, decision.allowed

    results = await asyncio.gather(*(judge(s) for s in ["alice", "bob"] * 50))
    assert all(allowed == (subject == "alice") for subject, allowed in results)


def test_entities_may_be_given_as_json_text() -> None:
    entities_json = json.dumps([{"uid": {"type": "Group", "id": "ops"}}])
    assert CedarPolicy(WEATHER_ONLY, entities=entities_json).evaluate(request("weather")).allowed
