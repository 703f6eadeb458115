"""Decision model, constraints, CallRequest and risk classes."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from mcp.types import ToolAnnotations
from policy_helpers import principal, request

from securemcp.errors import CallRefused
from securemcp.policy import (
    ApprovalInvalid,
    ApprovalRequired,
    ArgumentBound,
    CallRequest,
    Constraints,
    Decision,
    Effect,
    PolicyError,
    RateLimited,
    RiskClass,
    arguments_hash,
)


def test_constructors_and_provenance() -> None:
    allow = Decision.allow(rule="r1", policy_version="sha256:aa")
    assert allow.effect is Effect.ALLOW and allow.allowed
    deny = Decision.deny("nope", rule="r2")
    assert deny.effect is Effect.DENY and not deny.allowed and deny.reason == "nope"
    approval = Decision.require_approval("dangerous", rule="r3")
    assert approval.effect is Effect.REQUIRE_APPROVAL and not approval.allowed
    constrained = Decision.constrain(
        timeout_seconds=5, max_result_bytes=100, arguments={"amount": {"max": 10}}
    )
    assert constrained.allowed and constrained.effect is Effect.CONSTRAIN
    assert constrained.constraints.arguments["amount"] == ArgumentBound(max=10)
    filled = deny.with_source(rule="other", policy_version="sha256:bb")
    assert filled.rule == "r2" and filled.policy_version == "sha256:bb"
    with pytest.raises(dataclasses.FrozenInstanceError):
        deny.reason = "changed"  # type: ignore[misc]
    assert constrained.to_dict()["constraints"] == {
        "max_result_bytes": 100,
        "timeout_seconds": 5,
        "arguments": {"amount": {"max": 10}},
    }


def test_argument_bounds() -> None:
    constraints = Constraints.from_mapping(
        {
            "arguments": {
                "amount": {"min": 0, "max": 1000},
                "currency": {"enum": ["EUR", "USD"]},
                "memo": {"max_length": 5},
            }
        }
    )
    assert constraints.violations({"amount": 10, "currency": "EUR", "memo": "hi"}) == ()
    problems = constraints.violations({"amount": 5000, "currency": "GBP", "memo": "too long"})
    assert len(problems) == 3
    assert constraints.violations({"amount": True}) == ("argument 'amount' must be a number",)
    assert constraints.violations({"amount": "5"}) == ("argument 'amount' must be a number",)
    assert constraints.violations({}) == ()  # bounds apply only to arguments that are present
    with pytest.raises(ValueError, match="unknown argument bound"):
        Constraints.from_mapping({"arguments": {"x": {"maximum": 1}}})
    with pytest.raises(ValueError, match="unknown constraint"):
        Constraints.from_mapping({"timeout": 1})


def test_constraints_merge_takes_the_tighter() -> None:
    a = Constraints(
        timeout_seconds=10, arguments={"n": ArgumentBound(min=0, max=100, enum=(1, 2, 3))}
    )
    b = Constraints(
        timeout_seconds=5,
        max_result_bytes=10,
        arguments={"n": ArgumentBound(max=50, enum=(2, 3, 4))},
    )
    merged = a.merge(b)
    assert merged.timeout_seconds == 5 and merged.max_result_bytes == 10
    assert merged.arguments["n"] == ArgumentBound(min=0, max=50, enum=(2, 3))


def test_risk_classification() -> None:
    assert RiskClass.classify(None) is RiskClass.WRITE
    assert RiskClass.classify({}) is RiskClass.WRITE
    assert RiskClass.classify({"readOnlyHint": True}) is RiskClass.READ
    assert RiskClass.classify({"readOnlyHint": True, "openWorldHint": True}) is RiskClass.EXTERNAL
    assert RiskClass.classify({"openWorldHint": True}) is RiskClass.EXTERNAL
    assert RiskClass.classify({"destructiveHint": True}) is RiskClass.DESTRUCTIVE
    assert (
        RiskClass.classify({"destructiveHint": True, "openWorldHint": True})
        is RiskClass.DESTRUCTIVE
    )
    assert RiskClass.classify({"destructiveHint": False}) is RiskClass.WRITE
    assert RiskClass.classify(ToolAnnotations(destructiveHint=True)) is RiskClass.DESTRUCTIVE
    assert RiskClass.classify(ToolAnnotations(readOnlyHint=True)) is RiskClass.READ
    assert RiskClass.classify({"readOnlyHint": True}, declared="admin") is RiskClass.ADMIN
    with pytest.raises(ValueError):
        RiskClass.classify(None, declared="harmless")


def test_call_request_is_read_only() -> None:
    args = {"items": [1, 2], "nested": {"k": "v"}}
    req = request("add", args, annotations=ToolAnnotations(readOnlyHint=True), tags={"math"})
    assert req.risk is RiskClass.READ
    assert req.annotations["readOnlyHint"] is True
    assert req.tags == frozenset({"math"})
    with pytest.raises(TypeError):
        req.arguments["items"] = []  # type: ignore[index]
    with pytest.raises(TypeError):
        req.arguments["nested"]["k"] = "x"  # type: ignore[index]
    args["items"].append(3)  # the caller's dict is not shared
    assert req.arguments["items"] == (1, 2)
    assert req.tenant is None
    tenanted = CallRequest.build(principal(tenant="acme"), "add")
    assert tenanted.tenant == "acme"
    direct = CallRequest(principal(), None, "tools/call", "add", {"a": [1]}, {"x"}, None, "read")  # type: ignore[arg-type]
    assert direct.risk is RiskClass.READ and direct.arguments["a"] == (1,)


@pytest.mark.parametrize(
    ("arguments", "annotations", "tags", "risk"),
    [
        (None, None, (), None),
        ({}, {"readOnlyHint": True}, ["a"], None),
        ({"a": 1, "b": "x", "c": None, "d": True, 2: 2.5}, None, frozenset({"t"}), "admin"),
        ({"items": [1, {"k": ["v"]}], "nested": {"z": (1, 2)}}, None, (), "read"),
        ({"a": 1}, ToolAnnotations(destructiveHint=True), (), None),
    ],
)
def test_build_makes_what_the_constructor_makes(
    arguments: dict[object, object] | None, annotations: object, tags: object, risk: str | None
) -> None:
    built = CallRequest.build(
        principal(tenant="acme"),
        "t",
        arguments,  # type: ignore[arg-type]
        annotations=annotations,
        tags=tags,  # type: ignore[arg-type]
        risk=risk,
        transport="stdio",
    )
    made = CallRequest(
        principal=built.principal,
        tenant="acme",
        method="tools/call",
        target="t",
        arguments=arguments or {},  # type: ignore[arg-type]
        tags=frozenset(tags),  # type: ignore[arg-type]
        annotations=annotations,  # type: ignore[arg-type]
        risk=RiskClass.classify(annotations, risk),
        transport="stdio",
    )
    for field in dataclasses.fields(CallRequest):  # every field set, with the same value
        assert getattr(built, field.name) == getattr(made, field.name), field.name
    assert type(built.arguments) is type(made.arguments) and type(built.risk) is RiskClass


def test_arguments_hash_is_canonical() -> None:
    assert arguments_hash({"a": 1, "b": [1, 2]}) == arguments_hash({"b": [1, 2], "a": 1})
    assert arguments_hash({"a": 1}) != arguments_hash({"a": 2})
    assert arguments_hash({"a": 1}) != arguments_hash({"a": "1"})
    frozen = request("t", {"b": [1, {"c": 2}], "a": "x"})
    assert frozen.arguments_hash() == arguments_hash({"a": "x", "b": [1, {"c": 2}]})
    assert frozen.arguments_hash().startswith("sha256:")


def test_error_codes_are_stable_and_client_safe() -> None:
    limited = RateLimited(2.2, "per-user", reason="key abc")
    assert isinstance(limited, CallRefused)
    assert limited.code == "rate_limited" and limited.retry_after == 2.2
    assert limited.retry_after_header == 3
    assert str(limited) == "rate_limited: Rate limit exceeded; retry after 3 s."
    assert limited.data["retryAfter"] == 2.2
    required = ApprovalRequired("apr_1", reason="rule x")
    assert required.code == "approval_required" and required.approval_id == "apr_1"
    assert "apr_1" in str(required) and "rule x" not in str(required)
    invalid = ApprovalInvalid("other_arguments", "apr_1")
    assert invalid.code == "approval_invalid" and invalid.why == "other_arguments"
    assert "different arguments" in str(invalid)
    error = PolicyError(reason="hook raised KeyError")
    assert error.code == "policy_error" and "KeyError" not in str(error)


def test_a_plain_string_effect_becomes_the_member() -> None:
    # Checks compare effects by identity (`is Effect.DENY`): Decision("deny") used to allow.
    assert Decision("deny", "no").effect is Effect.DENY  # type: ignore[arg-type]
    assert Decision(effect="require_approval").effect is Effect.REQUIRE_APPROVAL  # type: ignore[arg-type]
    assert not Decision("deny").allowed  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"effect": "denied"}, ValueError),
        ({"effect": None}, ValueError),
        ({"effect": 1}, ValueError),
        ({"effect": Effect.ALLOW, "constraints": None}, TypeError),
        ({"effect": Effect.CONSTRAIN, "constraints": {"max_result_bytes": 10}}, TypeError),
        ({"effect": Effect.DENY, "reason": None}, TypeError),
        ({"effect": Effect.DENY, "rule": 3}, TypeError),
    ],
)
def test_a_malformed_decision_cannot_be_built(kwargs: dict[str, object], error: type) -> None:
    with pytest.raises(error):
        Decision(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"max": float("nan")}, {"min": float("-inf")}, {"enum": (1.0, float("nan"))}, {"max": "9"}],
)
def test_argument_bounds_must_be_finite(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"finite|number"):
        ArgumentBound(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"finite|number"):
        Constraints.from_mapping({"arguments": {"amount": dict(kwargs)}})


def test_constraints_timeout_must_be_finite() -> None:
    for timeout in (float("nan"), float("inf"), 0, -1):
        with pytest.raises(ValueError, match="finite"):
            Constraints(timeout_seconds=timeout)


def test_argument_bound_enum_compares_structured_values() -> None:
    bound = ArgumentBound(enum=(["a", "b"], {"force": True}))
    frozen = CallRequest.build(principal(), "t", {"x": ["a", "b"], "y": {"force": True}})
    assert bound.violation("x", frozen.arguments["x"]) is None
    assert bound.violation("y", frozen.arguments["y"]) is None
    as_int = CallRequest.build(principal(), "t", {"y": {"force": 1}}).arguments["y"]
    assert bound.violation("y", as_int)
    assert bound.to_dict() == {"enum": [["a", "b"], {"force": True}]}


@pytest.mark.parametrize(
    ("uri", "names", "target"),
    [
        ("files://secret", None, "files://secret"),
        ("files://%73ecret", None, "files://secret"),
        ("files://%73%65cret#frag", None, "files://secret"),
        ("files://a%2Fsecret", None, "files://a/secret"),
        ("files://%2573ecret", None, "files://%73ecret"),  # decoded once, as FastMCP does
        ("reports://q3?junk=1&fmt=a+b", frozenset({"fmt"}), "reports://q3?fmt=a b"),
        ("reports://q3?junk=1", frozenset(), "reports://q3"),
        ("reports://q3?b=2&a=1", None, "reports://q3?a=1&b=2"),
        ("files://a+b", None, "files://a+b"),  # '+' is a space only in a query
    ],
)
def test_resource_target_is_the_uri_as_fastmcp_reads_it(
    uri: str, names: frozenset[str] | None, target: str
) -> None:
    from securemcp.policy.request import resource_target

    assert resource_target(uri, names) == target


def test_resource_target_keeps_what_fastmcp_reads_of_repeated_parameters() -> None:
    from securemcp.components import _query_names
    from securemcp.policy.request import resource_target

    class _Template:
        uri_template = "data://x{?fmt,tags*}"

    names = _query_names(_Template())
    assert names == frozenset({"fmt", "tags", "tags*"})
    uri = "data://x?fmt=raw&tags=a&fmt=zz&tags=b"
    # the first value of a plain parameter, every value of an exploded one
    assert resource_target(uri, names) == "data://x?fmt=raw&tags=a&tags=b"


@pytest.mark.parametrize(
    "bound",
    [
        {"min": "1"},
        {"max": True},
        {"min": float("nan")},
        {"max": float("inf")},
        {"max_length": -1},
        {"max_length": "140"},
        {"max_length": True},
        {"max_length": 1.5},
        {"enum": "ab"},
        {"enum": [1, float("nan")]},
    ],
)
def test_every_way_to_build_bounds_refuses_the_same_values(bound: dict[str, Any]) -> None:
    """One validation for a bound and for constraints, however they are built: the constructor
    a hook calls (``Decision.constrain(arguments=...)``) refuses what a rules file's
    ``from_mapping`` refuses (a ``max_length`` of ``"140"`` would fail only once a call is
    checked against it)."""
    builders = [
        lambda: ArgumentBound(**bound),
        lambda: ArgumentBound.from_mapping(bound),
        lambda: Constraints(arguments={"memo": bound}),
        lambda: Constraints(arguments={"memo": ArgumentBound(**bound)}),
        lambda: Constraints.from_mapping({"arguments": {"memo": bound}}),
        lambda: Decision.constrain(arguments={"memo": bound}),
    ]
    for build in builders:
        with pytest.raises(ValueError):
            build()


@pytest.mark.parametrize(
    "spec",
    [
        {"timeout_seconds": 0},
        {"timeout_seconds": "5"},
        {"timeout_seconds": True},
        {"max_result_bytes": -1},
        {"max_result_bytes": 1.0},
        {"arguments": {"memo": 5}},
        {"arguments": ["memo"]},
        {"arguments": {"memo": {"maximum": 5}}},
    ],
)
def test_constraints_refuse_the_same_values_from_either_builder(spec: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Constraints(**spec)
    with pytest.raises(ValueError):
        Constraints.from_mapping(spec)
