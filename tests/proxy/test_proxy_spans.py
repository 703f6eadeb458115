"""The proxy's spans of its upstream calls carry no upstream text (guarantee 5).

FastMCP's ``Client`` and the MCP SDK under it open ``CLIENT`` spans for every request the proxy
sends upstream, and record an upstream's error there: message and stack trace in ``exception``
events, the message (or a failed tool's first text block) as the status description. An
upstream's error text can quote the caller's arguments or a credential the proxy injected.

Proves, with a real SDK and in-memory exporter, for tool errors, resource-read and prompt errors
(over loopback HTTP with a static secret and with RFC 8693 exchanged tokens, and over stdio with
an injected environment secret), timeouts and transport failures: no span the proxy exports for
a call holds the injected secret, an exchanged token, the caller's token or the argument value
(a template read is named by its URI template on the proxy's own request span, and by the URI's
scheme alone on the upstream spans), while the upstream spans keep
their name, kind, ``ERROR`` status and a bounded ``error.type``. Spans of other FastMCP clients
are left alone.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import failing_upstream
import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError
from mcp import MCPError
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from proxy_support import audited_proxy, config, locked

from otel_support import span_fixtures
from securemcp.proxy.credentials import SecretSource, TokenExchange
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http

_tracing, spans = span_fixtures()

STDIO_COMMAND = [sys.executable, str(Path(failing_upstream.__file__).resolve())]

SECRET = "vendor-static-secret-7c1e9a52"
ARGUMENT = "customer-4417-private-note"
PROXY = "securemcp-proxy"
UPSTREAM = "careless-vendor"
#: Where a read's URI (and so a template argument) may appear: the read's target.
TARGET_ATTRIBUTES = frozenset({"mcp.resource.uri", "fastmcp.component.key"})
#: The upstream spans' error.type: FastMCP's vocabulary, an exception type, a JSON-RPC code.
BOUNDED_ERROR_TYPES = frozenset({"tool_error", "MCPError", "TimeoutError", "-32603", "-32001"})

COMPONENTS: dict[str, Any] = {
    "tools": {name: {} for name in ("lookup", "find", "slow", "crash")},
    "templates": {"notes://{topic}": {}},
    "prompts": {"summarize": {}},
}


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


# --- reading what was exported ------------------------------------------------------------


def proxy_spans(exported: Sequence[ReadableSpan], call: str | None = None) -> list[ReadableSpan]:
    """The spans the proxy process made for its calls (or for the one named ``call``): each
    request span of the proxy and everything under it, except the upstream server's own spans
    (in a real deployment those are the upstream's process, with its own telemetry; here it runs
    in the test process)."""
    children: dict[int, list[ReadableSpan]] = {}
    for span in exported:
        if span.parent is not None:
            children.setdefault(span.parent.span_id, []).append(span)

    def server_of(span: ReadableSpan) -> Any:
        return (
            (span.attributes or {}).get("fastmcp.server.name")
            if span.kind is SpanKind.SERVER
            else None
        )

    found: list[ReadableSpan] = []
    pending = [
        span
        for span in exported
        if server_of(span) == PROXY and (call is None or span.name == call)
    ]
    while pending:
        span = pending.pop()
        if server_of(span) == UPSTREAM:
            continue
        found.append(span)
        assert span.context is not None
        pending.extend(children.get(span.context.span_id, ()))
    return found


def texts(span: ReadableSpan) -> Iterator[tuple[str, str]]:
    """Every text an exporter sends for ``span``: (where, text)."""
    yield "name", span.name
    yield "status", span.status.description or ""
    for key, value in (span.attributes or {}).items():
        yield f"attribute {key}", f"{key}={value}"
    for event in span.events:
        yield f"event {event.name}", event.name
        for key, value in (event.attributes or {}).items():
            yield f"event {event.name} {key}", f"{key}={value}"
    for link in span.links:
        for key, value in (link.attributes or {}).items():
            yield f"link {key}", f"{key}={value}"


def assert_no_leak(
    found: Iterable[ReadableSpan], needles: Iterable[str], *, targets: Iterable[str] = ()
) -> None:
    """No needle in any text of any span; ``targets`` only in a read's target attributes."""
    needles, targets = [n for n in needles if n], list(targets)
    for span in found:
        for where, text in texts(span):
            for needle in needles:
                assert needle not in text, f"{span.name!r} {where} holds a secret: {text[:200]!r}"
            allowed = where.removeprefix("attribute ") in TARGET_ATTRIBUTES
            for target in targets:
                assert allowed or target not in text, f"{span.name!r} {where}: {text[:200]!r}"


def upstream_client_spans(found: Iterable[ReadableSpan]) -> list[ReadableSpan]:
    return [
        s
        for s in found
        if s.kind is SpanKind.CLIENT
        and s.instrumentation_scope is not None
        and s.instrumentation_scope.name in ("fastmcp", "mcp-python-sdk")
    ]


