"""The proxy example runs: its lockfile matches the vendor server, and the rules hold."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError

from securemcp.proxy import create_proxy, load_config
from securemcp.proxy.locking import lock_upstreams
from securemcp.testing import FakeIdentityProvider, connect

HERE = Path(__file__).parent / "proxy"


def example_config() -> object:
    cfg = load_config(HERE / "proxy.toml")
    crm = dataclasses.replace(cfg.upstreams[0], command=sys.executable)  # this interpreter
    return dataclasses.replace(cfg, upstreams=(crm,))


async def test_committed_lockfile_matches_the_vendor_server() -> None:
    _, reports = await lock_upstreams(example_config(), write=False)  # type: ignore[arg-type]
    assert reports[0].error is None
    assert reports[0].diff.is_clean, reports[0].lines()


async def test_the_example_rules(tmp_path: Path) -> None:
    idp = FakeIdentityProvider()
    proxy = create_proxy(
        example_config(),  # type: ignore[arg-type]
        auth=idp.verifier(),
        audit=tmp_path / "audit",
        approvals=str(tmp_path / "approvals.db"),
    )
    async with connect(proxy, idp.token("agent", scopes=["crm:read", "crm:admin"])) as client:
        assert {t.name for t in await client.list_tools()} == {"find_customer", "delete_customer"}
        found = await client.call_tool("find_customer", {"customer_id": 1})
        assert found.content[0].text == "Ada Lovelace"
        with pytest.raises(ToolError, match="approval_required"):
            await client.call_tool("delete_customer", {"customer_id": 1})
        with pytest.raises(ToolError, match="Unknown tool"):
            await client.call_tool("export_everything", {})
