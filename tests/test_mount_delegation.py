"""Mounted securemcp servers: the parent's verified caller is delegated only through the mount.

A call a parent forwards to a mounted securemcp child (``parent.mount(child)``) was verified and
audited by the parent, so the child takes the parent's caller and does not audit it again. Any
other call the child receives during the parent's call (a parent tool body calling the child
directly) is a call of its own: verified by the child's verifier and audited in the child's log.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securemcp import FastMCP, current
from securemcp.audit import AuditLog, iter_records
from securemcp.testing import FakeIdentityProvider, connect

PARENT_AUDIENCE = "https://mcp.securemcp.test/mcp"
CHILD_AUDIENCE = "https://child.securemcp.test/mcp"
_LIFECYCLE = ("log_open", "log_close")


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=PARENT_AUDIENCE)


def child_server(idp: FakeIdentityProvider, seen: list[Any], audience: str, log: Any) -> FastMCP:
    """A child whose verifier accepts only ``audience`` (the parent's tokens are not for it)."""
    child = FastMCP("child", auth=idp.verifier(audience=audience), audit=log)

    def who() -> str:
        sec = current()
        seen.append((sec.principal.subject, sec.parent_call_id is not None))
        return sec.principal.subject

    @child.tool(scopes=["child:use"])
    def inner() -> str:
        return who()

    @child.resource("data://inner", scopes=["child:use"])
    def resource() -> str:
        return who()

    @child.resource("tmpl://{name}", scopes=["child:use"])
    def template(name: str) -> str:
        return who()

    @child.prompt(scopes=["child:use"])
    def prompt() -> str:
        return who()

    return child


async def test_every_kind_of_forwarded_call_is_delegated(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    seen: list[Any] = []
    child_log = AuditLog(tmp_path / "child")
    child = child_server(idp, seen, CHILD_AUDIENCE, child_log)
    parent = FastMCP("parent", auth=idp.verifier(), audit=AuditLog(tmp_path / "parent"))
    parent.mount(child, namespace="c")
    async with connect(parent, idp.token("alice", scopes=["child:use"])) as client:
        assert (await client.call_tool("c_inner", {})).data == "alice"
        assert (await client.read_resource("data://c/inner"))[0].text == "alice"
        assert (await client.read_resource("tmpl://c/x"))[0].text == "alice"
        assert (await client.get_prompt("c_prompt")).messages[0].content.text == "alice"
    child_log.close()
    # the child took the parent's caller (its own verifier would refuse the parent's token)
    assert seen == [("alice", True)] * 4
    # and audited none of them: the parent did
    calls = [r for r in iter_records(tmp_path / "child") if r["type"] not in _LIFECYCLE]
    assert calls == []


async def test_a_parent_tool_calling_the_child_directly_is_verified_by_the_child(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    seen: list[Any] = []
    child_log = AuditLog(tmp_path / "child")
    child = child_server(idp, seen, CHILD_AUDIENCE, child_log)
    parent = FastMCP("parent", auth=idp.verifier())
    parent.mount(child, namespace="c")
    outcomes: list[str] = []

    @parent.tool(scopes=["child:use"])
    async def housekeeping() -> str:
        try:
            await child.call_tool("inner", {})
            outcomes.append("ran")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        return "done"

    async with connect(parent, idp.token("alice", scopes=["child:use"])) as client:
        assert (await client.call_tool("housekeeping", {})).data == "done"
    child_log.close()
    # the token is the parent's, not the child's: the child's own verifier refuses it
    assert outcomes == ["InvalidCredential"] and seen == []
    failures = [r for r in iter_records(tmp_path / "child") if r["type"] == "auth_failure"]
    assert [r["target"] for r in failures] == ["inner"]


async def test_a_direct_call_the_child_accepts_is_audited_by_the_child(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    seen: list[Any] = []
    child_log = AuditLog(tmp_path / "child")
    child = child_server(idp, seen, PARENT_AUDIENCE, child_log)  # accepts the parent's tokens
    parent = FastMCP("parent", auth=idp.verifier())
    parent.mount(child, namespace="c")

    @parent.tool(scopes=["child:use"])
    async def housekeeping() -> str:
        return str((await child.call_tool("inner", {})).structured_content)

    async with connect(parent, idp.token("alice", scopes=["child:use"])) as client:
        await client.call_tool("housekeeping", {})
    child_log.close()
    assert seen == [("alice", False)]  # verified by the child, not delegated
    records = [
        (r["type"], r["target"])
        for r in iter_records(tmp_path / "child")
        if r["type"] not in _LIFECYCLE
    ]
    assert records == [("decision", "inner"), ("outcome", "inner")]
