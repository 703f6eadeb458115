"""The testing kit's client helpers and pytest fixtures, and transports FastMCP leaves open."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import PythonStdioTransport
from mcp import MCPError

from securemcp import FastMCP, current
from securemcp.testing import FakeIdentityProvider, connect, connect_http, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _server(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("helpers", auth=idp.verifier(audience=AUDIENCE))

    @mcp.tool(scopes=["a"])
    def who() -> str:
        return current().principal.subject

    return mcp


async def test_call_as_fixture(call_as: Any, fake_idp: FakeIdentityProvider) -> None:
    mcp = FastMCP("fixtures", auth=fake_idp.verifier())

    @mcp.tool(scopes=["a"])
    def who() -> str:
        return current().principal.subject

    async with call_as(mcp, "carol", scopes=["a"]) as client:
        assert (await client.call_tool("who", {})).data == "carol"
    async with call_as(mcp, "dave") as client:
        assert (await client.call_tool("who", {}, raise_on_error=False)).is_error


def test_production_mode_fixture(production_mode: None) -> None:
    assert os.environ["SECUREMCP_ENV"] == "production"


@pytest.mark.http
async def test_real_http_bearer_tokens() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = _server(idp)
    async with serve_http(mcp) as url:
        async with connect_http(url, idp.token("erin", scopes=["a"])) as client:
            assert (await client.call_tool("who", {})).data == "erin"
        async with connect_http(url, idp.token("frank", scopes=[])) as client:
            # refused at the HTTP layer with 403 insufficient_scope (step-up), before FastMCP
            with pytest.raises(MCPError, match=r"^insufficient_scope:"):
                await client.call_tool("who", {})
        # a forged token never reaches the pipeline: FastMCP's HTTP layer answers 401
        async with httpx.AsyncClient() as raw:
            response = await raw.post(
                url,
                headers={
                    "Authorization": f"Bearer {idp.bad_token('signed_by_stranger')}",
                    "Accept": "application/json, text/event-stream",
                    "Content-Type": "application/json",
                },
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            )
        assert response.status_code == 401
        assert "invalid_token" in response.headers.get("www-authenticate", "")


async def test_stdio_enforces_scopes_where_fastmcp_skips_auth(tmp_path: Path) -> None:
    """FastMCP skips every auth check on stdio; securemcp's pipeline does not."""
    env = {
        **os.environ,
        "SECUREMCP_AUDIT_DIR": str(tmp_path / "audit"),  # one writer per log: its own folder
        "SECUREMCP_DEV_SCOPES": "",  # the development principal holds no scopes
        "FASTMCP_SHOW_SERVER_BANNER": "false",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    transport = PythonStdioTransport(
        str(EXAMPLES / "calculator.py"), python_cmd=sys.executable, env=env
    )
    async with Client(transport) as client:
        names = sorted(t.name for t in await client.list_tools())
        assert names == ["add"]
        assert (await client.call_tool("add", {"a": 2, "b": 3})).data == 5
        refused = await client.call_tool("reset", {}, raise_on_error=False)
        assert refused.is_error
        assert refused.content[0].text.startswith("insufficient_scope:")


async def test_overlapping_connects_share_one_lifespan_until_the_last_exits(
    fake_idp: FakeIdentityProvider,
) -> None:
    """FastMCP 4.1 ends the lifespan when the first in-memory client leaves; connect must not."""
    idp = fake_idp
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(server: Any) -> AsyncIterator[dict[str, Any]]:
        events.append("open")
        try:
            yield {}
        finally:
            events.append("closed")

    server = FastMCP("lifespan-holder", auth=idp.verifier(), lifespan=lifespan)

    @server.tool
    def lifespan_open() -> bool:
        return events[-1:] == ["open"]

    both_connected = asyncio.Barrier(2)
    alice_left = asyncio.Event()

    async def alice() -> None:
        async with connect(server, idp.token("alice")) as client:
            await both_connected.wait()
            assert (await client.call_tool("lifespan_open", {})).data is True
        alice_left.set()  # the first connection leaves first ...

    async def bob() -> None:
        async with connect(server, idp.token("bob")) as client:
            await both_connected.wait()
            await alice_left.wait()
            # ... and the one still connected keeps a live lifespan.
            assert (await client.call_tool("lifespan_open", {})).data is True
            assert events == ["open"]

    await asyncio.gather(alice(), bob())
    assert events == ["open", "closed"]
    # A later connection gets a fresh lifespan, not the closed one.
    async with connect(server, idp.token("carol")) as carol:
        assert (await carol.call_tool("lifespan_open", {})).data is True
    assert events == ["open", "closed", "open", "closed"]
