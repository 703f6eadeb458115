"""FastMCP's per-call span bookkeeping skipped while no OpenTelemetry SDK could record it.

FastMCP's core call paths (``call_tool``, ``read_resource`` and ``render_prompt`` with
``run_middleware=False``, the part that runs the component) open a ``SERVER`` span per call
(``fastmcp.server.telemetry.server_span``). Before it asks the tracer for the span, FastMCP
builds its attributes: protocol, auth and session attributes, which read the access token, the
request and the session id. With no tracer provider configured (the OpenTelemetry API's default
``ProxyTracerProvider``, or an explicit ``NoOpTracerProvider``) the tracer then hands back the
current non-recording span, and all of that work is dropped. On our benchmark host it costs a
server-side ``tools/call`` about 30 µs, more than twice the 5% budget of the whole security layer.

FastMCP's own ``propagation_only`` telemetry mode, scoped with its public
``fastmcp.telemetry.suppress_fastmcp_telemetry()``, gives the code inside the call the same
OpenTelemetry context without building anything: the caller's ``_meta`` trace parent (if any) is
attached and no span is created. (Without an SDK, FastMCP's native path attaches the same parent:
the no-op tracer returns the parent's non-recording span and makes it current.) So while no
provider is configured, :class:`SkipsUnrecordedSpans` runs the core paths under that scope.
The check is made on every call: once an application installs an SDK, the next call gets
FastMCP's spans exactly as before, enriched by securemcp as usual. FastMCP's ``off`` mode is
never changed (suppression cannot override it).

Standard: OpenTelemetry API, global ``TracerProvider`` (``opentelemetry.trace``).
"""

from __future__ import annotations

from typing import Any

from fastmcp.telemetry import suppress_fastmcp_telemetry
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

__all__ = ["SkipsUnrecordedSpans", "spans_cannot_record"]

#: Providers whose spans never record. Matched exactly: a subclass may record.
_NON_RECORDING_PROVIDERS = frozenset({ProxyTracerProvider, NoOpTracerProvider})


def spans_cannot_record() -> bool:
    """Whether no tracer provider is configured, so every span would be a no-op.

    ``get_tracer_provider()`` answers the API's ``ProxyTracerProvider`` only while none is set
    (it loads the one ``OTEL_PYTHON_TRACER_PROVIDER`` names, if any); a ``NoOpTracerProvider``
    never records. Any other provider (the SDK's, a vendor's, a subclass of those two) may
    record, so FastMCP keeps its spans.
    """
    return type(trace.get_tracer_provider()) in _NON_RECORDING_PROVIDERS


class SkipsUnrecordedSpans:
    """Server mixin: FastMCP's core call paths skip building spans nobody can record.

    Placed before ``fastmcp.FastMCP`` in the bases. Calls through the middleware chain
    (``run_middleware=True``) are unchanged; the chain's own call of the core path gets the scope.
    """

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        version: Any = None,
        run_middleware: bool = True,
    ) -> Any:
        if run_middleware or not spans_cannot_record():
            return await super().call_tool(  # type: ignore[misc]
                name, arguments, version=version, run_middleware=run_middleware
            )
        with suppress_fastmcp_telemetry():
            return await super().call_tool(  # type: ignore[misc]
                name, arguments, version=version, run_middleware=False
            )

    async def read_resource(
        self, uri: Any, *, version: Any = None, run_middleware: bool = True
    ) -> Any:
        if run_middleware or not spans_cannot_record():
            return await super().read_resource(  # type: ignore[misc]
                uri, version=version, run_middleware=run_middleware
            )
        with suppress_fastmcp_telemetry():
            return await super().read_resource(  # type: ignore[misc]
                uri, version=version, run_middleware=False
            )

    async def render_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        version: Any = None,
        run_middleware: bool = True,
    ) -> Any:
        if run_middleware or not spans_cannot_record():
            return await super().render_prompt(  # type: ignore[misc]
                name, arguments, version=version, run_middleware=run_middleware
            )
        with suppress_fastmcp_telemetry():
            return await super().render_prompt(  # type: ignore[misc]
                name, arguments, version=version, run_middleware=False
            )
