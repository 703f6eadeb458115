"""Forged-token floods cannot turn the audit log into a disk-filling amplifier.

``FailureThrottle`` decides which unauthenticated HTTP refusals get an ``auth_failure`` record.
Each test attacks one way the number of records could grow with the attack: many addresses,
many addresses inside one IPv6 prefix, many free-text reasons from one address. The last tests
run the attack over real loopback HTTP.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import pytest
from auth_support import AUDIENCE, call_body, request_headers

from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.auth import CustomVerifier, ProtectedResource
from securemcp.auth._throttle import FailureThrottle, ThrottledRecord, source_of
from securemcp.context import Principal
from securemcp.errors import InvalidCredential
from securemcp.testing import serve_http


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def records(results: list[ThrottledRecord | None]) -> list[ThrottledRecord]:
    return [r for r in results if r is not None]


def test_one_record_per_source_and_reason_counts_what_it_leaves_out() -> None:
    clock = Clock()
    throttle = FailureThrottle(interval=1.0, clock=clock)
    assert throttle.admit("203.0.113.7", "invalid_signature") == (0, False)
    assert [throttle.admit("203.0.113.7", "invalid_signature") for _ in range(5)] == [None] * 5
    assert throttle.admit("203.0.113.8", "invalid_signature") == (0, False)  # other source
    assert throttle.admit("203.0.113.7", "expired") == (0, False)  # other reason
    clock.now = 1.5
    assert throttle.admit("203.0.113.7", "invalid_signature") == (5, False)


def test_many_addresses_are_bounded_by_the_overall_budget() -> None:
    clock = Clock()
    throttle = FailureThrottle(interval=1.0, max_records=100, clock=clock)
    results = [
        throttle.admit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "x") for i in range(5000)
    ]
    admitted = records(results)
    # 100 per-source records, then one overall record: not one record per address
    assert len(admitted) == 101
    assert admitted[-1] == (0, True)
    # The next overall record, once the budget is used up again, reports the rest of the burst.
    clock.now = 1.5
    later = records([throttle.admit(f"192.0.2.{i}", "x") for i in range(101)])
    assert later[-1] == (5000 - 101, True)


def test_rotating_addresses_inside_one_ipv6_prefix_is_one_source() -> None:
    throttle = FailureThrottle(interval=1.0, clock=Clock())
    results = [throttle.admit(f"2001:db8:1:2::{i:x}", "x") for i in range(2000)]
    assert len(records(results)) == 1
    assert throttle.admit("2001:db8:1:3::1", "x") == (0, False)  # the next /64 is another


def test_free_text_reasons_from_one_source_cannot_multiply_records() -> None:
    throttle = FailureThrottle(interval=1.0, max_reasons_per_source=4, clock=Clock())
    results = [throttle.admit("203.0.113.7", f"token #{i} is not on the list") for i in range(500)]
    assert len(records(results)) == 5  # four distinct reasons, then one for all the others


def test_memory_is_bounded_under_a_sustained_many_source_attack() -> None:
    clock = Clock()
    throttle = FailureThrottle(interval=1.0, max_sources=256, max_reasons_per_source=2, clock=clock)
    for second in range(50):
        clock.now = float(second)
        for i in range(2000):
            throttle.admit(f"10.{second}.{i >> 8}.{i & 255}", f"reason {i % 7}")
        assert len(throttle) <= 256 * 3
    assert len(throttle) <= 256 * 3


@pytest.mark.parametrize(
    ("address", "source"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        (None, "?"),
        ("", "?"),
        ("not-an-address" * 10, ("not-an-address" * 10)[:64]),
    ],
)
def test_sources(address: str | None, source: str) -> None:
    assert source_of(address) == source


class ChattyVerifier(CustomVerifier):
    """Refuses every token with a different free-text reason (as a custom verifier may)."""

    def __init__(self) -> None:
        super().__init__(audience=AUDIENCE, issuer="https://idp.securemcp.test")
        self.calls = 0

    async def authenticate(self, token: str) -> Principal:
        self.calls += 1
        raise InvalidCredential(reason=f"attempt {self.calls} was not accepted")


@pytest.mark.http
async def test_free_text_reasons_over_http_are_throttled(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit")
    verifier = ChattyVerifier()
    server = FastMCP("chatty", auth=verifier, audit=log)

    @server.tool
    def echo() -> str:  # pragma: no cover - never reached
        return "ran"

    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        for _ in range(60):
            response = await client.post(
                url, headers=request_headers("opaque-x"), content=call_body()
            )
            assert response.status_code == 401
    assert verifier.calls == 60
    failures = [r for r in iter_records(log.directory) if r["type"] == "auth_failure"]
    assert 1 <= len(failures) <= 6  # per second: four reasons and one for the rest, not 60


@pytest.mark.http
async def test_many_addresses_over_http_are_bounded_by_the_budget(tmp_path: Path) -> None:
    """Real sockets from 60 source addresses (127.0.0.0/8 is all loopback on Linux)."""
    log = AuditLog(tmp_path / "audit")
    server = FastMCP(
        "spread",
        auth=ChattyVerifier(),
        audit=log,
        protected_resource=ProtectedResource(AUDIENCE, refusal_records_per_second=5),
    )

    @server.tool
    def echo() -> str:  # pragma: no cover - never reached
        return "ran"

    async with serve_http(server, stateless_http=True) as url:
        started = time.monotonic()
        for i in range(60):
            transport = httpx.AsyncHTTPTransport(local_address=f"127.0.0.{i + 2}")
            async with httpx.AsyncClient(transport=transport) as client:
                response = await client.post(
                    url, headers=request_headers("opaque-x"), content=call_body()
                )
                assert response.status_code == 401
        seconds = math.ceil(time.monotonic() - started) + 1  # budget windows the attack touched
    failures = [r for r in iter_records(log.directory) if r["type"] == "auth_failure"]
    overall = [r for r in failures if "from any address" in r["reason"]]
    per_address = [r for r in failures if r not in overall]
    assert 5 <= len(per_address) <= 5 * seconds
    assert 1 <= len(overall) <= seconds
    assert len(failures) < 60 or seconds > 9  # not one record per address


@pytest.mark.parametrize("value", [0, -1, 100_001, True, 2.5])
def test_refusal_records_per_second_is_validated(value: object) -> None:
    from securemcp.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="refusal_records_per_second"):
        ProtectedResource(AUDIENCE, refusal_records_per_second=value)  # type: ignore[arg-type]
