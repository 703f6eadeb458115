"""securemcp's task-free component lookups give FastMCP's own answers, errors and warnings.

``securemcp._direct_lookups.DirectLookups`` replaces ``AggregateProvider``'s per-lookup task
group when the server's only provider is its ``LocalProvider``. Each test here runs the same
lookup through the direct path and through FastMCP's ``AggregateProvider`` method on the same
server, and compares the outcomes.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastmcp.exceptions import NotFoundError
from fastmcp.server.providers import AggregateProvider
from fastmcp.server.providers import aggregate as aggregate_module

import securemcp

pytestmark = pytest.mark.anyio

LOOKUPS: list[tuple[str, tuple[Any, ...]]] = [
    ("_get_tool", ("add",)),
    ("_get_tool", ("missing",)),
    ("_get_tool", ("disabled",)),
    ("_list_tools", ()),
    ("_get_resource", ("data://config",)),
    ("_get_resource", ("data://missing",)),
    ("_list_resources", ()),
    ("_get_resource_template", ("users://{user_id}/profile",)),
    ("_get_resource_template", ("users://7/profile",)),
    ("_list_resource_templates", ()),
    ("_get_prompt", ("greet",)),
    ("_get_prompt", ("missing",)),
    ("_list_prompts", ()),
]


def build() -> securemcp.FastMCP:
    mcp = securemcp.FastMCP("lookups", audit=False)

    @mcp.tool(scopes=["calc"])
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool(version="1")
    def versioned() -> str:
        return "one"

    @mcp.tool(version="2")
    def versioned_v2() -> str:  # pragma: no cover - only listed
        return "two"

    @mcp.tool
    def disabled() -> str:  # pragma: no cover - only listed
        return "off"

    mcp.disable(names={"disabled"})

    @mcp.resource("data://config")
    def config() -> str:
        return "{}"

    @mcp.resource("users://{user_id}/profile")
    def profile(user_id: str) -> str:
        return user_id

    @mcp.prompt
    def greet(name: str) -> str:
        return f"hello {name}"

    return mcp


def key_of(value: Any) -> Any:
    """A comparable view of a lookup outcome (components compare by their key)."""
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [key_of(item) for item in value]
    return value.key


@pytest.fixture
def gather_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every FastMCP aggregate ``gather`` (one task group per call)."""
    calls: list[str] = []
    original = aggregate_module.gather

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append("gather")
        return original(*args, **kwargs)

    monkeypatch.setattr(aggregate_module, "gather", recording)
    return calls


@pytest.mark.parametrize(("method", "args"), LOOKUPS)
async def test_direct_lookup_matches_fastmcp(
    method: str, args: tuple[Any, ...], gather_calls: list[str]
) -> None:
    mcp = build()
    direct = await getattr(mcp, method)(*args)
    assert gather_calls == [], "a sole LocalProvider must be looked up without a task group"
    fastmcp_answer = await getattr(AggregateProvider, method)(mcp, *args)
    assert gather_calls == ["gather"]
    assert key_of(direct) == key_of(fastmcp_answer)


async def test_highest_version_is_chosen_as_fastmcp_does(gather_calls: list[str]) -> None:
    mcp = securemcp.FastMCP("versions", audit=False)
    for version in ("1", "3", "2"):
        mcp.tool(lambda v=version: v, name="pick", version=version)
    tool = await mcp._get_tool("pick")
    assert gather_calls == []
    assert tool is not None and tool.version == "3"
    assert key_of(tool) == key_of(await AggregateProvider._get_tool(mcp, "pick"))


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("strategy", ["warn", "raise"])
@pytest.mark.parametrize(("method", "args"), [("_get_tool", ("add",)), ("_list_tools", ())])
async def test_provider_errors_follow_the_error_strategy(
    strategy: str,
    method: str,
    args: tuple[Any, ...],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    mcp = build()
    mcp.provider_error_strategy = strategy  # type: ignore[assignment]
    provider = mcp.providers[0]

    async def broken(*_: Any, **__: Any) -> Any:
        raise Boom("provider failed")

    public = method.removeprefix("_")
    monkeypatch.setattr(provider, public, broken)

    outcomes = []
    for path in (getattr(mcp, method), lambda *a: getattr(AggregateProvider, method)(mcp, *a)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            if strategy == "raise":
                with pytest.raises(Boom):
                    await path(*args)
                outcomes.append("raised")
            else:
                outcomes.append(key_of(await path(*args)))
        warned = any("provider failed" in record.getMessage() for record in caplog.records)
        assert strategy == "raise" or warned
    assert outcomes[0] == outcomes[1]
    assert outcomes[0] in ("raised", None, [])


async def test_not_found_from_the_provider_is_a_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    mcp = build()

    async def not_found(*_: Any, **__: Any) -> Any:
        raise NotFoundError("no such tool")

    monkeypatch.setattr(mcp.providers[0], "get_tool", not_found)
    assert await mcp._get_tool("add") is None
    assert await AggregateProvider._get_tool(mcp, "add") is None


async def test_mounted_servers_keep_fastmcp_concurrent_lookups(gather_calls: list[str]) -> None:
    mcp = build()
    child = securemcp.FastMCP("child", audit=False)

    @child.tool
    def child_tool() -> str:
        return "child"

    mcp.mount(child, namespace="c")
    tool = await mcp._get_tool("c_child_tool")
    assert tool is not None
    assert gather_calls, "with two providers FastMCP's own aggregate path is used"
    names = {t.name for t in await mcp._list_tools()}
    assert {"add", "c_child_tool"} <= names


async def test_calls_through_the_pipeline_use_the_direct_lookup(gather_calls: list[str]) -> None:
    from securemcp.testing import connect

    mcp = build()
    async with connect(mcp) as client:
        gather_calls.clear()  # the lifespan lists task components once, at startup
        result = await client.call_tool("add", {"a": 2, "b": 3})
        listed = {tool.name for tool in await client.list_tools()}
    assert result.data == 5
    assert "add" in listed
    assert gather_calls == []
