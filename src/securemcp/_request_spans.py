"""The ``SERVER`` span of a guarded call that reaches securemcp without FastMCP's request span.

OpenTelemetry semantic conventions for MCP: one ``SERVER`` span per request, carrying the
request's attributes. FastMCP opens it at its dispatch seam for every request a client sends,
before securemcp's pipeline runs, and securemcp enriches it. A call made in process
(``await server.call_tool(...)``: tests, agent frameworks that embed the server, a tool calling
another server) has no such span: FastMCP opens one only inside its core path, after the
pipeline has decided, so that span would carry neither the decision nor the caller, and the
audit records would carry no trace id. A call nested in another guarded call would find the
outer call's span current and overwrite its attributes.

For those calls, while spans can record and FastMCP's own spans are on, :func:`request_span`
opens the ``SERVER`` span before the pipeline runs and marks it as FastMCP's seam span for the
request, exactly as FastMCP's seam does (``fastmcp.server.telemetry._active_seam_span``), so
FastMCP's core path enriches it instead of opening a second one. It is still one span per call.

This module relies on a FastMCP internal (``_active_seam_span``); ``tests/test_request_spans.py``
pins it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastmcp.server import telemetry as _fastmcp_server_telemetry
from fastmcp.telemetry import native_spans_enabled
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Tracer

from securemcp._span_exceptions import is_guarded
from securemcp._unrecorded_spans import spans_cannot_record

__all__ = ["needs_request_span", "request_span"]

_ACTIVE_SEAM = _fastmcp_server_telemetry._active_seam_span


def needs_request_span(current: Span) -> bool:
    """Whether a guarded call must open its own request span (``current`` is the current span).

    No, when ``current`` is FastMCP's request span for this call (recording, the active seam,
    not yet another guarded call's), or when no span could record, or when FastMCP's own spans
    are off (``propagation_only`` / ``off``, or suppressed): then FastMCP opens none either.
    """
    if current.is_recording():
        if current is _ACTIVE_SEAM.get() and not is_guarded(current):
            return False
    elif spans_cannot_record():
        return False
    return native_spans_enabled()


@contextmanager
def request_span(tracer: Tracer, method: str, target: str) -> Iterator[Span]:
    """Open the call's ``SERVER`` span, current and marked as the request's seam span."""
    name = method if method == "resources/read" else f"{method} {target}"  # no URIs in names
    span = tracer.start_span(
        name,
        kind=SpanKind.SERVER,
        attributes={"mcp.method.name": method},
        record_exception=False,  # the pipeline and FastMCP record failures, redacted
        set_status_on_exception=False,
    )
    attached = otel_context.attach(trace.set_span_in_context(span))
    seam = _ACTIVE_SEAM.set(span)
    try:
        yield span
    finally:
        _ACTIVE_SEAM.reset(seam)
        otel_context.detach(attached)
        span.end()
