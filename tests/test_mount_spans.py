"""Spans of calls through a mount (``parent.mount(child)``) hold no argument (DESIGN guarantee 5).

A resource template's parameter values are the read's arguments. A read through a mount passes
through FastMCP's mount provider, which opens an ``INTERNAL`` span named ``delegate <URI the
caller sent>``, and, for a child securemcp does not build, the child's core path, which opens a
``SERVER`` span whose ``mcp.resource.uri`` is that URI. Inside a call securemcp guards, both
name the read by its URI template instead (a concrete resource keeps its URI), and exceptions
on them keep their types, never their messages.

The caller's own ``CLIENT`` spans (FastMCP's client, in this process only because the tests run
in memory) carry what the caller sent and are not the server's to change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastmcp
import pytest
from fastmcp import FastMCP as BareFastMCP
from fastmcp.server.providers import fastmcp_provider
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_support import span_fixtures
from securemcp import FastMCP
from securemcp.testing import FakeIdentityProvider, connect

_tracing, spans = span_fixtures()

AUDIENCE = "https://mcp.securemcp.test/mcp"
SECRET = "alice.secret"
TEMPLATE = "users://{email}/ssn"


def exported(span: ReadableSpan) -> str:
    """Everything a span exports that could hold text: name, attributes, events, status."""
    return "\n".join(
        [
            span.name,
            repr(dict(span.attributes or {})),
            *(f"{e.name} {dict(e.attributes or {})!r}" for e in span.events),
            repr(span.status.description),
        ]
    )


def server_side(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The spans the servers export (not the in-memory caller's CLIENT spans)."""
    return [s for s in exporter.get_finished_spans() if s.kind != trace.SpanKind.CLIENT]


def delegate_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in server_side(exporter) if s.name.startswith("delegate ")]


def secure_child() -> Any:
    return FastMCP("child")


def bare_child() -> Any:
    return BareFastMCP("child")


def bare_child_mounting_a_bare_grandchild() -> Any:
    """Two mounts deep: the read is delegated twice, through two servers securemcp did not build."""
    return BareFastMCP("middle")


CHILDREN: dict[str, Callable[[], Any]] = {
    "securemcp child": secure_child,
    "FastMCP child": bare_child,
    "FastMCP child mounting a FastMCP grandchild": bare_child_mounting_a_bare_grandchild,
}


