"""Policy on tools/call judges a multi-type argument as the tool function receives it.

securemcp refuses an argument whose JSON type the tool's input schema does not declare
(:mod:`securemcp.policy.arguments`), so for ``amount: int`` the policy sees the number the tool
gets. A parameter whose schema admits several JSON types for one value (``Decimal``: a number or
a string; ``int | str``; ``Decimal | None``; a list of ``Decimal``) reached the policy in the
form the client chose: ``"5e3"``, ``"5000.0"`` and ``5000`` are all ``Decimal(5000)`` to the
tool, yet a rule ``amount = { gt = 1000 }`` never held on a string and ``amount = "5000"``
never on a number. Such a call is now judged as sent, as the function receives it and in
canonical text, the strictest decision winning. Every refusal is checked with a list proving the
tool never ran.

No ``from __future__ import annotations`` here: the tools need real annotation objects.
"""

import logging
import textwrap
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import pytest
from fastmcp.tools import Tool
from pydantic import AfterValidator, BaseModel, Field, StringConstraints, field_validator

from securemcp import FastMCP
from securemcp._tool_values import ToolValues, tool_values
from securemcp.context import Principal
from securemcp.policy import ApprovalGate, Decision, RulesPolicy, open_store
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])

RULES = textwrap.dedent(
    """
    default = "allow"

    [[rule]]
    name = "no-big-payments"
    effect = "deny"
    tools = ["pay", "maybe_pay", "either"]
    arguments = { amount = { gt = 1000 } }

    [[rule]]
    name = "no-amount-777-text"
    effect = "deny"
    tools = ["either", "pay"]
    arguments = { amount = "777" }

    [[rule]]
    name = "no-id-7"
    effect = "deny"
    tools = ["batch"]
    arguments = { amounts = { contains = 7 } }

    [[rule]]
    name = "vault-needs-approval"
    effect = "require_approval"
    tools = ["vault", "pick"]

    [[rule]]
    name = "small-transfers"
    effect = "constrain"
    tools = ["transfer"]
    constraints = { arguments = { amount = { max = 1000 } } }
    """
)


class Order(BaseModel):
    amount: Decimal


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def typed_server(
    idp: FakeIdentityProvider, policy: Any, **kwargs: Any
) -> tuple[FastMCP, list[Any]]:
    ran: list[Any] = []
    mcp = FastMCP("typed", auth=idp.verifier(audience=AUDIENCE), policy=policy, **kwargs)

    @mcp.tool
    def pay(amount: Decimal, memo: str = "") -> str:
        ran.append(("pay", amount))
        return f"pay {amount}"

    @mcp.tool
    def maybe_pay(amount: Decimal | None = None) -> str:
        ran.append(("maybe_pay", amount))
        return f"maybe {amount}"

    @mcp.tool
    def either(amount: int | str) -> str:
        ran.append(("either", amount))
        return f"either {amount!r}"

    @mcp.tool
    def batch(amounts: list[Decimal]) -> str:
        ran.append(("batch", amounts))
        return f"batch {amounts}"

    @mcp.tool
    def vault(amount: Decimal) -> str:
        ran.append(("vault", amount))
        return f"vault {amount}"

    @mcp.tool
    def pick(user: int | str) -> str:
        ran.append(("pick", user))
        return f"pick {user!r}"

    @mcp.tool
    def transfer(amount: Decimal) -> str:
        ran.append(("transfer", amount))
        return f"transfer {amount}"

    @mcp.tool
    def order(order: Order) -> str:
        ran.append(("order", order.amount))
        return f"order {order.amount}"

    return mcp, ran


DODGES = [
    ("pay", {"amount": "5000"}, "no-big-payments"),
    ("pay", {"amount": "5e3"}, "no-big-payments"),
    ("pay", {"amount": "5000.0"}, "no-big-payments"),
    ("pay", {"amount": " 5000 "}, "no-big-payments"),
    ("pay", {"amount": "1000.5"}, "no-big-payments"),
    ("pay", {"amount": 5000}, "no-big-payments"),  # as before: a number
    ("pay", {"amount": 777}, "no-amount-777-text"),  # a text rule holds on a number
    ("pay", {"amount": "7.77e2"}, "no-amount-777-text"),
    ("maybe_pay", {"amount": "5e3"}, "no-big-payments"),
    ("either", {"amount": 777}, "no-amount-777-text"),  # a text rule on int | str
    ("either", {"amount": 5000}, "no-big-payments"),
    ("batch", {"amounts": ["7.0", 8]}, "no-id-7"),
    ("batch", {"amounts": ["7e0"]}, "no-id-7"),
]


