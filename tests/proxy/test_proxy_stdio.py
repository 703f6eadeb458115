"""The proxy in front of a real stdio subprocess server (and beside an HTTP one).

Proves: per-identity subprocesses (upstream state never crosses users); configured secrets are
injected into the upstream's environment and nothing else of the proxy's environment is; an
answer echoing an injected secret is withheld; an upstream killed mid-call gives a clear,
audited error while the proxy keeps serving its other upstreams and restarts the dead one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from fastmcp.exceptions import ToolError
from proxy_support import (
    OPEN_TOOLS,
    STDIO_COMMAND,
    audited_proxy,
    config,
    http_upstream,
    locked,
    records,
    text_of,
)

from securemcp.testing import FakeIdentityProvider, connect

pytestmark = pytest.mark.slow


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


def stdio_upstream(**extra: object) -> dict[str, object]:
    return {"command": STDIO_COMMAND, "tools": OPEN_TOOLS, **extra}


async def test_stdio_upstream_per_identity_processes(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    cfg = await locked(config(tmp_path, {"local": stdio_upstream()}))
    proxy, _ = audited_proxy(cfg, idp, tmp_path)

    async def as_user(subject: str) -> tuple[int, list[str]]:
        seen = []
        async with connect(proxy, idp.token(subject)) as client:
            pid = (await client.call_tool("whoami", {})).structured_content["pid"]
            for i in range(3):
                await client.call_tool("remember", {"value": f"{subject}-{i}"})
                seen.append(text_of(await client.call_tool("recall", {})))
        return pid, seen

    (alice_pid, alice_seen), (bob_pid, bob_seen) = await asyncio.gather(
        as_user("alice"), as_user("bob")
    )
    assert alice_pid != bob_pid  # one upstream process per identity
    assert alice_seen == ["alice-0", "alice-1", "alice-2"]
    assert bob_seen == ["bob-0", "bob-1", "bob-2"]


async def test_stdio_secrets_are_injected_and_the_proxy_environment_is_not(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENDOR_KEY_SOURCE", "stdio-vendor-secret-xyz")
    monkeypatch.setenv("PROXY_PRIVATE_SETTING", "must-not-leak")
    auth = {"type": "env", "variables": {"VENDOR_API_KEY": {"env": "VENDOR_KEY_SOURCE"}}}
    cfg = await locked(config(tmp_path, {"local": stdio_upstream(auth=auth)}))
    proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
    token = idp.token("alice")
    async with connect(proxy, token) as client:
        has = await client.call_tool("env_has", {"name": "VENDOR_API_KEY"})
        assert has.structured_content == {"result": True}
        private = await client.call_tool("env_has", {"name": "PROXY_PRIVATE_SETTING"})
        assert private.structured_content == {"result": False}
        with pytest.raises(ToolError, match="upstream_output_rejected") as refused:
            await client.call_tool("leak_secret", {})
        assert "stdio-vendor-secret-xyz" not in str(refused.value)
    outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
    assert outcomes[-1]["error"] == "upstream_output_rejected"
    assert "stdio-vendor-secret-xyz" not in json.dumps(records(audit_dir))


async def test_upstream_killed_mid_call(
    idp: FakeIdentityProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="securemcp.proxy")
    async with http_upstream() as (url, _):
        upstreams = {
            "local": stdio_upstream(),
            "remote": {"url": url, "tools": OPEN_TOOLS},
        }
        cfg = await locked(config(tmp_path, upstreams))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            first_pid = (await client.call_tool("local_whoami", {})).structured_content["pid"]
            with pytest.raises(ToolError, match="upstream_unavailable"):
                await client.call_tool("local_crash", {})
            # The other upstream is unaffected ...
            assert text_of(await client.call_tool("remote_status", {})) == "ok"
            # ... and the dead one is restarted on the next call.
            second_pid = (await client.call_tool("local_whoami", {})).structured_content["pid"]
            assert second_pid != first_pid
        outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
        crash = [r for r in outcomes if r["target"] == "local_crash"]
        assert crash and crash[0]["error"] == "upstream_unavailable"
    # The operator learns why (the client got the stable code only).
    assert any(
        r.name == "securemcp.proxy"
        and r.levelno == logging.WARNING
        and "'crash' on upstream 'local' failed (upstream_unavailable)" in r.getMessage()
        for r in caplog.records
    )


def test_upstream_failure_reasons_are_logged_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An upstream's error text may echo what it was sent; the log line never carries the
    injected secret or a token (text that holds the secret is withheld whole)."""
    from securemcp.proxy.config import upstream_from
    from securemcp.proxy.credentials import SecretSource, StaticBearer
    from securemcp.proxy.pinstate import PinState
    from securemcp.proxy.upstream import Upstream

    monkeypatch.setenv("VENDOR_TOKEN_FOR_LOG_TEST", "vendor-secret-0123456789")
    upstream = Upstream(
        upstream_from("vendor", url="http://127.0.0.1:9/mcp"),
        StaticBearer(SecretSource(env="VENDOR_TOKEN_FOR_LOG_TEST")),
        PinState(tmp_path / "lock.json", quiet=True),
    )
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    text = upstream.redacted(f"401: bad key vendor-secret-0123456789 / {jwt}")
    assert text == "(reason withheld: contained a credential)"
    assert upstream.redacted(f"401: bad key / {jwt}") == "401: bad key / [redacted]"


async def test_lock_and_check_commands(tmp_path: Path) -> None:
    from securemcp.cli import main

    def write_config(variant: str) -> Path:
        path = tmp_path / "proxy.toml"
        command = json.dumps(STDIO_COMMAND)
        path.write_text(
            f'[proxy]\nlockfile = "proxy.lock.json"\n\n[upstreams.local]\ncommand = {command}\n'
            f'env = {{ UPSTREAM_VARIANT = "{variant}" }}\n\n'
            '[upstreams.local.tools.search]\nscopes = ["vendor:read"]\n',
            encoding="utf-8",
        )
        return path

    path = write_config("original")
    assert await asyncio.to_thread(main, ["proxy", "check", str(path)]) == 1  # nothing locked
    assert await asyncio.to_thread(main, ["proxy", "lock", str(path)]) == 0
    assert await asyncio.to_thread(main, ["proxy", "check", str(path)]) == 0
    write_config("reworded")
    assert await asyncio.to_thread(main, ["proxy", "check", str(path)]) == 1  # drift
    assert await asyncio.to_thread(main, ["proxy", "lock", str(path)]) == 0
    assert await asyncio.to_thread(main, ["proxy", "check", str(path)]) == 0
    write_config("changed")  # poisoned: flagged, not pinned
    assert await asyncio.to_thread(main, ["proxy", "lock", str(path)]) == 1
    lock = json.loads((tmp_path / "proxy.lock.json").read_text())
    keys = {c["key"] for c in lock["upstreams"]["local"]["components"]}
    assert "search" not in keys and "status" in keys