def mounted(make_child: Callable[[], Any]) -> tuple[FastMCP, FakeIdentityProvider]:
    """A securemcp parent with a child mounted as ``hr`` serving a template, a concrete
    resource, a failing template, a failing tool and a failing prompt (all quoting arguments)."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    parent = FastMCP("front", auth=idp.verifier(audience=AUDIENCE))
    child = make_child()
    server = child
    if make_child is bare_child_mounting_a_bare_grandchild:
        server = BareFastMCP("grandchild")
        child.mount(server, namespace="deep")

    @server.resource(TEMPLATE)
    def ssn(email: str) -> str:
        return "on file"

    @server.resource("data://fixed")
    def fixed() -> str:
        return "fixed"

    @server.resource("boom://{email}")
    def boom(email: str) -> str:
        raise ValueError(f"no record for {email}")

    @server.tool
    def lookup(email: str) -> str:
        raise ValueError(f"no record for {email}")

    @server.prompt
    def letter(email: str) -> str:
        raise ValueError(f"no record for {email}")

    parent.mount(child, namespace="hr")
    return parent, idp


def namespaced(uri: str, make_child: Callable[[], Any]) -> str:
    """``uri`` as the parent exposes it (``users://hr/...``, ``users://hr/deep/...``)."""
    scheme, _, rest = uri.partition("://")
    prefix = "hr/deep" if make_child is bare_child_mounting_a_bare_grandchild else "hr"
    return f"{scheme}://{prefix}/{rest}"


def name(component: str, make_child: Callable[[], Any]) -> str:
    """``component``'s name as the parent exposes it (``hr_lookup``, ``hr_deep_lookup``)."""
    deep = make_child is bare_child_mounting_a_bare_grandchild
    return ("hr_deep_" if deep else "hr_") + component


@pytest.mark.parametrize("make_child", CHILDREN.values(), ids=CHILDREN.keys())
async def test_a_template_read_through_a_mount_keeps_its_values_out_of_every_span(
    spans: InMemorySpanExporter, make_child: Callable[[], Any]
) -> None:
    parent, idp = mounted(make_child)
    async with connect(parent, idp.token("alice")) as client:
        spans.clear()
        await client.read_resource(namespaced(f"users://{SECRET}%40example.com/ssn", make_child))
    for span in server_side(spans):
        assert SECRET not in exported(span), f"{span.kind.name} span {span.name!r}"
    delegates = delegate_spans(spans)
    assert delegates, "FastMCP's mount provider opened no delegate span"
    for span in delegates:  # named by the template, as FastMCP's component key names it
        assert span.name.startswith("delegate users://")
        assert span.name.endswith("{email}/ssn")
        assert dict(span.attributes or {})["fastmcp.component.key"] == span.name[9:]
    reads = [s for s in server_side(spans) if s.name == "resources/read"]
    assert len(reads) == (3 if make_child is bare_child_mounting_a_bare_grandchild else 2)
    for span in reads:  # every server's read span still says what was read: its template
        uri = dict(span.attributes or {})["mcp.resource.uri"]
        assert isinstance(uri, str) and uri.startswith("users://")
        assert uri.endswith("{email}/ssn")


@pytest.mark.parametrize("make_child", CHILDREN.values(), ids=CHILDREN.keys())
async def test_a_concrete_resource_through_a_mount_keeps_its_uri(
    spans: InMemorySpanExporter, make_child: Callable[[], Any]
) -> None:
    parent, idp = mounted(make_child)
    async with connect(parent, idp.token("alice")) as client:
        spans.clear()
        await client.read_resource(namespaced("data://fixed", make_child))
    delegates = delegate_spans(spans)
    assert delegates
    for span in delegates:
        assert span.name in ("delegate data://fixed", "delegate data://deep/fixed")
    reads = [s for s in server_side(spans) if s.name == "resources/read"]
    uris = {dict(s.attributes or {})["mcp.resource.uri"] for s in reads}
    assert uris <= {"data://hr/fixed", "data://hr/deep/fixed", "data://deep/fixed", "data://fixed"}
    assert "data://fixed" in uris  # the server that holds the resource names it by its URI


@pytest.mark.parametrize("make_child", CHILDREN.values(), ids=CHILDREN.keys())
@pytest.mark.parametrize("kind", ["template read", "tool", "prompt"])
async def test_a_childs_error_text_stays_out_of_the_delegate_span(
    spans: InMemorySpanExporter, make_child: Callable[[], Any], kind: str
) -> None:
    """A child's exception message can quote the arguments (and FastMCP's own message quotes the
    URI): the delegate span, like securemcp's own spans, keeps the exception's type only."""
    parent, idp = mounted(make_child)
    async with connect(parent, idp.token("alice")) as client:
        calls = {
            "template read": lambda: client.read_resource(
                namespaced(f"boom://{SECRET}", make_child)
            ),
            "tool": lambda: client.call_tool(name("lookup", make_child), {"email": SECRET}),
            "prompt": lambda: client.get_prompt(name("letter", make_child), {"email": SECRET}),
        }
        spans.clear()
        with pytest.raises(Exception):  # each kind fails with its own error
            await calls[kind]()
    for span in server_side(spans):
        assert SECRET not in exported(span), f"{span.kind.name} span {span.name!r}"
    delegates = delegate_spans(spans)
    assert delegates
    for span in delegates:
        assert span.status.status_code == trace.StatusCode.ERROR
        assert span.events and all(
            set(dict(event.attributes or {})) == {"exception.type"} for event in span.events
        )


async def test_a_fastmcp_server_read_inside_a_guarded_call_is_named_by_its_template(
    spans: InMemorySpanExporter,
) -> None:
    """Not only mounts: a guarded tool reading a FastMCP server in process opens that server's
    read span inside the guarded call, which names it the same way."""
    backend = BareFastMCP("backend")

    @backend.resource(TEMPLATE)
    def ssn(email: str) -> str:
        return "on file"

    idp = FakeIdentityProvider(audience=AUDIENCE)
    front = FastMCP("front", auth=idp.verifier(audience=AUDIENCE))

    @front.tool
    async def relay(email: str) -> str:
        result = await backend.read_resource(f"users://{email}/ssn")
        return str(result.contents[0].content)

    async with connect(front, idp.token("alice")) as client:
        spans.clear()
        await client.call_tool("relay", {"email": SECRET})
    for span in server_side(spans):
        assert SECRET not in exported(span), f"{span.kind.name} span {span.name!r}"
    (read,) = [s for s in server_side(spans) if s.name == "resources/read"]
    assert dict(read.attributes or {})["mcp.resource.uri"] == TEMPLATE
    (call,) = [s for s in server_side(spans) if s.name == "tools/call relay"]
    attributes = dict(call.attributes or {})  # the nested read no longer overwrites the call's
    assert attributes["fastmcp.component.type"] == "tool"
    assert "mcp.resource.uri" not in attributes


class _Starts(SpanProcessor):
    """What span processors see when a span starts (samplers see the same name and attributes)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if span.kind != trace.SpanKind.CLIENT:  # the caller's own spans
            self.seen.append(f"{span.name} {dict(span.attributes or {})!r}")


@pytest.mark.parametrize("make_child", CHILDREN.values(), ids=CHILDREN.keys())
async def test_no_span_starts_with_the_values(
    monkeypatch: pytest.MonkeyPatch, make_child: Callable[[], Any]
) -> None:
    """The values are not set and then overwritten: a span processor's ``on_start`` (and a
    sampler) would have seen them."""
    starts = _Starts()
    provider = TracerProvider()
    provider.add_span_processor(starts)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    parent, idp = mounted(make_child)
    async with connect(parent, idp.token("alice")) as client:
        starts.seen.clear()
        await client.read_resource(namespaced(f"users://{SECRET}/ssn", make_child))
    assert any(seen.startswith("delegate ") for seen in starts.seen)
    assert [seen for seen in starts.seen if SECRET in seen] == []


async def test_fastmcp_servers_securemcp_does_not_guard_keep_fastmcps_spans(
    spans: InMemorySpanExporter,
) -> None:
    """Only spans opened inside a guarded call are renamed: a FastMCP parent's are FastMCP's."""
    FastMCP("installs-securemcps-hooks")
    parent = BareFastMCP("plain-parent")
    child = BareFastMCP("plain-child")

    @child.resource(TEMPLATE)
    def ssn(email: str) -> str:
        return "on file"

    parent.mount(child, namespace="hr")
    await parent.read_resource(f"users://hr/{SECRET}/ssn")
    assert fastmcp_provider.delegate_span is not fastmcp.server.telemetry.delegate_span
    (delegate,) = delegate_spans(spans)
    assert delegate.name == f"delegate users://{SECRET}/ssn"  # FastMCP's own naming


async def test_nothing_is_recorded_without_fastmcps_spans(
    spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fastmcp.settings, "telemetry_mode", "propagation_only")
    parent, idp = mounted(bare_child)
    async with connect(parent, idp.token("alice")) as client:
        spans.clear()
        await client.read_resource(f"users://hr/{SECRET}/ssn")
    fastmcps = [s.name for s in server_side(spans) if not s.name.startswith("securemcp.")]
    assert fastmcps == []  # securemcp's slow-step spans are its own, whatever FastMCP's mode


def plain_parent_of_a_secure_child() -> tuple[BareFastMCP, FakeIdentityProvider]:
    """A parent built with ``fastmcp.FastMCP`` that mounts a securemcp child as ``hr``."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    child = FastMCP("child", auth=idp.verifier(audience=AUDIENCE))

    @child.resource(TEMPLATE)
    def ssn(email: str) -> str:
        return "on file"

    @child.resource("boom://{email}")
    def boom(email: str) -> str:
        raise ValueError(f"no record for {email}")

    parent = BareFastMCP("plain-parent")
    parent.mount(child, namespace="hr")
    return parent, idp


