"""Helpers for the proxy tests: real upstreams (loopback HTTP, stdio subprocess) and a proxy."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import upstream_app

from securemcp.audit import AuditLog, Ed25519Signer, iter_records
from securemcp.proxy.config import ProxyConfig, parse_config
from securemcp.proxy.locking import lock_upstreams
from securemcp.proxy.server import create_proxy
from securemcp.testing import FakeIdentityProvider
from securemcp.testing.http import serve_asgi, serve_http

UPSTREAM_SCRIPT = str(Path(upstream_app.__file__).resolve())
STDIO_COMMAND = [sys.executable, UPSTREAM_SCRIPT]

#: Every upstream tool listed with no extra scope, unless a test says otherwise.
OPEN_TOOLS: dict[str, dict[str, Any]] = {
    name: {}
    for name in (
        "search",
        "status",
        "whoami",
        "remember",
        "recall",
        "slow",
        "crash",
        "leak_secret",
        "fail",
        "env_has",
    )
}


def reset_upstream_records() -> None:
    upstream_app.RECEIVED.clear()
    upstream_app.STATE.clear()


@asynccontextmanager
async def http_upstream(variant: str = "original") -> AsyncIterator[tuple[str, Any]]:
    """A plain FastMCP server on loopback HTTP; yields (MCP URL, the server)."""
    reset_upstream_records()
    server = upstream_app.build(variant)
    async with serve_http(server) as url:
        yield url, server


@dataclass
class HttpRequest:
    """One HTTP request an upstream received, and its answer's status."""

    method: str
    session_id: str | None
    authorization: str | None
    status: int | None = None


@asynccontextmanager
async def recorded_http_upstream(
    auth: Any = None,
) -> AsyncIterator[tuple[str, list[HttpRequest]]]:
    """A plain FastMCP server on loopback HTTP (requiring ``auth`` when given) that records every
    HTTP request it receives (method, ``Mcp-Session-Id``, ``Authorization``) and the status it
    answered; yields (MCP URL, the records)."""
    reset_upstream_records()
    server = upstream_app.build()
    server.auth = auth
    app = server.http_app(path="/mcp")
    seen: list[HttpRequest] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request = HttpRequest(
            scope["method"], headers.get("mcp-session-id"), headers.get("authorization")
        )
        seen.append(request)

        async def answer(message: Any) -> None:
            if message["type"] == "http.response.start":
                request.status = message["status"]
            await send(message)

        await app(scope, receive, answer)

    async with serve_asgi(recording) as base_url:
        yield f"{base_url}/mcp", seen


def config(tmp_path: Path, upstreams: Mapping[str, Mapping[str, Any]], **proxy: Any) -> ProxyConfig:
    data = {
        "proxy": {"lockfile": str(tmp_path / "proxy.lock.json"), **proxy},
        "upstreams": upstreams,
    }
    return parse_config(data, base=tmp_path)


async def locked(cfg: ProxyConfig, **kwargs: Any) -> ProxyConfig:
    _, reports = await lock_upstreams(cfg, **kwargs)
    assert not any(r.error for r in reports), [r.lines() for r in reports]
    return cfg


def audited_proxy(
    cfg: ProxyConfig, idp: FakeIdentityProvider, tmp_path: Path, **kwargs: Any
) -> tuple[Any, Path]:
    audit_dir = tmp_path / f"audit-{len(list(tmp_path.glob('audit-*')))}"
    log = AuditLog(audit_dir, signer=Ed25519Signer.generate("proxy-test"))
    proxy = create_proxy(cfg, auth=idp.verifier(), audit=log, **kwargs)
    return proxy, audit_dir


def records(audit_dir: Path) -> list[dict[str, Any]]:
    return list(iter_records(audit_dir))


def text_of(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)
