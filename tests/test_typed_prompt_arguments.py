"""Policy on prompts/get judges the arguments FastMCP hands the prompt function.

MCP prompt arguments are strings on the wire; FastMCP 4.1.2 converts them for typed parameters
(``FunctionPrompt._convert_string_arguments``: pydantic's lax ``validate_python``, else
``validate_json``), so ``"05000"``, ``" 5000"``, ``"5_000"``, ``"+5000"``, ``"5e3"`` and
``"5000.0"`` all reach ``amount: int`` as 5000. A rule on ``amount = "5000"`` must hold for all
of them, and a number condition (``amount = { gt = 1000 }``) must hold at all. Every refusal is
checked with a list proving the function never ran.

No ``from __future__ import annotations`` here: the prompts need real annotation objects.
"""

import enum
import logging
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Any

import fastmcp
import pytest
from fastmcp.prompts.function_prompt import FunctionPrompt
from pydantic import AfterValidator, Field, StringConstraints, ValidationInfo

from securemcp import FastMCP
from securemcp._prompt_values import PromptValues, prompt_values
from securemcp._template_values import UnknownConversion
from securemcp.context import Principal
from securemcp.policy import ApprovalGate, Decision, RulesPolicy, open_store
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


RULES = textwrap.dedent(
    """
    default = "allow"

    [[rule]]
    name = "no-amount-5000"
    effect = "deny"
    tools = ["pay"]
    arguments = { amount = "5000" }

    [[rule]]
    name = "no-big-amounts"
    effect = "deny"
    tools = ["pay"]
    arguments = { amount = { gt = 100000 } }

    [[rule]]
    name = "no-price-7"
    effect = "deny"
    tools = ["quote"]
    arguments = { price = "7" }

    [[rule]]
    name = "no-price-over-1000"
    effect = "deny"
    tools = ["quote"]
    arguments = { price = { gt = 1000 } }

    [[rule]]
    name = "no-force"
    effect = "deny"
    tools = ["wipe"]
    arguments = { force = "true" }

    [[rule]]
    name = "no-force-typed"
    effect = "deny"
    tools = ["wipe2"]
    arguments = { force = true }

    [[rule]]
    name = "no-id-7"
    effect = "deny"
    tools = ["batch"]
    arguments = { ids = { contains = 7 } }

    [[rule]]
    name = "no-red"
    effect = "deny"
    tools = ["paint"]
    arguments = { color = "red" }

    [[rule]]
    name = "no-alice"
    effect = "deny"
    tools = ["greet"]
    arguments = { name = "alice" }

    [[rule]]
    name = "no-cell-7-1"
    effect = "deny"
    tools = ["cell"]
    arguments = { x = "7", y = "1.0" }

    [[rule]]
    name = "no-rate-3-written-as-float"
    effect = "deny"
    tools = ["rate"]
    arguments = { x = { in = ["3.0", "4.50"] } }

    [[rule]]
    name = "vault-needs-approval"
    effect = "require_approval"
    tools = ["vault"]
    arguments = { id = "7" }

    [[rule]]
    name = "small-transfers"
    effect = "constrain"
    tools = ["transfer"]
    constraints = { arguments = { amount = { max = 1000 } } }
    """
)


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def typed_server(
    idp: FakeIdentityProvider, policy: Any, **kwargs: Any
) -> tuple[FastMCP, list[Any]]:
    ran: list[Any] = []
    mcp = FastMCP("typed", auth=idp.verifier(audience=AUDIENCE), policy=policy, **kwargs)

    @mcp.prompt
    def pay(amount: int) -> str:
        ran.append(("pay", amount))
        return f"pay {amount}"

    @mcp.prompt
    def quote(price: float) -> str:
        ran.append(("quote", price))
        return f"quote {price}"

    @mcp.prompt
    def wipe(force: bool) -> str:
        ran.append(("wipe", force))
        return f"wipe {force}"

    @mcp.prompt
    def wipe2(force: bool) -> str:
        ran.append(("wipe2", force))
        return f"wipe2 {force}"

    @mcp.prompt
    def batch(ids: list[int]) -> str:
        ran.append(("batch", ids))
        return f"batch {ids}"

    @mcp.prompt
    def paint(color: Color) -> str:
        ran.append(("paint", color))
        return f"paint {color.value}"

    @mcp.prompt
    def greet(name: Annotated[str, StringConstraints(to_lower=True)]) -> str:
        ran.append(("greet", name))
        return f"hello {name}"

    @mcp.prompt
    def cell(x: float, y: float) -> str:
        ran.append(("cell", x, y))
        return f"cell {x} {y}"

    @mcp.prompt
    def rate(x: float) -> str:
        ran.append(("rate", x))
        return f"rate {x}"

    @mcp.prompt
    def vault(id: int) -> str:
        ran.append(("vault", id))
        return f"vault {id}"

    @mcp.prompt
    def transfer(amount: int, memo: str = "") -> str:
        ran.append(("transfer", amount))
        return f"transfer {amount}"

    @mcp.prompt
    def optional(amount: int | None = None) -> str:
        ran.append(("optional", amount))
        return f"optional {amount}"

    return mcp, ran


