"""Trace propagation end to end: ``traceparent`` in ``_meta``, the audit ``trace_id``, real HTTP.

Over HTTP the requests are raw JSON-RPC posts (as any MCP client in any language sends them), so
the ``_meta.traceparent`` the server sees is exactly the one written here: a FastMCP ``Client``
in a process with an OpenTelemetry SDK injects its *own* current context into ``_meta``, which
replaces a ``traceparent`` passed through ``call_tool(meta=...)``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_support import span_fixtures
from securemcp import FastMCP
from securemcp.audit import AuditLog, Ed25519Signer, iter_records
from securemcp.policy import Decision
from securemcp.telemetry import ERROR_TYPES
from securemcp.testing import FakeIdentityProvider, connect, connect_http, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"
SECRET_ARGUMENT = "hunter2-argument-value"

_tracing, spans = span_fixtures()


@pytest.fixture
def audit(tmp_path: Path) -> Iterator[AuditLog]:
    log = AuditLog(tmp_path / "audit", signer=Ed25519Signer.generate("trace-test"))
    yield log
    log.close()


def build(idp: FakeIdentityProvider, audit: AuditLog, **kwargs: Any) -> FastMCP:
    def no_mallory(request: Any) -> Decision:
        if request.principal.subject == "mallory":
            return Decision.deny("mallory is blocked (internal reason)")
        return Decision.allow()

    mcp = FastMCP(
        "traced", auth=idp.verifier(audience=AUDIENCE), audit=audit, policy=no_mallory, **kwargs
    )

    @mcp.tool(scopes=["use"])
    def echo(text: str) -> str:
        return f"len={len(text)}"

    @mcp.tool(scopes=["admin"])
    def admin() -> str:
        return "admin"

    return mcp


def new_traceparent() -> tuple[str, str, str]:
    """A fresh (traceparent, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def post_call(
    http: httpx.AsyncClient,
    url: str,
    token: str,
    tool: str,
    arguments: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> tuple[int, dict[str, Any]]:
    """POST one ``tools/call`` with a bearer token; the HTTP status and the JSON-RPC message."""
    params: dict[str, Any] = {"name": tool, "arguments": arguments or {}}
    if meta is not None:
        params["_meta"] = meta
    response = await http.post(
        url,
        json={"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params},
        headers={
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
            "Authorization": f"Bearer {token}",
        },
    )
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        text = next(line[len("data:") :] for line in text.splitlines() if line.startswith("data:"))
    return response.status_code, json.loads(text)


def server_call_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER
        and (s.attributes or {}).get("mcp.method.name") == "tools/call"
    ]


def trace_hex(span: ReadableSpan) -> str:
    assert span.context is not None
    return format(span.context.trace_id, "032x")


def records_for(audit: AuditLog, call_id: Any) -> dict[str, dict[str, Any]]:
    """The call's audit records by type (``decision``, ``outcome``)."""
    return {r["type"]: r for r in iter_records(audit.directory) if r.get("call_id") == call_id}


# --- (a)(b) a traceparent in _meta over HTTP --------------------------------------------------


@pytest.mark.http
async def test_traceparent_in_meta_parents_the_span_and_reaches_the_audit_log(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    traceparent, trace_id, parent_id = new_traceparent()
    token = idp.token("alice", scopes=["use"])
    async with serve_http(build(idp, audit), stateless_http=True) as url, httpx.AsyncClient() as h:
        status, message = await post_call(
            h, url, token, "echo", {"text": SECRET_ARGUMENT}, meta={"traceparent": traceparent}
        )
    assert status == 200
    assert message["result"]["isError"] is False

    (span,) = server_call_spans(spans)
    assert span.name == "tools/call echo"
    assert trace_hex(span) == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent_id
    assert span.parent.is_remote
    attributes = dict(span.attributes or {})
    assert attributes["securemcp.decision"] == "allow"
    assert "error.type" not in attributes

    records = records_for(audit, attributes["securemcp.call_id"])
    assert set(records) == {"decision", "outcome"}
    assert records["decision"]["trace_id"] == trace_id
    assert records["outcome"]["trace_id"] == trace_id
    assert records["outcome"]["outcome"] == "ok"


# --- (c) denied calls carry the trace id too ---------------------------------------------------


@pytest.mark.http
async def test_a_policy_denial_over_http_carries_the_callers_trace_id(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    traceparent, trace_id, parent_id = new_traceparent()
    token = idp.token("mallory", scopes=["use"])
    async with serve_http(build(idp, audit), stateless_http=True) as url, httpx.AsyncClient() as h:
        status, message = await post_call(
            h, url, token, "echo", {"text": "x"}, meta={"traceparent": traceparent}
        )
    assert status == 200
    assert "error" in message or message["result"]["isError"]

    (span,) = server_call_spans(spans)
    assert trace_hex(span) == trace_id
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == parent_id
    assert span.attributes is not None
    assert span.attributes["error.type"] == "policy_denied"
    assert span.attributes["securemcp.decision"] == "deny"

    records = records_for(audit, span.attributes["securemcp.call_id"])
    assert set(records) == {"decision"}  # refused: the body never ran
    assert records["decision"]["decision"]["result"] == "deny"
    assert records["decision"]["trace_id"] == trace_id


async def test_an_in_memory_authentication_failure_is_audited_in_the_callers_trace(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    tracer = trace.get_tracer("test-agent")
    async with connect(build(idp, audit), idp.bad_token("expired")) as client:
        with tracer.start_as_current_span("agent step") as caller:
            result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    trace_id = format(caller.get_span_context().trace_id, "032x")

    (span,) = server_call_spans(spans)
    assert trace_hex(span) == trace_id
    assert span.attributes is not None
    assert span.attributes["error.type"] == "invalid_token"
    (failure,) = [r for r in iter_records(audit.directory) if r["type"] == "auth_failure"]
    assert failure["target"] == "echo"
    assert failure["trace_id"] == trace_id


async def test_a_hidden_scope_denial_is_audited_in_the_callers_trace(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = build(idp, audit, disclose_required_scopes=False)
    tracer = trace.get_tracer("test-agent")
    async with connect(server, idp.token("bob", scopes=["use"])) as client:
        with tracer.start_as_current_span("agent step") as caller:
            result = await client.call_tool("admin", {}, raise_on_error=False)
    assert result.is_error
    trace_id = format(caller.get_span_context().trace_id, "032x")

    (span,) = server_call_spans(spans)  # the span is right...
    assert trace_hex(span) == trace_id
    assert span.attributes is not None
    assert span.attributes["error.type"] == "not_found"  # the target is not disclosed
    assert span.attributes["securemcp.decision"] == "deny"
    records = records_for(audit, span.attributes["securemcp.call_id"])
    assert "decision" in records, "the refusal was not audited"  # ...the audit record is missing
    assert records["decision"]["decision"]["result"] == "deny"
    assert records["decision"]["trace_id"] == trace_id


async def test_an_in_memory_denial_is_audited_in_the_callers_trace(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    tracer = trace.get_tracer("test-agent")
    async with connect(build(idp, audit), idp.token("bob", scopes=["use"])) as client:
        with tracer.start_as_current_span("agent step") as caller:
            result = await client.call_tool("admin", {}, raise_on_error=False)
    assert result.is_error
    trace_id = format(caller.get_span_context().trace_id, "032x")

    (span,) = server_call_spans(spans)
    assert trace_hex(span) == trace_id
    assert span.attributes is not None
    assert span.attributes["error.type"] == "insufficient_scope"
    decision = records_for(audit, span.attributes["securemcp.call_id"])["decision"]
    assert decision["decision"]["reason"] == "insufficient_scope"
    assert decision["trace_id"] == trace_id


@pytest.mark.http
async def test_a_scope_denial_at_the_http_layer_is_audited_with_the_trace_id(
    audit: AuditLog,
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    traceparent, trace_id, _ = new_traceparent()
    token = idp.token("bob", scopes=["use"])
    async with serve_http(build(idp, audit), stateless_http=True) as url, httpx.AsyncClient() as h:
        status, _ = await post_call(h, url, token, "admin", meta={"traceparent": traceparent})
    assert status == 403
    # The caller was verified, so the refusal is a deny decision naming caller and target.
    (refusal,) = [r for r in iter_records(audit.directory) if r["type"] == "decision"]
    assert refusal["decision"]["result"] == "deny"
    assert refusal["decision"]["reason"] == "insufficient_scope"
    assert refusal["target"] == "admin"
    assert refusal["identity"]["subject"] == "bob"
    assert refusal["trace_id"] == trace_id
    assert not [r for r in iter_records(audit.directory) if r["type"] == "auth_failure"]


@pytest.mark.http
async def test_a_scope_denial_at_the_http_layer_is_traced(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    traceparent, trace_id, _ = new_traceparent()
    token = idp.token("bob", scopes=["use"])
    async with serve_http(build(idp, audit), stateless_http=True) as url, httpx.AsyncClient() as h:
        status, _ = await post_call(h, url, token, "admin", meta={"traceparent": traceparent})
    assert status == 403
    server = server_call_spans(spans)
    assert len(server) == 1, "no SERVER span for a call refused at the HTTP layer"
    (span,) = server
    assert trace_hex(span) == trace_id
    assert span.attributes is not None
    assert span.attributes["error.type"] == "insufficient_scope"


# --- (d) exactly one SERVER span per call over real HTTP ---------------------------------------


@pytest.mark.http
async def test_one_server_span_per_call_over_http_in_the_callers_trace(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("carol", scopes=["use"])
    tracer = trace.get_tracer("test-agent")
    callers: list[str] = []
    async with serve_http(build(idp, audit)) as url, connect_http(url, token) as client:
        for n in range(3):
            with tracer.start_as_current_span(f"agent step {n}") as caller:
                result = await client.call_tool("echo", {"text": SECRET_ARGUMENT})
            assert result.data == f"len={len(SECRET_ARGUMENT)}"
            callers.append(format(caller.get_span_context().trace_id, "032x"))

    server = server_call_spans(spans)
    assert [s.name for s in server] == ["tools/call echo"] * 3
    assert [trace_hex(s) for s in server] == callers  # propagated through _meta over HTTP
    call_ids = [(s.attributes or {})["securemcp.call_id"] for s in server]
    assert len(set(call_ids)) == 3
    for span, trace_id in zip(server, callers, strict=True):
        records = records_for(audit, (span.attributes or {})["securemcp.call_id"])
        assert records["decision"]["trace_id"] == records["outcome"]["trace_id"] == trace_id
    for span in spans.get_finished_spans():
        exported = f"{span.name} {span.attributes} {[e.attributes for e in span.events]}"
        assert token not in exported
        assert SECRET_ARGUMENT not in exported
        assert "Bearer" not in exported


# --- (e) a malformed traceparent ---------------------------------------------------------------


MALFORMED = [
    "garbage",
    "",
    "00-" + "z" * 32 + "-" + "b" * 16 + "-01",
    "00-" + "0" * 32 + "-" + "b" * 16 + "-01",  # all-zero trace id
    "00-" + "a" * 32 + "-" + "0" * 16 + "-01",  # all-zero parent id
    "ff-" + "a" * 32 + "-" + "b" * 16 + "-01",  # version ff is forbidden
    "00-" + "a" * 31 + "-" + "b" * 16 + "-01",  # short trace id
    "00-" + "A" * 32 + "-" + "B" * 16 + "-01",  # upper case
    "x" * 10_000,
    42,
    {"nested": "object"},
]


@pytest.mark.http
@pytest.mark.parametrize("traceparent", MALFORMED, ids=lambda v: repr(v)[:24])
async def test_a_malformed_traceparent_starts_a_new_root_and_the_call_succeeds(
    spans: InMemorySpanExporter, audit: AuditLog, traceparent: Any
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("dave", scopes=["use"])
    meta = {"traceparent": traceparent, "tracestate": "vendor=value"}
    async with serve_http(build(idp, audit), stateless_http=True) as url, httpx.AsyncClient() as h:
        status, message = await post_call(h, url, token, "echo", {"text": "ok"}, meta=meta)
    assert status == 200
    assert message["result"]["isError"] is False
    assert message["result"]["content"][0]["text"] == "len=2"

    (span,) = server_call_spans(spans)
    assert span.parent is None  # a new root, not the junk
    trace_id = trace_hex(span)
    assert trace_id not in {"0" * 32, "a" * 32}
    if isinstance(traceparent, str):
        assert trace_id not in traceparent.lower()
    records = records_for(audit, (span.attributes or {})["securemcp.call_id"])
    assert records["decision"]["trace_id"] == records["outcome"]["trace_id"] == trace_id


# --- the error.type vocabulary ------------------------------------------------------------------


def _broken_policy(request: Any) -> Decision:
    raise RuntimeError("policy hook bug")


async def test_every_error_type_set_is_in_the_documented_vocabulary(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = FastMCP(
        "vocabulary", auth=idp.verifier(audience=AUDIENCE), audit=audit, policy=_broken_policy
    )

    @mcp.tool
    def shout(text: str) -> str:
        return text

    async with connect(mcp, idp.token("erin")) as client:
        result = await client.call_tool("shout", {"text": "abc"}, raise_on_error=False)
    assert result.is_error
    assert "policy_error" in result.content[0].text
    (span,) = server_call_spans(spans)
    assert span.attributes is not None
    assert span.attributes["error.type"] in ERROR_TYPES  # actually "policy_error"


def test_docs_list_exactly_the_error_type_vocabulary() -> None:
    text = (Path(__file__).resolve().parents[1] / "docs" / "telemetry.md").read_text()
    section = text.split("## `error.type` values", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", section, re.M)) - {"error.type"}
    assert documented == ERROR_TYPES


# --- argument values in exception events -------------------------------------------------------


def server_side_spans_without(spans: InMemorySpanExporter, secret: str) -> list[ReadableSpan]:
    """Every span the server side exported, after checking none holds ``secret`` in an
    attribute, its status or an event (the caller's own CLIENT spans hold what it sent)."""
    server_side = [s for s in spans.get_finished_spans() if s.kind != trace.SpanKind.CLIENT]
    for exported in server_side:
        assert secret not in str(dict(exported.attributes or {}))
        assert secret not in str(exported.status.description)
        for event in exported.events:
            assert secret not in str(dict(event.attributes or {}))
    return server_side


@pytest.mark.parametrize("mask", [False, True], ids=["unmasked", "masked"])
async def test_an_argument_that_fails_validation_never_reaches_a_span(
    spans: InMemorySpanExporter, audit: AuditLog, mask: bool
) -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = FastMCP(
        "validation",
        auth=idp.verifier(audience=AUDIENCE),
        audit=audit,
        mask_error_details=mask,
    )

    @mcp.tool
    def count(n: int) -> int:
        return n

    async with connect(mcp, idp.token("frank")) as client:
        result = await client.call_tool("count", {"n": SECRET_ARGUMENT}, raise_on_error=False)
    assert result.is_error
    (span,) = server_call_spans(spans)
    assert span.attributes is not None
    assert span.attributes["error.type"] == "tool_error"
    exception_events = [event for event in span.events if event.name == "exception"]
    assert exception_events, "the failure is still visible to operators"
    assert all(set(e.attributes or {}) == {"exception.type"} for e in exception_events)
    assert span in server_side_spans_without(spans, SECRET_ARGUMENT)


async def test_a_tool_failure_message_never_reaches_a_span_without_a_client(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    """Server-side ``call_tool`` (no dispatcher): FastMCP opens its own span inside the guarded
    call; the tool's exception message (which quotes an argument) stays out of it too."""
    from fastmcp.exceptions import ToolError

    idp = FakeIdentityProvider(audience=AUDIENCE)
    mcp = FastMCP("direct", auth=idp.verifier(audience=AUDIENCE), audit=audit)

    @mcp.tool
    def lookup(key: str) -> str:
        raise ValueError(f"no such key: {key}")

    async with connect(mcp, idp.token("frank")):
        with pytest.raises(ToolError):
            await mcp.call_tool("lookup", {"key": SECRET_ARGUMENT})
    exported = server_side_spans_without(spans, SECRET_ARGUMENT)
    assert any(e.name == "exception" for s in exported for e in s.events)


async def test_a_policy_denial_reason_never_reaches_a_span(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    """A policy's deny reason may quote an argument; the refusal escapes the pipeline to the
    request's span, and neither FastMCP nor the SDK may copy that text onto it."""
    idp = FakeIdentityProvider(audience=AUDIENCE)

    def policy(request: Any) -> Decision:
        return Decision.deny(reason=f"amount {request.arguments['amount']} is over the limit")

    mcp = FastMCP("denied", auth=idp.verifier(audience=AUDIENCE), audit=audit, policy=policy)

    @mcp.tool
    def pay(amount: str) -> str:
        return amount

    async with connect(mcp, idp.token("frank")) as client:
        result = await client.call_tool("pay", {"amount": SECRET_ARGUMENT}, raise_on_error=False)
    assert result.is_error
    (span,) = server_call_spans(spans)
    assert span.attributes is not None and span.attributes["error.type"] == "policy_denied"
    assert span in server_side_spans_without(spans, SECRET_ARGUMENT)


async def test_a_plain_fastmcp_server_keeps_fastmcps_exception_recording(
    spans: InMemorySpanExporter, audit: AuditLog
) -> None:
    """securemcp redacts only the spans of calls it guards: a bare FastMCP server in the same
    process still gets FastMCP's own exception event, message included."""
    import fastmcp
    from fastmcp import Client

    FastMCP("guarded", audit=audit)  # installs securemcp's recorder for the process
    bare = fastmcp.FastMCP("bare")

    @bare.tool
    def fail(key: str) -> str:
        raise ValueError(f"no such key: {key}")

    async with Client(bare) as client:
        result = await client.call_tool("fail", {"key": "visible-marker"}, raise_on_error=False)
    assert result.is_error
    server_spans = [s for s in spans.get_finished_spans() if s.kind == trace.SpanKind.SERVER]
    messages = [
        str((event.attributes or {}).get("exception.message"))
        for span in server_spans
        for event in span.events
        if event.name == "exception"
    ]
    assert any("visible-marker" in message for message in messages)


def test_every_refusal_code_is_in_the_vocabulary() -> None:
    """A new refusal type must be added to the documented error.type vocabulary too."""
    import securemcp.audit.errors
    import securemcp.policy.errors
    import securemcp.proxy.credentials  # noqa: F401  (registers UpstreamAuthError)
    from securemcp.errors import CallRefused, UpstreamError
    from securemcp.telemetry import ERROR_TYPES

    def subclasses(cls: type) -> set[type]:
        found = set(cls.__subclasses__())
        for sub in list(found):
            found |= subclasses(sub)
        return found

    codes = {c.code for c in subclasses(CallRefused) | subclasses(UpstreamError)}
    codes |= {CallRefused.code, UpstreamError.code}
    assert codes - ERROR_TYPES == set()
