"""OpenTelemetry: one enriched server span per call, MCP metrics, and no secrets anywhere."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastmcp.exceptions import ToolError
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from securemcp import FastMCP, current
from securemcp.telemetry import ERROR_TYPES
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
SECRET_ARGUMENT = "hunter2-argument-value"

_EXPORTER = InMemorySpanExporter()
_READER = InMemoryMetricReader()


@pytest.fixture(scope="module", autouse=True)
def _otel_sdk() -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[_READER]))
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        pytest.skip("another test set a different global tracer provider first")


@pytest.fixture
def spans() -> InMemorySpanExporter:
    _EXPORTER.clear()
    _READER.collect()  # drain
    return _EXPORTER


def build(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("otel", auth=idp.verifier(audience=AUDIENCE))

    @mcp.tool(scopes=["use"])
    def echo(text: str) -> str:
        return f"len={len(text)} call={current().call_id}"

    @mcp.tool
    def fails(text: str) -> str:
        raise ToolError("tool said no")

    return mcp


def _call_spans(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name == f"tools/call {name}"
    ]


async def test_one_enriched_server_span_per_call(spans: InMemorySpanExporter) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    async with connect(build(idp), idp.token("alice", scopes=["use"], tenant="acme")) as client:
        result = await client.call_tool("echo", {"text": "hi"})
    (span,) = _call_spans(spans, "echo")
    attributes = dict(span.attributes or {})
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "echo"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["securemcp.decision"] == "allow"
    assert attributes["securemcp.call_id"] in result.data
    assert attributes["enduser.id"] != "alice"  # a pseudonym, never the subject
    assert len(attributes["enduser.id"]) == 16
    assert "error.type" not in attributes
    assert span.status.status_code != StatusCode.ERROR


@pytest.mark.parametrize(
    ("scopes", "tool", "error_type"),
    [([], "echo", "insufficient_scope"), (["use"], "fails", "tool_error")],
)
async def test_denials_and_tool_errors_carry_error_type(
    spans: InMemorySpanExporter, scopes: list[str], tool: str, error_type: str
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    async with connect(build(idp), idp.token("bob", scopes=scopes)) as client:
        result = await client.call_tool(tool, {"text": "x"}, raise_on_error=False)
    assert result.is_error
    (span,) = _call_spans(spans, tool)
    assert span.attributes is not None
    assert span.attributes["error.type"] == error_type
    assert error_type in ERROR_TYPES
    assert span.status.status_code == StatusCode.ERROR


async def test_invalid_token_is_recorded(spans: InMemorySpanExporter) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    async with connect(build(idp), idp.bad_token("expired")) as client:
        await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    # Named by its method alone: an unauthenticated caller's target is its own text.
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name == "tools/call"
    ]
    assert span.attributes is not None
    assert span.attributes["error.type"] == "invalid_token"
    assert span.attributes["securemcp.decision"] == "deny"
    assert "gen_ai.tool.name" not in span.attributes


def _metric_points(name: str) -> list[Any]:
    data = _READER.get_metrics_data()
    points: list[Any] = []
    for resource in data.resource_metrics if data else []:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    points.extend(metric.data.data_points)
    return points


async def test_duration_histogram_and_decision_counter(spans: InMemorySpanExporter) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    async with connect(build(idp), idp.token("carol", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "a"})
        await client.call_tool("fails", {"text": "b"}, raise_on_error=False)
    durations = _metric_points("mcp.server.operation.duration")
    by_tool = {p.attributes.get("gen_ai.tool.name"): p for p in durations}
    assert by_tool["echo"].count >= 1
    assert by_tool["echo"].explicit_bounds[0] == 0.01
    assert by_tool["fails"].attributes["error.type"] == "tool_error"
    decisions = _metric_points("securemcp.authz.decisions")
    reasons = {p.attributes["securemcp.reason"] for p in decisions}
    assert {"ok", "tool_error"} <= reasons


async def test_no_token_header_or_argument_in_any_span_metric_or_log(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("dave", scopes=["use"])
    bad = idp.bad_token("signed_by_stranger", scopes=["use"])
    with caplog.at_level(logging.INFO):
        mcp = build(idp)
        async with connect(mcp, token) as client:
            await client.call_tool("echo", {"text": SECRET_ARGUMENT})
            await client.call_tool("fails", {"text": SECRET_ARGUMENT}, raise_on_error=False)
        async with connect(mcp, bad) as client:
            await client.call_tool("echo", {"text": SECRET_ARGUMENT}, raise_on_error=False)
    exported: list[str] = []
    for span in spans.get_finished_spans():
        exported.append(span.name)
        exported.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        exported.extend(str(e.attributes) for e in span.events)
        exported.append(str(span.status.description))
    data = _READER.get_metrics_data()
    exported.append(str(data.to_json() if data else ""))
    exported.append(caplog.text)
    blob = "\n".join(exported)
    assert len(spans.get_finished_spans()) > 0
    for secret in (token, bad, token.split(".")[2], SECRET_ARGUMENT, "Bearer "):
        assert secret not in blob


async def test_approvals_are_counted(spans: InMemorySpanExporter, tmp_path: Any) -> None:
    from securemcp.context import Principal
    from securemcp.policy import ApprovalGate, Decision, open_store

    idp = FakeIdentityProvider(audience=AUDIENCE)
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp = FastMCP(
        "approvals",
        auth=idp.verifier(audience=AUDIENCE),
        policy=lambda request: Decision.require_approval("two-person rule"),
        approvals=ApprovalGate(store),
    )

    @mcp.tool
    def wipe() -> str:
        return "wiped"

    async with connect(mcp, idp.token("alice")) as client:
        first = await client.call_tool("wipe", {}, raise_on_error=False)
        approval_id = first.content[0].text.split("approval id ")[1].split(")")[0]
        approver = Principal(
            subject="carol", issuer=idp.issuer, scopes=frozenset({"securemcp:approve"})
        )
        await store.approve(approval_id, approver)
        assert (await client.call_tool("wipe", {})).data == "wiped"
    events = {
        p.attributes["securemcp.approval.event"]: p.value
        for p in _metric_points("securemcp.approvals")
    }
    assert events == {"requested": 1, "consumed": 1}


async def test_a_template_reads_values_stay_out_of_its_span(spans: InMemorySpanExporter) -> None:
    """A resource template's parameter values are the read's arguments: the span names the read
    by its URI template, as the audit record does, never by the URI the caller sent (FastMCP's
    core path sets ``mcp.resource.uri`` and ``fastmcp.component.key`` to that URI)."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = FastMCP("otel-reads", auth=idp.verifier(audience=AUDIENCE))

    @mcp.resource("users://{email}/ssn", scopes=["use"])
    def ssn(email: str) -> str:
        return "on file"

    @mcp.resource("config://app", scopes=["use"])
    def config() -> str:
        return "cfg"

    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.read_resource("users://alice.secret%40example.com/ssn")
        await client.read_resource("config://app")
    reads = [
        s
        for s in spans.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name.startswith("resources/read")
    ]
    assert len(reads) == 2
    recorded = [dict(s.attributes or {}) for s in reads]
    for attributes, span in zip(recorded, reads, strict=True):
        assert "alice.secret" not in repr(attributes) + span.name
        assert all("alice.secret" not in repr(e.attributes) for e in span.events)
    uris = sorted(a["mcp.resource.uri"] for a in recorded)
    assert uris == ["config://app", "users://{email}/ssn"]  # a concrete URI stays as it is
    assert sorted(a["fastmcp.component.key"] for a in recorded) == uris
