"""What a caller sends never becomes telemetry it should not: found by the security review.

* Request params that fail validation (``arguments`` sent as a JSON string, a prompt argument
  that is not a string) fail before the pipeline guards the call, with a pydantic message that
  quotes them (``input_value=...``): the request's ``SERVER`` span records the exception type
  only, from the moment it opens, and an ``error.type`` from the documented vocabulary
  (``invalid_params``, JSON-RPC -32602), never the exception's type. A method the caller made
  up is ``method_not_found`` and leaves the span's name.
* A tool or prompt name that resolves to no registered component (or that an unauthenticated
  caller sent) stays out of metric attributes (unbounded series), span names and span
  attributes.
* A refused ``resources/read`` or ``prompts/get`` keeps the reason code as its status
  description, with no ``MCPError`` events.
* An over-long or malformed ``_meta.traceparent`` / ``tracestate`` never makes OpenTelemetry
  log a warning (a caller could flood the server log with one per request).

Each test installs fresh SDK providers (span exporter and metric reader) and scans everything
they exported: every span's name, attributes, events, status, and every metric attribute.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastmcp.server import telemetry as fastmcp_server_telemetry
from opentelemetry import trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from securemcp import FastMCP
from securemcp._request_spans import parent_trace_context
from securemcp.telemetry import ERROR_TYPES, usable_trace_meta, usable_traceparent
from securemcp.testing import FakeIdentityProvider, connect, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"
PASSWORD = "hunter2-Sup3rSecret-d41"
ACCEPT = "application/json, text/event-stream"


@dataclass
class Otel:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def exported(self) -> str:
        """Every span name, attribute, event and status, and every metric attribute, of the
        server (in memory the client's own ``CLIENT`` spans reach the same exporter)."""
        parts: list[str] = []
        for span in self.spans.get_finished_spans():
            if span.kind == SpanKind.CLIENT:
                continue
            parts.append(span.name)
            parts.extend(f"{k}={v}" for k, v in (span.attributes or {}).items())
            for event in span.events:
                parts.append(event.name)
                parts.extend(f"{k}={v}" for k, v in (event.attributes or {}).items())
            parts.append(str(span.status.description))
        for point in self.points():
            parts.extend(f"{k}={v}" for k, v in point.attributes.items())
        return "\n".join(parts)

    def points(self, name: str | None = None) -> list[Any]:
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else ())
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if name is None or metric.name == name
            for point in metric.data.data_points
        ]

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if s.kind == SpanKind.SERVER]


