"""FastMCP's per-component ``auth`` checks still hold on securemcp servers, with no token lookup
for components that have none.

``securemcp._component_auth`` answers FastMCP's ``_component_auth_allows`` at once for a
securemcp server's component without an ``auth`` check (FastMCP fetches the caller's token
first and then ignores it). These tests attack it: a component *with* a check still refuses a
caller FastMCP refuses, on securemcp and bare servers alike; other servers keep FastMCP's own
function; and the shortcut really skips the lookup.
"""

from __future__ import annotations

from typing import Any

import fastmcp
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from fastmcp.server import server as fastmcp_server
from fastmcp.server.auth import require_scopes

from securemcp import FastMCP
from securemcp._component_auth import component_auth_allows
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def build(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("component-auth", auth=idp.verifier(audience=AUDIENCE), audit=False)

    @mcp.tool(scopes=["calc"])
    def add(a: int, b: int) -> int:
        return a + b

    @mcp.tool(scopes=["calc"], auth=require_scopes("admin"))
    def wipe() -> str:
        return "wiped"

    @mcp.resource("data://admin", auth=require_scopes("admin"))
    def admin_data() -> str:
        return "secret"

    return mcp


@pytest.fixture
def token_lookups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts FastMCP's token lookups for component auth checks."""
    from securemcp import _component_auth

    _component_auth.install()  # securemcp's stdio-aware front, which asks FastMCP's function
    calls: list[int] = []
    original = _component_auth._fastmcp_get_auth_context

    def counting() -> tuple[bool, Any]:
        calls.append(1)
        return original()

    monkeypatch.setattr(_component_auth, "_fastmcp_get_auth_context", counting)
    return calls


def test_a_securemcp_server_routes_fastmcps_check_through_securemcp() -> None:
    from securemcp._component_auth import get_auth_context

    FastMCP("installs", audit=False)
    assert fastmcp_server._component_auth_allows is component_auth_allows
    assert fastmcp_server._get_auth_context is get_auth_context


async def test_a_component_check_still_refuses_a_caller_without_its_scope(
    idp: FakeIdentityProvider,
) -> None:
    mcp = build(idp)
    async with connect(mcp, idp.token("mallory", scopes=["calc"])) as client:
        assert (await client.call_tool("add", {"a": 1, "b": 2})).data == 3
        with pytest.raises(ToolError):
            await client.call_tool("wipe", {})
        assert "wipe" not in {t.name for t in await client.list_tools()}
        with pytest.raises(Exception, match="admin"):
            await client.read_resource("data://admin")
    async with connect(mcp, idp.token("root", scopes=["calc", "admin"])) as client:
        assert (await client.call_tool("wipe", {})).data == "wiped"


async def test_no_token_lookup_for_components_without_a_check(
    idp: FakeIdentityProvider, token_lookups: list[int]
) -> None:
    mcp = FastMCP("unchecked", auth=idp.verifier(audience=AUDIENCE), audit=False)

    @mcp.tool(scopes=["calc"])
    def add(a: int, b: int) -> int:
        return a + b

    async with connect(mcp, idp.token("alice", scopes=["calc"])) as client:
        token_lookups.clear()
        assert (await client.call_tool("add", {"a": 1, "b": 2})).data == 3
        assert [t.name for t in await client.list_tools()] == ["add"]
        assert token_lookups == []


async def test_a_component_with_a_check_gets_fastmcps_lookup(
    idp: FakeIdentityProvider, token_lookups: list[int]
) -> None:
    async with connect(build(idp), idp.token("alice", scopes=["calc"])) as client:
        token_lookups.clear()
        with pytest.raises(ToolError):
            await client.call_tool("wipe", {})
        assert token_lookups  # FastMCP's own check, token and all


async def test_other_servers_keep_fastmcps_check(token_lookups: list[int]) -> None:
    FastMCP("installs", audit=False)  # the shortcut is installed process-wide
    bare = fastmcp.FastMCP("bare")

    @bare.tool
    def add(a: int, b: int) -> int:
        return a + b

    @bare.tool(auth=lambda ctx: False)
    def never() -> str:
        return "ran"

    async with Client(bare) as client:
        token_lookups.clear()
        assert (await client.call_tool("add", {"a": 1, "b": 2})).data == 3
        assert len(token_lookups) >= 2  # FastMCP looks the token up, as without securemcp
        with pytest.raises(ToolError):
            await client.call_tool("never", {})


async def test_no_context_is_fastmcps_answer(token_lookups: list[int]) -> None:
    class Component:
        auth = None

    assert await component_auth_allows(Component()) is True
    assert token_lookups == [1]  # FastMCP's function ran (no server to ask)


async def test_on_stdio_checks_see_the_verified_caller_and_never_skip(
    idp: FakeIdentityProvider,
) -> None:
    """FastMCP answers "skip every check" on stdio. On a securemcp server with a verifier the
    checks get the caller the pipeline verified, and outside any call no token at all (so a
    check refuses); a development server (no verifier) keeps FastMCP's answer."""
    from fastmcp.server.context import Context, _current_transport

    from securemcp._component_auth import get_auth_context
    from securemcp.context import Principal, SecurityContext, bind

    verified = FastMCP("stdio-checks", auth=idp.verifier(audience=AUDIENCE), audit=False)
    development = FastMCP("stdio-dev", audit=False)
    caller = Principal(subject="ada", issuer=idp.issuer, scopes=["admin"])
    call = SecurityContext._begin(
        "c1", "tools/call", "t", caller, "stdio", None, "stdio-checks", None
    )
    transport = _current_transport.set("stdio")
    try:
        async with Context(fastmcp=verified):
            assert get_auth_context() == (False, None)  # outside a call: nothing to admit
            with bind(call):
                skip, token = get_auth_context()
            assert skip is False and token.subject == "ada" and token.scopes == ["admin"]
            assert token.token == ""  # the credential itself never reaches component code
        async with Context(fastmcp=development):
            assert get_auth_context() == (True, None)
    finally:
        _current_transport.reset(transport)
