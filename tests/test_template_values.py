"""The canonical spelling of a template read: each value written as the template function gets it.

No ``from __future__ import annotations`` here: the templates need real annotation objects
(FastMCP's own int/float/bool conversion applies only then).
"""

import asyncio
import enum
import uuid
from decimal import Decimal
from typing import Any

import pytest
from fastmcp import Context
from fastmcp.resources.template import FunctionResourceTemplate, ResourceTemplate

from securemcp._template_values import (
    _UNRESOLVED,
    TemplateValues,
    UnknownConversion,
    _Parameter,
    spell,
    template_values,
)
from securemcp.components import facts_of
from securemcp.errors import CallRefused
from securemcp.policy.enforcement import PolicyEnforcement


class Colour(enum.Enum):
    RED = 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, "true"),
        (False, "false"),
        (7, "7"),
        (-7, "-7"),
        (7.0, "7"),
        (-0.0, "0"),
        (2.5, "2.5"),
        (1e16, "10000000000000000"),
        (float("inf"), "inf"),
        (float("nan"), "nan"),
        (Colour.RED, "1"),
        (Decimal("7.00"), "7"),
        (Decimal("1E+2"), "100"),
        (Decimal("2.50"), "2.5"),
        (Decimal("-0.0"), "0"),
        ("Alice", "Alice"),
        (uuid.UUID(int=10), "00000000-0000-0000-0000-00000000000a"),
    ],
)
def test_spell_writes_a_value_as_the_function_receives_it(value: Any, expected: str) -> None:
    assert spell(value) == expected


def _values(uri_template: str, fn: Any) -> TemplateValues:
    values = template_values(FunctionResourceTemplate.from_function(fn, uri_template))
    assert values is not None
    return values


def _names(uri_template: str) -> frozenset[str] | None:
    """The query names the pipeline keeps for a template (ComponentFacts.query_names)."""
    return facts_of(
        ResourceTemplate(uri_template=uri_template, name="t", parameters={})
    ).query_names


def test_path_and_query_values_are_rewritten_and_the_rest_is_kept() -> None:
    def read(id: int, dry_run: bool = False, note: str = "") -> str:
        return ""

    template = "items://{id}/x{?dry-run,note}"
    values = _values(template, read)
    names = _names(template)
    assert values.spellings("items://%2B7/x?dry-run=YES&note=Hi+there&other=1", names) == (
        "items://7/x?dry-run=true&note=Hi there",
    )
    # a name spelled with percent-encoding is the same name; FastMCP reads its first value
    assert values.spellings("items://07/x?dry%2Drun=no&dry-run=yes", names) == (
        "items://7/x?dry-run=false",
    )
    # every value already written as the function receives it: nothing else to judge
    assert values.spellings("items://7/x?dry-run=true&note=a", names) == ()

    # one canonical spelling per value: a whole-number float is written as the integer
    def price(x: float) -> str:
        return ""

    assert _values("p://{x}", price).spellings("p://7", None) == ()
    assert _values("p://{x}", price).spellings("p://7.0", None) == ("p://7",)


def test_list_values_are_rewritten_item_by_item() -> None:
    def exploded(ids: list[int] | None = None) -> str:
        return ""

    def joined(ids: list[float] | None = None) -> str:
        return ""

    assert _values("a://x{?ids*}", exploded).spellings(
        "a://x?ids=07&ids=+8&ids=9", _names("a://x{?ids*}")
    ) == ("a://x?ids=7&ids=8&ids=9",)
    assert _values("b://x{?ids}", joined).spellings("b://x?ids=07,2.50", _names("b://x{?ids}")) == (
        "b://x?ids=7,2.5",
    )


def test_a_refused_value_gives_no_spelling_and_text_parameters_none_at_all() -> None:
    def read(id: int) -> str:
        return ""

    def text(name: str, ctx: Context | None = None) -> str:
        return ""

    values = _values("items://{id}", read)
    for uri in ("items://0x7", "items://7.0", "items://", "other://7"):
        assert values.spellings(uri, None) == ()
    assert template_values(FunctionResourceTemplate.from_function(text, "users://{name}")) is None

    # an injected Context is no template value
    def with_context(id: int, ctx: Context) -> str:
        return ""

    assert _values("c://{id}", with_context).spellings("c://07", None) == ("c://7",)


def test_only_fastmcps_own_function_template_read_is_modelled() -> None:
    class OwnRead(FunctionResourceTemplate):
        async def read(self, arguments: dict[str, Any]) -> Any:
            return "own"

    def read(id: int) -> str:
        return ""

    own = OwnRead.from_function(read, "items://{id}")
    assert type(own) is OwnRead and template_values(own) is None
    remote = ResourceTemplate(uri_template="items://{id}", name="r", parameters={})
    assert template_values(remote) is None


def test_an_unknown_conversion_fails_the_policy_step_closed() -> None:
    values = TemplateValues(
        function=None,
        uri_template="items://{id}",
        list_params=frozenset(),
        parameters={"id": _Parameter("Missing", _UNRESOLVED)},
    )
    with pytest.raises(UnknownConversion):
        values.spellings("items://07", None)
    facts = facts_of(ResourceTemplate(uri_template="items://{id}", name="r", parameters={}))
    from dataclasses import replace

    with pytest.raises(CallRefused, match="policy_error"):
        asyncio.run(
            PolicyEnforcement.spellings(replace(facts, template_values=values), "items://07")
        )


