"""FastMCP's per-call span is not built while no SDK could record it, and nothing else changes.

``securemcp._unrecorded_spans`` runs FastMCP's core call paths under FastMCP's own
``suppress_fastmcp_telemetry()`` while no tracer provider is configured. These tests prove the
saving is real (FastMCP's span attributes are not built), that the code inside a call sees the
same OpenTelemetry context as on bare FastMCP (the caller's ``_meta`` trace parent still
propagates), and that once an SDK is installed FastMCP's span is back, enriched by securemcp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import fastmcp
import fastmcp.server.server as fastmcp_server
import fastmcp.server.telemetry as fastmcp_server_telemetry
import mcp.shared._otel as mcp_otel
import pytest
from fastmcp import Client
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

import securemcp
import securemcp._unrecorded_spans as unrecorded_spans
from securemcp._unrecorded_spans import spans_cannot_record

pytestmark = pytest.mark.anyio

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


@pytest.fixture
def no_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """The OpenTelemetry API with no provider set: its ProxyTracerProvider answers.

    The MCP SDK keeps a module-level ``ProxyTracer``, which holds on to the SDK tracer of any
    provider an earlier test installed; a fresh one stands in for it, as in a process that never
    had an SDK.
    """
    monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
    monkeypatch.setattr(unrecorded_spans, "_PROVIDER_NAMED", False)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(mcp_otel, "_tracer", trace.get_tracer("mcp-python-sdk"))


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield exporter
    provider.shutdown()


@pytest.fixture
def attribute_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time FastMCP builds a server span's attributes (the work the shortcut skips)."""
    builds: list[str] = []
    original = fastmcp_server_telemetry._build_server_span_attrs

    def counting(method: str, *args: Any, **kwargs: Any) -> Any:
        builds.append(method)
        return original(method, *args, **kwargs)

    monkeypatch.setattr(fastmcp_server_telemetry, "_build_server_span_attrs", counting)
    return builds


