"""A securemcp server opens each client request's SERVER span as FastMCP's seam does.

``securemcp._request_spans.SeamSpans`` replaces FastMCP's seam middleware on securemcp servers so
that FastMCP's tracer is not asked of the provider on every request and the dropped-attribute
check needs no runtime ``Protocol`` check. These tests hold it to FastMCP's behaviour: the same
spans with the same names, kinds and attributes as a bare FastMCP server's for the same session;
a sampler that drops attributes gets them restored, one that supplies its own does not; a new
global provider is used at once; FastMCP's modes without spans are FastMCP's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import fastmcp
import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError
from fastmcp.server import dependencies as fastmcp_dependencies
from fastmcp.server import telemetry as fastmcp_server_telemetry
from fastmcp.server.auth import AccessToken
from fastmcp.server.http import _current_http_request
from fastmcp.server.low_level import FastMCPServerMiddleware
from mcp.server.auth.middleware.auth_context import auth_context_var
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken as SdkAccessToken
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision as SamplingDecision
from opentelemetry.sdk.trace.sampling import Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from otel_support import span_fixtures
from securemcp import FastMCP
from securemcp._request_spans import SeamSpans, auth_attributes

_tracing, spans = span_fixtures()

#: Attributes only securemcp's pipeline adds (it enriches the span FastMCP's seam opened).
SECUREMCP_ADDS = ("securemcp.", "enduser.id", "gen_ai.operation.name", "error.type")


def with_tool(server: Any) -> Any:
    @server.tool
    def add(a: int, b: int) -> int:
        return a + b

    return server


def secure_server(name: str = "seam") -> FastMCP:
    return with_tool(FastMCP(name, audit=False))  # type: ignore[no-any-return]


async def session(server: Any) -> None:
    """Discover, list, call, and call an unknown tool: seam-only and enriched requests."""
    async with Client(server) as client:
        await client.list_tools()
        await client.call_tool("add", {"a": 1, "b": 2})
        with pytest.raises(ToolError):
            await client.call_tool("nope", {})


def server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]


def fastmcp_view(span: ReadableSpan) -> tuple[str, dict[str, Any]]:
    """A span's name and the attributes FastMCP set (per-session ids reduced to presence)."""
    attributes = {
        key: ("<present>" if key == "mcp.session.id" else value)
        for key, value in (span.attributes or {}).items()
        if not key.startswith(SECUREMCP_ADDS)
    }
    return span.name, attributes


def test_securemcp_servers_get_the_seam_and_fastmcp_servers_keep_theirs() -> None:
    secure_chain = secure_server()._mcp_server.middleware
    assert sum(type(m) is SeamSpans for m in secure_chain) == 1
    assert not any(type(m) is FastMCPServerMiddleware for m in secure_chain)
    bare_chain = fastmcp.FastMCP("bare")._mcp_server.middleware
    assert sum(type(m) is FastMCPServerMiddleware for m in bare_chain) == 1
    assert not any(isinstance(m, SeamSpans) for m in bare_chain)


async def test_the_spans_are_fastmcps_spans(spans: InMemorySpanExporter) -> None:
    await session(with_tool(fastmcp.FastMCP("seam")))
    bare = server_spans(spans)
    spans.clear()
    await session(secure_server())
    secure = server_spans(spans)

    assert [s.name for s in bare] == [
        "server/discover",
        "tools/list",
        "tools/call add",
        "tools/call nope",
    ]
    # One deliberate difference: a name that resolves to no tool is the caller's own text, so
    # securemcp keeps it out of the span name (docs/telemetry.md).
    assert [s.name for s in secure] == [*[s.name for s in bare[:3]], "tools/call"]
    # FastMCP's attributes, unchanged, on every span securemcp did not refuse
    assert [fastmcp_view(s) for s in secure[:3]] == [fastmcp_view(s) for s in bare[:3]]
    assert secure[0].attributes is not None
    assert secure[0].attributes[fastmcp_server_telemetry.SEAM_SPAN_MARKER] is True
    # the seam's attributes on the refused call too (securemcp refuses before FastMCP's core)
    seam_keys = {"fastmcp.span.seam", "mcp.method.name", "fastmcp.server.name"}
    assert seam_keys <= set(secure[3].attributes or {})
    assert all(s.parent is not None for s in secure)  # under the client's span, as FastMCP's


