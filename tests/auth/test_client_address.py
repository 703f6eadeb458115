"""Behind a trusted reverse proxy, each client is limited and recorded by its own address.

``client_address`` believes ``X-Forwarded-For`` only from ``trusted_proxies`` and only its
rightmost untrusted entry. The unit tests attack it with spoofed, prepended, malformed and
oversized headers; the HTTP tests run the per-address rate limit over real loopback sockets
from a "proxy" address (127.0.0.2: uvicorn itself only believes proxy headers from 127.0.0.1,
so any rewriting here is securemcp's).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_support import AUDIENCE, call_body, request_headers

from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.auth import CustomVerifier, ProtectedResource
from securemcp.auth._client_address import MAX_HOPS, client_address
from securemcp.context import Principal
from securemcp.errors import InvalidCredential
from securemcp.policy import RateLimit, RateLimiter
from securemcp.testing import serve_http

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))


def scope(peer: str | None, *forwarded: str) -> dict[str, Any]:
    return {
        "client": (peer, 51000) if peer else None,
        "headers": [(b"x-forwarded-for", value.encode("latin-1")) for value in forwarded],
    }


@pytest.mark.parametrize(
    ("request_scope", "proxies", "expected"),
    [
        (scope("203.0.113.9", "198.51.100.1"), (), "203.0.113.9"),  # no proxies configured
        (scope("203.0.113.9", "198.51.100.1"), PROXIES, "203.0.113.9"),  # spoof, direct
        (scope("10.1.2.3", "198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "6.6.6.6, 198.51.100.1"), PROXIES, "198.51.100.1"),  # prepended
        (scope("10.1.2.3", "6.6.6.6", "198.51.100.1, 10.9.9.9"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "198.51.100.1:4711"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "[2001:db8::7]:443"), PROXIES, "2001:db8::7"),
        (scope("10.1.2.3", "::ffff:198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "198.51.100.1, unknown"), PROXIES, "10.1.2.3"),  # stop, keep proxy
        (scope("10.1.2.3", "6.6.6.6, _hidden, 10.0.0.9"), PROXIES, "10.0.0.9"),
        (scope("10.1.2.3"), PROXIES, "10.1.2.3"),  # a trusted proxy that sent nothing
        (scope("10.1.2.3", "10.4.4.4, 10.5.5.5"), PROXIES, "10.4.4.4"),  # all internal
        (scope("2001:db8:ffff::1", "198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("::ffff:10.1.2.3", "198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope(None, "198.51.100.1"), PROXIES, None),
        (scope("not-an-address", "198.51.100.1"), PROXIES, "not-an-address"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_hop(
    request_scope: dict[str, Any], proxies: Any, expected: str | None
) -> None:
    assert client_address(request_scope, proxies) == expected


def test_a_huge_header_costs_a_bounded_walk() -> None:
    """The client cannot hide behind a wall of addresses that look like trusted proxies."""
    wall = ", ".join(["10.0.0.1"] * 50_000)
    # the proxy appended the client's real address: still found, after one step
    assert client_address(scope("10.1.2.3", wall + ", 198.51.100.1"), PROXIES) == "198.51.100.1"
    # only trusted-looking hops: the walk stops after MAX_HOPS at an internal address, which
    # names no outside client (and is never the attacker's choice of an outside one)
    hops = [f"10.0.0.{i}" for i in range(1, 40)]
    found = client_address(scope("10.1.2.3", ", ".join(["6.6.6.6", *hops])), PROXIES)
    assert found == hops[-MAX_HOPS]


class NamedKeys(CustomVerifier):
    """Accepts ``key-<name>`` as the principal ``<name>``."""

    def __init__(self) -> None:
        super().__init__(audience=AUDIENCE, issuer="https://keys.example.com")

    async def authenticate(self, token: str) -> Principal:
        if not token.startswith("key-"):
            raise InvalidCredential(reason="unknown_key")
        return Principal(subject=token[4:], issuer=self.issuer, scopes=frozenset())


def limited_server(trusted: list[str], log: AuditLog | None = None) -> FastMCP:
    server = FastMCP(
        "behind-proxy",
        auth=NamedKeys(),
        audit=log if log is not None else False,
        rate_limits=RateLimiter([RateLimit("per-ip", "2/minute", per="address")]),
        protected_resource=ProtectedResource(AUDIENCE, trusted_proxies=trusted),
    )

    @server.tool
    def echo() -> str:  # pragma: no cover - only refused calls here
        return "ran"

    return server


async def statuses(url: str, forwarded_for: str, count: int) -> list[int]:
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")  # the "proxy"
    async with httpx.AsyncClient(transport=transport) as proxy:
        found = []
        for _ in range(count):
            headers = request_headers("forged", X_Forwarded_For=forwarded_for)
            response = await proxy.post(url, headers=headers, content=call_body())
            found.append(response.status_code)
        return found


@pytest.mark.http
async def test_one_client_behind_a_trusted_proxy_cannot_starve_the_others() -> None:
    async with serve_http(limited_server(["127.0.0.2/32"]), stateless_http=True) as url:
        assert await statuses(url, "198.51.100.1", 4) == [401, 401, 429, 429]
        # another client through the same proxy has its own budget
        assert await statuses(url, "198.51.100.2", 2) == [401, 401]
        # and the flooding client cannot escape its budget by prepending another address
        assert await statuses(url, "198.51.100.2, 198.51.100.1", 1) == [429]


@pytest.mark.http
async def test_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    """Without trust every request is its peer: rotating the header buys no fresh budget."""
    async with serve_http(limited_server([]), stateless_http=True) as url:
        assert await statuses(url, "198.51.100.1", 2) == [401, 401]
        assert await statuses(url, "198.51.100.2", 1) == [429]
        assert await statuses(url, "198.51.100.3", 1) == [429]


@pytest.mark.http
async def test_refusal_records_are_throttled_per_forwarded_client(tmp_path: Path) -> None:
    """Each client behind the proxy gets its own refusal record in the same second."""
    log = AuditLog(tmp_path / "audit")
    server = FastMCP(
        "behind-proxy",
        auth=NamedKeys(),
        audit=log,
        protected_resource=ProtectedResource(AUDIENCE, trusted_proxies=["127.0.0.2"]),
    )

    @server.tool
    def echo() -> str:  # pragma: no cover - only refused calls here
        return "ran"

    async with serve_http(server, stateless_http=True) as url:
        for client in ("198.51.100.1", "198.51.100.2", "198.51.100.3"):
            assert await statuses(url, client, 2) == [401, 401]
    log.close()
    failures = [r for r in iter_records(log.directory) if r["type"] == "auth_failure"]
    # one per client (three sources), not one for the proxy's single address
    assert len(failures) == 3
