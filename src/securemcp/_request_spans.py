"""The ``SERVER`` span of a guarded call that reaches securemcp without FastMCP's request span.

OpenTelemetry semantic conventions for MCP: one ``SERVER`` span per request, carrying the
request's attributes. FastMCP opens it at its dispatch seam for every request a client sends,
before securemcp's pipeline runs, and securemcp enriches it. A call made in process
(``await server.call_tool(...)``: tests, agent frameworks that embed the server, a tool calling
another server) has no such span: FastMCP opens one only inside its core path, after the
pipeline has decided, so that span would carry neither the decision nor the caller, and the
audit records would carry no trace id. A call nested in another guarded call would find the
outer call's span current and overwrite its attributes.

For those calls, while spans can record and FastMCP's own spans are on, :func:`request_span`
opens the ``SERVER`` span before the pipeline runs and marks it as FastMCP's seam span for the
request, exactly as FastMCP's seam does (``fastmcp.server.telemetry._active_seam_span``), so
FastMCP's core path enriches it instead of opening a second one. It is still one span per call.

A client's request to a securemcp server gets its seam span from :class:`SeamSpans`, the same
span FastMCP's seam opens (``fastmcp.server.telemetry.seam_span``: name, kind, parent from the
request's ``_meta``, attributes, marker), except that exceptions are recorded without their
messages from the moment it opens (``securemcp._span_exceptions.redact_span``: a request can
fail before the pipeline guards it, such as ``tools/call`` params that do not validate, with a
message quoting the arguments), minus two per-request costs that buy nothing: FastMCP asks the
tracer provider for its tracer on every request (the SDK then builds a scope object and resets a
warnings filter before returning the tracer it already made, ~10 µs), and checks whether a
sampler dropped the span's attributes with a runtime-checkable ``Protocol`` ``isinstance``
(~10 µs). :class:`SeamSpans` keeps the tracer per provider and makes the same check by reading the
two properties. Servers securemcp does not build keep FastMCP's seam, and so do securemcp
servers whenever FastMCP's spans are off or suppressed.

Later in the request FastMCP's core path enriches that span with the component's attributes
(``fastmcp.server.telemetry.server_span``) and computes the request's protocol and auth
attributes again, looking the caller's token up a second time. :func:`server_span` does the
same enrichment for the span of a guarded call without that second lookup, and
:func:`auth_attributes` finds the auth attributes without the exception FastMCP raises and
catches outside HTTP.

Inside a call securemcp guards, FastMCP also opens spans securemcp's pipeline does not record:
the ``INTERNAL`` span around a call a parent delegates to a mounted server
(``fastmcp.server.telemetry.delegate_span``), and the core path's ``SERVER`` span of a server
securemcp did not build (a FastMCP server mounted on a securemcp one, or read in process by a
guarded tool). FastMCP names a resource template read on both by the URI the caller sent
(``delegate users://alice@example.com/ssn``, ``mcp.resource.uri``), whose parameter values are
the read's arguments (DESIGN guarantee 5; OpenTelemetry semantic conventions for MCP: arguments
are opt-in). :func:`delegate_span` names the delegation by the component, as FastMCP identifies
it (``delegate users://{email}/ssn``: the URI template of a template read, a concrete resource's
URI, a tool's or prompt's name), and :func:`server_span` opens such a read's ``SERVER`` span
without the URI and names the read once FastMCP has resolved it (by its URI template, or a
concrete resource's URI). Both record exceptions without messages from the moment they open
(``redact_span``). Outside guarded calls, and while no span could record, both are FastMCP's,
except that a read such a server (a FastMCP parent mounting a securemcp server) passes on to a
securemcp server is renamed on them when it gets there (:func:`name_outer_reads`).

Exceptions escaping a securemcp server's request span before the pipeline decided (params that
do not validate, an unknown method) get an ``error.type`` from securemcp's vocabulary, not the
exception's type (:func:`securemcp._span_exceptions.record_request_failure`).

A core path nested in a guarded call's own (a guarded tool reading a FastMCP server in process)
opens its own span: FastMCP would find the guarded call's span current and overwrite its
attributes with the nested read's, URI included.

This module relies on FastMCP internals (``_active_seam_span``, the seam middleware and its
``_seam_span`` hook, ``_get_parent_trace_context``, the core path's ``server_span`` reference in
``fastmcp.server.server``, the mount provider's ``delegate_span`` reference in
``fastmcp.server.providers.fastmcp_provider``, the component span attributes
(``fastmcp.component.type``, and the ``template:<uri template>@<version>`` key of a template)
and the request context variables); ``tests/test_request_spans.py``, ``tests/test_seam_spans.py``
and ``tests/test_mount_spans.py`` pin them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar, Token
from typing import Any

from fastmcp.server import dependencies as _fastmcp_dependencies
from fastmcp.server import server as _fastmcp_server
from fastmcp.server import telemetry as _fastmcp_server_telemetry
from fastmcp.server.auth import AccessToken
from fastmcp.server.http import _current_http_request
from fastmcp.server.low_level import FastMCPServerMiddleware
from fastmcp.server.providers import fastmcp_provider as _fastmcp_provider
from fastmcp.telemetry import INSTRUMENTATION_NAME, extract_trace_context, native_spans_enabled
from mcp.server.auth.middleware.auth_context import auth_context_var
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Tracer, TracerProvider

from securemcp._resource_reads import unresolved_target
from securemcp._span_exceptions import is_guarded, record_request_failure, redact_span
from securemcp._unrecorded_spans import spans_cannot_record
from securemcp.context import _CURRENT
from securemcp.telemetry import usable_trace_meta

__all__ = [
    "SeamSpans",
    "auth_attributes",
    "delegate_span",
    "install_core_spans",
    "install_seam_spans",
    "install_trace_meta",
    "name_outer_reads",
    "needs_request_span",
    "request_span",
    "server_span",
]

_ACTIVE_SEAM = _fastmcp_server_telemetry._active_seam_span
_SEAM_MARKER = _fastmcp_server_telemetry.SEAM_SPAN_MARKER

#: FastMCP's tracer, with the provider it came from (see :func:`fastmcp_tracer`).
_fastmcp_tracer: tuple[TracerProvider, Tracer] | None = None


def fastmcp_tracer() -> Tracer:
    """The tracer ``fastmcp.telemetry.get_tracer()`` returns, asked of the provider only once.

    The same tracer: an SDK provider keeps one tracer per instrumentation scope and would hand
    this one back. A new global provider is noticed (the cache is keyed by its identity).
    """
    global _fastmcp_tracer
    provider = trace.get_tracer_provider()
    cached = _fastmcp_tracer
    if cached is not None and cached[0] is provider:
        return cached[1]
    tracer = provider.get_tracer(INSTRUMENTATION_NAME, None)
    _fastmcp_tracer = (provider, tracer)
    return tracer


def _restore_dropped(span: Span, attributes: Mapping[str, Any]) -> None:
    """``fastmcp.telemetry.restore_dropped_attributes``, reading the properties directly.

    A custom sampler may build the span without the attributes it was given: set them again,
    but only when the span has none and dropped none (FastMCP's rule, documented there).
    """
    existing = getattr(span, "attributes", None)
    if not existing and getattr(span, "dropped_attributes", 0) == 0:
        span.set_attributes(attributes)


def needs_request_span(current: Span) -> bool:
    """Whether a guarded call must open its own request span (``current`` is the current span).

    No, when ``current`` is FastMCP's request span for this call (recording, the active seam,
    not yet another guarded call's), or when no span could record, or when FastMCP's own spans
    are off (``propagation_only`` / ``off``, or suppressed): then FastMCP opens none either.
    """
    if current.is_recording():
        if current is _ACTIVE_SEAM.get() and not is_guarded(current):
            return False
    elif spans_cannot_record():
        return False
    return native_spans_enabled()


def auth_attributes() -> dict[str, str]:
    """``fastmcp.server.telemetry.get_auth_span_attributes()``, without an exception per call
    outside HTTP.

    FastMCP finds the caller's token in the HTTP request when there is one, else in the MCP
    SDK's ``auth_context_var``; it looks for the request with ``get_http_request()``, which
    raises (and FastMCP catches) a ``RuntimeError`` when there is none: on every in-memory or
    server-side call. Here the same two context variables are read first: with an HTTP request,
    or with a token of a type FastMCP converts, the answer is FastMCP's function; otherwise it
    is built from the SDK's token as FastMCP builds it. ``tests/test_seam_spans.py`` holds the
    two to the same answers.
    """
    request_context = _fastmcp_dependencies.fastmcp_request_ctx.get()
    request = request_context.request if request_context is not None else None
    if request is not None or _current_http_request.get() is not None:
        return _fastmcp_server_telemetry.get_auth_span_attributes()
    user = auth_context_var.get()
    token = user.access_token if user is not None else None
    if token is None:
        return {}
    if not isinstance(token, AccessToken):
        return _fastmcp_server_telemetry.get_auth_span_attributes()  # converted (or refused)
    attributes: dict[str, str] = {}
    if token.client_id:
        attributes["enduser.id"] = token.client_id
    if token.scopes:
        attributes["enduser.scope"] = " ".join(token.scopes)
    return attributes


def _request_attributes() -> dict[str, Any]:
    """The request's protocol, auth and session attributes, as FastMCP's seam sets them."""
    telemetry = _fastmcp_server_telemetry
    return {
        **telemetry.get_protocol_span_attributes(),
        **auth_attributes(),
        **telemetry.get_session_span_attributes(),
    }


@contextmanager
def request_span(tracer: Tracer, method: str, target: str) -> Iterator[Span]:
    """Open the call's ``SERVER`` span, current and marked as the request's seam span.

    Like FastMCP's seam span it carries the request's protocol, auth and session attributes
    from the start (so a guarded span always does: see :func:`server_span`), and is named by
    ``method`` alone: ``target`` names it only once the pipeline has found it registered.
    """
    # Named by the method alone until the pipeline finds the target registered (it then names
    # the span as FastMCP does): a target that is not registered stays out of span names.
    name = method
    try:
        request_attributes = _request_attributes()
    except Exception:  # FastMCP refuses a token type it cannot convert; the span goes without
        request_attributes = {}  # its auth attributes and the pipeline decides (and audits)
    span = tracer.start_span(
        name,
        kind=SpanKind.SERVER,
        attributes={"mcp.method.name": method, **request_attributes},
        record_exception=False,  # the pipeline and FastMCP record failures, redacted
        set_status_on_exception=False,
    )
    attached = otel_context.attach(trace.set_span_in_context(span))
    seam = _ACTIVE_SEAM.set(span)
    try:
        yield span
    finally:
        _ACTIVE_SEAM.reset(seam)
        otel_context.detach(attached)
        span.end()


class SeamSpans(FastMCPServerMiddleware):
    """FastMCP's seam middleware, opening the request's ``SERVER`` span as FastMCP's seam does,
    with the tracer kept and the dropped-attribute check made without a ``Protocol`` check."""

    @contextmanager
    def _seam_span(self, fastmcp: Any, ctx: Any) -> Iterator[None]:
        if fastmcp is None or ctx.request_id is None or not native_spans_enabled():
            with super()._seam_span(fastmcp, ctx):  # no span, or FastMCP's modes: FastMCP's own
                yield
            return
        telemetry = _fastmcp_server_telemetry
        method = ctx.method
        attributes = {
            _SEAM_MARKER: True,
            "mcp.method.name": method,
            "fastmcp.server.name": fastmcp.name,
            **_request_attributes(),
        }
        with fastmcp_tracer().start_as_current_span(
            method,
            context=telemetry._get_parent_trace_context(),
            kind=SpanKind.SERVER,
            attributes=attributes,
            record_exception=False,  # the SDK's record has the message: securemcp's, below
            set_status_on_exception=False,
        ) as span:
            if span.is_recording():
                _restore_dropped(span, attributes)
                # Before anything can fail: params that do not validate fail before the
                # pipeline guards the call, with a message quoting the arguments.
                redact_span(span)
            seam = _ACTIVE_SEAM.set(span)
            try:
                yield
            except Exception as exc:
                record_request_failure(span, exc)  # error.type from securemcp's vocabulary
                raise
            finally:
                _ACTIVE_SEAM.reset(seam)


def install_seam_spans(server: Any) -> bool:
    """Give ``server`` (a securemcp server) :class:`SeamSpans` in place of FastMCP's seam.

    Returns whether FastMCP's seam middleware was found (if FastMCP stops installing it the
    server keeps whatever it has; ``tests/test_seam_spans.py`` fails first).
    """
    chain = server._mcp_server.middleware
    for index, middleware in enumerate(chain):
        if type(middleware) is FastMCPServerMiddleware:
            chain[index] = SeamSpans(server)
            return True
    return False


#: FastMCP's core-path span (``fastmcp.server.telemetry.server_span``), for every other span.
_fastmcp_server_span = _fastmcp_server_telemetry.server_span


class _EnrichedSeam:
    """The context manager :func:`server_span` returns for a guarded request span: yields it and
    records an exception escaping the core path on it, as FastMCP's enrichment branch does.

    While the core path runs, the span is no longer offered as the request's seam: a core path
    nested in it (a tool reading a FastMCP server in process) is another request, which opens
    its own span instead of overwriting this one's attributes.
    """

    __slots__ = ("_seam", "_span")
    _seam: Token[Span | None]

    def __init__(self, span: Span) -> None:
        self._span = span

    def __enter__(self) -> Span:
        self._seam = _ACTIVE_SEAM.set(None)
        return self._span

    def __exit__(self, kind: object, exc: BaseException | None, traceback: object) -> None:
        _ACTIVE_SEAM.reset(self._seam)
        if isinstance(exc, Exception):
            _fastmcp_server_telemetry.record_span_exception(self._span, exc)  # securemcp's


def server_span(
    name: str,
    method: str,
    server_name: str,
    component_type: str,
    component_key: str,
    resource_uri: str | None = None,
    tool_name: str | None = None,
    prompt_name: str | None = None,
) -> AbstractContextManager[Span]:
    """``fastmcp.server.telemetry.server_span``, minus the request attributes a guarded request
    span already carries.

    FastMCP's core path (running a tool, reading a resource, rendering a prompt) enriches the
    request's seam span with the component's attributes, and also computes the request's
    protocol and auth attributes again (the access token among them: outside HTTP, an
    exception raised and caught), although the seam set the same values when it opened the
    span for the same request. For the span of a call securemcp guards (opened by FastMCP's
    seam, :class:`SeamSpans` or :func:`request_span`, all of which set them), the name, the
    component's attributes and the session attributes (unknown when the seam opened) are set,
    as FastMCP sets them; the protocol and auth attributes stay as the seam set them.

    A resource read's span opened inside a guarded call is FastMCP's without the URI, named once
    resolved (:func:`_read_span_in_guarded_call`). Any other span (an unguarded seam, no seam,
    FastMCP's modes without spans) is FastMCP's function.
    """
    seam = _ACTIVE_SEAM.get()
    if (
        seam is None
        or not is_guarded(seam)
        or seam is not trace.get_current_span()
        or not seam.is_recording()
        or not seam.get_span_context().is_valid
        or not native_spans_enabled()
    ):
        if resource_uri is not None and not spans_cannot_record():
            if _CURRENT.get() is not None:
                return _read_span_in_guarded_call(
                    name, method, server_name, component_type, resource_uri
                )
            return _unguarded_read(
                _fastmcp_server_span(
                    name, method, server_name, component_type, component_key, resource_uri
                ),
                resource_uri,
            )
        return _fastmcp_server_span(
            name,
            method,
            server_name,
            component_type,
            component_key,
            resource_uri,
            tool_name,
            prompt_name,
        )
    attributes = {
        "mcp.method.name": method,
        "fastmcp.server.name": server_name,
        "fastmcp.component.type": component_type,
        "fastmcp.component.key": component_key,
        **_fastmcp_server_telemetry.get_session_span_attributes(),
    }
    if resource_uri is not None:
        attributes["mcp.resource.uri"] = resource_uri
    if tool_name is not None:
        attributes["gen_ai.tool.name"] = tool_name
    if prompt_name is not None:
        attributes["gen_ai.prompt.name"] = prompt_name
    seam.update_name(name)
    seam.set_attributes(attributes)
    return _EnrichedSeam(seam)


#: FastMCP's template component key: ``template:<URI template>@<version>`` (the ``@`` is always
#: there, so the key parses unambiguously: ``fastmcp.utilities.components``).
_TEMPLATE_KEY_PREFIX = "template:"


def _resolved_read(span: Span, uri: str) -> str | None:
    """How a read of ``uri`` is named once FastMCP's core path set the component's attributes on
    ``span``: a concrete resource by its URI, a template by its URI template, anything else (not
    found, a component FastMCP does not describe this way) not at all."""
    attributes = getattr(span, "attributes", None)
    if not attributes:
        return None
    kind = attributes.get("fastmcp.component.type")
    if kind == "resource":
        return uri
    key = attributes.get("fastmcp.component.key")
    if (
        kind == "resource_template"
        and isinstance(key, str)
        and key.startswith(_TEMPLATE_KEY_PREFIX)
    ):
        template, at, _version = key[len(_TEMPLATE_KEY_PREFIX) :].rpartition("@")
        if at:
            return template
    return None


@contextmanager
def _read_span_in_guarded_call(
    name: str, method: str, server_name: str, component_type: str, uri: str
) -> Iterator[Span]:
    """FastMCP's core-path span of a read inside a guarded call that securemcp's pipeline does not
    record (a FastMCP server mounted on, or read in process by, a securemcp server).

    Opened without ``mcp.resource.uri`` and with the URI's scheme as its component key (neither a
    sampler nor a span processor's ``on_start`` sees the caller's template values), exceptions
    recorded without messages, and named when it ends: ``mcp.resource.uri`` is the template's URI
    template, or a concrete resource's URI, from the component FastMCP resolved.
    """
    with _fastmcp_server_span(
        name, method, server_name, component_type, unresolved_target(uri)
    ) as span:
        recording = span.is_recording()
        if recording:
            redact_span(span)
        try:
            yield span
        finally:
            if recording:
                read = _resolved_read(span, uri)
                if read is not None:
                    span.set_attribute("mcp.resource.uri", read)


#: FastMCP's span around a call delegated to a mounted server, for every other delegation.
_fastmcp_delegate_span = _fastmcp_server_telemetry.delegate_span


def delegate_span(
    name: str, provider_type: str, component_key: str, method: str | None = None
) -> AbstractContextManager[Span]:
    """``fastmcp.server.telemetry.delegate_span``, named by the component inside a guarded call.

    FastMCP's mount provider names the span ``delegate <name>``: for a resource template read,
    ``name`` is the URI the caller sent (``users://alice@example.com/ssn``) and ``component_key``
    the template's URI template; otherwise the two are the same (a tool's or prompt's name, a
    concrete resource's URI). Inside a guarded call the span is named by ``component_key``, with
    FastMCP's attributes, and records exceptions without messages from the moment it opens
    (a child's error can quote its arguments). Outside one, or while no span could record or
    FastMCP's spans are off, it is FastMCP's function.
    """
    if spans_cannot_record() or not native_spans_enabled():
        return _fastmcp_delegate_span(name, provider_type, component_key, method)
    if _CURRENT.get() is None:
        span = _fastmcp_delegate_span(name, provider_type, component_key, method)
        if name == component_key:  # named by the component already: nothing to rename
            return span
        return _unguarded_read(span, None)
    return _named_delegate_span(provider_type, component_key, method)


@contextmanager
def _named_delegate_span(
    provider_type: str, component_key: str, method: str | None
) -> Iterator[Span]:
    """FastMCP's delegate span, named ``delegate <component_key>`` and redacted (see above)."""
    attributes = {"fastmcp.provider.type": provider_type, "fastmcp.component.key": component_key}
    if method is not None:
        attributes["mcp.method.name"] = method
    with fastmcp_tracer().start_as_current_span(
        f"delegate {component_key}", attributes=attributes
    ) as span:
        if span.is_recording():
            _restore_dropped(span, attributes)
            redact_span(span)
        try:
            yield span
        except Exception as exc:
            _fastmcp_server_telemetry.record_span_exception(span, exc)  # securemcp's
            raise


#: The spans FastMCP opened for the resource read now running in servers securemcp does not
#: guard (their core-path ``SERVER`` span, with the URI the caller sent; the mount's delegate
#: span of a template read, named by it), outermost first: each with that URI, or ``None`` for a
#: delegate span. Renamed if the read reaches a securemcp server (:func:`name_outer_reads`).
_UNGUARDED_READS: ContextVar[tuple[tuple[Span, str | None], ...]] = ContextVar(
    "securemcp_unguarded_reads", default=()
)


@contextmanager
def _unguarded_read(opened: AbstractContextManager[Span], uri: str | None) -> Iterator[Span]:
    """FastMCP's span ``opened`` for a read outside guarded calls, listed in
    :data:`_UNGUARDED_READS` while it is open (``uri``: the URI of a ``SERVER`` span's read)."""
    with opened as span:
        if not span.is_recording():
            yield span
            return
        listed = _UNGUARDED_READS.set((*_UNGUARDED_READS.get(), (span, uri)))
        try:
            yield span
        finally:
            _UNGUARDED_READS.reset(listed)


def name_outer_reads() -> None:
    """Name the read now entering a securemcp server by its template on the spans servers
    securemcp does not guard opened for it (a FastMCP parent mounting a securemcp server).

    Such a parent opens its read's ``SERVER`` span (``mcp.resource.uri``) and the mount's
    ``delegate`` span (its name) with the URI the caller sent, whose template values are the
    read's arguments, before the securemcp server is reached. By then FastMCP has resolved the
    parent's component: the ``SERVER`` span's ``mcp.resource.uri`` becomes the parent's URI
    template (a concrete resource keeps its URI; a read FastMCP did not resolve keeps its scheme),
    the ``delegate`` span is named by its component key (the child's URI template), and both
    record exceptions without messages from now on (:func:`redact_span`). A span processor's
    ``on_start`` (or a sampler) of such a parent still saw the URI: those spans started before
    securemcp had any part in the read.
    """
    for span, uri in _UNGUARDED_READS.get():
        if not span.is_recording():
            continue
        redact_span(span)
        if uri is None:
            key = (getattr(span, "attributes", None) or {}).get("fastmcp.component.key")
            span.update_name(f"delegate {key}" if isinstance(key, str) and key else "delegate")
        else:
            read = _resolved_read(span, uri)
            span.set_attribute(
                "mcp.resource.uri", read if read is not None else unresolved_target(uri)
            )


def install_core_spans() -> None:
    """Route FastMCP's core-path spans through :func:`server_span`, and its mount provider's
    delegation spans through :func:`delegate_span` (idempotent)."""
    if getattr(_fastmcp_server, "server_span", None) is not server_span:
        _fastmcp_server.server_span = server_span  # type: ignore[attr-defined,assignment]
    if getattr(_fastmcp_provider, "delegate_span", None) is not delegate_span:
        _fastmcp_provider.delegate_span = delegate_span  # type: ignore[attr-defined,assignment]


def parent_trace_context() -> Context | None:
    """``fastmcp.server.telemetry._get_parent_trace_context()``: the parent context from the
    request ``_meta``, without a ``traceparent`` or ``tracestate`` the propagator would only
    log a warning about (:func:`securemcp.telemetry.usable_trace_meta`).

    An over-long ``traceparent`` (above 512 characters) or ``tracestate``, or a malformed
    ``tracestate`` member, makes OpenTelemetry log a ``WARNING`` (quoting the member) on every
    request that carries one: a caller could flood the server log. Such a value is ignored
    anyway, so it is left out of the extraction, as securemcp does with the HTTP header.
    """
    request_context = _fastmcp_dependencies.fastmcp_request_ctx.get()
    if request_context is None:
        return None
    meta = request_context.meta
    if not meta:
        return None
    return extract_trace_context(usable_trace_meta(meta))


def install_trace_meta() -> None:
    """Route FastMCP's ``_meta`` trace extraction (its seam, its ``propagation_only`` mode and
    its core-path span without a seam) through :func:`parent_trace_context` (idempotent).

    Process-wide, like FastMCP's recorder: for a server securemcp does not build this changes
    nothing but the warning, since the values it leaves out are ignored by the propagator.
    """
    telemetry = _fastmcp_server_telemetry
    if getattr(telemetry, "_get_parent_trace_context", None) is not parent_trace_context:
        telemetry._get_parent_trace_context = parent_trace_context
