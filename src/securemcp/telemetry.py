"""OpenTelemetry for securemcp: enrich FastMCP's server span, record MCP metrics.

Follows the OpenTelemetry semantic conventions for MCP (``docs/gen-ai/mcp.md``, Development
status): FastMCP already opens exactly one ``SERVER`` span per request, so securemcp *enriches*
that span instead of opening a second one, and records the ``mcp.server.operation.duration``
histogram (seconds, the convention's bucket boundaries) plus securemcp's own counters.

While a call's span is recording (an SDK is configured and the call is sampled), the pipeline
also records what each of its steps took as ``INTERNAL`` child spans (:class:`StepTimer`):
``securemcp.authenticate``, ``securemcp.authorize`` (rate limits, scopes, policy, approval),
``securemcp.audit.decision`` and ``securemcp.audit.outcome``; the rest of the call is the tool.
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
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as _metrics_api
from opentelemetry.trace import Span, SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from securemcp.context import Principal

__all__ = ["ERROR_TYPES", "STEP_NAMES", "StepTimer", "Telemetry"]

#: The child spans a recording call span gets, one per pipeline step that ran.
STEP_NAMES: Final = (
    "securemcp.authenticate",
    "securemcp.authorize",
    "securemcp.audit.decision",
    "securemcp.audit.outcome",
)


class StepTimer:
    """Wall-clock boundaries of the pipeline's steps for one call, made into child spans at the
    end (:meth:`Telemetry.steps`) so the steps themselves run unchanged.

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

#: Recommended bucket boundaries for ``mcp.server.operation.duration`` (seconds).
DURATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

#: One propagator for every refusal (it holds no state).
_PROPAGATOR: Final = TraceContextTextMapPropagator()

#: A ``traceparent`` longer than this is ignored without parsing (version 00 has 55 characters;
#: the propagator itself logs a warning above 512, which an attacker could use to flood the log).
_MAX_TRACEPARENT: Final = 256

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


#: Whether the environment names a meter provider for the API to load on first use (read once:
#: the API loads it the first time anything asks for a meter, as this module does).
_METER_PROVIDER_NAMED: Final = "OTEL_PYTHON_METER_PROVIDER" in os.environ


def metrics_can_record() -> bool:
    """Whether a global meter provider is set (or named), so the global instruments may record.

    Until one is, the API's instruments are proxies that drop every measurement: the
    attributes are not built for them. The API keeps the provider in
    ``opentelemetry.metrics._internal._METER_PROVIDER`` (set at most once per process), read
    directly as ``securemcp._unrecorded_spans`` reads the tracer provider.
    """
    return _metrics_api._METER_PROVIDER is not None or _METER_PROVIDER_NAMED


class Telemetry:
    """Spans and metrics for one securemcp server. Instruments are created once, here."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from securemcp import __version__

        meter = metrics.get_meter("securemcp", __version__, meter_provider=meter_provider)
        self._own_meter_provider = meter_provider is not None
        self._tracer = trace.get_tracer("securemcp", __version__)
        self._duration = meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="Duration of MCP requests handled by the server, as seen by securemcp.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self._decisions = meter.create_counter(
            "securemcp.authz.decisions",
            unit="{call}",
            description="Calls by securemcp decision and reason.",
        )
        self._rate_limited = meter.create_counter(
            "securemcp.ratelimit.rejections",
            unit="{call}",
            description="Calls refused by a rate limit.",
        )
        self._approvals = meter.create_counter(
            "securemcp.approvals",
            unit="{approval}",
            description="Approval requests and their resolutions.",
        )

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
    ) -> None:
        """Record the outcome of one call on its span and in the metrics."""
        if error_type is not None and error_type not in ERROR_TYPES:
            error_type = "_OTHER"  # the documented vocabulary is closed
        target_attribute = _TARGET_ATTRIBUTE.get(method)
        if self._own_meter_provider or metrics_can_record():
            metric_attributes: dict[str, str] = {"mcp.method.name": method}
            if target_attribute and method != "resources/read":
                metric_attributes[target_attribute] = target
            if error_type is not None:
                metric_attributes["error.type"] = error_type
            self._duration.record(duration_s, metric_attributes)
            self._decisions.add(
                1,
                {
                    "mcp.method.name": method,
                    "securemcp.decision": decision,
                    "securemcp.reason": reason,
                },
            )
            if error_type == "rate_limited":
                self._rate_limited.add(1, {"mcp.method.name": method})
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
        span.set_attributes(attributes)

    def steps(self, span: Span, timer: StepTimer) -> None:
        """Record the steps ``timer`` marked as ``INTERNAL`` children of the call's ``span``."""
        parent = trace.set_span_in_context(span)
        for name, start, end, error_type in timer.marks:
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
        carrier = {"traceparent": traceparent} if isinstance(traceparent, str) else {}
        parent = _PROPAGATOR.extract(carrier) if carrier else None
        name = method if method == "resources/read" else f"{method} {target}"
        with self._tracer.start_as_current_span(
            name, context=parent, kind=trace.SpanKind.SERVER, record_exception=False
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
        self._decisions.add(1, {"securemcp.decision": "deny", "securemcp.reason": reason})
        if error_type == "rate_limited":
            self._rate_limited.add(1)
        if isinstance(trace.get_tracer_provider(), _NO_SDK):
            return None  # no span could record: skip parsing the header and the no-op span
        parent = None
        if (
            traceparent
            and len(traceparent) <= _MAX_TRACEPARENT
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
        self._approvals.add(1, {"securemcp.approval.event": event})
