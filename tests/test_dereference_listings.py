"""A securemcp server runs FastMCP's schema dereferencing only for the listings it rewrites.

``securemcp._dereference_listings.DereferenceListings`` replaces FastMCP's
``DereferenceRefsMiddleware`` on securemcp servers and passes every other message straight on.
These tests hold it to FastMCP's behaviour: listings are dereferenced exactly as on a bare
FastMCP server, every other message reaches the next handler unchanged without FastMCP's
pass-through hooks, and FastMCP's middleware still has no hook beyond the two it rewrites.
"""

from __future__ import annotations

from typing import Any

import fastmcp
import pytest
from fastmcp import Client
from fastmcp.server.middleware.dereference import DereferenceRefsMiddleware
from fastmcp.server.middleware.middleware import Middleware, MiddlewareContext
from pydantic import BaseModel

from securemcp import FastMCP
from securemcp._dereference_listings import REWRITTEN_METHODS, DereferenceListings


class Point(BaseModel):
    x: int
    y: int


def with_tools(server: Any) -> Any:
    @server.tool
    def norm(point: Point) -> int:
        """A tool whose input schema refers to a definition ($defs / $ref)."""
        return abs(point.x) + abs(point.y)

    @server.resource("points://{name}")
    def point(name: str) -> str:
        return name

    return server


def test_securemcp_servers_get_it_and_fastmcp_servers_keep_theirs() -> None:
    secure = FastMCP("deref", audit=False).middleware
    assert sum(type(m) is DereferenceListings for m in secure) == 1
    assert not any(type(m) is DereferenceRefsMiddleware for m in secure)
    bare = fastmcp.FastMCP("bare").middleware
    assert sum(type(m) is DereferenceRefsMiddleware for m in bare) == 1
    assert not any(isinstance(m, DereferenceListings) for m in bare)
    off = FastMCP("off", audit=False, dereference_schemas=False).middleware
    assert not any(isinstance(m, DereferenceRefsMiddleware) for m in off)


def test_fastmcp_rewrites_only_the_two_listings() -> None:
    # If FastMCP gives its middleware another hook, passing other messages on is wrong.
    hooks = {name for name in vars(DereferenceRefsMiddleware) if name.startswith("on_")}
    assert hooks == {"on_list_tools", "on_list_resource_templates"}
    assert {"tools/list", "resources/templates/list"} == REWRITTEN_METHODS


async def test_listed_schemas_are_dereferenced_as_by_fastmcp() -> None:
    async with Client(with_tools(fastmcp.FastMCP("deref"))) as client:
        bare = {t.name: t.input_schema for t in await client.list_tools()}
    async with Client(with_tools(FastMCP("deref", audit=False))) as client:
        secure = {t.name: t.input_schema for t in await client.list_tools()}
        assert await client.call_tool("norm", {"point": {"x": 3, "y": -4}}) is not None
    assert secure == bare
    schema = repr(secure["norm"])
    assert "$defs" not in schema and "$ref" not in schema  # inlined, not merely equal
    assert secure["norm"]["properties"]["point"]["properties"]["x"]["type"] == "integer"


class _Spy(DereferenceListings):
    """Records which of FastMCP's per-message hooks ran."""

    def __init__(self) -> None:
        self.hooks: list[str] = []

    async def on_message(self, context: Any, call_next: Any) -> Any:
        self.hooks.append("on_message")
        return await super().on_message(context, call_next)

    async def on_list_resource_templates(self, context: Any, call_next: Any) -> Any:
        self.hooks.append("on_list_resource_templates")
        return await super().on_list_resource_templates(context, call_next)


def _context(method: str) -> MiddlewareContext[Any]:
    return MiddlewareContext(message={}, method=method)


@pytest.mark.parametrize("method", ["tools/call", "resources/read", "prompts/get", "initialize"])
async def test_other_messages_go_straight_on(method: str) -> None:
    spy = _Spy()
    answer = object()
    seen: list[Any] = []

    async def call_next(context: Any) -> Any:
        seen.append(context)
        return answer

    context = _context(method)
    assert await spy(context, call_next) is answer
    assert seen == [context]  # the same context, once
    assert spy.hooks == []


async def test_template_listing_runs_fastmcps_hooks() -> None:
    spy = _Spy()
    template = with_tools(fastmcp.FastMCP("t"))

    async def call_next(context: Any) -> Any:
        return list(await template.list_resource_templates(run_middleware=False))

    listed = await spy(_context("resources/templates/list"), call_next)
    assert [t.uri_template for t in listed] == ["points://{name}"]
    assert spy.hooks == ["on_message", "on_list_resource_templates"]


async def test_user_middleware_still_sees_every_message() -> None:
    # Passing a message past the dereferencing changes nothing for the rest of the chain.
    seen: list[str | None] = []

    class Recorder(Middleware):
        async def on_message(self, context: Any, call_next: Any) -> Any:
            seen.append(context.method)
            return await call_next(context)

    server = with_tools(FastMCP("deref", audit=False, middleware=[Recorder()]))
    async with Client(server) as client:
        await client.call_tool("norm", {"point": {"x": 1, "y": 1}})
    assert "tools/call" in seen