def assert_failed_usefully(span: ReadableSpan) -> None:
    """An upstream span that failed: ERROR, no description, a bounded error.type, and
    ``exception`` events (if any) naming the type only."""
    assert span.status.status_code is StatusCode.ERROR, span.name
    assert span.status.description is None, (span.name, span.status.description)
    assert (span.attributes or {}).get("error.type") in BOUNDED_ERROR_TYPES, span.attributes
    for event in span.events:
        assert event.name == "exception"
        assert set(event.attributes or {}) == {"exception.type"}, event.attributes


def failed(found: Iterable[ReadableSpan], name: str) -> list[ReadableSpan]:
    named = [s for s in upstream_client_spans(found) if s.name == name]
    assert named, f"no upstream span {name!r}: {[s.name for s in found]}"
    for span in named:
        assert_failed_usefully(span)
    return named


# --- over HTTP: a static secret, exchanged tokens ------------------------------------------


async def _fail_everything(client: Client[Any]) -> None:
    """Each kind of upstream failure, as the caller sees it: a stable code, never the text."""
    # Quotes the injected credential: withheld.
    withheld = await client.call_tool("lookup", {"q": ARGUMENT}, raise_on_error=False)
    assert withheld.is_error and "upstream_output_rejected" in str(withheld.content)
    # Quotes only the caller's own argument: a tool error, passed through to the caller.
    passed = await client.call_tool("find", {"q": ARGUMENT}, raise_on_error=False)
    assert passed.is_error and ARGUMENT in str(passed.content)
    for attempt in (
        client.read_resource(f"notes://{ARGUMENT}"),
        client.get_prompt("summarize", {"text": ARGUMENT}),
    ):
        with pytest.raises(MCPError, match="upstream_error") as refused:
            await attempt
        assert SECRET not in str(refused.value) and ARGUMENT not in str(refused.value)


def _exchange(idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch) -> TokenExchange:
    monkeypatch.setenv("PROXY_CLIENT_SECRET", idp.register_client("securemcp-proxy"))
    return TokenExchange(
        token_endpoint=f"{idp.issuer}/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="PROXY_CLIENT_SECRET"),
        audience="https://vendor.example/mcp",
        http_client=idp.http_client(),
    )


@pytest.mark.http
@pytest.mark.parametrize("credential", ["static", "exchanged"])
async def test_upstream_errors_reach_no_span_with_their_text(
    credential: str,
    idp: FakeIdentityProvider,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VENDOR_TOKEN", SECRET)
    failing_upstream.SEEN.clear()
    async with serve_http(failing_upstream.build()) as url:
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, **COMPONENTS}}))
        upstream_auth = {}
        if credential == "static":
            auth = {"type": "bearer", "secret_env": "VENDOR_TOKEN"}
            cfg = config(tmp_path, {"vendor": {"url": url, "auth": auth, **COMPONENTS}})
        else:
            upstream_auth = {"vendor": _exchange(idp, monkeypatch)}
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth=upstream_auth)
        token = idp.token("alice")
        spans.clear()
        async with connect(proxy, token) as client:
            await _fail_everything(client)
        exported = spans.get_finished_spans()

    seen = [a.removeprefix("Bearer ") for a in failing_upstream.SEEN]
    assert seen and all(s == SECRET for s in seen) == (credential == "static")
    found = proxy_spans(exported)
    assert_no_leak(found, [SECRET, token, *seen], targets=[ARGUMENT])
    # Still useful: every failed upstream request is there, ERROR, with a bounded error.type.
    failed(found, "tools/call lookup")
    failed(found, "tools/call find")
    failed(found, "resources/read")
    failed(found, "prompts/get summarize")
    for name in ("MCP send resources/read", "MCP send prompts/get summarize"):
        (sdk_span,) = failed(found, name)
        assert sdk_span.attributes is not None and sdk_span.attributes["error.type"] == "-32603"
    # The proxy's own request span names the read by its URI template, as the audit log does;
    # the upstream calls keep the URI's scheme only (the topic is the caller's argument).
    read = next(s for s in found if s.kind is SpanKind.SERVER and s.name == "resources/read")
    assert (read.attributes or {}).get("mcp.resource.uri") == "notes://{topic}"
    assert_no_leak(found, [ARGUMENT])
    (client_read,) = [s for s in upstream_client_spans(found) if s.name == "resources/read"]
    assert (client_read.attributes or {}).get("mcp.resource.uri") == "notes://"


