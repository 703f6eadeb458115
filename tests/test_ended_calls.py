"""Guarantee 1 after a call ends: code that outlives its call cannot act as that caller.

A tool may start a task that keeps running after the call returned. The task inherits the call's
context variables: its closed ``SecurityContext`` (reading it raises ``ContextClosed``) and the
request the caller's credential came with. Calling a component from there must be refused and
audited, over every transport, while a call made before the call ended (a nested call) and a new
request with its own credential still work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from securemcp import FastMCP, current
from securemcp.audit import AuditLog, iter_records
from securemcp.testing import FakeIdentityProvider, connect, connect_http, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


class Harness:
    """A server whose ``schedule`` tool starts a task that calls ``delete_all`` later."""

    def __init__(self, idp: FakeIdentityProvider, log: AuditLog) -> None:
        self.idp = idp
        self.ran: list[str] = []
        self.outcomes: list[str] = []
        self.done = asyncio.Event()
        self.release = asyncio.Event()
        self.mcp = mcp = FastMCP("ended", auth=idp.verifier(), audit=log)

        @mcp.tool(scopes=["files:delete"])
        def delete_all() -> str:
            self.ran.append(current().principal.subject)
            return "deleted"

        @mcp.tool(scopes=["files:delete"])
        async def schedule(wait_for_end: bool = True) -> str:
            async def later() -> None:
                if wait_for_end:
                    await self.release.wait()  # set once the call has returned
                try:
                    result = await mcp.call_tool("delete_all", {})
                    self.outcomes.append(f"ran: {result.structured_content}")
                except Exception as exc:
                    self.outcomes.append(f"refused: {type(exc).__name__}")
                self.done.set()

            task = asyncio.get_running_loop().create_task(later())
            if not wait_for_end:
                await task  # the nested call happens while this call is still open
            self._task = task
            return "scheduled"


async def _run(
    harness: Harness, open_client: Callable[[str], AbstractAsyncContextManager[Any]]
) -> None:
    alice = harness.idp.token("alice", scopes=["files:delete"])
    async with open_client(alice) as client:
        assert (await client.call_tool("schedule", {})).data == "scheduled"
    harness.release.set()
    await asyncio.wait_for(harness.done.wait(), 10)


@pytest.mark.parametrize("transport", ["in-memory", pytest.param("http", marks=pytest.mark.http)])
async def test_a_task_that_outlives_its_call_cannot_act_as_the_caller(
    idp: FakeIdentityProvider, tmp_path: Path, transport: str
) -> None:
    log = AuditLog(tmp_path / "audit")
    harness = Harness(idp, log)
    if transport == "http":
        async with serve_http(harness.mcp) as url:
            await _run(harness, lambda token: connect_http(url, token))
    else:
        await _run(harness, lambda token: connect(harness.mcp, token))
    log.close()
    assert harness.outcomes == ["refused: Unauthenticated"]
    assert harness.ran == []
    failures = [r for r in iter_records(tmp_path / "audit") if r["type"] == "auth_failure"]
    assert [(f["reason"], f["target"]) for f in failures] == [("call_ended", "delete_all")]


async def test_a_server_side_caller_that_outlives_its_call_is_refused(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """No request at all (a server-side call with the SDK's auth carrier set, as a job runner
    might): the task inherits the carrier, and is refused once the call has ended."""
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    from securemcp.testing.client import _access_token_for

    log = AuditLog(tmp_path / "audit")
    harness = Harness(idp, log)
    token = await _access_token_for(harness.mcp, idp.token("alice", scopes=["files:delete"]))
    reset = auth_context_var.set(AuthenticatedUser(token))
    try:
        await harness.mcp.call_tool("schedule", {})
        # the caller itself may go on calling: its own calls are not from an ended call
        assert (await harness.mcp.call_tool("delete_all", {})).structured_content == {
            "result": "deleted"
        }
    finally:
        auth_context_var.reset(reset)
    harness.release.set()
    await asyncio.wait_for(harness.done.wait(), 10)
    log.close()
    assert harness.outcomes == ["refused: Unauthenticated"]
    assert harness.ran == ["alice"]  # only the caller's own direct call


async def test_a_nested_call_made_while_the_call_is_open_still_runs(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "audit")
    harness = Harness(idp, log)
    alice = idp.token("alice", scopes=["files:delete"])
    async with connect(harness.mcp, alice) as client:
        await client.call_tool("schedule", {"wait_for_end": False})
    log.close()
    assert harness.outcomes == ["ran: {'result': 'deleted'}"]
    assert harness.ran == ["alice"]


async def test_a_new_request_from_such_a_task_uses_its_own_credential(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """The refusal is for reusing the ended call's request: the same task opening a new
    connection with a credential of its own is a new request, verified and served as usual."""
    log = AuditLog(tmp_path / "audit")
    mcp = FastMCP("ended", auth=idp.verifier(), audit=log)
    ran: list[str] = []
    done = asyncio.Event()
    release = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    @mcp.tool(scopes=["files:delete"])
    def delete_all() -> str:
        ran.append(current().principal.subject)
        return "deleted"

    @mcp.tool
    async def schedule() -> str:
        async def later() -> None:
            await release.wait()
            robot = idp.token("robot", scopes=["files:delete"])
            async with connect(mcp, robot) as client:
                await client.call_tool("delete_all", {})
            done.set()

        tasks.append(asyncio.get_running_loop().create_task(later()))
        return "scheduled"

    async with connect(mcp, idp.token("alice", scopes=["files:delete"])) as client:
        await client.call_tool("schedule", {})
    release.set()
    await asyncio.wait_for(done.wait(), 10)
    log.close()
    assert ran == ["robot"]