DODGES = [
    ("pay", {"amount": "05000"}, "no-amount-5000"),
    ("pay", {"amount": " 5000"}, "no-amount-5000"),
    ("pay", {"amount": "5000 "}, "no-amount-5000"),
    ("pay", {"amount": "5_000"}, "no-amount-5000"),
    ("pay", {"amount": "+5000"}, "no-amount-5000"),
    ("pay", {"amount": "5e3"}, "no-amount-5000"),  # validate_json reads a float, int takes it
    ("pay", {"amount": "5000.0"}, "no-amount-5000"),
    ("pay", {"amount": "5000"}, "no-amount-5000"),  # the rule's own spelling, as before
    ("pay", {"amount": "250000"}, "no-big-amounts"),  # a number condition on a typed value
    ("pay", {"amount": "2.5e5"}, "no-big-amounts"),
    ("quote", {"price": "7.0"}, "no-price-7"),  # a rule author writes 7 for the float 7.0
    ("quote", {"price": "7e0"}, "no-price-7"),
    ("quote", {"price": "07"}, "no-price-7"),
    ("quote", {"price": "inf"}, "no-price-over-1000"),
    ("quote", {"price": "1_500"}, "no-price-over-1000"),
    ("wipe", {"force": "yes"}, "no-force"),
    ("wipe", {"force": "on"}, "no-force"),
    ("wipe", {"force": "1"}, "no-force"),
    ("wipe", {"force": "True"}, "no-force"),
    ("wipe2", {"force": "t"}, "no-force-typed"),  # a boolean condition on a typed value
    ("batch", {"ids": "[7]"}, "no-id-7"),
    ("batch", {"ids": '["07", 8]'}, "no-id-7"),
    ("batch", {"ids": "[7.0]"}, "no-id-7"),
    ("paint", {"color": '"red"'}, "no-red"),  # validate_json of the JSON string
    ("greet", {"name": "ALICE"}, "no-alice"),  # the function receives "alice"
    # text conditions mixing forms across several float parameters: one text per value
    ("cell", {"x": "7", "y": "1.0"}, "no-cell-7-1"),
    ("cell", {"x": "7.0", "y": "1"}, "no-cell-7-1"),
    ("cell", {"x": "7", "y": "1"}, "no-cell-7-1"),
    ("cell", {"x": "7.0", "y": "1.0"}, "no-cell-7-1"),
    ("cell", {"x": "07", "y": "1e0"}, "no-cell-7-1"),
    ("rate", {"x": "3"}, "no-rate-3-written-as-float"),  # the rule writes 3.0 for 3.0
    ("rate", {"x": "4.5"}, "no-rate-3-written-as-float"),
]


@pytest.mark.parametrize(("prompt", "arguments", "rule"), DODGES)
async def test_a_rule_on_a_typed_prompt_argument_holds_for_every_text_fastmcp_converts(
    idp: FakeIdentityProvider,
    caplog: pytest.LogCaptureFixture,
    prompt: str,
    arguments: dict[str, str],
    rule: str,
) -> None:
    """Each call gives the function the value the rule names; that rule denies it."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
        async with connect(mcp, idp.token("alice")) as client:
            with pytest.raises(Exception, match="policy_denied"):
                await client.get_prompt(prompt, arguments)
    assert ran == []
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert len(refused) == 1 and f"rule '{rule}'" in refused[0], refused


async def test_other_values_run_and_refused_values_are_no_dodge(
    idp: FakeIdentityProvider,
) -> None:
    """Only the values a rule names are refused; values FastMCP refuses fail its own way and do
    not crash the policy step."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        for prompt, arguments in (
            ("pay", {"amount": "50000"}),
            ("quote", {"price": "7.5"}),
            ("wipe", {"force": "no"}),
            ("batch", {"ids": "[8, 70]"}),
            ("paint", {"color": "blue"}),
            ("greet", {"name": "bob"}),
            ("optional", {"amount": "05"}),
            ("cell", {"x": "7", "y": "1.5"}),
            ("cell", {"x": "1", "y": "7"}),
            ("rate", {"x": "3.5"}),
        ):
            await client.get_prompt(prompt, arguments)
        for prompt, arguments in (
            ("pay", {"amount": "0x1388"}),  # FastMCP refuses it: the function never runs
            ("pay", {"amount": "five thousand"}),
            ("wipe", {"force": "maybe"}),
            ("batch", {"ids": "7"}),
            ("paint", {"color": "green"}),
        ):
            with pytest.raises(Exception) as failed:
                await client.get_prompt(prompt, arguments)
            assert "policy" not in str(failed.value)
    assert ran == [
        ("pay", 50000),
        ("quote", 7.5),
        ("wipe", False),
        ("batch", [8, 70]),
        ("paint", Color.BLUE),
        ("greet", "bob"),
        ("optional", 5),
        ("cell", 7.0, 1.5),
        ("cell", 1.0, 7.0),
        ("rate", 3.5),
    ]