def test_a_validator_that_fails_unlike_fastmcp_fails_the_policy_step_closed() -> None:
    from typing import Annotated

    from pydantic import BeforeValidator

    def explode(value: Any) -> Any:
        raise RuntimeError("not a conversion error")

    def read(id: Annotated[int, BeforeValidator(explode)]) -> str:
        return ""

    template = FunctionResourceTemplate.from_function(read, "items://{id}")
    with pytest.raises(CallRefused, match="policy_error"):
        asyncio.run(PolicyEnforcement.spellings(facts_of(template), "items://07"))


def test_copies_of_one_template_have_equal_facts() -> None:
    """The admission re-check compares facts: a copy of a template (same function) is the
    same component, so its reads are not refused as changed mid-call."""

    def read(id: int) -> str:
        return ""

    template = FunctionResourceTemplate.from_function(read, "items://{id}")
    assert facts_of(template) == facts_of(template.model_copy())

    def other_read(id: int) -> str:
        return ""

    other = FunctionResourceTemplate.from_function(other_read, "items://{id}")
    assert facts_of(template) != facts_of(other)


def test_a_decimal_is_spelled_exactly_never_rounded() -> None:
    """``normalize()`` rounds to the context's 28 digits: 0.5000000000000000000000000000001 was
    spelled 0.5 (the value an approval was bound to and an approver was shown, not the one the
    function received), and 1e-50000000 was spelled 0."""
    from decimal import Decimal

    from securemcp._template_values import spell

    assert spell(Decimal("0.5000000000000000000000000000001")) == (
        "0.5000000000000000000000000000001"
    )
    assert spell(Decimal("-1.50")) == "-1.5"
    assert spell(Decimal("7.000")) == "7"
    assert spell(Decimal("1E+2")) == "100"
    assert spell(Decimal("0.001")) == "0.001"
    assert spell(Decimal("-0")) == "0"


def test_a_huge_decimal_exponent_is_refused_at_once_not_converted() -> None:
    """``int(Decimal("1e300000"))`` is quadratic in the digits and ran on the event loop before
    the policy decided: one small value (a prompt or template parameter typed ``Decimal``) froze
    the whole server for seconds, ``1e100000000`` for hours. It is now refused (fail closed)
    before any work proportional to the value. Run in a subprocess, so a regression fails the
    test instead of hanging the suite."""
    import subprocess
    import sys

    script = (
        "from decimal import Decimal\n"
        "from securemcp._template_values import UnknownConversion, spell\n"
        "from securemcp._prompt_values import jsonable\n"
        "for f in (spell, jsonable):\n"
        "    try:\n"
        "        f(Decimal('1e100000000'))\n"
        "    except UnknownConversion:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('converted')\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    except subprocess.TimeoutExpired:
        pytest.fail("spelling Decimal('1e100000000') did not finish in 60 s")
    assert done.returncode == 0, done.stderr.decode()[-500:]


def test_mixed_float_forms_across_parameters_have_one_canonical_spelling() -> None:
    """Each whole-number float was spelled two ways (``7`` and ``7.0``) and only the two uniform
    forms were judged, so ``grid://7.0/1`` was judged as ``grid://7/1`` and ``grid://7.0/1.0``,
    never as ``grid://7/1.0``. Now every value has one canonical text, and any read of one pair
    of values has one canonical spelling however each value is written."""

    def grid(a: float, b: float) -> str:
        return ""

    values = _values("grid://{a}/{b}", grid)
    for uri in ("grid://7/1.0", "grid://7.0/1", "grid://07/1e0", "grid://7.0/1.0", "grid://7/1"):
        assert values.canonical(uri, None) == "grid://7/1"
        assert values.spellings(uri, None) in ((), ("grid://7/1",))
    assert values.canonical("grid://7/x", None) is None  # FastMCP refuses the read
    assert values.canonical("other://7/1", None) is None


def test_a_template_with_a_literal_hash_is_read_whole() -> None:
    """FastMCP matches a template that spells out ``#`` against the whole URI. securemcp cut the
    URI at its first ``#``: ``notes://07#x`` kept no canonical spelling (so it dodged a rule on
    ``notes://7``), and ``notes://a#b#x`` (``id = "a#b"``) was judged as ``notes://a``."""
    from securemcp._template_values import template_target

    def note(id: int) -> str:
        return ""

    values = _values("notes://{id}#x", note)
    assert values.spellings("notes://07#x", None) == ("notes://7",)
    assert values.canonical("notes://7#x", None) == "notes://7"
    assert template_target("notes://a#b#x", "notes://{id}#x", None) == "notes://a#b"
    assert template_target("notes://a%23b#x", "notes://{id}#x", None) == "notes://a#b"
    assert template_target("notes://a#x", "notes://{id}#x", None) == "notes://a"
    assert template_target("files://a#x", "files://{id}", None) == "files://a"