@pytest.mark.parametrize(("tool", "arguments", "rule"), DODGES)
async def test_a_rule_on_a_multi_type_tool_argument_holds_for_every_form_the_tool_receives(
    idp: FakeIdentityProvider,
    caplog: pytest.LogCaptureFixture,
    tool: str,
    arguments: dict[str, Any],
    rule: str,
) -> None:
    """Each call gives the tool the value the rule names; that rule denies it."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
        async with connect(mcp, idp.token("alice")) as client:
            result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert result.is_error and "policy_denied" in str(result.content), result
    assert ran == []
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert len(refused) == 1 and f"rule '{rule}'" in refused[0], refused


async def test_other_values_run_and_values_the_tool_refuses_are_no_dodge(
    idp: FakeIdentityProvider,
) -> None:
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        for tool, arguments in (
            ("pay", {"amount": "999.99"}),
            ("pay", {"amount": 12}),
            ("maybe_pay", {"amount": None}),
            ("maybe_pay", {}),
            ("either", {"amount": "5000"}),  # the tool receives the text: a text, not a number
            ("either", {"amount": "hello"}),
            ("batch", {"amounts": ["8", 9.5]}),
        ):
            await client.call_tool(tool, arguments)
        result = await client.call_tool("pay", {"amount": "lots"}, raise_on_error=False)
        assert result.is_error and "policy" not in str(result.content)
    assert ran == [
        ("pay", Decimal("999.99")),
        ("pay", Decimal(12)),
        ("maybe_pay", None),
        ("maybe_pay", None),
        ("either", "5000"),
        ("either", "hello"),
        ("batch", [Decimal(8), Decimal("9.5")]),
    ]


async def test_argument_bounds_on_a_decimal_judge_the_received_value(
    idp: FakeIdentityProvider,
) -> None:
    """max = 1000 holds on the Decimal the tool receives, whatever form was sent."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        await client.call_tool("transfer", {"amount": "900"})
        await client.call_tool("transfer", {"amount": 900})
        for amount in ("5000", "5e3", 5000, "1000.5"):
            result = await client.call_tool("transfer", {"amount": amount}, raise_on_error=False)
            assert result.is_error and "policy_denied" in str(result.content)
    assert ran == [("transfer", Decimal(900)), ("transfer", Decimal(900))]


