"""OpenTelemetry for securemcp: enrich FastMCP's server span, record MCP metrics.

Follows the OpenTelemetry semantic conventions for MCP (``docs/gen-ai/mcp.md``, Development
status): FastMCP already opens exactly one ``SERVER`` span per request, so securemcp *enriches*
that span instead of opening a second one, and records the ``mcp.server.operation.duration``
histogram (seconds, the convention's bucket boundaries) plus securemcp's own counters.

While a call's span is recording (an SDK is configured and the call is sampled), the pipeline
also times each of its steps (:class:`StepTimer`): ``securemcp.authenticate``,
``securemcp.authorize`` (rate limits, scopes, policy, approval), ``securemcp.audit.decision`` and
``securemcp.audit.outcome``; the rest of the call is the tool. Every step's duration becomes an
attribute of the call's span (``securemcp.step.<step>.duration``, seconds). A step also becomes an
``INTERNAL`` child span where that helps a reader of the trace: when it refused or failed the
call, or took at least the slow-step threshold (1 ms by default). ``SECUREMCP_STEP_SPANS=all``
gives every step its child span, ``off`` none; ``SECUREMCP_SLOW_STEP_MS`` moves the threshold.
A child span per step on every call would make each call five spans to export and store, and
cost an SDK more than the rest of securemcp's telemetry together.
Without a recording span no step is timed.

A request the HTTP guard refuses before any token is trusted (401, 400, 403 ``Origin``, 429, 503)
never reaches FastMCP, so :meth:`Telemetry.refused_at_http` opens the ``SERVER`` span it gets
instead (HTTP semantic conventions) and counts it.

Only the OpenTelemetry **API** is used here; without an SDK configured every call is a no-op.
Nothing secret ever becomes an attribute: the principal appears only as a pseudonym (a hash of
issuer and subject), and arguments, tokens, headers and query strings are never recorded.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping
from typing import Any, Final, Literal

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from securemcp._metrics import DURATION_BUCKETS, Instruments, for_provider, global_instruments
from securemcp.context import Principal

__all__ = [
    "DURATION_BUCKETS",
    "ERROR_TYPES",
    "STEP_NAMES",
    "StepSpans",
    "StepTimer",
    "Telemetry",
]

#: Which pipeline steps become child spans: ``auto`` (refused, failed or slow steps), ``all``,
#: ``off`` (none; the step durations stay attributes of the call's span).
StepSpans = Literal["auto", "all", "off"]

#: The child spans a recording call span gets, one per pipeline step that ran.
STEP_NAMES: Final = (
    "securemcp.authenticate",
    "securemcp.authorize",
    "securemcp.audit.decision",
    "securemcp.audit.outcome",
)

#: The call-span attribute holding each step's duration (seconds).
_STEP_DURATION: Final = {
    name: "securemcp.step." + name.removeprefix("securemcp.") + ".duration" for name in STEP_NAMES
}

_STEP_SPAN_MODES: Final = ("auto", "all", "off")

#: A step at least this long gets its child span under ``auto`` (milliseconds).
DEFAULT_SLOW_STEP_MS: Final = 1.0


class StepTimer:
    """Wall-clock boundaries of the pipeline's steps for one call, turned into span attributes
    (and the child spans that help a reader) at the end by :meth:`Telemetry.record`, so the
    steps themselves run unchanged.

    Only created while the call's span is recording.
    """

    __slots__ = ("last", "marks")

    def __init__(self) -> None:
        self.last = time.time_ns()
        self.marks: list[tuple[str, int, int, str | None]] = []

    def done(self, name: str, error_type: str | None = None) -> None:
        """The step ``name`` ran from the previous boundary until now (and failed with
        ``error_type``, if given)."""
        now = time.time_ns()
        self.marks.append((name, self.last, now, error_type))
        self.last = now

    def skip(self) -> None:
        """What ran since the previous boundary is not a securemcp step (the tool)."""
        self.last = time.time_ns()


#: The documented vocabulary of ``error.type`` values securemcp sets.
ERROR_TYPES: Final = frozenset(
    {
        "invalid_token",
        "invalid_request",
        "invalid_params",
        "method_not_found",
        "origin_not_allowed",
        "verifier_unavailable",
        "insufficient_scope",
        "policy_denied",
        "rate_limited",
        "approval_required",
        "audit_unavailable",
        "pipeline_bypassed",
        "not_found",
        "tool_error",
        "timeout",
        "result_too_large",
        "policy_error",
        "invalid_arguments",
        "approval_invalid",
        "component_changed",
        "access_denied",
        "upstream_unavailable",
        "upstream_timeout",
        "upstream_error",
        "upstream_auth_failed",
        "upstream_output_rejected",
        "tool_definition_changed",
        "_OTHER",
    }
)

#: One propagator for every refusal (it holds no state).
_PROPAGATOR: Final = TraceContextTextMapPropagator()

#: A ``traceparent`` longer than this is ignored without parsing (version 00 has 55 characters;
#: the propagator itself logs a warning above 512, which an attacker could use to flood the log).
_MAX_TRACEPARENT: Final = 256

#: A ``tracestate`` longer than this is ignored (the propagator's own limit, with a warning).
_MAX_TRACESTATE: Final = 8192
#: At most this many ``tracestate`` members (more: the propagator logs a warning, keeps none).
_MAX_TRACESTATE_MEMBERS: Final = 32
#: One ``tracestate`` list member (W3C Trace Context, "tracestate Header Field Values"; the
#: pattern the OpenTelemetry API checks each member against, logging the member when it fails).
_TRACESTATE_MEMBER: Final = re.compile(
    r"(?:[a-z][_0-9a-z\-*/]{0,255}|[a-z0-9][_0-9a-z\-*/]{0,240}@[a-z][_0-9a-z\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)

#: The API's own tracer providers: with either in force no span records (no SDK configured).
_NO_SDK: Final = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)

#: HTTP methods the semantic conventions know; any other is reported as ``_OTHER``.
_HTTP_METHODS: Final = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)

#: The shape of a refusal reason code (``expired``, ``missing_claim:exp``...). A verifier may
#: raise any text as its reason; anything else is reported as ``_OTHER``, so no free text (and
#: no token a custom verifier might quote) reaches an attribute or a metric.
_REASON_CODE: Final = re.compile(r"[a-z][a-z0-9_]{0,47}(?::[a-z][a-z0-9_]{0,31})?")

_TARGET_ATTRIBUTE: Final = {
    "tools/call": "gen_ai.tool.name",
    "prompts/get": "gen_ai.prompt.name",
    "resources/read": "mcp.resource.uri",
}


def usable_traceparent(value: object) -> str | None:
    """``value`` if it is a ``traceparent`` worth parsing: a string of at most 256 characters.

    Anything else is ignored by the propagator anyway; above 512 characters it also logs a
    ``WARNING`` each time, which a caller could use to flood the server log.
    """
    return value if isinstance(value, str) and len(value) <= _MAX_TRACEPARENT else None


def _usable_tracestate(value: object) -> bool:
    """Whether the propagator would take ``value`` as a ``tracestate`` without logging: a string
    of at most 8192 characters and 32 members, each well-formed (empty members are allowed)."""
    if not isinstance(value, str) or len(value) > _MAX_TRACESTATE:
        return False
    members = [member for member in (m.strip(" \t") for m in value.split(",")) if member]
    return len(members) <= _MAX_TRACESTATE_MEMBERS and all(
        _TRACESTATE_MEMBER.fullmatch(member) for member in members
    )


def usable_trace_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """A request ``_meta`` without a ``traceparent`` or ``tracestate`` the OpenTelemetry
    propagator would ignore with a logged warning (over-long, malformed ``tracestate``
    members) or FastMCP would turn into text with ``str()`` (not a string).

    ``meta`` itself when both are usable or absent (the common case, nothing is copied).
    """
    drop_parent = "traceparent" in meta and usable_traceparent(meta["traceparent"]) is None
    drop_state = "tracestate" in meta and not _usable_tracestate(meta["tracestate"])
    if not (drop_parent or drop_state):
        return meta
    usable = dict(meta)
    if drop_parent:
        del usable["traceparent"]
        usable.pop("tracestate", None)  # a tracestate means nothing without its traceparent
    if drop_state:
        usable.pop("tracestate", None)
    return usable


def metrics_can_record() -> bool:
    """Whether a global meter provider is set (or named), so the global instruments record."""
    return global_instruments() is not None


def _step_spans_setting(
    step_spans: StepSpans | None, slow_step_ms: float | None
) -> tuple[str, int]:
    """The step-span mode and slow-step threshold (ns), from the arguments or the environment.

    Raises:
        ValueError: an unknown mode or a threshold that is not a non-negative number, so a
            typo in the deployment is reported when the server is built, not silently ignored.
    """
    mode: str = step_spans or os.environ.get("SECUREMCP_STEP_SPANS", "").strip().lower() or "auto"
    if mode not in _STEP_SPAN_MODES:
        raise ValueError(
            f"SECUREMCP_STEP_SPANS / step_spans must be one of {', '.join(_STEP_SPAN_MODES)}"
            f", not {mode!r}"
        )
    if slow_step_ms is None:
        text = os.environ.get("SECUREMCP_SLOW_STEP_MS", "").strip()
        try:
            slow_step_ms = float(text) if text else DEFAULT_SLOW_STEP_MS
        except ValueError:
            raise ValueError(
                f"SECUREMCP_SLOW_STEP_MS must be a number of milliseconds, not {text!r}"
            ) from None
    if not 0 <= slow_step_ms < float("inf"):
        raise ValueError(f"the slow-step threshold must be >= 0 ms, not {slow_step_ms!r}")
    return mode, int(slow_step_ms * 1_000_000)


class Telemetry:
    """Spans and metrics for one securemcp server.

    Args:
        meter_provider: record metrics with this provider instead of the global one.
        step_spans: which steps become child spans (default: ``SECUREMCP_STEP_SPANS``, else
            ``auto``).
        slow_step_ms: under ``auto``, a step at least this long gets its child span (default:
            ``SECUREMCP_SLOW_STEP_MS``, else 1 ms).
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        step_spans: StepSpans | None = None,
        slow_step_ms: float | None = None,
    ) -> None:
        from securemcp import __version__

        self._own_instruments = for_provider(meter_provider) if meter_provider is not None else None
        self._tracer = trace.get_tracer("securemcp", __version__)
        self.step_spans, self._slow_step_ns = _step_spans_setting(step_spans, slow_step_ms)

    def _instruments(self) -> Instruments | None:
        """Where this server's metrics go (``None``: nowhere, no provider is set)."""
        own = self._own_instruments
        return own if own is not None else global_instruments()

    @staticmethod
    def current_span() -> Span | None:
        """FastMCP's server span for this request, if one is recording."""
        span = trace.get_current_span()
        return span if span.is_recording() else None

    def record(
        self,
        span: Span | None,
        *,
        method: str,
        target: str,
        decision: str,
        reason: str,
        error_type: str | None,
        duration_s: float,
        principal: Principal | None,
        call_id: str | None,
        policy_version: str | None = None,
        extra: Mapping[str, Any] | None = None,
        steps: StepTimer | None = None,
        resolved: bool = False,
    ) -> None:
        """Record the outcome of one call on its span and in the metrics.

        ``steps`` (only while ``span`` records) adds each step's duration to the span and the
        step spans :attr:`step_spans` asks for.

        ``resolved`` says the call's target is a registered component (the pipeline found it).
        Only then is ``target`` recorded: as the span's name and attribute and as the metrics'
        tool or prompt name. An unresolved target (a caller that did not authenticate, a name
        that does not exist) is text the caller chose: it would let anyone create metric
        series without bound and write into span names, so such a call is recorded by its
        method alone.
        """
        if error_type is not None and error_type not in ERROR_TYPES:
            error_type = "_OTHER"  # the documented vocabulary is closed
        if reason != "ok" and reason not in ERROR_TYPES:
            reason = "_OTHER"  # a reason is an error type or ok: the counters stay bounded
        target_attribute = _TARGET_ATTRIBUTE.get(method) if resolved else None
        instruments = self._instruments()
        if instruments is not None:
            metric_attributes: dict[str, str] = {"mcp.method.name": method}
            if target_attribute and method != "resources/read":
                metric_attributes[target_attribute] = target
            if error_type is not None:
                metric_attributes["error.type"] = error_type
            instruments.duration.record(duration_s, metric_attributes)
            instruments.decisions.add((method, decision, reason))
            if error_type == "rate_limited":
                instruments.rate_limited.add((method,))
        if span is None:
            return
        attributes: dict[str, Any] = {
            "mcp.method.name": method,
            "securemcp.decision": decision,
            "securemcp.reason": reason,
        }
        if target_attribute:
            attributes[target_attribute] = target
            if method != "resources/read":  # name stays low-cardinality: no URIs
                span.update_name(f"{method} {target}")
            else:  # FastMCP's core path named the component by the URI the caller sent
                attributes["fastmcp.component.key"] = target
        if method == "tools/call":
            attributes["gen_ai.operation.name"] = "execute_tool"
        if call_id is not None:
            attributes["securemcp.call_id"] = call_id
        if principal is not None:
            # Overrides FastMCP's enduser.id (the OAuth client id) with a pseudonym.
            attributes["enduser.id"] = principal.pseudonym
            attributes["securemcp.principal.verified"] = principal.verified
            if principal.tenant is not None:
                attributes["securemcp.tenant"] = principal.tenant
        if policy_version is not None:
            attributes["securemcp.policy.version"] = policy_version
        if extra:
            attributes.update(extra)
        if error_type is not None:
            attributes["error.type"] = error_type
            span.set_status(StatusCode.ERROR, reason)
        if steps is not None:
            for name, start, end, _ in steps.marks:
                attributes[_STEP_DURATION[name]] = (end - start) / 1e9
            if self.step_spans != "off":
                self._step_spans(span, steps)
        span.set_attributes(attributes)

    def _step_spans(self, span: Span, timer: StepTimer) -> None:
        """The steps that help a reader, as ``INTERNAL`` children of the call's ``span``.

        Under ``auto``: a step that refused or failed the call, or took at least the slow-step
        threshold. Under ``all``: every step.
        """
        every = self.step_spans == "all"
        slow = self._slow_step_ns
        parent = None
        for name, start, end, error_type in timer.marks:
            if not every and error_type is None and end - start < slow:
                continue
            if parent is None:
                parent = trace.set_span_in_context(span)
            child = self._tracer.start_span(
                name, parent, SpanKind.INTERNAL, start_time=start, record_exception=False
            )
            if error_type is not None:
                if error_type not in ERROR_TYPES:
                    error_type = "_OTHER"
                child.set_attribute("error.type", error_type)
                child.set_status(StatusCode.ERROR, error_type)
            child.end(end_time=end)

    def refused_before_server(
        self,
        *,
        method: str,
        target: str,
        principal: Principal,
        error_type: str,
        call_id: str,
        traceparent: object = None,
    ) -> str | None:
        """Trace and count a call refused before FastMCP ran (the HTTP layer's 403 step-up).

        FastMCP opens no span for a request it never sees, so this opens the ``SERVER`` span the
        call would have had, parented on the caller's W3C ``traceparent`` from the request
        ``_meta`` when it is valid, and records it like any refused call.

        Returns:
            The trace id to put in the audit record (``None`` without a valid trace context).
        """
        usable = usable_traceparent(traceparent)
        parent = _PROPAGATOR.extract({"traceparent": usable}) if usable is not None else None
        name = method if method == "resources/read" else f"{method} {target}"
        with self._tracer.start_as_current_span(
            name,
            context=parent,
            kind=trace.SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            self.record(
                span if span.is_recording() else None,
                method=method,
                target=target,
                decision="deny",
                reason=error_type,
                error_type=error_type,
                duration_s=0.0,
                principal=principal,
                call_id=call_id,
                resolved=True,  # the step-up refusal names the scopes of an existing target
            )
            context = span.get_span_context()
        if context.is_valid:
            return format(context.trace_id, "032x")
        remote = trace.get_current_span(parent).get_span_context() if parent else None
        return format(remote.trace_id, "032x") if remote is not None and remote.is_valid else None

    def refused_at_http(
        self,
        *,
        http_method: str,
        status_code: int,
        error_type: str,
        reason: str,
        route: str | None = None,
        scheme: str | None = None,
        traceparent: str | None = None,
    ) -> str | None:
        """Trace and count a request the HTTP guard refused before any token was trusted.

        FastMCP never sees the request, so this opens the ``SERVER`` span it would otherwise
        lack, named after the HTTP semantic conventions (``POST /mcp``: the method and the route,
        never the raw path or query), parented on the caller's ``traceparent`` HTTP header when
        it is valid and no span is current already. It is counted in
        ``securemcp.authz.decisions`` as a ``deny`` with ``reason``, without ``mcp.method.name``
        (the MCP method is unknown: the body is not read).

        Attacker-driven (floods of forged tokens): without an SDK this costs two no-op metric
        calls and nothing else; with one, attributes are only built for a recording span.

        Args:
            http_method: the request's HTTP method (anything unknown becomes ``_OTHER``).
            status_code: the HTTP status answered.
            error_type: from :data:`ERROR_TYPES` (anything else becomes ``_OTHER``).
            reason: the guard's stable reason code (``no_credential``, ``expired``, ...).
            route: the MCP endpoint's configured path, if the request was for exactly it.
            scheme: ``http`` or ``https``.
            traceparent: the request's ``traceparent`` header value, if it had exactly one.

        Returns:
            The refusal span's trace id, for the audit record (``None`` when no span recorded).
        """
        if error_type not in ERROR_TYPES:
            error_type = "_OTHER"
        if _REASON_CODE.fullmatch(reason) is None:
            reason = "_OTHER"
        instruments = self._instruments()
        if instruments is not None:
            instruments.decisions.add((None, "deny", reason))
            if error_type == "rate_limited":
                instruments.rate_limited.add((None,))
        if isinstance(trace.get_tracer_provider(), _NO_SDK):
            return None  # no span could record: skip parsing the header and the no-op span
        parent = None
        if (
            traceparent
            and usable_traceparent(traceparent) is not None
            and not trace.get_current_span().get_span_context().is_valid  # an ambient span wins
        ):
            parent = _PROPAGATOR.extract({"traceparent": traceparent})
        method = http_method if http_method in _HTTP_METHODS else "_OTHER"
        name = "HTTP" if method == "_OTHER" else method
        span = self._tracer.start_span(
            f"{name} {route}" if route else name,
            parent,
            SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        )
        if span.is_recording():
            attributes: dict[str, Any] = {
                "http.request.method": method,
                "http.response.status_code": status_code,
                "error.type": error_type,
                "securemcp.decision": "deny",
                "securemcp.reason": reason,
            }
            if route:
                attributes["http.route"] = route
                attributes["url.path"] = route  # the request was for exactly this path
            if scheme in ("http", "https"):
                attributes["url.scheme"] = scheme
            span.set_attributes(attributes)
            span.set_status(StatusCode.ERROR, reason)
        span.end()
        context = span.get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None

    def approval(self, event: str) -> None:
        """Count an approval event (``requested``, ``approved``, ``denied``, ``consumed``)."""
        instruments = self._instruments()
        if instruments is not None:
            instruments.approvals.add((event,))