@pytest.mark.http
async def test_timeouts_and_an_unreachable_upstream_leave_no_upstream_text(
    idp: FakeIdentityProvider, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    async with serve_http(failing_upstream.build()) as gone:
        pass  # its port now refuses connections
    async with serve_http(failing_upstream.build()) as url:

        def upstreams(down: str) -> dict[str, Any]:
            return {
                # The proxy's deadline for the tool (0.5 s) cancels the request.
                "vendor": {"url": url, "tools": {"slow": {"timeout_seconds": 0.5}}},
                # The upstream client's own timeout (0.5 s) fires before the tool's deadline.
                "patient": {
                    "url": url,
                    "timeout_seconds": 0.5,
                    "tools": {"slow": {"timeout_seconds": 5}},
                },
                "down": {"url": down, "tools": {"slow": {}}, "connect_timeout_seconds": 2},
            }

        await locked(config(tmp_path, upstreams(url)))
        proxy, _ = audited_proxy(config(tmp_path, upstreams(gone)), idp, tmp_path)
        token = idp.token("alice")
        spans.clear()
        async with connect(proxy, token) as client:
            for name, code in (
                ("vendor_slow", "upstream_timeout"),
                ("patient_slow", "upstream_timeout"),
                ("down_slow", "upstream_unavailable"),
            ):
                with pytest.raises(ToolError, match=code):
                    await client.call_tool(name, {"seconds": 3, "note": ARGUMENT})
        exported = spans.get_finished_spans()

    found = proxy_spans(exported)
    assert_no_leak(found, [token, ARGUMENT])
    # The upstream client's own timeout: an MCPError on FastMCP's span, a TimeoutError on the
    # SDK's. (A request the proxy's deadline cancels ends its spans unset, as FastMCP does.)
    patient = proxy_spans(exported, "tools/call patient_slow")
    (fastmcp_span,) = failed(patient, "tools/call slow")
    (sdk_span,) = failed(patient, "MCP send tools/call slow")
    assert (fastmcp_span.attributes or {})["error.type"] == "MCPError"
    assert (sdk_span.attributes or {})["error.type"] == "TimeoutError"
    errors = {(s.attributes or {}).get("error.type") for s in found if s.kind is SpanKind.SERVER}
    assert {"upstream_timeout", "upstream_unavailable"} <= errors


# --- over stdio: an environment secret, an upstream that dies ------------------------------


@pytest.mark.slow
async def test_stdio_upstream_errors_reach_no_span_with_their_text(
    idp: FakeIdentityProvider,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VENDOR_KEY_SOURCE", SECRET)
    auth = {"type": "env", "variables": {"VENDOR_API_KEY": {"env": "VENDOR_KEY_SOURCE"}}}
    stdio = {"command": STDIO_COMMAND, "auth": auth, **COMPONENTS}
    cfg = await locked(config(tmp_path, {"local": stdio}))
    proxy, _ = audited_proxy(cfg, idp, tmp_path)
    token = idp.token("alice")
    spans.clear()
    async with connect(proxy, token) as client:
        await _fail_everything(client)
        with pytest.raises(ToolError, match="upstream_unavailable"):
            await client.call_tool("crash", {"note": ARGUMENT})
    found = proxy_spans(spans.get_finished_spans())
    assert_no_leak(found, [SECRET, token], targets=[ARGUMENT])
    failed(found, "tools/call lookup")
    failed(found, "prompts/get summarize")


# --- the mechanism -------------------------------------------------------------------------


async def test_other_fastmcp_clients_keep_their_spans(spans: InMemorySpanExporter) -> None:
    """Outside the proxy's upstream calls FastMCP's client records as it always has."""
    from securemcp.proxy.spans import install

    install()
    server = FastMCP("plain")

    @server.resource("notes://{topic}")
    def notes(topic: str) -> str:
        raise ValueError(f"no notes on {topic}")

    spans.clear()
    async with Client(server) as client:
        with pytest.raises(MCPError):
            await client.read_resource(f"notes://{ARGUMENT}")
    (span,) = [
        s
        for s in spans.get_finished_spans()
        if s.kind is SpanKind.CLIENT and s.name == "resources/read"
    ]
    assert ARGUMENT in (span.status.description or "")


@pytest.mark.http
async def test_the_sdk_spans_follow_the_current_provider(
    idp: FakeIdentityProvider,
    tmp_path: Path,
    spans: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The MCP SDK's module tracer keeps the first provider it saw; an upstream call's spans go
    to the provider in place now, redacted, whatever ran before (test order, a replaced SDK)."""
    from mcp.shared import _otel

    from securemcp.proxy.spans import install

    install()
    stale = TracerProvider().get_tracer("mcp-python-sdk")
    monkeypatch.setattr(_otel._tracer, "original", stale)
    async with serve_http(failing_upstream.build()) as url:
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, **COMPONENTS}}))
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        spans.clear()
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(MCPError, match="upstream_error"):
                await client.get_prompt("summarize", {"text": ARGUMENT})
        found = proxy_spans(spans.get_finished_spans())
    failed(found, "MCP send prompts/get summarize")
    assert_no_leak(found, [ARGUMENT])
