"""Refused calls a caller can repeat at will log a bounded number of lines; every refusal is
still audited (securemcp._log_limits).

A policy hook that raises, or a template value securemcp cannot judge (a ``Decimal`` over 4300
digits), refuses the call as ``policy_error``: each such call logged an ``ERROR`` line (and an
``INFO`` one), so anyone able to send the request could flood the server log.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from securemcp import FastMCP
from securemcp._log_limits import LogLimiter, policy_failures
from securemcp.audit import AuditLog, iter_records
from securemcp.policy import CallRequest, Decision
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
CALLS = 1000


@pytest.fixture(autouse=True)
def _fresh_limiter() -> None:
    policy_failures.clear()  # the limiter is process-wide: earlier tests' reasons are forgotten


def flooded_server(tmp_path: Path, idp: FakeIdentityProvider) -> FastMCP:
    def fragile(request: CallRequest) -> Decision:
        if request.target == "explode":
            raise RuntimeError("the hook broke")
        return Decision.allow()

    mcp = FastMCP(
        "flooded",
        auth=idp.verifier(audience=AUDIENCE),
        policy=fragile,
        audit=AuditLog(tmp_path / "audit"),
    )

    @mcp.resource("amounts://{amount}")
    def amount(amount: Decimal) -> str:  # pragma: no cover - always refused
        return str(amount)

    @mcp.tool
    def explode(x: int) -> int:  # pragma: no cover - always refused
        return x

    return mcp


async def test_a_thousand_refused_calls_log_a_bounded_number_of_lines_and_are_all_audited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = flooded_server(tmp_path, idp)
    with caplog.at_level(logging.INFO, logger="securemcp"):
        async with connect(mcp, idp.token("mallory")) as client:
            for i in range(CALLS // 2):
                with pytest.raises(Exception, match="policy_error"):
                    await client.read_resource(f"amounts://1e{5000 + i}")
                result = await client.call_tool("explode", {"x": i}, raise_on_error=False)
                assert result.is_error
    lines = [r for r in caplog.records if r.name in ("securemcp.policy", "securemcp.pipeline")]
    # the first occurrence of each reason, at once: the policy's line and the refusal's
    assert sorted((r.levelname, r.name) for r in lines) == [
        ("ERROR", "securemcp.policy"),
        ("ERROR", "securemcp.policy"),
        ("INFO", "securemcp.pipeline"),
        ("INFO", "securemcp.pipeline"),
    ]
    messages = " | ".join(r.getMessage() for r in lines)
    assert "converts a read" in messages and "raised RuntimeError" in messages
    refusals = [
        record
        for record in iter_records(tmp_path / "audit")
        if record["type"] == "decision" and record["decision"]["result"] == "deny"
    ]
    assert len(refusals) == CALLS  # the audit log is never limited
    assert {r["decision"]["reason"] for r in refusals} == {"policy_error"}


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_next_line_after_the_interval_counts_the_lines_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    limiter = LogLimiter(10.0, clock=clock)
    logger = logging.getLogger("securemcp.test_log_limits")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        written = [limiter.log(logger, logging.WARNING, "a", "line %s", n) for n in range(5)]
        assert limiter.log(logger, logging.WARNING, "b", "other")  # per reason
        clock.now = 10.0
        assert limiter.log(logger, logging.WARNING, "a", "line %s", 5)
        assert not limiter.log(logger, logging.DEBUG, "c", "below the level: not counted")
    assert written == [True, False, False, False, False]
    assert [r.getMessage() for r in caplog.records] == [
        "line 0",
        "other",
        "line 5 (4 similar lines left out in the last 10 s)",
    ]


def test_the_table_of_reasons_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    clock = _Clock()
    limiter = LogLimiter(10.0, max_reasons=3, clock=clock)
    logger = logging.getLogger("securemcp.test_log_limits")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logged: list[Any] = [
            limiter.log(logger, logging.WARNING, n, "reason %s", n) for n in range(100)
        ]
    assert logged.count(True) == 4  # three reasons, then one line for every other
    assert len(limiter._seen) == 4
    clock.now = 20.0  # stale reasons are forgotten when room is needed
    assert limiter.log(logger, logging.WARNING, "new", "new reason")
    assert "new" in limiter._seen
