"""Guarantee 1 under load: identity from call N is never seen by another call.

1,000 concurrent calls from 50 distinct identities, async tools and sync tools (worker threads),
each yielding mid-call, in memory and over real HTTP on loopback: zero mismatches.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from securemcp import FastMCP, current
from securemcp.testing import FakeIdentityProvider, connect, connect_http, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"
USERS = 50
CALLS_PER_USER = 20  # 50 x 20 = 1,000 calls per transport


def build(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("isolation", auth=idp.verifier(audience=AUDIENCE))

    @mcp.tool(scopes=["echo"])
    async def echo_async(nonce: int) -> dict[str, Any]:
        before = current()
        await asyncio.sleep(random.random() / 200)  # yield: other calls interleave here
        after = current()
        return {
            "subject": after.principal.subject,
            "same": before is after,
            "call_id": after.call_id,
            "nonce": nonce,
        }

    @mcp.tool(scopes=["echo"])
    def echo_sync(nonce: int) -> dict[str, Any]:
        before = current()
        time.sleep(random.random() / 500)  # other worker threads run here
        after = current()
        return {
            "subject": after.principal.subject,
            "same": before is after,
            "call_id": after.call_id,
            "nonce": nonce,
        }

    return mcp


async def _hammer(
    open_client: Callable[[str], AbstractAsyncContextManager[Any]],
    idp: FakeIdentityProvider,
) -> tuple[int, list[str], set[str]]:
    mismatches: list[str] = []
    call_ids: set[str] = set()
    total = 0

    async def user(index: int) -> None:
        nonlocal total
        subject = f"user-{index:03d}"
        token = idp.token(subject, scopes=["echo"])
        async with open_client(token) as client:

            async def one(n: int) -> None:
                nonlocal total
                tool = "echo_async" if n % 2 else "echo_sync"
                data = (await client.call_tool(tool, {"nonce": n})).structured_content
                total += 1
                call_ids.add(data["call_id"])
                if data["subject"] != subject or not data["same"] or data["nonce"] != n:
                    mismatches.append(f"{subject} got {data}")

            await asyncio.gather(*(one(n) for n in range(CALLS_PER_USER)))

    await asyncio.gather(*(user(i) for i in range(USERS)))
    return total, mismatches, call_ids


async def test_in_memory_isolation() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = build(idp)
    total, mismatches, call_ids = await _hammer(lambda tok: connect(server, tok), idp)
    assert total == USERS * CALLS_PER_USER
    assert mismatches == []
    assert len(call_ids) == total  # a fresh context (and call id) for every call


@pytest.mark.http
async def test_http_isolation() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = build(idp)
    async with serve_http(server) as url:
        total, mismatches, call_ids = await _hammer(lambda tok: connect_http(url, tok), idp)
    assert total == USERS * CALLS_PER_USER
    assert mismatches == []
    assert len(call_ids) == total
