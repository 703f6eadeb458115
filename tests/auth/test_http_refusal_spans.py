"""Requests the HTTP guard refuses before trusting a token are traced and counted.

FastMCP never sees them, so securemcp opens their ``SERVER`` span (HTTP semantic conventions),
parented on the ``traceparent`` HTTP header, and counts them in ``securemcp.authz.decisions``.
Everything runs over real loopback HTTP with raw requests (as any client, or any attacker, sends
them), into the OpenTelemetry SDK's in-memory span exporter and metric reader.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from auth_support import AUDIENCE, Counter, call_body, counted_server, request_headers
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from securemcp.audit import AuditLog, iter_records
from securemcp.auth.http import REFUSAL_ERROR_TYPES
from securemcp.errors import InvalidCredential
from securemcp.policy import RateLimit, RateLimiter
from securemcp.telemetry import ERROR_TYPES
from securemcp.testing import FakeIdentityProvider, serve_http

pytestmark = pytest.mark.http

QUERY_MARKER = "query-marker-7f3a"
HEADER_MARKER = "header-marker-9c1e"


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader


def _install(sampler: Any = None) -> Iterator[Otel]:
    """Fresh SDK providers for one test, without taking OpenTelemetry's set-once globals.

    The globals are set the way OpenTelemetry's own test utilities reset them, and restored
    afterwards, so a later module (tests/test_telemetry.py) can still install its providers.
    Servers must be built inside the test: securemcp takes its tracer and meter at construction.
    """
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=sampler) if sampler else TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trace, "_TRACER_PROVIDER", tracer_provider)
        patch.setattr(metrics_internal, "_METER_PROVIDER", meter_provider)
        yield Otel(exporter, reader)
    tracer_provider.shutdown()
    meter_provider.shutdown()


@pytest.fixture
def otel() -> Iterator[Otel]:
    yield from _install()


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def new_traceparent() -> tuple[str, str, str]:
    """A fresh (traceparent, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


def refusal_spans(otel: Otel) -> list[ReadableSpan]:
    """The HTTP-layer refusal spans (securemcp's ``SERVER`` spans with an HTTP method)."""
    return [
        s
        for s in otel.spans.get_finished_spans()
        if s.kind == SpanKind.SERVER and "http.request.method" in (s.attributes or {})
    ]


def mcp_spans(otel: Otel) -> list[ReadableSpan]:
    """FastMCP's (and securemcp's step-up) spans: those naming an MCP method."""
    return [s for s in otel.spans.get_finished_spans() if "mcp.method.name" in (s.attributes or {})]


def points(otel: Otel, name: str) -> list[Any]:
    data = otel.reader.get_metrics_data()
    found: list[Any] = []
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


def decisions(otel: Otel) -> dict[frozenset[tuple[str, Any]], int]:
    """``securemcp.authz.decisions`` as {attribute set: count}."""
    return {
        frozenset(dict(p.attributes).items()): p.value
        for p in points(otel, "securemcp.authz.decisions")
    }


def denied(reason: str) -> frozenset[tuple[str, Any]]:
    return frozenset({"securemcp.decision": "deny", "securemcp.reason": reason}.items())


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


async def post(
    client: httpx.AsyncClient,
    url: str,
    headers: Sequence[tuple[str, str]],
    *,
    traceparent: str | None = None,
) -> httpx.Response:
    extra = [("traceparent", traceparent)] if traceparent else []
    return await client.post(url, headers=[*headers, *extra], content=call_body())


# --- one span per refused request, for each kind ---------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    status: int
    error_type: str
    reason: str


KINDS = [
    Kind("no_token", 401, "invalid_token", "no_credential"),
    Kind("basic_scheme", 401, "invalid_token", "unsupported_scheme"),
    Kind("forged_token", 401, "invalid_token", "bad_signature"),
    Kind("expired_token", 401, "invalid_token", "expired"),
    Kind("query_token", 400, "invalid_request", "token_in_query"),
    Kind("two_authorization_headers", 400, "invalid_request", "multiple_authorization"),
    Kind("bad_origin", 403, "origin_not_allowed", "origin_not_allowed"),
]


def request_for(kind: str, idp: FakeIdentityProvider, url: str) -> tuple[str, list[Any]]:
    """The URL and headers of a request the guard refuses for ``kind``."""
    valid = idp.token("alice", scopes=["notes:read"])
    if kind == "no_token":
        return url, request_headers()
    if kind == "basic_scheme":
        return url, [*request_headers(), ("Authorization", "Basic YWxpY2U6cGFzc3dvcmQ=")]
    if kind == "forged_token":
        return url, request_headers(idp.bad_token("signed_by_stranger", scopes=["notes:read"]))
    if kind == "expired_token":
        return url, request_headers(idp.bad_token("expired", scopes=["notes:read"]))
    if kind == "query_token":
        return f"{url}?access_token={valid}&marker={QUERY_MARKER}", request_headers()
    if kind == "two_authorization_headers":
        return url, [*request_headers(valid), ("Authorization", f"Bearer {valid}")]
    if kind == "bad_origin":
        return url, request_headers(valid, Origin=f"https://{HEADER_MARKER}.evil.example")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
async def test_each_refusal_is_one_server_span_in_the_callers_trace_and_counted(
    otel: Otel, idp: FakeIdentityProvider, kind: Kind, tmp_path: Path
) -> None:
    traceparent, trace_id, parent_id = new_traceparent()
    counter = Counter()
    log = AuditLog(tmp_path / "audit")
    server = counted_server(idp.verifier(), counter, audit=log)
    async with serve_http(server, stateless_http=True) as url:
        target, headers = request_for(kind.name, idp, url)
        async with httpx.AsyncClient() as client:
            response = await post(client, target, headers, traceparent=traceparent)
    assert response.status_code == kind.status
    assert counter.runs == 0
    # The audit record of the refusal points at the refusal's trace.
    log.close()
    (failure,) = [r for r in iter_records(log.directory) if r["type"] == "auth_failure"]
    assert failure["trace_id"] == trace_id

    (span,) = refusal_spans(otel)
    assert span.name == "POST /mcp"  # HTTP semconv: "{method} {http.route}"
    assert span.kind == SpanKind.SERVER
    assert span.context is not None and span.parent is not None
    assert hex_id(span.context.trace_id, 32) == trace_id
    assert hex_id(span.parent.span_id, 16) == parent_id
    assert span.parent.is_remote
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "http.response.status_code": kind.status,
        "http.route": "/mcp",
        "url.path": "/mcp",
        "url.scheme": "http",
        "error.type": kind.error_type,
        "securemcp.decision": "deny",
        "securemcp.reason": kind.reason,
    }
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == kind.reason
    assert not span.events
    assert mcp_spans(otel) == []  # FastMCP never saw the request

    # Counted like record() counts, without an MCP method (the body was never read).
    assert decisions(otel) == {denied(kind.reason): 1}
    assert points(otel, "mcp.server.operation.duration") == []