async def test_argument_bounds_on_a_typed_prompt_argument_judge_the_received_value(
    idp: FakeIdentityProvider,
) -> None:
    """A max bound on amount: int holds on the number the function receives (it used to refuse
    every call: the string was "not a number"), and no spelling dodges it."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        await client.get_prompt("transfer", {"amount": "900", "memo": "rent"})
        await client.get_prompt("transfer", {"amount": "0900"})
        for amount in ("5000", "05000", "5e3", " 5000"):
            with pytest.raises(Exception, match="policy_denied"):
                await client.get_prompt("transfer", {"amount": amount})
    assert ran == [("transfer", 900), ("transfer", 900)]


async def test_an_approval_for_a_typed_prompt_argument_is_bound_to_its_canonical_text(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """vault id "07" needs the approval id "7" needs; a granted approval runs one call, whatever
    the spelling, and another value is another call."""
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = typed_server(
        idp, RulesPolicy.from_string(RULES), approvals=ApprovalGate(store), audit=False
    )
    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="approval_required") as refused:
            await client.get_prompt("vault", {"id": "07"})
        approval_id = str(refused.value).split("approval id ")[1].split(")")[0]
        with pytest.raises(Exception, match=approval_id):
            await client.get_prompt("vault", {"id": " 7"})
        await store.approve(approval_id, APPROVER)
        await client.get_prompt("vault", {"id": "7"})
        for spelling in ("07", "7"):
            with pytest.raises(Exception, match="approval_required"):
                await client.get_prompt("vault", {"id": spelling})
        await client.get_prompt("vault", {"id": "8"})
    assert ran == [("vault", 7), ("vault", 8)]


async def test_a_hook_sees_the_arguments_as_sent_as_received_and_as_canonical_text(
    idp: FakeIdentityProvider,
) -> None:
    """The hook is asked about each form; the strictest answer wins; tool calls are asked once."""
    seen: list[dict[str, Any]] = []

    def hook(request: Any) -> Decision:
        seen.append(dict(request.arguments))
        if request.arguments.get("amount") == "5000":
            return Decision.deny("no 5000", rule="text-5000")
        return Decision.allow()

    mcp, ran = typed_server(idp, hook, audit=False)

    @mcp.tool
    def add(a: int) -> int:
        return a

    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="policy_denied"):
            await client.get_prompt("pay", {"amount": "05000"})
        assert seen == [{"amount": "05000"}, {"amount": 5000}, {"amount": "5000"}]
        seen.clear()
        await client.get_prompt("pay", {"amount": "12"})  # canonical text is the text sent
        assert seen == [{"amount": "12"}, {"amount": 12}]
        seen.clear()
        await client.get_prompt("quote", {"price": "7.0"})  # a whole float: one text, "7"
        assert seen == [{"price": "7.0"}, {"price": 7.0}, {"price": "7"}]
        seen.clear()
        await client.call_tool("add", {"a": 1})
        assert seen == [{"a": 1}]
    assert ran == [("pay", 12), ("quote", 7.0)]


async def test_a_conversion_securemcp_cannot_tell_fails_closed(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A validator that fails unlike a refusal (here: on its third run, securemcp's second
    step; FastMCP's own runs would pass) and an annotation
    securemcp cannot resolve both refuse the call with policy_error; the prompt never runs."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    runs: list[int] = []

    def flaky(value: int) -> int:
        runs.append(value)
        if len(runs) == 3:
            raise RuntimeError("third run")
        return value

    @mcp.prompt
    def odd(amount: Annotated[int, AfterValidator(flaky)]) -> str:
        ran.append(("odd", amount))
        return "odd"

    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="policy_error"):
            await client.get_prompt("odd", {"amount": "5"})
    assert ran == []

    def unresolvable(*args: Any, **kwargs: Any) -> Any:
        raise NameError("Unresolvable")

    monkeypatch.setattr(typing, "get_type_hints", unresolvable)
    values = prompt_values(FunctionPrompt.from_function(pay_like))
    assert isinstance(values, PromptValues)
    # the function's own arguments schema (FastMCP's) still validates it, exactly
    forms = values.forms({"amount": "05"})
    assert forms is not None and forms.received == {"amount": 5}
    # ... and without it, a parameter whose annotation cannot be resolved fails closed
    import securemcp._prompt_values as prompt_module

    monkeypatch.setattr(prompt_module, "_arguments_validator", lambda function: None)
    values = prompt_values(FunctionPrompt.from_function(pay_like))
    assert isinstance(values, PromptValues)
    with pytest.raises(UnknownConversion):
        values.forms({"amount": "5"})
    assert values.forms({"other": "5"}) is None  # no value for it: nothing to convert


def _field_tagged(value: str, info: ValidationInfo) -> str:
    """Prefixes the value with its parameter's name: known only when FastMCP validates the
    function's arguments as a whole (its second step), not parameter by parameter."""
    return f"{info.field_name or '-'}:{value}"


