"""The OTLP example, run as operators run it, against a fake OTLP/HTTP collector on loopback.

The example runs in a subprocess (OpenTelemetry's global providers can be set once per process,
and this is how it is really used) with its own audit and key folders. The collector decodes
every export with the OTLP protobuf messages and keeps the raw bytes for the secret scan.
"""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from securemcp.audit import iter_records

pytestmark = pytest.mark.http

EXAMPLE = Path(__file__).with_name("otel_otlp.py")
DEMO_ORDER_ID = "ord-7731-do-not-export"  # examples/otel_otlp.py's argument value
JWT = re.compile(rb"eyJ[\w-]{8,}\.[\w-]+\.[\w-]*")  # any compact JWS (header starts '{"')
CALLS = {"order_status": None, "cancel_order": "insufficient_scope", "refund_order": "tool_error"}


@dataclass
class Collector:
    """What the fake collector received: raw request bytes and decoded exports."""

    url: str = ""
    raw: list[bytes] = field(default_factory=list)
    traces: list[ExportTraceServiceRequest] = field(default_factory=list)
    metrics: list[ExportMetricsServiceRequest] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(collector: Collector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            encoding = self.headers.get("Content-Encoding", "")
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            with collector.lock:
                collector.raw.append(bytes(self.requestline, "latin-1"))
                collector.raw.append(bytes(str(self.headers), "latin-1"))
                collector.raw.append(body)
                if self.path == "/v1/traces":
                    collector.traces.append(ExportTraceServiceRequest.FromString(body))
                    reply = ExportTraceServiceResponse().SerializeToString()
                elif self.path == "/v1/metrics":
                    collector.metrics.append(ExportMetricsServiceRequest.FromString(body))
                    reply = ExportMetricsServiceResponse().SerializeToString()
                else:
                    self.send_error(404)
                    return
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def collector() -> Iterator[Collector]:
    received = Collector()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(received))
    received.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _value(kv: KeyValue) -> Any:
    return getattr(kv.value, kv.value.WhichOneof("value"))


def _attributes(items: Any) -> dict[str, Any]:
    return {kv.key: _value(kv) for kv in items}


def _run_example(collector: Collector, tmp_path: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SECUREMCP_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=collector.url,
        SECUREMCP_AUDIT_DIR=str(tmp_path / "audit"),
        SECUREMCP_KEY_DIR=str(tmp_path / "keys"),
        FASTMCP_SHOW_SERVER_BANNER="false",
        FASTMCP_CHECK_FOR_UPDATES="off",
    )
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Failed to export" not in done.stderr, done.stderr
    return done.stdout


def test_example_exports_spans_metrics_and_no_secrets(collector: Collector, tmp_path: Path) -> None:
    stdout = _run_example(collector, tmp_path)
    printed = dict(re.findall(r"^(\w+)\s+\w+\s+trace_id=([0-9a-f]{32})$", stdout, re.M))
    assert set(printed) == set(CALLS)

    # Spans: exactly one SERVER span per call, enriched by securemcp.
    server_spans: dict[str, list[tuple[Span, dict[str, Any]]]] = {}
    for request in collector.traces:
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            assert resource["service.name"] == "orders-mcp"
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    attributes = _attributes(span.attributes)
                    if (
                        span.kind == Span.SpanKind.SPAN_KIND_SERVER
                        and attributes.get("mcp.method.name") == "tools/call"
                    ):
                        server_spans.setdefault(span.name, []).append((span, attributes))
    assert sorted(server_spans) == sorted(f"tools/call {tool}" for tool in CALLS)
    for tool, error_type in CALLS.items():
        ((span, attributes),) = server_spans[f"tools/call {tool}"]
        assert span.trace_id.hex() == printed[tool]  # joined the caller's trace
        assert attributes["gen_ai.tool.name"] == tool
        assert attributes["gen_ai.operation.name"] == "execute_tool"
        assert len(attributes["enduser.id"]) == 16  # the pseudonym
        if error_type is None:
            assert attributes["securemcp.decision"] == "allow"
            assert "error.type" not in attributes
            assert span.status.code != Status.StatusCode.STATUS_CODE_ERROR
        else:
            assert attributes["error.type"] == error_type
            assert attributes["securemcp.reason"] == error_type
            assert span.status.code == Status.StatusCode.STATUS_CODE_ERROR
    assert server_spans["tools/call cancel_order"][0][1]["securemcp.decision"] == "deny"
    assert server_spans["tools/call refund_order"][0][1]["securemcp.decision"] == "allow"

    # Metrics: the MCP duration histogram and securemcp's decision counter.
    points: dict[str, list[dict[str, Any]]] = {}
    for request in collector.metrics:
        for resource_metrics in request.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    kind = metric.WhichOneof("data")
                    for point in getattr(metric, kind).data_points:
                        points.setdefault(f"{metric.name}:{kind}", []).append(
                            _attributes(point.attributes)
                        )
    durations = points["mcp.server.operation.duration:histogram"]
    by_tool = {p.get("gen_ai.tool.name"): p for p in durations}
    assert set(CALLS) <= set(by_tool)
    for tool, error_type in CALLS.items():
        assert by_tool[tool]["mcp.method.name"] == "tools/call"
        assert by_tool[tool].get("error.type") == error_type
    decisions = points["securemcp.authz.decisions:sum"]
    assert {(p["securemcp.decision"], p["securemcp.reason"]) for p in decisions} >= {
        ("allow", "ok"),
        ("deny", "insufficient_scope"),
        ("allow", "tool_error"),
    }

    # The audit log of the same run links to the same traces.
    records = list(iter_records(tmp_path / "audit"))
    for tool in CALLS:
        decision = next(r for r in records if r["type"] == "decision" and r["target"] == tool)
        assert decision["trace_id"] == printed[tool]

    # Nothing secret in any byte the collector received.
    blob = b"\n".join(collector.raw)
    assert JWT.search(blob) is None
    for secret in (b"Bearer", b"bearer", DEMO_ORDER_ID.encode(), b"alice", b"Authorization"):
        assert secret not in blob
