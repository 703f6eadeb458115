"""The payments example end to end, in memory, with the fake identity provider."""

from __future__ import annotations

from pathlib import Path

from payments_server import build

from securemcp.context import Principal
from securemcp.policy import ApprovalGate, open_store
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://payments.example.com/mcp"
SCOPES = ["payments:read", "payments:write"]


async def test_rules_approvals_and_limits(tmp_path: Path) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp = build(idp.verifier(audience=AUDIENCE), ApprovalGate(store))
    async with connect(mcp, idp.token("alice", scopes=SCOPES)) as client:
        assert (await client.call_tool("balance", {})).data["owner"] == "alice"
        small = await client.call_tool("transfer", {"to": "bob", "amount": 20})
        assert small.data == "sent 20.00 EUR to bob for alice"
        odd = await client.call_tool(
            "transfer", {"to": "bob", "amount": 20, "currency": "XYZ"}, raise_on_error=False
        )
        assert odd.content[0].text.startswith("policy_denied:")  # no rule allows it
        big = await client.call_tool(
            "transfer", {"to": "bob", "amount": 5000}, raise_on_error=False
        )
        text = big.content[0].text
        assert text.startswith("approval_required:")
        approval_id = text.split("approval id ")[1].split(")")[0]
        approver = Principal(
            subject="carol", issuer=idp.issuer, scopes=frozenset({"securemcp:approve"})
        )
        await store.approve(approval_id, approver)
        done = await client.call_tool("transfer", {"to": "bob", "amount": 5000})
        assert done.data == "sent 5000.00 EUR to bob for alice"
    contractor = idp.token("dave", scopes=SCOPES, employment="contractor")
    async with connect(mcp, contractor) as client:
        refused = await client.call_tool(
            "transfer", {"to": "bob", "amount": 1}, raise_on_error=False
        )
        assert refused.content[0].text.startswith("policy_denied:")
        assert not (await client.call_tool("balance", {})).is_error
    async with connect(mcp, idp.token("erin", scopes=SCOPES)) as client:
        results = [await client.call_tool("balance", {}, raise_on_error=False) for _ in range(31)]
        assert [r.is_error for r in results].count(True) == 1
        assert results[-1].content[0].text.startswith("rate_limited:")
