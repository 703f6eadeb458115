"""Helpers for the policy tests: principals, requests and real Redis servers.

Redis tests start their own ``redis-server`` (found on PATH) on a free loopback port with
persistence off, and stop it afterwards. They are skipped, with a clear message, only when
``redis-server`` is not installed (CI installs it).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from securemcp.context import Principal
from securemcp.policy.request import CallRequest

REDIS_SERVER = shutil.which("redis-server")


def principal(
    subject: str = "alice",
    *,
    issuer: str = "https://idp.example",
    scopes: tuple[str, ...] = (),
    tenant: str | None = None,
    client_id: str | None = "agent-app",
    **claims: Any,
) -> Principal:
    return Principal(
        subject=subject,
        issuer=issuer,
        client_id=client_id,
        scopes=frozenset(scopes),
        tenant=tenant,
        claims={"sub": subject, "iss": issuer, **claims},
    )


def request(
    tool: str = "add",
    arguments: dict[str, Any] | None = None,
    *,
    who: Principal | None = None,
    **kwargs: Any,
) -> CallRequest:
    return CallRequest.build(who or principal(), tool, arguments or {}, **kwargs)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    """A running redis-server process."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flush(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"FLUSHALL\r\n")
            sock.recv(16)

    def keys(self) -> list[str]:
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            return [k.decode() for k in client.keys("*")]
        finally:
            client.close()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_redis(directory: Path) -> RedisServer:
    if REDIS_SERVER is None:
        if os.environ.get("SECUREMCP_REQUIRE_REDIS") == "1":
            pytest.fail("SECUREMCP_REQUIRE_REDIS=1 but redis-server is not on PATH")
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server); "
            "CI installs it, so these Redis tests run there"
        )
    for _ in range(5):
        port = _free_port()
        process = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(directory),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(process, port)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and process.poll() is None:
            if server.ping():
                return server
            time.sleep(0.02)
        server.stop()
    raise RuntimeError("could not start redis-server")