@pytest.mark.parametrize("via", ["client", "server-side"])
async def test_a_fastmcp_parent_names_a_read_of_its_securemcp_child_by_the_template(
    spans: InMemorySpanExporter, via: str
) -> None:
    """A parent securemcp did not build opens its read span and the mount's delegate span before
    the securemcp child is reached, with the URI the caller sent: once the read enters the child,
    both are named by the template, and exceptions on them keep their types only."""
    parent, idp = plain_parent_of_a_secure_child()
    uri = f"users://hr/{SECRET}%40example.com/ssn"
    failing = f"boom://hr/{SECRET}"
    if via == "client":
        async with connect(parent, idp.token("alice")) as client:
            spans.clear()
            await client.read_resource(uri)
            with pytest.raises(Exception):  # the child's template fails, quoting its value
                await client.read_resource(failing)
    else:
        token = idp.token("alice")
        from fastmcp.server.auth import AccessToken
        from mcp.server.auth.middleware.auth_context import auth_context_var
        from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

        user = AuthenticatedUser(AccessToken(token=token, client_id="c", scopes=[]))
        reset = auth_context_var.set(user)
        try:
            spans.clear()
            await parent.read_resource(uri)
            with pytest.raises(Exception):
                await parent.read_resource(failing)
        finally:
            auth_context_var.reset(reset)
    for span in server_side(spans):
        assert SECRET not in exported(span), f"{span.kind.name} span {span.name!r}"
    parents = [
        s
        for s in server_side(spans)
        if dict(s.attributes or {}).get("fastmcp.server.name") == "plain-parent"
    ]
    assert sorted(dict(s.attributes or {})["mcp.resource.uri"] for s in parents) == [
        "boom://hr/{email}",
        "users://hr/{email}/ssn",
    ]
    assert sorted(s.name for s in delegate_spans(spans)) == [
        "delegate boom://{email}",
        f"delegate {TEMPLATE}",
    ]
    failed = [s for s in server_side(spans) if s.status.status_code == trace.StatusCode.ERROR]
    assert failed
    for span in failed:
        assert all(set(dict(e.attributes or {})) == {"exception.type"} for e in span.events)