@pytest.fixture
def otel() -> Iterator[Otel]:
    """Fresh SDK providers, set the way OpenTelemetry's own test utilities reset the set-once
    globals and restored afterwards. Build servers inside the test."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
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
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def build(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("untrusted", auth=idp.verifier(audience=AUDIENCE), audit=tempfile.mkdtemp())

    @mcp.tool
    def login(user: str, password: str) -> str:
        return "ok"

    @mcp.tool(scopes=["admin"])
    def wipe() -> str:  # pragma: no cover - always refused
        return "wiped"

    @mcp.prompt
    def greet(name: str) -> str:
        return f"hi {name}"

    @mcp.resource("notes://a", scopes=["admin"])
    def note() -> str:  # pragma: no cover - always refused
        return "a"

    @mcp.prompt(scopes=["admin"])
    def secret_prompt() -> str:  # pragma: no cover - always refused
        return "p"

    return mcp


class Session:
    """A raw JSON-RPC session over loopback HTTP (what any client, or attacker, sends)."""

    def __init__(self, client: httpx.AsyncClient, url: str, token: str) -> None:
        self.client, self.url = client, url
        self.headers = {"Authorization": f"Bearer {token}", "Accept": ACCEPT}
        self.next_id = 1

    async def start(self) -> None:
        init = await self.request(
            "initialize",
            {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "raw", "version": "1"},
            },
        )
        self.headers["mcp-session-id"] = init.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = "2025-06-18"
        body = {"jsonrpc": "2.0", "method": "notifications/initialized"}
        await self.client.post(self.url, json=body, headers=self.headers)

    async def request(self, method: str, params: dict[str, Any]) -> httpx.Response:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": params}
        return await self.client.post(self.url, json=body, headers=self.headers)


# --- 1. params that fail validation: no argument on the span ------------------------------


ARGUMENTS_AS_TEXT = json.dumps({"user": "bob", "password": PASSWORD})
MALFORMED = [
    # arguments JSON-encoded as a string (a frequent client bug)
    ("tools/call", {"name": "login", "arguments": ARGUMENTS_AS_TEXT}),
    # a prompt argument that is not a string
    ("prompts/get", {"name": "greet", "arguments": {"name": {"password": PASSWORD}}}),
    # a URI that is not a string
    ("resources/read", {"uri": {"password": PASSWORD}}),
]


@pytest.mark.http
async def test_params_that_fail_validation_put_no_argument_on_any_span(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    async with serve_http(build(idp)) as url, httpx.AsyncClient() as client:
        session = Session(client, url, idp.token("alice"))
        await session.start()
        otel.spans.clear()
        for method, params in MALFORMED:
            response = await session.request(method, params)
            assert "Invalid request parameters" in response.text
        unknown = await session.request(f"tools/{PASSWORD}", {})  # a method the caller made up
        assert '"code":-32601' in unknown.text
        assert PASSWORD not in otel.exported()
        failed = {s.name: s for s in otel.server_spans()}
        otel.spans.clear()
        for method, params in (
            ("tools/call", {"name": "nope", "arguments": {}}),
            ("resources/read", {"uri": "notes://nope"}),
            ("prompts/get", {"name": "nope"}),
        ):
            await session.request(method, params)
        unregistered = otel.server_spans()
    assert set(failed) == {"tools/call", "prompts/get", "resources/read", "_OTHER"}
    unknown_method = failed.pop("_OTHER").attributes or {}
    assert unknown_method["error.type"] == "method_not_found"
    assert unknown_method["mcp.method.name"] == "_OTHER"
    for span in failed.values():
        assert_invalid_params(span)
    assert [(s.attributes or {})["error.type"] for s in unregistered] == ["not_found"] * 3


def assert_invalid_params(span: ReadableSpan) -> None:
    """``error.type`` is the documented code for JSON-RPC -32602, never the exception's type
    (OpenTelemetry MCP conventions: low-cardinality); the event keeps the type, no message."""
    attributes = span.attributes or {}
    assert attributes["error.type"] == "invalid_params"
    assert attributes["error.type"] in ERROR_TYPES
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "invalid_params"
    assert [dict(e.attributes or {}) for e in span.events] == [
        {"exception.type": "pydantic_core._pydantic_core.ValidationError"}
    ]


async def test_params_that_fail_validation_in_memory_are_invalid_params(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    """The same over the in-memory transport (FastMCP's ``Client`` validates what it sends, so
    the malformed request is built without validation)."""
    import warnings

    from mcp import MCPError, types

    async with connect(build(idp), idp.token("alice")) as client:
        params = types.CallToolRequestParams.model_construct(
            name="login", arguments=ARGUMENTS_AS_TEXT
        )
        request = types.CallToolRequest.model_construct(method="tools/call", params=params)
        otel.spans.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydantic: serializing the unvalidated arguments
            with pytest.raises(MCPError, match="Invalid request"):
                await client.session.send_request(request, types.CallToolResult)
    assert PASSWORD not in otel.exported()
    (span,) = otel.server_spans()
    assert span.name == "tools/call"
    assert_invalid_params(span)


# --- 2. unregistered names: no unbounded metric series, no caller text in span names ------


async def test_unregistered_and_unauthenticated_names_stay_out_of_metrics_and_span_names(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    mcp = build(idp)
    chosen = [f"nope-{i}-{secrets.token_hex(4)}" for i in range(5)]
    async with connect(mcp, idp.token("alice")) as client:
        for name in chosen:
            assert (await client.call_tool(name, {}, raise_on_error=False)).is_error
            with pytest.raises(Exception, match="Unknown prompt"):
                await client.get_prompt(name)
            with pytest.raises(Exception, match="Resource not found"):
                await client.read_resource(f"notes://{name}")
        await client.call_tool("login", {"user": "u", "password": "p"})  # resolves: named
    async with connect(mcp, idp.bad_token("expired")) as client:
        for name in [*chosen, "login"]:
            assert (await client.call_tool(name, {}, raise_on_error=False)).is_error
    with pytest.raises(Exception, match="invalid_token"):  # in process: securemcp's own span
        await mcp.call_tool(chosen[0], {})

    assert all(name not in otel.exported() for name in chosen)
    durations = otel.points("mcp.server.operation.duration")
    named = {
        p.attributes.get("gen_ai.tool.name") or p.attributes.get("gen_ai.prompt.name")
        for p in durations
    }
    assert named == {None, "login"}  # only the call that resolved names its tool
    assert len(durations) == 5  # bounded: a series per registered name and error type
    unresolved = [
        s for s in otel.server_spans() if (s.attributes or {}).get("securemcp.decision") == "deny"
    ]
    assert len(unresolved) == 3 * len(chosen) + len(chosen) + 1 + 1
    for span in unresolved:
        assert span.name in ("tools/call", "prompts/get", "resources/read")
        attributes = span.attributes or {}
        assert not {"gen_ai.tool.name", "gen_ai.prompt.name", "mcp.resource.uri"} & set(attributes)
        assert attributes["error.type"] in ("not_found", "invalid_token")
    (allowed,) = [s for s in otel.server_spans() if s.name == "tools/call login"]
    assert (allowed.attributes or {})["gen_ai.tool.name"] == "login"


# --- 3. refused resources/read and prompts/get keep the reason code -------------------------


async def test_refused_reads_and_prompts_keep_the_reason_code_and_add_no_events(
    otel: Otel, idp: FakeIdentityProvider
) -> None:
    async with connect(build(idp), idp.token("alice")) as client:
        assert (await client.call_tool("wipe", {}, raise_on_error=False)).is_error
        with pytest.raises(Exception, match="scope"):
            await client.read_resource("notes://a")
        with pytest.raises(Exception, match="scope"):
            await client.get_prompt("secret_prompt")
        with pytest.raises(Exception, match="Resource not found"):
            await client.read_resource("notes://missing")
    refused = [s for s in otel.server_spans() if "securemcp.decision" in (s.attributes or {})]
    assert [(s.name, s.status.description) for s in refused] == [
        ("tools/call wipe", "insufficient_scope"),
        ("resources/read", "insufficient_scope"),
        ("prompts/get secret_prompt", "insufficient_scope"),
        ("resources/read", "not_found"),
    ]
    for span in refused:
        assert span.status.status_code == StatusCode.ERROR
        assert (span.attributes or {})["error.type"] == span.status.description
        assert not span.events  # no MCPError event for a refusal
    assert "MCPError" not in otel.exported()


# --- 4. _meta trace context a caller could flood the log with ---------------------------------

VALID_PARENT = "00-" + "a1" * 16 + "-" + "b2" * 8 + "-01"


def test_usable_trace_meta_drops_what_the_propagator_would_log_about() -> None:
    assert usable_traceparent(VALID_PARENT) == VALID_PARENT
    assert usable_traceparent(VALID_PARENT + "-x" * 300) is None
    assert usable_traceparent(["00-..."]) is None
    good = {"traceparent": VALID_PARENT, "tracestate": "vendor=1, other@tenant=x y", "k": 1}
    assert usable_trace_meta(good) is good  # nothing copied in the common case
    assert usable_trace_meta({"k": 1, "tracestate": "a=1"}) == {"k": 1, "tracestate": "a=1"}
    for bad in (VALID_PARENT + "-x" * 300, 7, {"x": 1}):
        assert usable_trace_meta({"traceparent": bad, "tracestate": "a=1", "k": 1}) == {"k": 1}
    for bad_state in ("a=1,bad member!", "a=1," * 40, "a=" + "x" * 9000, 3):
        meta = {"traceparent": VALID_PARENT, "tracestate": bad_state}
        assert usable_trace_meta(meta) == {"traceparent": VALID_PARENT}


@pytest.mark.http
async def test_a_hostile_meta_trace_context_logs_nothing_on_any_path(
    otel: Otel, idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """FastMCP's extraction (allowed and refused calls) and securemcp's 403 step-up span."""
    long_parent = VALID_PARENT + "-x" * 300
    metas: list[dict[str, Any]] = [
        {"traceparent": long_parent},
        {"traceparent": VALID_PARENT, "tracestate": "ok=1,not a member " + "!" * 20},
        {"traceparent": VALID_PARENT, "tracestate": "k=v," * 40},
    ]
    mcp = build(idp)
    with caplog.at_level(logging.DEBUG, logger="opentelemetry"):
        async with serve_http(mcp) as url, httpx.AsyncClient() as client:
            session = Session(client, url, idp.token("alice"))
            await session.start()
            otel.spans.clear()
            for meta in metas:
                for name in ("login", "wipe"):  # allowed; refused with a 403 step-up
                    arguments = {"user": "u", "password": "p"} if name == "login" else {}
                    params = {"name": name, "arguments": arguments, "_meta": meta}
                    await session.request("tools/call", params)
    warnings = [r for r in caplog.records if r.name.startswith("opentelemetry")]
    assert warnings == []
    calls = [s for s in otel.server_spans() if s.name.startswith("tools/call ")]
    assert len(calls) == 2 * len(metas)
    # the valid traceparent still parents the calls that carried one
    parented = [s for s in calls if s.parent is not None]
    assert {format(s.context.trace_id, "032x") for s in parented} == {"a1" * 16}
    assert len(parented) == 2 * (len(metas) - 1)
    # every FastMCP path extracts through securemcp's (its propagation_only mode included)
    assert fastmcp_server_telemetry._get_parent_trace_context is parent_trace_context
