"""A securemcp stdio server for the subprocess tests in test_stdio.py (run as a script).

Configuration comes from the environment: the issuer, audience and public JWKS of the test's
FakeIdentityProvider (static keys: the subprocess never needs the network), the verifier leeway,
and a marker file the tool appends to every time its body runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastmcp.server.auth import require_scopes

from securemcp import FastMCP, current
from securemcp.auth import JWTVerifier, check_stdio_startup

verifier = JWTVerifier(
    issuer=os.environ["AUTH_TEST_ISSUER"],
    audience=os.environ["AUTH_TEST_AUDIENCE"],
    jwks=json.loads(os.environ["AUTH_TEST_JWKS"]),
    leeway=float(os.environ.get("AUTH_TEST_LEEWAY", "60")),
)


@asynccontextmanager
async def lifespan(server: Any) -> AsyncIterator[dict[str, Any]]:
    if os.environ.get("AUTH_TEST_CHECK_STARTUP"):
        await check_stdio_startup(server)  # what the server's stdio start-up calls
    yield {}


mcp = FastMCP("stdio-auth", auth=verifier, lifespan=lifespan)


@mcp.tool(scopes=["notes:read"])
def whoami() -> str:
    with open(os.environ["AUTH_TEST_MARKER"], "a") as marker:
        marker.write("ran\n")
    return current().principal.subject


@mcp.tool(auth=require_scopes("notes:admin"))  # FastMCP's own per-component check
def purge() -> str:
    with open(os.environ["AUTH_TEST_MARKER"], "a") as marker:
        marker.write("ran\n")
    return current().principal.subject


@mcp.tool(scopes=["notes:read"])
def environment_seen() -> str:
    """What this process, and a process it launches, find in SECUREMCP_ACCESS_TOKEN."""
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.environ.get('SECUREMCP_ACCESS_TOKEN'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return f"{os.environ.get('SECUREMCP_ACCESS_TOKEN')} {child.stdout.strip()}"


if __name__ == "__main__":
    mcp.run(show_banner=False)