async def test_fastmcps_tracer_is_not_asked_for_on_each_request(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[object] = []
    original = fastmcp_server_telemetry.get_tracer

    def counting_get_tracer(*args: Any, **kwargs: Any) -> Any:
        asked.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(fastmcp_server_telemetry, "get_tracer", counting_get_tracer)
    await session(secure_server())
    assert len(server_spans(spans)) == 4
    assert asked == []
    await session(with_tool(fastmcp.FastMCP("bare")))  # FastMCP's seam still asks
    assert len(asked) >= 4


async def test_a_server_side_call_carries_fastmcps_attributes(
    spans: InMemorySpanExporter,
) -> None:
    # No seam: securemcp opens the span (request_span) and FastMCP's core path enriches it.
    caller = AccessToken(token="opaque", client_id="client-7", scopes=["calc", "notes:read"])
    reset = auth_context_var.set(AuthenticatedUser(caller))
    try:
        await with_tool(fastmcp.FastMCP("seam")).call_tool("add", {"a": 1, "b": 2})
        bare = server_spans(spans)
        spans.clear()
        await secure_server().call_tool("add", {"a": 1, "b": 2})
        secure = server_spans(spans)
    finally:
        auth_context_var.reset(reset)
    assert len(secure) == len(bare) == 1
    assert fastmcp_view(secure[0]) == fastmcp_view(bare[0])
    assert fastmcp_view(secure[0])[1]["enduser.scope"] == "calc notes:read"
    assert fastmcp_view(secure[0])[1]["gen_ai.tool.name"] == "add"


async def test_a_guarded_call_never_asks_fastmcp_for_the_callers_token(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastMCP asks for it when the span opens, in its core path and for each component auth
    # check, raising and catching an exception each time outside HTTP.
    asked: list[int] = []
    original = fastmcp_dependencies.get_access_token

    def counting() -> Any:
        asked.append(1)
        return original()

    monkeypatch.setattr(fastmcp_dependencies, "get_access_token", counting)
    caller = AccessToken(token="opaque", client_id="client-7", scopes=["calc"])
    reset = auth_context_var.set(AuthenticatedUser(caller))
    try:
        await with_tool(fastmcp.FastMCP("bare")).call_tool("add", {"a": 1, "b": 2})
        assert len(asked) >= 2
        asked.clear()
        await secure_server().call_tool("add", {"a": 1, "b": 2})
    finally:
        auth_context_var.reset(reset)
    assert asked == []
    (span,) = server_spans(spans)[-1:]
    assert (span.attributes or {})["enduser.scope"] == "calc"  # found all the same


class _SdkToken(SdkAccessToken):
    """A token of the MCP SDK's own type, which FastMCP converts to its own."""


@pytest.mark.parametrize(
    "token",
    [
        None,
        AccessToken(token="t", client_id="client-7", scopes=["calc", "notes:read"]),
        AccessToken(token="t", client_id="", scopes=[]),
        _SdkToken(token="t", client_id="sdk-client", scopes=["x"]),
    ],
    ids=["no-token", "fastmcp-token", "empty-token", "sdk-token"],
)
def test_auth_attributes_are_fastmcps(token: Any) -> None:
    reset = auth_context_var.set(AuthenticatedUser(token) if token is not None else None)
    try:
        assert auth_attributes() == fastmcp_server_telemetry.get_auth_span_attributes()
    finally:
        auth_context_var.reset(reset)


def test_auth_attributes_over_http_are_fastmcps(monkeypatch: pytest.MonkeyPatch) -> None:
    answered = {"enduser.id": "from-fastmcp"}
    monkeypatch.setattr(fastmcp_server_telemetry, "get_auth_span_attributes", lambda: answered)
    reset = _current_http_request.set(object())  # type: ignore[arg-type]
    try:
        assert auth_attributes() is answered  # with an HTTP request, FastMCP's own lookup
    finally:
        _current_http_request.reset(reset)


class _SamplerWithout(Sampler):
    """Samples everything and gives the span ``own`` as its attributes (``None``: nothing)."""

    def __init__(self, own: Attributes) -> None:
        self.own = own

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        return SamplingResult(SamplingDecision.RECORD_AND_SAMPLE, self.own)

    def get_description(self) -> str:
        return "sampler-without-attributes"


@pytest.fixture
def provider_with(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[Sampler], InMemorySpanExporter]:
    """Install a global provider with a given sampler; yields a function returning its spans."""

    def install(sampler: Sampler) -> InMemorySpanExporter:
        exporter = InMemorySpanExporter()
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        return exporter

    return install


async def test_attributes_a_sampler_dropped_are_restored(provider_with: Any) -> None:
    exporter = provider_with(_SamplerWithout(None))
    await session(secure_server("dropped"))
    listing = next(s for s in server_spans(exporter) if s.name == "tools/list")
    attributes = dict(listing.attributes or {})
    assert attributes["fastmcp.server.name"] == "dropped"
    assert attributes["mcp.method.name"] == "tools/list"
    assert attributes[fastmcp_server_telemetry.SEAM_SPAN_MARKER] is True


async def test_attributes_a_sampler_chose_are_left_alone(provider_with: Any) -> None:
    exporter = provider_with(_SamplerWithout({"sampler.own": "yes"}))
    await session(secure_server("chosen"))
    discover = next(s for s in server_spans(exporter) if s.name == "server/discover")
    assert dict(discover.attributes or {}) == {"sampler.own": "yes"}  # FastMCP's rule


async def test_a_new_global_provider_gets_the_next_requests_spans(provider_with: Any) -> None:
    server = secure_server("swapped")
    first = provider_with(_SamplerWithout(None))
    await session(server)
    assert len(server_spans(first)) == 4
    second = provider_with(_SamplerWithout(None))
    await session(server)
    assert len(server_spans(first)) == 4
    assert len(server_spans(second)) == 4


@pytest.mark.parametrize("mode", ["propagation_only", "off"])
async def test_modes_without_fastmcp_spans_open_none(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", mode)
    await session(secure_server())
    assert server_spans(spans) == []


async def test_a_suppressed_block_opens_no_seam_span(spans: InMemorySpanExporter) -> None:
    from fastmcp.telemetry import suppress_fastmcp_telemetry

    server = secure_server()
    with suppress_fastmcp_telemetry():
        async with Client(server) as client:
            await client.call_tool("add", {"a": 1, "b": 2})
    assert server_spans(spans) == []


async def test_a_refusal_raised_through_the_seam_keeps_securemcps_error_type(
    spans: InMemorySpanExporter,
) -> None:
    """A refused ``prompts/get`` leaves the seam as an exception: the seam hands it to
    securemcp's recorder, which leaves the pipeline's record alone: ``error.type`` and the
    status description stay the reason code, and the refusal's ``MCPError`` adds no event."""
    from securemcp.policy import Decision

    server = FastMCP("refusing", audit=False, policy=lambda r: Decision.deny("secret-reason"))

    @server.prompt
    def greet(name: str) -> str:  # pragma: no cover - always refused
        return f"hi {name}"

    async with Client(server) as client:
        with pytest.raises(Exception, match="denied"):
            await client.get_prompt("greet", {"name": "sk-live-argument"})
    (span,) = [s for s in server_spans(spans) if s.name == "prompts/get greet"]
    assert (span.attributes or {})["error.type"] == "policy_denied"
    exported = repr((span.status.description, [(e.name, e.attributes) for e in span.events]))
    assert "secret-reason" not in exported and "sk-live-argument" not in exported
    assert span.status.description == "policy_denied"
    assert not span.events
