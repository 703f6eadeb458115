"""Serve a securemcp server over real HTTP on loopback, and call it with a bearer token.

For tests that must cross a real socket (streamable HTTP through uvicorn, FastMCP's auth
middleware, RFC 6750 challenges). Binds 127.0.0.1 on a port the OS picks, so parallel tests never
collide.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

__all__ = ["connect_http", "serve_http"]


def _loopback_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio only sets TCP_NODELAY on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every response waits ~40 ms on delayed ACKs.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def serve_asgi(app: Any) -> AsyncIterator[str]:
    """Run any ASGI ``app`` under uvicorn on loopback; yield ``http://127.0.0.1:<port>``."""
    import uvicorn

    sock = _loopback_socket()
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
        sock.close()


@asynccontextmanager
async def serve_http(
    server: Any, *, path: str = "/mcp", **http_app_kwargs: Any
) -> AsyncIterator[str]:
    """Serve ``server`` over streamable HTTP on loopback; yield the MCP endpoint URL."""
    app = server.http_app(path=path, **http_app_kwargs)
    async with serve_asgi(app) as base_url:
        yield f"{base_url}{path}"


@asynccontextmanager
async def connect_http(
    url: str, token: str | None = None, **client_kwargs: Any
) -> AsyncIterator[Client[Any]]:
    """Yield a connected FastMCP ``Client`` for ``url`` that sends ``Bearer <token>``."""
    transport = StreamableHttpTransport(url, auth=token) if token else StreamableHttpTransport(url)
    async with Client(transport, **client_kwargs) as client:
        yield client
