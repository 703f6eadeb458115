"""What a tool's exception tells the client (guarantees 3 and 5).

FastMCP relays the text of any exception a tool, resource or prompt raises
(``Error calling tool 'x': <message>``) unless ``mask_error_details=True``. A database URL with
its password, a file path, a token a library quoted: internal detail reaching the client. A
securemcp server that verifies its callers (or runs with ``SECUREMCP_ENV=production``) masks
them by default; messages raised on purpose as ``ToolError``/``ResourceError``/``PromptError``
still reach the client. A development server (no verifier) keeps FastMCP's default, so the
developer sees the error, and an explicit ``mask_error_details=`` or FastMCP setting wins.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastmcp.exceptions import ToolError

from securemcp import FastMCP
from securemcp.testing import FakeIdentityProvider, connect

SECRET = "postgres://app:S3CRET-pw@db.internal:5432/prod"


def build(tmp_path: Path, **kwargs: Any) -> FastMCP:
    server = FastMCP("errors", audit=tmp_path / "audit", **kwargs)

    @server.tool
    def report() -> str:
        raise RuntimeError(f"could not connect to {SECRET}")

    @server.tool
    def refuse() -> str:
        raise ToolError("the report is not ready yet")

    @server.resource("data://thing")
    def thing() -> str:
        raise RuntimeError(f"could not connect to {SECRET}")

    @server.resource("data://item/{name}")
    def item(name: str) -> str:
        raise RuntimeError(f"could not connect to {SECRET}")

    @server.prompt
    def summary() -> str:
        raise RuntimeError(f"could not connect to {SECRET}")

    return server


async def errors_seen(server: FastMCP, token: str | None) -> list[str]:
    seen: list[str] = []
    async with connect(server, token) as client:
        for call in (
            lambda: client.call_tool("report", {}),
            lambda: client.read_resource("data://thing"),
            lambda: client.read_resource("data://item/a"),
            lambda: client.get_prompt("summary"),
        ):
            with pytest.raises(Exception) as refused:
                await call()
            seen.append(str(refused.value))
    return seen


async def test_a_server_with_verified_callers_masks_exception_details(tmp_path: Path) -> None:
    idp = FakeIdentityProvider()
    server = build(tmp_path, auth=idp.verifier())
    seen = await errors_seen(server, idp.token("alice"))
    assert len(seen) == 4
    for text in seen:
        assert "S3CRET" not in text and "db.internal" not in text
    assert seen[0] == "Error calling tool 'report'"
    # a message raised on purpose still reaches the client
    async with connect(server, idp.token("alice")) as client:
        with pytest.raises(ToolError, match="the report is not ready yet"):
            await client.call_tool("refuse", {})


async def test_production_masks_even_without_a_verifier_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = build(tmp_path)
    monkeypatch.setenv("SECUREMCP_ENV", "production")
    assert server._mask_error_details is True


async def test_a_verifier_assigned_later_masks_too(tmp_path: Path) -> None:
    idp = FakeIdentityProvider()
    server = build(tmp_path)
    assert server._mask_error_details is False
    server.auth = idp.verifier()
    assert server._mask_error_details is True


async def test_development_and_explicit_settings_keep_the_details(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SECUREMCP_ENV", raising=False)
    seen = await errors_seen(build(tmp_path / "dev"), None)
    assert all("S3CRET" in text for text in seen)  # the developer sees what went wrong
    idp = FakeIdentityProvider()
    explicit = build(tmp_path / "explicit", auth=idp.verifier(), mask_error_details=False)
    seen = await errors_seen(explicit, idp.token("alice"))
    assert all("S3CRET" in text for text in seen)
    forced = build(tmp_path / "forced", mask_error_details=True)
    assert all("S3CRET" not in text for text in await errors_seen(forced, None))


@pytest.mark.parametrize(("setting", "expected"), [("false", "False"), ("true", "True")])
def test_fastmcp_environment_setting_is_honoured(
    tmp_path: Path, setting: str, expected: str
) -> None:
    """``FASTMCP_MASK_ERROR_DETAILS`` set by the operator wins over securemcp's default."""
    code = (
        "from securemcp import FastMCP; from securemcp.testing import FakeIdentityProvider; "
        "s = FastMCP('x', auth=FakeIdentityProvider().verifier(), audit=False); "
        "print(s._mask_error_details)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"FASTMCP_MASK_ERROR_DETAILS": setting, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == expected