def count_core_spans(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each time FastMCP's core path asks for its span from now on (through whichever hook is
    installed: FastMCP's, or securemcp's once a securemcp server exists)."""
    asked: list[str] = []
    hook = fastmcp_server.server_span

    def counting(name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        asked.append(method)
        return hook(name, method, *args, **kwargs)

    monkeypatch.setattr(fastmcp_server, "server_span", counting)
    return asked


def build(cls: Any) -> Any:
    kwargs: dict[str, Any] = {"audit": False} if cls is securemcp.FastMCP else {}
    mcp = cls("spans", **kwargs)

    @mcp.tool
    def where() -> dict[str, Any]:
        """What the tool body sees of the trace: its current span and what it would propagate."""
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        context = trace.get_current_span().get_span_context()
        return {
            "trace_id": format(context.trace_id, "032x") if context.is_valid else None,
            "traceparent_trace_id": carrier["traceparent"].split("-")[1]
            if "traceparent" in carrier
            else None,
        }

    @mcp.resource("data://where")
    def where_resource() -> str:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else "none"

    @mcp.prompt
    def where_prompt() -> str:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else "none"

    return mcp


async def seen_inside(server: Any) -> list[Any]:
    """What the component bodies see, for calls with and without a ``_meta`` trace parent."""
    seen: list[Any] = []
    async with Client(server) as client:
        for meta in ({"traceparent": TRACEPARENT}, None):
            result = await client.call_tool("where", {}, meta=meta)
            seen.append(result.structured_content)
        contents = await client.read_resource("data://where")
        seen.append(contents[0].text)  # type: ignore[union-attr]
        prompt = await client.get_prompt("where_prompt")
        seen.append(prompt.messages[0].content.text)  # type: ignore[union-attr]
    seen.append((await server.call_tool("where", {})).structured_content)
    return seen


def test_only_the_apis_default_and_no_op_providers_count_as_unrecorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(unrecorded_spans, "_PROVIDER_NAMED", False)
    assert spans_cannot_record()
    assert trace.get_tracer_provider() is trace._PROXY_TRACER_PROVIDER  # the internal it reads
    # OTEL_PYTHON_TRACER_PROVIDER named one at start-up: the API will load it, so may record.
    monkeypatch.setattr(unrecorded_spans, "_PROVIDER_NAMED", True)
    assert not spans_cannot_record()
    monkeypatch.setattr(unrecorded_spans, "_PROVIDER_NAMED", False)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", NoOpTracerProvider())
    assert spans_cannot_record()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", TracerProvider())
    assert not spans_cannot_record()

    class VendorProvider(NoOpTracerProvider):  # a subclass may record: not ours to judge
        pass

    monkeypatch.setattr(trace, "_TRACER_PROVIDER", VendorProvider())
    assert not spans_cannot_record()


async def test_without_an_sdk_fastmcp_builds_no_span_for_securemcp_calls(
    no_sdk: None, attribute_builds: list[str]
) -> None:
    await seen_inside(build(fastmcp.FastMCP))
    bare = list(attribute_builds)
    attribute_builds.clear()
    await seen_inside(build(securemcp.FastMCP))
    assert {"tools/call", "resources/read", "prompts/get"} <= set(bare)  # the saving is real
    assert not {"tools/call", "resources/read", "prompts/get"} & set(attribute_builds)


async def test_without_an_sdk_the_call_sees_the_same_trace_context_as_on_fastmcp(
    no_sdk: None,
) -> None:
    bare = await seen_inside(build(fastmcp.FastMCP))
    secure = await seen_inside(build(securemcp.FastMCP))
    assert secure == bare
    # The caller's _meta trace parent still reaches the tool body and its outgoing calls.
    assert secure[0] == {"trace_id": TRACE_ID, "traceparent_trace_id": TRACE_ID}
    assert secure[1] == {"trace_id": None, "traceparent_trace_id": None}


async def test_with_an_sdk_fastmcps_span_is_back_and_enriched(
    sdk: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = build(securemcp.FastMCP)
    core_spans = count_core_spans(monkeypatch)
    await server.call_tool("where", {})
    async with Client(server) as client:
        await client.call_tool("where", {}, meta={"traceparent": TRACEPARENT})
    assert core_spans.count("tools/call") >= 2
    finished = sdk.get_finished_spans()
    calls = [
        span
        for span in finished
        if span.kind == trace.SpanKind.SERVER and span.name == "tools/call where"
    ]
    assert len(calls) == 2  # one per call, as FastMCP opens it
    assert all((span.attributes or {}).get("gen_ai.tool.name") == "where" for span in calls)
    # The client's call is enriched by securemcp and continues the client's trace.
    client_traces = {span.context.trace_id for span in finished if span.kind.name == "CLIENT"}
    (over_client,) = [span for span in calls if span.context.trace_id in client_traces]
    assert (over_client.attributes or {})["securemcp.decision"] == "allow"


async def test_fastmcps_off_mode_is_left_off(
    no_sdk: None, attribute_builds: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", "off")
    bare = await seen_inside(build(fastmcp.FastMCP))
    secure = await seen_inside(build(securemcp.FastMCP))
    assert secure == bare
    # "off" touches no context at all: the _meta parent is not attached, on either server.
    assert secure[0] == {"trace_id": None, "traceparent_trace_id": None}


async def test_a_task_spawned_during_a_call_gets_fastmcps_spans_once_an_sdk_is_installed(
    no_sdk: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task a tool starts copies the call's context, and with it the suppression of
    FastMCP's spans. The marker holds only while no span could record: a long-lived worker
    started during warm-up (asyncio or anyio) gets FastMCP's spans, and FastMCP's view of the
    telemetry mode, back as soon as an SDK is installed. (The marker never hid the
    application's own spans: only FastMCP reads it.)"""
    import anyio
    from fastmcp.telemetry import native_spans_enabled

    backend = fastmcp.FastMCP("backend")

    @backend.tool
    def ping() -> str:
        return "pong"

    go = anyio.Event()
    seen: dict[str, tuple[bool, Any]] = {}

    async def worker(name: str) -> None:
        await go.wait()
        with trace.get_tracer("app").start_as_current_span(f"work {name}"):
            seen[name] = (native_spans_enabled(), (await backend.call_tool("ping", {})).content)

    server = securemcp.FastMCP("spawner", audit=False)
    spawned: list[Any] = []

    async with anyio.create_task_group() as workers:

        @server.tool
        async def start() -> str:
            spawned.append(asyncio.ensure_future(worker("asyncio")))
            workers.start_soon(worker, "anyio")
            return "started"

        async with Client(server) as client:
            assert (await client.call_tool("start", {})).data == "started"
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # the SDK arrives later
        go.set()
        await asyncio.gather(*spawned)
    assert {name: enabled for name, (enabled, _) in seen.items()} == {
        "asyncio": True,
        "anyio": True,
    }
    names = [span.name for span in exporter.get_finished_spans()]
    assert sorted(names) == sorted(
        ["work asyncio", "work anyio", "tools/call ping", "tools/call ping"]
    ), names
    provider.shutdown()
