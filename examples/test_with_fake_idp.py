"""How to test a securemcp server in CI with no network: run with `pytest examples/`."""

from __future__ import annotations

from calculator import mcp

from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://calculator.example.com/mcp"


async def test_scopes_are_enforced() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp.auth = idp.verifier(audience=AUDIENCE)
    try:
        async with connect(mcp, idp.token("alice", scopes=["calc:write"])) as client:
            assert (await client.call_tool("add", {"a": 1, "b": 2})).data == 3
            stored = await client.call_tool("store", {"name": "x", "value": 1})
            assert stored.data == "stored x=1.0 for alice"
            refused = await client.call_tool("reset", {}, raise_on_error=False)
            assert refused.is_error
            assert "calc:admin" in refused.content[0].text
    finally:
        mcp.auth = None
