"""OpenTelemetry for securemcp: enrich FastMCP's server span, record MCP metrics.

Follows the OpenTelemetry semantic conventions for MCP (``docs/gen-ai/mcp.md``, Development
status): FastMCP already opens exactly one ``SERVER`` span per request, so securemcp *enriches*
that span instead of opening a second one, and records the ``mcp.server.operation.duration``
histogram (seconds, the convention's bucket boundaries) plus securemcp's own counters.

Only the OpenTelemetry **API** is used here; without an SDK configured every call is a no-op.
Nothing secret ever becomes an attribute: the principal appears only as a pseudonym (a hash of
issuer and subject), and arguments, tokens and headers are never recorded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, StatusCode

from securemcp.context import Principal

__all__ = ["ERROR_TYPES", "Telemetry"]

#: The documented vocabulary of ``error.type`` values securemcp sets.
ERROR_TYPES: Final = frozenset(
    {
        "invalid_token",
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

_TARGET_ATTRIBUTE: Final = {
    "tools/call": "gen_ai.tool.name",
    "prompts/get": "gen_ai.prompt.name",
    "resources/read": "mcp.resource.uri",
}


class Telemetry:
    """Spans and metrics for one securemcp server. Instruments are created once, here."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from securemcp import __version__

        meter = metrics.get_meter("securemcp", __version__, meter_provider=meter_provider)
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
        metric_attributes: dict[str, str] = {"mcp.method.name": method}
        if target_attribute and method != "resources/read":
            metric_attributes[target_attribute] = target
        if error_type is not None:
            metric_attributes["error.type"] = error_type
        self._duration.record(duration_s, metric_attributes)
        self._decisions.add(
            1,
            {"mcp.method.name": method, "securemcp.decision": decision, "securemcp.reason": reason},
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
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier = {"traceparent": traceparent} if isinstance(traceparent, str) else {}
        parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
        tracer = trace.get_tracer("securemcp")
        name = method if method == "resources/read" else f"{method} {target}"
        with tracer.start_as_current_span(
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

    def approval(self, event: str) -> None:
        """Count an approval event (``requested``, ``approved``, ``denied``, ``consumed``)."""
        self._approvals.add(1, {"securemcp.approval.event": event})
