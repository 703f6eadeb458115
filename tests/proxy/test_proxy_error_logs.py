"""The proxy's server log never quotes an upstream's error text by default (guarantee 5).

An upstream's error message can quote the caller's arguments (``bad account 4417-...``).
securemcp keeps arguments out of logs and spans by default (the audit log stores them only with
``record_arguments=True``), so the proxy's log names a stable reason instead: the upstream, the
component, the kind of failure (the JSON-RPC error code, the exception's type) and the text's
length and SHA-256 prefix. With ``record_arguments=True`` on the proxy's audit log the text is
logged, credentials still cut out. What the caller sees does not change.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest
from fastmcp import FastMCP as PlainFastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.middleware import Middleware
from mcp import MCPError
from proxy_support import config, locked

from securemcp.audit import AuditLog, Ed25519Signer
from securemcp.proxy.server import create_proxy
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http

ARGUMENT = "acct-4417-9921-private"
SECRET = "vendor-static-secret-5d2f8e01"
COMPONENTS: dict[str, Any] = {
    "tools": {"transfer": {}},
    "templates": {"accounts://{account}": {}},
    "prompts": {"statement": {}},
}


class StrictArguments(Middleware):
    """Refuses ``transfer`` with a JSON-RPC error quoting the argument, as a strict upstream
    (another SDK's schema validator) does."""

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        account = (context.message.arguments or {}).get("account")
        raise MCPError(-32602, f"Invalid arguments: bad account {account}")


def careless_upstream() -> PlainFastMCP:
    server = PlainFastMCP("careless-bank", middleware=[StrictArguments()])

    @server.tool
    def transfer(account: str) -> str:
        return "never runs"

    @server.resource("accounts://{account}")
    def balance(account: str) -> str:
        raise ValueError(f"bad account {account}")

    @server.prompt
    def statement(account: str) -> str:
        raise ValueError(f"bad account {account}")

    return server


def proxy_log(caplog: pytest.LogCaptureFixture) -> str:
    """What the proxy's own loggers wrote (the upstream runs in this process too)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("securemcp"))


async def fail_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, record_arguments: bool
) -> None:
    monkeypatch.setenv("VENDOR_TOKEN", SECRET)
    idp = FakeIdentityProvider()
    async with serve_http(careless_upstream()) as url:
        await locked(config(tmp_path, {"bank": {"url": url, **COMPONENTS}}))
        auth = {"type": "bearer", "secret_env": "VENDOR_TOKEN"}
        cfg = config(tmp_path, {"bank": {"url": url, "auth": auth, **COMPONENTS}})
        log = AuditLog(
            tmp_path / "audit",
            signer=Ed25519Signer.generate("proxy-test"),
            record_arguments=record_arguments,
        )
        proxy = create_proxy(cfg, auth=idp.verifier(), audit=log)
        async with connect(proxy, idp.token("alice")) as client:
            # What the caller sees is what it saw before: a stable code, never the text.
            with pytest.raises(ToolError, match=r"upstream_error.*JSON-RPC error -32602") as tool:
                await client.call_tool("transfer", {"account": ARGUMENT})
            assert ARGUMENT not in str(tool.value)
            for attempt in (
                client.read_resource(f"accounts://{ARGUMENT}"),
                client.get_prompt("statement", {"account": ARGUMENT}),
            ):
                with pytest.raises(MCPError, match="upstream_error") as refused:
                    await attempt
                assert ARGUMENT not in str(refused.value)


@pytest.mark.http
async def test_the_proxy_log_names_a_stable_reason_not_the_upstream_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 'tool 'transfer' on upstream 'bank' failed (upstream_error): bank: Invalid
    arguments: bad account acct-4417-...' went to the server log for every caller."""
    with caplog.at_level(logging.DEBUG, logger="securemcp"):
        await fail_everything(tmp_path, monkeypatch, record_arguments=False)
    logged = proxy_log(caplog)
    assert ARGUMENT not in logged
    assert SECRET not in logged
    text = f"Invalid arguments: bad account {ARGUMENT}"
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    assert (
        f"tool 'transfer' on upstream 'bank' failed (upstream_error): bank: JSON-RPC error "
        f"-32602 (upstream text withheld: {len(text)} characters, sha256 {digest})"
    ) in logged
    assert "template 'accounts://{account}' on upstream 'bank' failed" in logged
    assert "prompt 'statement' on upstream 'bank' failed" in logged
    assert logged.count("upstream text withheld") == 3


@pytest.mark.http
async def test_record_arguments_logs_the_upstream_text_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The audit log's opt-in to record arguments also lets the proxy log the upstream's text
    (as it did before), with credentials still cut out."""
    with caplog.at_level(logging.DEBUG, logger="securemcp"):
        await fail_everything(tmp_path, monkeypatch, record_arguments=True)
    logged = proxy_log(caplog)
    assert f"bank: JSON-RPC error -32602: Invalid arguments: bad account {ARGUMENT}" in logged
    assert "upstream text withheld" not in logged
    assert SECRET not in logged


async def test_a_transport_failure_during_a_request_names_its_type_not_its_text(
    tmp_path: Path,
) -> None:
    """An exception raised while a request is under way (its text may quote what was sent)."""
    from types import SimpleNamespace

    from securemcp.errors import UpstreamUnavailable
    from securemcp.proxy.config import upstream_from
    from securemcp.proxy.credentials import NoAuth
    from securemcp.proxy.pinstate import PinState
    from securemcp.proxy.upstream import Upstream

    upstream = Upstream(
        upstream_from("bank", url="http://127.0.0.1:9/mcp"),
        NoAuth(),
        PinState(tmp_path / "lock.json", quiet=True),
    )

    async def send(client: Any) -> Any:
        raise RuntimeError(f"stream broke while sending {{'account': '{ARGUMENT}'}}")

    async def nothing(*_: Any) -> None:
        return None

    async def discard(session: Any) -> None:
        return None

    upstream._verify_pins = nothing  # type: ignore[method-assign]
    upstream._check_live = lambda *_: None  # type: ignore[method-assign]
    upstream.sessions.discard = discard  # type: ignore[method-assign]
    session = SimpleNamespace(client=None)
    with pytest.raises(UpstreamUnavailable) as refused:
        await upstream._send(session, "tool", "transfer", send, None)  # type: ignore[arg-type]
    reason = refused.value.reason or ""
    assert ARGUMENT not in reason
    assert reason.startswith("bank: RuntimeError (upstream text withheld: ")
    upstream.record_arguments = True
    with pytest.raises(UpstreamUnavailable) as refused:
        await upstream._send(session, "tool", "transfer", send, None)  # type: ignore[arg-type]
    assert ARGUMENT in (refused.value.reason or "")
