"""The proxy's spans of its calls to upstream servers, without the upstream's text (guarantee 5).

While the proxy talks to an upstream server, two libraries open ``CLIENT`` spans for each
request: FastMCP's ``Client`` (``fastmcp.client.telemetry.client_span``: ``tools/call <name>``,
``resources/read``, ``prompts/get <name>``, the listings) and the MCP SDK under it
(``mcp.shared.jsonrpc_dispatcher``: ``MCP send <method>``, ``initialize`` included). When the
upstream answers with an error, or the connection fails, both record what they were told:
FastMCP an ``exception`` event with the message and stack trace and the message as the status
description (for a tool result flagged ``isError``, its first text block); the SDK the JSON-RPC
error message as the description, and an exception leaving its span with message and stack
trace (the OpenTelemetry API's ``use_span``). An upstream's error text can quote the caller's
arguments, or a credential the proxy injected (a static secret, an exchanged token): the
operator's tracing backend must see neither (OpenTelemetry semantic conventions, "Recording
errors": instrumentations should not record sensitive data).

The proxy sends every upstream request inside :func:`upstream_spans`. There, the spans those two
libraries open are redacted from the moment they open, with securemcp's vocabulary for its own
request spans (``securemcp._span_exceptions.redact_span``, strict: the description is another
party's text, so none is kept, not even an identifier-shaped one): an ``exception`` event keeps
only ``exception.type``, the status is ``ERROR`` with no description, and a span an exception
leaves gets an ``error.type`` (the exception's type name) unless the library set one (FastMCP:
``tool_error`` or the exception's type name; the SDK: the JSON-RPC error code). Names, kinds and
attributes stay the libraries' own. The upstream's reason goes to the proxy's log, with injected
credentials cut out (:meth:`securemcp.proxy.upstream.Upstream.redacted`), and the call's outcome to
the audit log. Outside :func:`upstream_spans` (any other FastMCP client in the process), and
while no span could record (no SDK configured), both libraries run exactly as they do without
securemcp, at the cost of one context variable read per span.

This module touches FastMCP and MCP SDK internals: it routes ``fastmcp.client.telemetry``'s
``get_tracer`` and the MCP SDK's module tracer ``mcp.shared._otel._tracer`` through its own
(:func:`install`). ``tests/proxy/test_proxy_spans.py`` pins both.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from fastmcp.client import telemetry as _fastmcp_client_telemetry
from fastmcp.telemetry import get_tracer as _fastmcp_get_tracer
from mcp.shared import _otel as _mcp_otel
from opentelemetry import trace
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Tracer, TracerProvider

from securemcp._resource_reads import unresolved_target
from securemcp._span_exceptions import redact_span
from securemcp._unrecorded_spans import spans_cannot_record

__all__ = ["install", "upstream_spans"]

#: Set while the proxy talks to an upstream server (see :func:`upstream_spans`).
_UPSTREAM_CALL: ContextVar[bool] = ContextVar("securemcp_upstream_call", default=False)

#: The MCP SDK's instrumentation scope (``mcp.shared._otel``).
_MCP_SDK_SCOPE = "mcp-python-sdk"


@contextmanager
def upstream_spans() -> Iterator[None]:
    """Redact the spans FastMCP's client and the MCP SDK open inside this block."""
    token = _UPSTREAM_CALL.set(True)
    try:
        yield
    finally:
        _UPSTREAM_CALL.reset(token)


#: The attributes of an upstream read's ``CLIENT`` span that hold the URI the proxy sent.
_READ_URI_ATTRIBUTES: Final = ("mcp.resource.uri", "fastmcp.component.key")


def _redacted(span: Span, attributes: Any = None) -> Span:
    if span.is_recording():
        redact_span(span, keep_identifiers=False)
        if attributes and attributes.get("mcp.resource.uri") is not None:
            # A read's URI carries a template's parameter values (the caller's arguments): the
            # proxy's own request span names the read by its template, as the audit log does;
            # the upstream call keeps the scheme only.
            uri = str(attributes["mcp.resource.uri"])
            span.set_attributes(dict.fromkeys(_READ_URI_ATTRIBUTES, unresolved_target(uri)))
    return span


class _RedactingTracer(Tracer):
    """Opens spans as ``tracer`` does, each redacted (strictly) before anyone can record on it.

    ``start_as_current_span`` is the SDK's own (``start_span`` then ``use_span``), with the span
    redacted in between, so the ``use_span`` exit records an escaping exception redacted too.
    """

    __slots__ = ("_tracer",)

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        span = self._tracer.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return _redacted(span, attributes)

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Any = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(
            span,
            end_on_exit=end_on_exit,
            record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ):
            try:
                yield span
            except Exception as exc:
                if span.is_recording() and "error.type" not in _attributes(span):
                    span.set_attribute("error.type", type(exc).__qualname__)
                raise


def _attributes(span: Span) -> Any:
    return getattr(span, "attributes", None) or {}


def client_tracer(version: str | None = None) -> Tracer:
    """``fastmcp.client.telemetry.get_tracer``: FastMCP's tracer, redacting inside
    :func:`upstream_spans` while spans can record (FastMCP's modes without spans untouched)."""
    tracer = _fastmcp_get_tracer(version)
    if not _UPSTREAM_CALL.get() or isinstance(tracer, NoOpTracer) or spans_cannot_record():
        return tracer
    return _RedactingTracer(tracer)


#: The MCP SDK's tracer from the current provider (see :func:`_mcp_sdk_tracer`).
_sdk_tracer: tuple[TracerProvider, Tracer] | None = None


def _mcp_sdk_tracer() -> Tracer:
    """The MCP SDK's tracer from the global provider now, asked of the provider once per provider.

    The SDK's own module tracer is a proxy that keeps the first real tracer it finds: the same
    one, as long as the process installs one provider, as OpenTelemetry allows.
    """
    global _sdk_tracer
    provider = trace.get_tracer_provider()
    cached = _sdk_tracer
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(_MCP_SDK_SCOPE)
    _sdk_tracer = (provider, tracer)
    return tracer


class _SdkTracer(Tracer):
    """The MCP SDK's module tracer: its own outside :func:`upstream_spans` or while no span can
    record, redacting inside."""

    __slots__ = ("original",)

    def __init__(self, original: Tracer) -> None:
        self.original = original

    def _tracer(self) -> Tracer:
        if not _UPSTREAM_CALL.get() or spans_cannot_record():
            return self.original
        return _RedactingTracer(_mcp_sdk_tracer())

    def start_span(self, *args: Any, **kwargs: Any) -> Span:
        return self._tracer().start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        # The chosen tracer's context manager itself: no extra frame on the SDK's every request.
        return self._tracer().start_as_current_span(*args, **kwargs)


def install() -> None:
    """Route FastMCP's client tracer and the MCP SDK's tracer through this module (idempotent)."""
    if getattr(_fastmcp_client_telemetry, "get_tracer", None) is not client_tracer:
        _fastmcp_client_telemetry.get_tracer = client_tracer  # type: ignore[attr-defined]
    if not isinstance(getattr(_mcp_otel, "_tracer", None), _SdkTracer):
        _mcp_otel._tracer = _SdkTracer(_mcp_otel._tracer)
