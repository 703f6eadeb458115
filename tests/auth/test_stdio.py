"""stdio end to end with a real subprocess server: the environment token is the identity.

FastMCP skips every auth check on stdio; securemcp verifies the token from
``SECUREMCP_ACCESS_TOKEN`` with the same rules as over HTTP, and re-checks expiry on every call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
from auth_support import AUDIENCE, text_of
from fastmcp import Client
from fastmcp.client.transports import PythonStdioTransport

from securemcp.testing import FakeIdentityProvider

SCRIPT = Path(__file__).with_name("stdio_server.py")


@pytest.fixture(scope="module")
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def transport(
    idp: FakeIdentityProvider, tmp_path: Path, token: str | None, **env: str
) -> PythonStdioTransport:
    variables = {
        "AUTH_TEST_ISSUER": idp.issuer,
        "AUTH_TEST_AUDIENCE": AUDIENCE,
        "AUTH_TEST_JWKS": json.dumps(idp.jwks),
        "AUTH_TEST_MARKER": str(tmp_path / "ran.txt"),
        "FASTMCP_SHOW_SERVER_BANNER": "false",
        "FASTMCP_CHECK_FOR_UPDATES": "off",
        "SECUREMCP_AUDIT_DIR": str(tmp_path / "audit"),
        "SECUREMCP_KEY_DIR": str(tmp_path / "keys"),
        **env,
    }
    if token is not None:
        variables["SECUREMCP_ACCESS_TOKEN"] = token
    return PythonStdioTransport(
        SCRIPT,
        env=variables,
        cwd=str(tmp_path),
        keep_alive=False,
        log_file=tmp_path / "stderr.txt",
    )


def runs(tmp_path: Path) -> int:
    marker = tmp_path / "ran.txt"
    return len(marker.read_text().splitlines()) if marker.exists() else 0


async def call(client: Client[Any]) -> Any:
    return await client.call_tool("whoami", {}, raise_on_error=False)


async def test_valid_environment_token(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    async with Client(transport(idp, tmp_path, token)) as client:
        result = await call(client)
    assert not result.is_error
    assert result.data == "alice"
    assert runs(tmp_path) == 1


@pytest.mark.parametrize("kind", ["expired", "wrong_audience", "signed_by_stranger"])
async def test_bad_environment_token_stops_start_up(
    idp: FakeIdentityProvider, tmp_path: Path, kind: str
) -> None:
    """securemcp's stdio runner verifies the environment token before serving anything."""
    with pytest.raises(Exception, match=r"Connection closed|failed to connect"):
        async with Client(transport(idp, tmp_path, idp.bad_token(kind, scopes=["notes:read"]))):
            pass
    assert runs(tmp_path) == 0


async def test_missing_token_refuses_calls_in_development(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with Client(transport(idp, tmp_path, None)) as client:
        result = await call(client)
    assert result.is_error
    assert text_of(result).startswith("invalid_token:")
    assert runs(tmp_path) == 0


async def test_missing_token_stops_start_up_in_production(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    with pytest.raises(Exception, match=r"Connection closed|failed to connect"):
        async with Client(transport(idp, tmp_path, None, SECUREMCP_ENV="production")):
            pass
    assert runs(tmp_path) == 0


async def test_expiry_rechecked_on_every_call(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    token = idp.token("alice", scopes=["notes:read"], expires_in=8)
    expires_at = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))["exp"]
    async with Client(transport(idp, tmp_path, token, AUTH_TEST_LEEWAY="0")) as client:
        assert not (await call(client)).is_error  # the process starts well within 8 s
        await asyncio.sleep(max(0.0, expires_at + 0.5 - time.time()))
        late = await call(client)
    assert late.is_error
    assert text_of(late).startswith("invalid_token:")
    assert runs(tmp_path) == 1


async def test_invalid_token_refuses_to_start(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    token = idp.bad_token("wrong_audience", scopes=["notes:read"])
    with pytest.raises(Exception):
        async with Client(transport(idp, tmp_path, token, AUTH_TEST_CHECK_STARTUP="1")) as c:
            await call(c)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "refuses to start" in stderr and "audience_mismatch" in stderr
    assert token not in stderr
    assert runs(tmp_path) == 0


async def test_valid_token_passes_the_startup_check(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    token = idp.token("carol", scopes=["notes:read"])
    async with Client(transport(idp, tmp_path, token, AUTH_TEST_CHECK_STARTUP="1")) as client:
        assert (await call(client)).data == "carol"


async def test_fastmcp_component_checks_apply_on_stdio(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """FastMCP skips a component's own ``auth=`` check on stdio; a securemcp server applies it
    to the verified caller, as over HTTP and in memory (one model for every transport)."""
    reader = idp.token("mallory", scopes=["notes:read"])
    async with Client(transport(idp, tmp_path, reader)) as client:
        listed = [tool.name for tool in await client.list_tools()]
        refused = await client.call_tool("purge", {}, raise_on_error=False)
    assert "purge" not in listed and "whoami" in listed
    assert refused.is_error
    assert runs(tmp_path) == 0
    admin = idp.token("ada", scopes=["notes:admin"])
    async with Client(transport(idp, tmp_path, admin)) as client:
        assert "purge" in [tool.name for tool in await client.list_tools()]
        result = await client.call_tool("purge", {}, raise_on_error=False)
    assert not result.is_error and result.data == "ada"
    assert runs(tmp_path) == 1


async def test_tools_launch_processes_without_the_credential(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """The credential leaves the environment when the server starts on stdio: a process a tool
    launches inherits ``os.environ`` and must not receive the caller's token (guarantee 2).
    The server keeps it, so every call is still verified."""
    token = idp.token("alice", scopes=["notes:read"])
    async with Client(transport(idp, tmp_path, token)) as client:
        seen = await client.call_tool("environment_seen", {})
        again = await call(client)
    assert seen.data == "None None"
    assert token not in seen.data
    assert again.data == "alice"
