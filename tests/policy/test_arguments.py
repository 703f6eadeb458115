"""Argument types against the tool's input schema: what the policy sees is what the tool gets."""

from __future__ import annotations

import datetime
from decimal import Decimal
from typing import Any, Literal

import pytest
from fastmcp import Client
from fastmcp import FastMCP as BareFastMCP
from pydantic import BaseModel

from securemcp.policy.arguments import argument_type_error


class Options(BaseModel):
    force: bool = False
    depth: int = 1


class Node(BaseModel):
    name: str
    children: list[Node] = []


async def _schema(fn: Any) -> dict[str, Any]:
    server = BareFastMCP("schemas")
    server.tool(fn)
    tool = await server.get_tool(fn.__name__)
    assert tool is not None
    return dict(tool.parameters)


def sample(
    amount: int,
    price: float,
    dry_run: bool,
    argv: list[str],
    options: Options,
    tree: Node,
    mode: Literal["a", "b"] = "a",
    limit: int | None = None,
    when: datetime.datetime | None = None,
    counts: dict[str, int] | None = None,
    pair: tuple[int, str] | None = None,
    money: Decimal | None = None,
    anything: Any = None,
) -> str:
    return "ok"


GOOD: dict[str, Any] = {
    "amount": 5000,
    "price": 5000,
    "dry_run": False,
    "argv": ["rm", "-rf"],
    "options": {"force": True, "depth": 2},
    "tree": {"name": "a", "children": [{"name": "b", "children": []}]},
    "mode": "b",
    "limit": None,
    "when": "2026-01-01T00:00:00Z",
    "counts": {"x": 1},
    "pair": [1, "x"],
    "money": "12.50",
    "anything": {"whatever": [1, "2", True]},
}


async def test_declared_json_types_pass() -> None:
    schema = await _schema(sample)
    assert argument_type_error(schema, GOOD) is None
    assert argument_type_error(schema, {**GOOD, "amount": 5000.0}) is None  # an integral number
    assert argument_type_error(schema, {**GOOD, "money": 12.5}) is None  # Decimal: number too
    assert argument_type_error(schema, {**GOOD, "unknown": "left to the tool"}) is None


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"amount": "5000"}, "amount"),
        ({"amount": True}, "amount"),
        ({"amount": 5000.5}, "amount"),
        ({"price": "5000"}, "price"),
        ({"price": False}, "price"),
        ({"dry_run": "false"}, "dry_run"),
        ({"dry_run": 0}, "dry_run"),
        ({"argv": '["rm"]'}, "argv"),
        ({"argv": ["rm", 1]}, "argv[1]"),
        ({"options": {"force": 1}}, "options.force"),
        ({"options": {"force": "true"}}, "options.force"),
        ({"options": '{"force": true}'}, "options"),
        ({"tree": {"name": "a", "children": [{"name": 7}]}}, "tree.children[0].name"),
        ({"mode": "c"}, "mode"),
        ({"limit": "10"}, "limit"),
        ({"when": 1767225600}, "when"),
        ({"counts": {"x": "1"}}, "counts.x"),
        ({"pair": [1, 2]}, "pair[1]"),
        ({"pair": ["1", "x"]}, "pair[0]"),
    ],
)
async def test_types_the_tool_would_coerce_are_named(change: dict[str, Any], path: str) -> None:
    schema = await _schema(sample)
    assert argument_type_error(schema, {**GOOD, **change}) == path


def test_schemas_without_types_accept_anything() -> None:
    assert argument_type_error({}, {"a": "1"}) is None
    assert argument_type_error({"type": "object"}, {"a": "1"}) is None
    assert argument_type_error(None, {"a": "1"}) is None
    # an unknown type name or an external reference: no opinion, left to the tool
    assert argument_type_error({"properties": {"a": {"type": "decimal128"}}}, {"a": "1"}) is None
    assert argument_type_error({"properties": {"a": {"$ref": "other.json#/x"}}}, {"a": 1}) is None


async def test_fastmcp_coerces_by_default() -> None:
    """Pins the FastMCP behaviour the check exists for: without securemcp, lax validation hands
    the tool 5000 for "5000" and False for "false" (strict_input_validation=False by default)."""
    server = BareFastMCP("bare")
    seen: list[Any] = []

    @server.tool
    def transfer(amount: int, dry_run: bool = True) -> str:
        seen.append((amount, dry_run))
        return "ok"

    assert server.strict_input_validation is False
    async with Client(server) as client:
        await client.call_tool("transfer", {"amount": "5000", "dry_run": "false"})
    assert seen == [(5000, False)]


@pytest.mark.parametrize(
    ("schema", "value", "fits"),
    [
        ({"const": "safe"}, "safe", True),
        ({"const": "safe"}, "unsafe", False),
        ({"const": 1}, 1, True),
        ({"const": 1}, 1.0, True),  # the same JSON number
        ({"const": 1}, True, False),  # true is not 1 (pydantic's lax mode would pass 1)
        ({"const": 1}, "1", False),
        ({"const": [1, {"a": True}]}, [1, {"a": True}], True),
        ({"const": [1, {"a": True}]}, [1, {"a": 1}], False),
        ({"const": None}, None, True),
        ({"const": None}, 0, False),
    ],
)
def test_a_const_without_a_type_is_checked_on_its_own(
    schema: dict[str, Any], value: Any, fits: bool
) -> None:
    """A schema whose only constraint is ``const`` (hand-written or proxied tools; FastMCP adds a
    ``type`` for ``Literal``) still refuses any other JSON value, ``true`` for ``1`` included."""
    wrapped = {"type": "object", "properties": {"level": schema}}
    assert argument_type_error(wrapped, {"level": value}) == (None if fits else "level")
