"""One enriched SERVER span for guarded calls made in process (``securemcp._request_spans``).

A client's request gets FastMCP's request span before the pipeline runs. An in-process call
(``await server.call_tool(...)``) and a call nested in another guarded call do not: securemcp
opens the span for them and hands it to FastMCP as the request's seam span. These tests check
there is exactly one SERVER span per call, that it carries the decision, the caller and the
trace id the audit record gets, that a nested call no longer overwrites its caller's span, and
that nothing is opened when FastMCP's spans are off or no SDK is configured.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import fastmcp
import pytest
from fastmcp import Client
from fastmcp.server import telemetry as fastmcp_server_telemetry
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_support import span_fixtures
from securemcp import FastMCP, current
from securemcp.policy import Decision

_tracing, spans = span_fixtures()


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The SERVER spans of tool calls (a client's session also lists and discovers)."""
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER and s.name.startswith("tools/call")
    ]


def build(name: str = "inproc", *, deny: bool = False) -> FastMCP:
    mcp = FastMCP(
        name, audit=False, policy=lambda r: Decision.deny("no") if deny else Decision.allow()
    )

    @mcp.tool
    def where() -> dict[str, Any]:
        context = current()
        return {"call_id": context.call_id, "trace_id": context.trace_id}

    return mcp


def test_fastmcps_seam_marker_is_still_a_context_variable() -> None:
    """The FastMCP internal this relies on (pinned: a rename must fail here, not silently)."""
    assert isinstance(fastmcp_server_telemetry._active_seam_span, ContextVar)


async def test_an_in_process_call_has_one_enriched_server_span(
    spans: InMemorySpanExporter,
) -> None:
    result = await build().call_tool("where", {})
    (span,) = server_spans(spans)
    attributes = dict(span.attributes or {})
    assert span.name == "tools/call where"
    assert attributes["securemcp.decision"] == "allow"
    assert attributes["gen_ai.tool.name"] == "where"
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["fastmcp.server.name"] == "inproc"  # FastMCP enriched the same span
    assert attributes["securemcp.call_id"] == result.structured_content["call_id"]
    # the audit record's trace id (the security context's) is this span's
    assert span.context is not None
    assert result.structured_content["trace_id"] == format(span.context.trace_id, "032x")


async def test_a_refused_in_process_call_has_one_span_with_its_error(
    spans: InMemorySpanExporter,
) -> None:
    from securemcp.errors import PolicyDenied

    with pytest.raises(PolicyDenied):
        await build(deny=True).call_tool("where", {})
    (span,) = server_spans(spans)
    attributes = dict(span.attributes or {})
    assert span.name == "tools/call where"
    assert attributes["error.type"] == "policy_denied"
    assert attributes["securemcp.decision"] == "deny"
    assert span.status.status_code == StatusCode.ERROR


async def test_a_nested_call_gets_its_own_span_and_leaves_its_callers_alone(
    spans: InMemorySpanExporter,
) -> None:
    inner = build("inner")
    outer = FastMCP("outer", audit=False)

    @outer.tool
    async def relay() -> dict[str, Any]:
        nested = await inner.call_tool("where", {})
        return {"outer": current().call_id, "inner": nested.structured_content["call_id"]}

    async with Client(outer) as client:
        ids = (await client.call_tool("relay", {})).structured_content
    by_name = {s.name: s for s in server_spans(spans)}
    assert set(by_name) == {"tools/call relay", "tools/call where"}
    outer_span, inner_span = by_name["tools/call relay"], by_name["tools/call where"]
    assert dict(outer_span.attributes or {})["securemcp.call_id"] == ids["outer"]
    assert dict(outer_span.attributes or {})["gen_ai.tool.name"] == "relay"
    assert dict(inner_span.attributes or {})["securemcp.call_id"] == ids["inner"]
    assert dict(inner_span.attributes or {})["fastmcp.server.name"] == "inner"
    assert outer_span.context is not None and inner_span.parent is not None
    assert inner_span.parent.span_id == outer_span.context.span_id
    assert inner_span.context is not None
    assert inner_span.context.trace_id == outer_span.context.trace_id


async def test_a_client_request_keeps_fastmcps_span(spans: InMemorySpanExporter) -> None:
    async with Client(build()) as client:
        await client.call_tool("where", {})
    (span,) = server_spans(spans)
    assert dict(span.attributes or {})["securemcp.decision"] == "allow"
    assert fastmcp_server_telemetry.SEAM_SPAN_MARKER in (span.attributes or {})  # FastMCP's seam


@pytest.mark.parametrize("mode", ["propagation_only", "off"])
async def test_nothing_is_opened_while_fastmcps_spans_are_off(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", mode)
    await build().call_tool("where", {})
    assert server_spans(spans) == []


async def test_nothing_is_opened_without_an_sdk(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    from securemcp import _request_spans

    monkeypatch.setattr(_request_spans, "spans_cannot_record", lambda: True)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    result = await build().call_tool("where", {})
    assert result.structured_content["trace_id"] is None
    assert server_spans(spans) == []


async def test_a_failing_in_process_call_exports_no_message_or_argument(
    spans: InMemorySpanExporter,
) -> None:
    secret = "in-process-secret-value"
    mcp = FastMCP("fails", audit=False, policy=lambda r: Decision.allow())

    @mcp.tool
    def explode(text: str) -> str:
        raise ValueError(f"could not handle {text}")

    with pytest.raises(Exception):
        await mcp.call_tool("explode", {"text": secret})
    (span,) = server_spans(spans)
    assert dict(span.attributes or {})["error.type"] == "tool_error"
    assert span.status.status_code == StatusCode.ERROR
    exported = [
        str(dict(span.attributes or {})),
        str(span.status.description),
        *(str(dict(event.attributes or {})) for event in span.events),
    ]
    assert secret not in "\n".join(exported)


async def test_a_caller_token_fastmcp_cannot_read_still_reaches_the_audited_pipeline(
    spans: InMemorySpanExporter, tmp_path: Any
) -> None:
    # FastMCP raises TypeError for a token type it cannot convert. Looking the request's auth
    # attributes up for the span must not make the call fail before anything is audited.
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
    from mcp.server.auth.provider import AccessToken as SdkAccessToken

    from securemcp.audit import AuditLog, iter_records

    class Unconvertible(SdkAccessToken):
        def model_dump(self, *args: Any, **kwargs: Any) -> Any:
            raise ValueError("cannot be dumped")

    mcp = FastMCP("inproc", audit=AuditLog(tmp_path))

    @mcp.tool
    def add(a: int, b: int) -> int:
        return a + b

    reset = auth_context_var.set(
        AuthenticatedUser(Unconvertible(token="t", client_id="c", scopes=[]))
    )
    try:
        assert (await mcp.call_tool("add", {"a": 1, "b": 2})).structured_content == {"result": 3}
    finally:
        auth_context_var.reset(reset)
    assert [r["type"] for r in iter_records(tmp_path) if r["type"] != "log_open"] == [
        "decision",
        "outcome",
    ]
    (span,) = server_spans(spans)
    assert "enduser.scope" not in (span.attributes or {})
    assert (span.attributes or {})["securemcp.decision"] == "allow"
