"""A third-party MCP server whose failures quote what it was sent: plain FastMCP, no securemcp.

Every tool, resource and prompt fails with a message quoting its argument and the credentials
the proxy gave it (the ``Authorization`` header over HTTP, ``VENDOR_API_KEY`` over stdio), as a
careless upstream does. ``SEEN`` keeps every ``Authorization`` header it received, so a test
knows which exchanged tokens to look for. Run as a script it serves stdio.
"""

from __future__ import annotations

import asyncio
import os
import sys

from fastmcp import FastMCP
from fastmcp.server.dependencies import get_http_headers

SEEN: list[str] = []  # every Authorization header received


def _credentials() -> str:
    authorization = get_http_headers(include={"authorization"}).get("authorization")
    if authorization:
        SEEN.append(authorization)
    return f"authorization={authorization} key={os.environ.get('VENDOR_API_KEY')}"


def build() -> FastMCP:
    server = FastMCP("careless-vendor")

    @server.tool
    def lookup(q: str) -> str:
        """Fails quoting the query and the credentials."""
        raise ValueError(f"no record for {q} ({_credentials()})")

    @server.tool
    def find(q: str) -> str:
        """Fails quoting the query only (the proxy passes this error through)."""
        _credentials()
        raise ValueError(f"no record for {q}")

    @server.tool
    async def slow(seconds: float, note: str) -> str:
        _credentials()
        await asyncio.sleep(seconds)
        return "done"

    @server.tool
    def crash(note: str) -> str:
        os._exit(17)  # the upstream dies mid-call

    @server.resource("notes://{topic}")
    def notes(topic: str) -> str:
        raise ValueError(f"no notes on {topic} ({_credentials()})")

    @server.prompt
    def summarize(text: str) -> str:
        raise ValueError(f"cannot summarize {text} ({_credentials()})")

    return server


if __name__ == "__main__":
    build().run(transport="stdio", show_banner=False)
    sys.exit(0)
