"""Rules-file conditions on structured values: operands are frozen like the values they test."""

from __future__ import annotations

import textwrap

import pytest
from policy_helpers import principal, request

from securemcp.policy import Effect
from securemcp.policy.predicates import compile_predicate
from securemcp.policy.request import freeze
from securemcp.policy.rules import RulesPolicy
from securemcp.policy.rules_compile import RulesFileError, compile_rules


def test_array_operands_match_array_arguments() -> None:
    # Arguments are frozen (lists become tuples); TOML operands used to stay lists, so no
    # array ever equalled one: deny rules on an exact argv never fired.
    argv = freeze(["rm", "-rf", "/"])
    assert compile_predicate({"eq": ["rm", "-rf", "/"]})(argv)
    assert not compile_predicate({"ne": ["rm", "-rf", "/"]})(argv)
    assert compile_predicate({"in": [["rm", "-rf", "/"], ["shutdown"]]})(argv)
    assert not compile_predicate({"not_in": [["rm", "-rf", "/"]]})(argv)
    assert compile_predicate([["rm", "-rf", "/"], ["reboot"]])(argv)  # shorthand: in
    assert not compile_predicate({"eq": ["rm", "-rf"]})(argv)
    assert compile_predicate({"contains": ["a", "b"]})(freeze([["a", "b"], ["c"]]))


def test_table_operands_match_object_arguments_and_claims() -> None:
    options = freeze({"mode": "prod", "force": True})
    assert compile_predicate({"eq": {"force": True, "mode": "prod"}})(options)
    assert compile_predicate({"contains": {"team": "ops"}}, claim=True)(freeze([{"team": "ops"}]))
    assert not compile_predicate({"eq": {"mode": "prod"}})(options)


def test_bool_is_not_int_at_any_depth() -> None:
    assert not compile_predicate({"eq": {"force": 1}})(freeze({"force": True}))
    assert not compile_predicate({"eq": [1, 0]})(freeze([True, False]))
    assert compile_predicate({"ne": [1]})(freeze([True]))
    assert not compile_predicate({"in": [[0]]})(freeze([False]))
    from securemcp.policy.request import same_json

    assert not same_json({"a": [1]}, {"a": [True]})
    assert same_json({"a": [1.0]}, freeze({"a": [1]}))  # JSON numbers: 1 == 1.0


def test_rules_and_explain_see_array_operands() -> None:
    policy = RulesPolicy.from_string(
        textwrap.dedent(
            """
            default = "deny"
            [[rule]]
            name = "block-argv"
            effect = "deny"
            tools = ["run"]
            arguments = { argv = { in = [["rm", "-rf", "/"], ["shutdown", "now"]] } }
            [[rule]]
            name = "anything-else"
            effect = "allow"
            tools = ["run"]
            arguments = { argv = { ne = ["dd", "if=/dev/zero"] } }
            """
        )
    )
    denied = policy.evaluate(request("run", {"argv": ["shutdown", "now"]}))
    assert denied.effect is Effect.DENY and denied.rule == "block-argv"
    dd = policy.evaluate(request("run", {"argv": ["dd", "if=/dev/zero"]}))
    assert dd.effect is Effect.DENY and dd.rule == "default"
    assert policy.evaluate(request("run", {"argv": ["ls"]})).rule == "anything-else"
    text = policy.explain(request("run", {"argv": ["ls"]}, who=principal()))
    assert "['rm', '-rf', '/']" in str(text)  # shown as the file wrote it


@pytest.mark.parametrize(
    "condition",
    [
        "{ gt = nan }",
        "{ le = inf }",
        "{ lt = -inf }",
        "{ eq = nan }",
        "{ ne = nan }",
        "{ eq = [1.0, nan] }",
        "{ eq = { a = nan } }",
        "{ in = [1.0, nan] }",
        "{ not_in = [nan] }",
        "nan",
        "[1.0, inf]",
    ],
)
def test_non_finite_operands_are_rejected(condition: str) -> None:
    # NaN compares false with everything: `gt = nan` never matched, `ne = nan` always did.
    text = f'[[rule]]\nname = "r"\neffect = "deny"\narguments = {{ amount = {condition} }}\n'
    with pytest.raises(RulesFileError, match="finite"):
        compile_rules(text)


@pytest.mark.parametrize(
    "constraints",
    [
        "arguments = { amount = { max = nan } }",
        "arguments = { amount = { min = -inf } }",
        "arguments = { amount = { enum = [1.0, nan] } }",
        "timeout_seconds = inf",
        "timeout_seconds = nan",
    ],
)
def test_non_finite_bounds_are_rejected(constraints: str) -> None:
    text = f'[[rule]]\nname = "r"\neffect = "constrain"\n[rule.constraints]\n{constraints}\n'
    with pytest.raises(RulesFileError, match="finite"):
        compile_rules(text)