async def test_address_rate_limit_429_is_traced_and_counted_as_a_rate_limit(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    limiter = RateLimiter([RateLimit("per-ip", "2/minute", per="address")])
    server = counted_server(idp.verifier(), Counter(), rate_limits=limiter)
    traceparent, trace_id, _ = new_traceparent()
    forged = request_headers(idp.bad_token("signed_by_stranger"))
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        statuses = [
            (await post(client, url, forged, traceparent=traceparent)).status_code for _ in range(4)
        ]
    assert statuses == [401, 401, 429, 429]

    spans = refusal_spans(otel)
    assert [(s.attributes or {})["http.response.status_code"] for s in spans] == statuses
    limited = spans[2:]
    for span in limited:
        attributes = dict(span.attributes or {})
        assert attributes["error.type"] == "rate_limited"
        assert attributes["securemcp.reason"] == "address_rate_limited"
        assert span.context is not None
        assert hex_id(span.context.trace_id, 32) == trace_id
    assert decisions(otel) == {denied("bad_signature"): 2, denied("address_rate_limited"): 2}
    (rejections,) = points(otel, "securemcp.ratelimit.rejections")
    assert rejections.value == 2
    assert dict(rejections.attributes) == {}  # no MCP method known


async def test_verifier_unavailable_503_is_traced_and_counted(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    idp.jwks_outage = True  # no key set cached yet: credentials cannot be checked
    traceparent, trace_id, _ = new_traceparent()
    token = idp.token("alice", scopes=["notes:read"])
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        response = await post(client, url, request_headers(token), traceparent=traceparent)
    assert response.status_code == 503

    (span,) = refusal_spans(otel)
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 503
    assert attributes["error.type"] == "verifier_unavailable"
    assert attributes["securemcp.reason"] == "jwks_unavailable"
    assert span.context is not None
    assert hex_id(span.context.trace_id, 32) == trace_id
    assert decisions(otel) == {denied("jwks_unavailable"): 1}


# --- passing requests: only FastMCP's span ---------------------------------------------------


async def test_a_passing_request_gets_only_fastmcps_span(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    traceparent, _, _ = new_traceparent()
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        refused = await post(client, url, request_headers(), traceparent=traceparent)
        passed = await post(client, url, request_headers(token), traceparent=traceparent)
    assert (refused.status_code, passed.status_code) == (401, 200)

    assert len(refusal_spans(otel)) == 1  # the refused request only
    (call,) = mcp_spans(otel)  # the passing one: FastMCP's span, enriched, and nothing more
    assert call.name == "tools/call read_note"
    assert (call.attributes or {})["securemcp.decision"] == "allow"
    server_spans = [s for s in otel.spans.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert len(server_spans) == 2
    assert decisions(otel) == {
        denied("no_credential"): 1,
        frozenset(
            {
                "mcp.method.name": "tools/call",
                "securemcp.decision": "allow",
                "securemcp.reason": "ok",
            }.items()
        ): 1,
    }


# --- trace context from the HTTP header ------------------------------------------------------


BAD_TRACEPARENTS = [
    "garbage",
    "00-" + "0" * 32 + "-" + "b" * 16 + "-01",  # all-zero trace id
    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",  # version ff is forbidden
    "00-" + "A" * 32 + "-" + "B" * 16 + "-01",  # upper case
    "00-" + "a" * 32 + "-" + "b" * 16 + "-01-" + "x" * 600,  # over-long
]


@pytest.mark.parametrize("traceparent", BAD_TRACEPARENTS, ids=lambda v: v[:12])
async def test_a_malformed_traceparent_header_starts_a_new_trace(
    otel: Otel, idp: FakeIdentityProvider, traceparent: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        with caplog.at_level(logging.WARNING, logger="opentelemetry"):
            response = await post(client, url, request_headers(), traceparent=traceparent)
    assert response.status_code == 401
    (span,) = refusal_spans(otel)
    assert span.parent is None
    assert span.context is not None
    assert hex_id(span.context.trace_id, 32) not in traceparent.lower()
    # An attacker's junk header never makes the propagator write a warning per request.
    assert not [r for r in caplog.records if r.name.startswith("opentelemetry")]


async def test_two_traceparent_headers_are_both_ignored(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    first, first_id, _ = new_traceparent()
    second, second_id, _ = new_traceparent()
    headers = [*request_headers(), ("traceparent", first), ("traceparent", second)]
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        assert (await post(client, url, headers)).status_code == 401
    (span,) = refusal_spans(otel)
    assert span.parent is None
    assert span.context is not None
    assert hex_id(span.context.trace_id, 32) not in {first_id, second_id}


# --- nothing secret in any span or metric ----------------------------------------------------


def exported_text(otel: Otel) -> str:
    parts: list[str] = []
    for span in otel.spans.get_finished_spans():
        parts.append(span.name)
        parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
        parts.extend(f"{e.name} {dict(e.attributes or {})}" for e in span.events)
        parts.append(str(span.status.description))
        for context in (span.context, span.parent):
            if context is not None:
                parts.append(str(context.trace_state))
    data = otel.reader.get_metrics_data()
    parts.append(data.to_json() if data else "")
    return "\n".join(parts)


async def test_no_token_query_string_or_header_value_is_ever_exported(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    valid = idp.token("alice", scopes=["notes:read"])
    forged = idp.bad_token("signed_by_stranger", scopes=["notes:read"])
    expired = idp.bad_token("expired", scopes=["notes:read"])
    traceparent, _, _ = new_traceparent()
    marked = [
        ("X-Custom", HEADER_MARKER),
        ("tracestate", f"vendor={HEADER_MARKER}"),
        ("User-Agent", HEADER_MARKER),
    ]
    requests: list[tuple[str, list[Any]]] = []
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        query = f"?marker={QUERY_MARKER}"
        requests = [
            (url + query, request_headers()),
            (url + query, request_headers(forged)),
            (url + query, request_headers(expired)),
            (url + query, [*request_headers(), ("Authorization", f"Basic {HEADER_MARKER}")]),
            (f"{url}?access_token={valid}&marker={QUERY_MARKER}", request_headers()),
            (url + query, [*request_headers(valid), ("Authorization", f"Bearer {forged}")]),
            (url + query, request_headers(valid, Origin=f"https://{HEADER_MARKER}.example")),
        ]
        for target, headers in requests:
            response = await post(client, target, [*headers, *marked], traceparent=traceparent)
            assert response.status_code in (400, 401, 403)
    assert len(refusal_spans(otel)) == len(requests)
    blob = exported_text(otel)
    for secret in (valid, forged, expired, valid.split(".")[2], QUERY_MARKER, HEADER_MARKER):
        assert secret not in blob
    for word in ("Bearer", "Basic", "access_token", "marker="):
        assert word not in blob


async def test_a_verifier_reason_that_is_not_a_code_is_reported_as_other(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    """A custom verifier may put anything in its reason, even the token; telemetry never does."""
    verifier = idp.verifier()

    async def chatty(token: str) -> Any:
        raise InvalidCredential(reason=f"token {token} is unknown")

    verifier.authenticate = chatty  # type: ignore[method-assign]
    token = secrets.token_hex(20)  # an opaque token the reason code pattern would accept
    async with (
        serve_http(counted_server(verifier, Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        assert (await post(client, url, request_headers(token))).status_code == 401
    (span,) = refusal_spans(otel)
    assert (span.attributes or {})["securemcp.reason"] == "_OTHER"
    assert (span.attributes or {})["error.type"] == "invalid_token"
    assert decisions(otel) == {denied("_OTHER"): 1}
    assert token not in exported_text(otel)


# --- cost: nothing recorded on a span nobody samples ----------------------------------------


@pytest.fixture
def unsampled() -> Iterator[Otel]:
    yield from _install(sampler=ALWAYS_OFF)


async def test_an_unsampled_refusal_exports_no_span_but_is_still_counted(
    unsampled: Otel, idp: FakeIdentityProvider
) -> None:
    traceparent = "00-" + "a" * 32 + "-" + "b" * 16 + "-00"  # the caller did not sample either
    async with (
        serve_http(counted_server(idp.verifier(), Counter()), stateless_http=True) as url,
        httpx.AsyncClient() as client,
    ):
        for _ in range(3):
            response = await post(client, url, request_headers(), traceparent=traceparent)
            assert response.status_code == 401
    assert unsampled.spans.get_finished_spans() == ()
    assert decisions(unsampled) == {denied("no_credential"): 3}


# --- the vocabulary ---------------------------------------------------------------------------


def test_every_http_refusal_error_type_is_in_the_vocabulary() -> None:
    assert set(REFUSAL_ERROR_TYPES.values()) <= ERROR_TYPES
    assert set(REFUSAL_ERROR_TYPES) == {400, 401, 403, 429, 503}


def test_without_an_sdk_a_refusal_is_only_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """No SDK: no header parsing and no (no-op) span, only the metric calls."""
    from securemcp import telemetry

    def unexpected(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tracing work without an SDK")

    reader = InMemoryMetricReader()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # the API's proxy: no SDK
    monkeypatch.setattr(metrics_internal, "_METER_PROVIDER", MeterProvider(metric_readers=[reader]))
    monkeypatch.setattr(telemetry._PROPAGATOR, "extract", unexpected)
    recorder = telemetry.Telemetry()
    monkeypatch.setattr(recorder._tracer, "start_span", unexpected)
    traceparent, _, _ = new_traceparent()
    for _ in range(2):
        recorder.refused_at_http(
            http_method="POST",
            status_code=401,
            error_type="invalid_token",
            reason="expired",
            route="/mcp",
            traceparent=traceparent,
        )
    assert decisions(Otel(InMemorySpanExporter(), reader)) == {denied("expired"): 2}
