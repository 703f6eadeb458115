"""Send securemcp's traces and metrics to an OpenTelemetry collector over OTLP/HTTP.

securemcp uses only the OpenTelemetry API. To see anything you configure the SDK once, at
start-up, before building the server: a ``TracerProvider`` and a ``MeterProvider`` with OTLP
exporters, as :func:`configure_telemetry` does below. Everything else is automatic.

Run it (it makes three calls in memory, flushes, and exits)::

    pip install opentelemetry-sdk opentelemetry-exporter-otlp-proto-http
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318 python examples/otel_otlp.py

with something listening for OTLP/HTTP on port 4318, for example:

* an OpenTelemetry Collector that prints what it receives::

      docker run --rm -p 4318:4318 otel/opentelemetry-collector:latest

  (its default configuration has an OTLP receiver and a ``debug`` exporter; add
  ``--config`` to forward to your backend);
* Jaeger, which accepts OTLP directly (traces only; UI on http://127.0.0.1:16686)::

      docker run --rm -p 16686:16686 -p 4318:4318 jaegertracing/jaeger:latest

* Grafana Tempo (traces) or Grafana Alloy / Mimir (metrics) behind an OTLP/HTTP receiver.

With no collector running, the exporters log connection errors and the demo still finishes.

What arrives, per call: exactly one ``SERVER`` span named ``tools/call <tool>`` with
``mcp.method.name``, ``gen_ai.tool.name``, ``gen_ai.operation.name``, ``enduser.id`` (a
pseudonym, never the subject), ``securemcp.decision`` (``allow``/``deny``), ``securemcp.reason``,
``securemcp.call_id`` and, when the call failed, ``error.type`` (here ``insufficient_scope`` and
``tool_error``) with status ``ERROR``; the ``mcp.server.operation.duration`` histogram and the
``securemcp.authz.decisions`` counter. The trace id printed for each call is the ``trace_id`` of
that call's records in the audit log (``.securemcp/audit``, or ``$SECUREMCP_AUDIT_DIR``).
Tokens, headers and argument values are never exported. See docs/telemetry.md.

The tokens come from securemcp's ``FakeIdentityProvider`` so the demo needs no identity provider.
In production pass your real verifier (``JWTVerifier``, see docs/identity.md) and serve the
server with ``mcp.run(transport="http")`` instead of calling it in memory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastmcp.exceptions import ToolError
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from securemcp import FastMCP
from securemcp.testing import FakeIdentityProvider, connect

SERVICE_NAME = "orders-mcp"
DEFAULT_ENDPOINT = "http://127.0.0.1:4318"
AUDIENCE = "https://orders.example.com/mcp"
DEMO_ORDER_ID = "ord-7731-do-not-export"  # an argument value: must never reach the collector


def configure_telemetry(endpoint: str | None = None) -> tuple[TracerProvider, MeterProvider]:
    """Install global OTel providers that export over OTLP/HTTP to ``endpoint``.

    ``endpoint`` is the collector's base URL (default: ``$OTEL_EXPORTER_OTLP_ENDPOINT``, else
    ``http://127.0.0.1:4318``); traces go to ``/v1/traces`` and metrics to ``/v1/metrics``.
    """
    base = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
    base = base.rstrip("/")
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", SERVICE_NAME)})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces", timeout=5))
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", timeout=5),
        export_interval_millis=10_000,
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    trace.set_tracer_provider(tracer_provider)  # global: FastMCP and securemcp use these
    metrics.set_meter_provider(meter_provider)
    return tracer_provider, meter_provider


def build_server(auth: Any = None) -> FastMCP:
    """An orders server with two scoped tools (and one that fails)."""
    mcp = FastMCP("orders", auth=auth)

    @mcp.tool(scopes=["orders:read"])
    def order_status(order_id: str) -> str:
        """Where an order is."""
        return "shipped"

    @mcp.tool(scopes=["orders:write"])
    def cancel_order(order_id: str) -> str:
        """Cancel an order; needs orders:write."""
        return "cancelled"

    @mcp.tool(scopes=["orders:read"])
    def refund_order(order_id: str) -> str:
        """Always fails: refunds live in another system."""
        raise ToolError("refunds are handled by the payments service")

    return mcp


async def demo(endpoint: str | None = None) -> None:
    """Make an allowed, a denied and a failing call, then flush and shut the exporters down."""
    tracer_provider, meter_provider = configure_telemetry(endpoint)
    try:
        idp = FakeIdentityProvider(audience=AUDIENCE)
        mcp = build_server(idp.verifier(audience=AUDIENCE))
        token = idp.token("alice", scopes=["orders:read"])  # no orders:write
        agent = trace.get_tracer("orders-demo-agent")
        async with connect(mcp, token) as client:
            for tool in ("order_status", "cancel_order", "refund_order"):
                # The caller's span: the server span joins its trace (context propagation).
                with agent.start_as_current_span(f"agent step {tool}") as step:
                    result = await client.call_tool(
                        tool, {"order_id": DEMO_ORDER_ID}, raise_on_error=False
                    )
                trace_id = format(step.get_span_context().trace_id, "032x")
                print(f"{tool:<13} {'error' if result.is_error else 'ok':<5} trace_id={trace_id}")
    finally:
        tracer_provider.force_flush()
        meter_provider.force_flush()
        tracer_provider.shutdown()
        meter_provider.shutdown()


def main() -> None:
    asyncio.run(demo())


if __name__ == "__main__":
    main()