async def test_an_approval_for_a_decimal_is_bound_to_the_value_the_tool_receives(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """ "5e3", 5000 and "5000.0" are one value to the tool: one approval, spent once. A value
    that differs beyond a float's precision is another call."""
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = typed_server(
        idp, RulesPolicy.from_string(RULES), approvals=ApprovalGate(store), audit=False
    )
    async with connect(mcp, idp.token("alice")) as client:
        result = await client.call_tool("vault", {"amount": "5e3"}, raise_on_error=False)
        assert result.is_error and "approval_required" in str(result.content)
        approval_id = str(result.content).split("approval id ")[1].split(")")[0]
        result = await client.call_tool("vault", {"amount": 5000}, raise_on_error=False)
        assert approval_id in str(result.content)
        await store.approve(approval_id, APPROVER)
        await client.call_tool("vault", {"amount": "5000.0"})
        for amount in ("5e3", 5000):
            result = await client.call_tool("vault", {"amount": amount}, raise_on_error=False)
            assert result.is_error and "approval_required" in str(result.content)
        # 0.1 and 0.10000000000000000001 are one float, two Decimals: two approvals
        result = await client.call_tool("vault", {"amount": "0.1"}, raise_on_error=False)
        first = str(result.content).split("approval id ")[1].split(")")[0]
        await store.approve(first, APPROVER)
        result = await client.call_tool(
            "vault", {"amount": "0.10000000000000000001"}, raise_on_error=False
        )
        assert result.is_error and "approval_required" in str(result.content)
        assert first not in str(result.content)
    assert ran == [("vault", Decimal(5000))]


async def test_an_approval_for_int_or_str_keeps_the_type_the_tool_receives(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """user 7 (a number) and user "7" (a text) reach the tool as different values: an approval
    for one is not spent on the other."""
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = typed_server(
        idp, RulesPolicy.from_string(RULES), approvals=ApprovalGate(store), audit=False
    )
    async with connect(mcp, idp.token("alice")) as client:
        result = await client.call_tool("pick", {"user": "7"}, raise_on_error=False)
        approval_id = str(result.content).split("approval id ")[1].split(")")[0]
        await store.approve(approval_id, APPROVER)
        result = await client.call_tool("pick", {"user": 7}, raise_on_error=False)
        assert result.is_error and "approval_required" in str(result.content)
        assert approval_id not in str(result.content)
        await client.call_tool("pick", {"user": "7"})
    assert ran == [("pick", "7")]


async def test_a_hook_sees_the_arguments_as_sent_as_received_and_as_canonical_text(
    idp: FakeIdentityProvider,
) -> None:
    """The hook is asked about each distinct form; plain typed tools are asked once."""
    seen: list[dict[str, Any]] = []

    def hook(request: Any) -> Decision:
        seen.append(dict(request.arguments))
        return Decision.allow()

    mcp, _ = typed_server(idp, hook, audit=False)

    @mcp.tool
    def add(a: int, b: float = 0) -> float:
        return a + b

    async with connect(mcp, idp.token("alice")) as client:
        await client.call_tool("pay", {"amount": "5e3", "memo": "x"})
        assert seen == [
            {"amount": "5e3", "memo": "x"},
            {"amount": 5000, "memo": "x"},
            {"amount": "5000", "memo": "x"},
        ]
        seen.clear()
        await client.call_tool("either", {"amount": "12"})  # received as sent: asked once
        assert seen == [{"amount": "12"}]
        seen.clear()
        await client.call_tool("either", {"amount": 12})
        assert seen == [{"amount": 12}, {"amount": "12"}]
        seen.clear()
        await client.call_tool("order", {"order": {"amount": "2.50"}})
        assert seen == [
            {"order": {"amount": "2.50"}},
            {"order": {"amount": 2.5}},
            {"order": '{"amount":2.5}'},
        ]
        seen.clear()
        await client.call_tool("add", {"a": 1, "b": 2})
        assert seen == [{"a": 1, "b": 2}]


async def test_a_huge_decimal_is_refused_at_once(idp: FakeIdentityProvider) -> None:
    """A value over 4300 digits written out is refused as policy_error (never int() of it)."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        result = await client.call_tool("pay", {"amount": "1e300000"}, raise_on_error=False)
    assert result.is_error and "policy_error" in str(result.content)
    assert ran == []


async def test_a_conversion_securemcp_cannot_tell_fails_closed(
    idp: FakeIdentityProvider,
) -> None:
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    runs: list[Any] = []

    def flaky(value: Decimal) -> Decimal:
        runs.append(value)
        if len(runs) == 1:
            raise RuntimeError("first run")  # securemcp's own run; FastMCP's would pass
        return value

    @mcp.tool
    def odd(amount: Annotated[Decimal, AfterValidator(flaky)]) -> str:
        ran.append(("odd", amount))
        return "odd"

    async with connect(mcp, idp.token("alice")) as client:
        result = await client.call_tool("odd", {"amount": "5"}, raise_on_error=False)
    assert result.is_error and "policy_error" in str(result.content)
    assert ran == []


def test_only_tools_with_a_multi_type_parameter_get_forms() -> None:
    """Plain typed tools keep the cheap path: no conversion per call."""
    from fastmcp.tools import Tool

    def plain(
        a: int, b: float, c: bool, d: str, e: int | None = None, f: tuple[int, ...] = ()
    ) -> None:
        pass

    def mixed(a: int, amount: Decimal) -> None:
        pass

    assert tool_values(Tool.from_function(plain)) is None

    def containers(
        g: list[dict[str, int]], h: dict[str, Any], i: Annotated[int, Field(gt=0)]
    ) -> None:
        pass

    assert tool_values(Tool.from_function(containers)) is None

    def rewritten(a: int, when: datetime, ids: set[int], name: Annotated[str, Field()]) -> None:
        pass

    found = tool_values(Tool.from_function(rewritten))
    assert isinstance(found, ToolValues) and set(found.parameters) == {"when", "ids"}
    values = tool_values(Tool.from_function(mixed))
    assert isinstance(values, ToolValues) and set(values.parameters) == {"amount"}
    assert values.forms({"a": 1}) is None
    assert values.forms({"a": 1, "amount": "x"}) is None  # the tool refuses it


async def test_a_mounted_servers_decimal_tool_is_judged_as_the_mounted_server_converts(
    idp: FakeIdentityProvider,
) -> None:
    child, ran = typed_server(idp, None, audit=False)
    rules = RULES.replace('tools = ["pay", "maybe_pay", "either"]', 'tools = ["ns_pay"]')
    parent = FastMCP(
        "parent",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(rules),
        audit=False,
    )
    parent.mount(child, namespace="ns")
    async with connect(parent, idp.token("alice")) as client:
        for amount in ("5e3", "5000", 5000):
            result = await client.call_tool("ns_pay", {"amount": amount}, raise_on_error=False)
            assert result.is_error and "policy_denied" in str(result.content)
        await client.call_tool("ns_pay", {"amount": "12"})
    assert ran == [("pay", Decimal(12))]


def test_a_long_whole_decimal_is_compared_as_a_float_never_through_int() -> None:
    """A list of 2000 values "1e4299" (14 KB sent) was turned into 2000 exact 4300-digit ints
    (int() of one takes about 0.2 ms; 0.45 s per call, on the event loop, before the policy
    decided). Past 300 digits a whole number is now compared as a float (here inf): linear
    work. Its text and its approval binding stay exact."""
    from fastmcp.tools import Tool

    from securemcp._prompt_values import jsonable

    def batch(amounts: list[Decimal]) -> None: ...

    values = tool_values(Tool.from_function(batch))
    assert isinstance(values, ToolValues)
    forms = values.forms({"amounts": ["1e4299"] * 2000, "other": 1})
    assert forms is not None
    long = "1" + "0" * 4299
    assert forms.texts[0]["amounts"][0] == long
    assert forms.binding is not None and forms.binding["amounts"][0] == {"decimal": long}
    assert all(type(item) is float for item in forms.received["amounts"])
    assert forms.received["amounts"][0] == float("inf")
    assert type(jsonable(Decimal("1e4299"))) is float  # prompts alike
    exact = jsonable(Decimal("1e299"))
    assert type(exact) is int and exact == 10**299  # up to 300 digits: exact


VALUE_RULES = textwrap.dedent(
    """
    default = "allow"

    [[rule]]
    name = "no-alice"
    effect = "deny"
    tools = ["greet"]
    arguments = { name = "alice" }

    [[rule]]
    name = "no-id-0a"
    effect = "deny"
    tools = ["fetch"]
    arguments = { id = "0a0a0a0a-0000-0000-0000-000000000000" }

    [[rule]]
    name = "no-bob-order"
    effect = "deny"
    tools = ["named"]
    arguments = { order = '{"who":"bob"}' }
    """
)


class Named(BaseModel):
    who: str

    @field_validator("who")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.strip().lower()


@pytest.mark.parametrize(
    ("tool", "arguments", "rule"),
    [
        ("greet", {"name": "ALICE"}, "no-alice"),
        ("fetch", {"id": "0A0A0A0A-0000-0000-0000-000000000000"}, "no-id-0a"),
        ("fetch", {"id": "0a0a0a0a000000000000000000000000"}, "no-id-0a"),
        ("fetch", {"id": "{0a0a0a0a-0000-0000-0000-000000000000}"}, "no-id-0a"),
        ("named", {"order": {"who": " Bob"}}, "no-bob-order"),
    ],
)
async def test_a_rule_on_a_one_type_argument_the_validation_rewrites_holds_for_each_spelling(
    idp: FakeIdentityProvider,
    caplog: pytest.LogCaptureFixture,
    tool: str,
    arguments: dict[str, Any],
    rule: str,
) -> None:
    """The JSON type check cannot see these: a string stays a string, yet the tool receives
    another text (to_lower, a UUID in its canonical form, a model validator's output)."""
    ran: list[Any] = []
    mcp = FastMCP(
        "values",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(VALUE_RULES),
        audit=False,
    )

    @mcp.tool
    def greet(name: Annotated[str, StringConstraints(to_lower=True)]) -> str:
        ran.append(name)
        return name

    @mcp.tool
    def fetch(id: UUID) -> str:
        ran.append(id)
        return str(id)

    @mcp.tool
    def named(order: Named) -> str:
        ran.append(order)
        return order.who

    with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
        async with connect(mcp, idp.token("alice")) as client:
            result = await client.call_tool(tool, arguments, raise_on_error=False)
            assert result.is_error and "policy_denied" in str(result.content), result
            await client.call_tool("greet", {"name": "Bob"})
            await client.call_tool("fetch", {"id": "0B0A0A0A-0000-0000-0000-000000000000"})
    assert ran == ["bob", UUID("0b0a0a0a-0000-0000-0000-000000000000")]
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert len(refused) == 1 and f"rule '{rule}'" in refused[0], refused


def test_an_annotation_securemcp_cannot_resolve_fails_closed_for_a_multi_type_parameter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The multi-type parameter's calls are refused (UnknownConversion: policy_error); a
    one-type parameter is judged as sent rather than refusing every call of the tool."""
    import typing

    from fastmcp.tools import Tool

    from securemcp._template_values import UnknownConversion

    def pay_like(amount: Decimal, count: int, when: datetime) -> None:
        pass

    tool = Tool.from_function(pay_like)

    def unresolvable(*args: Any, **kwargs: Any) -> Any:
        raise NameError("Unresolvable")

    monkeypatch.setattr(typing, "get_type_hints", unresolvable)
    values = tool_values(tool)
    assert isinstance(values, ToolValues) and set(values.parameters) == {"amount"}
    with pytest.raises(UnknownConversion):
        values.forms({"amount": "5"})
    assert values.forms({"count": 5, "when": "2024-01-01T00:00:00Z"}) is None


class _Payer:
    def __init__(self, ran: list[Any]) -> None:
        self.ran = ran

    def __call__(self, amount: Decimal) -> str:
        self.ran.append(("payer", amount))
        return f"payer {amount}"


def _pay_in(currency: str, amount: Decimal) -> str:
    return f"{currency} {amount!r}"


async def test_a_partial_or_callable_object_tool_is_judged_as_its_function_receives(
    idp: FakeIdentityProvider,
) -> None:
    """typing.get_type_hints reads neither a functools.partial nor a callable object: their
    Decimal parameter was unresolvable, and every call of such a tool failed with
    policy_error. Their function's annotations are read instead."""
    import functools

    ran: list[Any] = []
    rules = RULES.replace('tools = ["pay", "maybe_pay", "either"]', 'tools = ["eur", "payer"]')
    mcp = FastMCP(
        "callables",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(rules),
        audit=False,
    )
    mcp.add_tool(Tool.from_function(functools.partial(_pay_in, "EUR"), name="eur"))
    mcp.add_tool(Tool.from_function(_Payer(ran), name="payer"))
    async with connect(mcp, idp.token("alice")) as client:
        ok = await client.call_tool("eur", {"amount": "12"})
        assert ok.content[0].text == "EUR Decimal('12')"  # type: ignore[union-attr]
        await client.call_tool("payer", {"amount": "12"})
        for tool in ("eur", "payer"):
            result = await client.call_tool(tool, {"amount": "5e3"}, raise_on_error=False)
            assert result.is_error and "policy_denied" in str(result.content), result
    assert ran == [("payer", Decimal(12))]


async def test_a_rules_text_for_a_converted_tool_argument_is_read_canonically_too(
    idp: FakeIdentityProvider,
) -> None:
    """A rule written amount = "5e3" (not canonically) holds for 5000, "5000" and "5000.0",
    as a prompt's rule does: the rules file respells its text through the tool's validation."""
    rules = textwrap.dedent(
        """
        default = "allow"

        [[rule]]
        name = "no-5e3"
        effect = "deny"
        tools = ["pay"]
        arguments = { amount = "5e3" }
        """
    )
    mcp, ran = typed_server(idp, RulesPolicy.from_string(rules), audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        for amount in (5000, "5000", "5000.0", "5e3"):
            result = await client.call_tool("pay", {"amount": amount}, raise_on_error=False)
            assert result.is_error and "policy_denied" in str(result.content), amount
        await client.call_tool("pay", {"amount": "5001"})
    assert ran == [("pay", Decimal(5001))]
