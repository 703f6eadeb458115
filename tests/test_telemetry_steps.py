"""Step spans: where a guarded call's time went (authenticate, authorize, audit).

While the call's SERVER span records, the pipeline adds one INTERNAL child per step that ran,
with the step's own start and end, and marks the step that refused the call. Without a
recording span nothing is timed (the no-SDK hot path is unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_support import collecting_spans
from securemcp import FastMCP
from securemcp.audit import AuditLog
from securemcp.policy import Decision
from securemcp.telemetry import STEP_NAMES
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
SECRET_ARGUMENT = "step-span-secret-argument"

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def _tracing() -> Iterator[None]:
    with collecting_spans(_EXPORTER):
        yield


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    return _EXPORTER


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def build(idp: FakeIdentityProvider, audit: Any) -> FastMCP:
    def policy(request: Any) -> Decision:
        if request.principal.subject == "mallory":
            return Decision.deny(f"blocked: {request.arguments.get('text')}")
        return Decision.allow()

    mcp = FastMCP("steps", auth=idp.verifier(audience=AUDIENCE), audit=audit, policy=policy)

    @mcp.tool(scopes=["use"])
    def echo(text: str) -> str:
        return f"len={len(text)}"

    return mcp


def call_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER
        and (s.attributes or {}).get("mcp.method.name") == "tools/call"
    ]
    return span


def steps_of(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    children = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    assert all(s.kind == trace.SpanKind.INTERNAL for s in children)
    return sorted(children, key=lambda s: s.start_time or 0)


async def test_an_allowed_call_shows_each_step_in_order_inside_its_span(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": SECRET_ARGUMENT})
    parent = call_span(spans)
    steps = steps_of(spans, parent)
    assert [s.name for s in steps] == list(STEP_NAMES)
    assert parent.start_time is not None and parent.end_time is not None
    previous_end = parent.start_time
    for step in steps:
        assert step.start_time is not None and step.end_time is not None
        assert previous_end <= step.start_time <= step.end_time <= parent.end_time
        previous_end = step.end_time
        assert step.status.status_code == StatusCode.UNSET
        assert step.context is not None and parent.context is not None
        assert step.context.trace_id == parent.context.trace_id
        assert SECRET_ARGUMENT not in str(dict(step.attributes or {}))


async def test_a_forged_token_fails_in_the_authenticate_step(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.bad_token("signed_by_stranger")) as client:
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    (step,) = steps_of(spans, call_span(spans))
    assert step.name == "securemcp.authenticate"
    assert step.status.status_code == StatusCode.ERROR
    assert (step.attributes or {}).get("error.type") == "invalid_token"


@pytest.mark.parametrize(
    ("subject", "scopes", "error_type"),
    [("bob", [], "insufficient_scope"), ("mallory", ["use"], "policy_denied")],
)
async def test_a_refusal_fails_in_the_authorize_step_and_writes_no_decision_step(
    spans: InMemorySpanExporter,
    idp: FakeIdentityProvider,
    tmp_path: Path,
    subject: str,
    scopes: list[str],
    error_type: str,
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.token(subject, scopes=scopes)) as client:
        result = await client.call_tool("echo", {"text": SECRET_ARGUMENT}, raise_on_error=False)
    assert result.is_error
    steps = steps_of(spans, call_span(spans))
    assert [s.name for s in steps] == ["securemcp.authenticate", "securemcp.authorize"]
    assert steps[0].status.status_code == StatusCode.UNSET
    assert steps[1].status.status_code == StatusCode.ERROR
    assert (steps[1].attributes or {}).get("error.type") == error_type
    for step in steps:
        assert SECRET_ARGUMENT not in str(dict(step.attributes or {}))
        assert SECRET_ARGUMENT not in str(step.status.description)


async def test_without_an_audit_log_there_are_no_audit_steps(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider
) -> None:
    mcp = build(idp, False)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})
    steps = steps_of(spans, call_span(spans))
    assert [s.name for s in steps] == ["securemcp.authenticate", "securemcp.authorize"]


async def test_an_unwritable_audit_log_fails_in_the_decision_step(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path / "audit")
    mcp = build(idp, log)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})  # opens the log
        log._fail("disk gone (test)")
        spans.clear()
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    steps = steps_of(spans, call_span(spans))
    assert [s.name for s in steps] == [
        "securemcp.authenticate",
        "securemcp.authorize",
        "securemcp.audit.decision",
    ]
    assert (steps[-1].attributes or {}).get("error.type") == "audit_unavailable"
