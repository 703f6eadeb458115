"""`securemcp proxy serve` as operators run it: a separate process, real HTTP, a real IdP.

The proxy process verifies tokens against the fake IdP over loopback (discovery and JWKS), talks
to a stdio upstream, and refuses unauthenticated requests with a 401 before anything runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from proxy_support import STDIO_COMMAND

from securemcp.testing import FakeIdentityProvider
from securemcp.testing.http import connect_http

pytestmark = [pytest.mark.http, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until_up(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if process.poll() is not None:
                raise AssertionError(f"proxy exited with {process.returncode}")
            try:
                await client.get(url)
                return
            except httpx.TransportError:
                await asyncio.sleep(0.1)
    raise AssertionError("proxy did not start")


async def test_serve_command_end_to_end(tmp_path: Path) -> None:
    idp = FakeIdentityProvider(issuer=None)
    async with idp.serve_http() as issuer:
        audience = "https://gateway.securemcp.test/mcp"
        config = tmp_path / "proxy.toml"
        config.write_text(
            f'[identity]\nissuer = "{issuer}"\naudience = "{audience}"\n'
            "allow_insecure_loopback = true\n\n"
            f"[upstreams.local]\ncommand = {json.dumps(STDIO_COMMAND)}\n\n"
            '[upstreams.local.tools.status]\nscopes = ["vendor:read"]\n',
            encoding="utf-8",
        )
        from securemcp.cli import main

        assert await asyncio.to_thread(main, ["proxy", "lock", str(config)]) == 0
        port = free_port()
        env = {
            **os.environ,
            "SECUREMCP_AUDIT_DIR": str(tmp_path / "audit"),
            "SECUREMCP_KEY_DIR": str(tmp_path / "keys"),
        }
        process = await asyncio.to_thread(
            subprocess.Popen,
            [
                sys.executable,
                "-m",
                "securemcp.cli",
                "proxy",
                "serve",
                str(config),
                "--transport",
                "http",
                "--port",
                str(port),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / "proxy.log").open("wb"),
        )
        url = f"http://127.0.0.1:{port}/mcp"
        try:
            await wait_until_up(url, process)
            async with httpx.AsyncClient() as client:
                anonymous = await client.post(
                    url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}
                )
            assert anonymous.status_code == 401
            token = idp.token("alice", scopes=["vendor:read"], audience=audience)
            async with connect_http(url, token) as client:
                assert [t.name for t in await client.list_tools()] == ["status"]
                result = await client.call_tool("status", {})
                assert result.content[0].text == "ok"
        finally:
            process.terminate()
            await asyncio.to_thread(process.wait, 10)