async def test_prompt_arguments_are_validated_as_fastmcp_validates_the_whole_function(
    idp: FakeIdentityProvider,
) -> None:
    """FastMCP's second step validates the function's arguments together (a validator sees its
    field's name and the arguments before it; a ``Field`` default's constraints hold).
    securemcp validated each parameter alone, so it judged another value than the function
    received (``-:-:hi`` for ``label:-:hi``: a rule on the received value was dodged), and it
    judged values FastMCP then refused. It now validates with the function's own arguments
    schema, without calling it."""
    policy = RulesPolicy.from_string(
        'default = "allow"\n[[rule]]\nname = "no-label-hi"\neffect = "deny"\n'
        'tools = ["tagged"]\narguments = { label = "label:-:hi" }\n'
    )
    mcp, ran = typed_server(idp, policy, audit=False)

    @mcp.prompt
    def tagged(
        label: Annotated[str, AfterValidator(_field_tagged)], n: int = Field(1, gt=0)
    ) -> str:
        ran.append(("tagged", label, n))
        return label

    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="policy_denied"):
            await client.get_prompt("tagged", {"label": "hi"})
        await client.get_prompt("tagged", {"label": "ho", "n": "2"})
        with pytest.raises(Exception) as refused:  # n > 0: FastMCP refuses, no policy step fails
            await client.get_prompt("tagged", {"label": "hi", "n": "-1"})
        assert "policy" not in str(refused.value)
    assert ran == [("tagged", "label:-:ho", 2)]


def pay_like(amount: int) -> str:
    return f"pay {amount}"


async def test_a_mounted_servers_typed_prompt_is_judged_as_the_mounted_server_converts(
    idp: FakeIdentityProvider,
) -> None:
    """A parent's rule on a mounted prompt's typed argument holds for every spelling."""
    child, ran = typed_server(idp, None, audit=False)
    rules = RULES.replace('tools = ["pay"]', 'tools = ["ns_pay"]')
    parent = FastMCP(
        "parent",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(rules),
        audit=False,
    )
    parent.mount(child, namespace="ns")
    async with connect(parent, idp.token("alice")) as client:
        for amount in ("05000", "5e3", "250000"):
            with pytest.raises(Exception, match="policy_denied"):
                await client.get_prompt("ns_pay", {"amount": amount})
        await client.get_prompt("ns_pay", {"amount": "12"})
    assert ran == [("pay", 12)]


async def test_a_prompt_annotations_validator_runs_as_often_to_judge_as_in_fastmcp(
    idp: FakeIdentityProvider,
) -> None:
    """securemcp judges a prompt call by running FastMCP's two conversion steps (never the
    function), so a validator in a typed parameter's annotation runs as many times again as
    FastMCP runs it (documented; FastMCP alone runs it two or three times: its per-parameter
    conversion tries pydantic's Python then JSON validation, then the function's validation).
    Handing FastMCP the converted values would still leave its second step. The text a rule
    names is converted once per prompt, not per call."""
    runs: list[int] = []

    def counted(value: int) -> int:
        runs.append(value)
        return value

    def counted_prompt(n: Annotated[int, AfterValidator(counted)]) -> str:
        return f"n {n}"

    bare = fastmcp.FastMCP("bare")
    bare.prompt(counted_prompt)
    async with fastmcp.Client(bare) as client:
        for text in ("8", "08"):
            await client.get_prompt("counted_prompt", {"n": text})
    alone = len(runs)
    assert alone >= 4

    policy = RulesPolicy.from_string(
        'default = "allow"\n[[rule]]\nname = "no-7"\neffect = "deny"\n'
        'tools = ["counted_prompt"]\narguments = { n = "7" }\n'
    )
    mcp = FastMCP("counted", auth=idp.verifier(audience=AUDIENCE), policy=policy, audit=False)
    mcp.prompt(counted_prompt)
    async with connect(mcp, idp.token("alice")) as client:
        await client.get_prompt("counted_prompt", {"n": "9"})  # the rule's "7" is converted
        runs.clear()
        for text in ("8", "08"):
            await client.get_prompt("counted_prompt", {"n": text})
    assert len(runs) == 2 * alone
