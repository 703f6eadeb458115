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
provider is configured, ``securemcp.FastMCP`` runs its core paths under that scope
(:func:`quiet_core_path`). The check is made on every call: once an application installs an
SDK, the next call gets FastMCP's spans exactly as before, enriched by securemcp as usual.
FastMCP's ``off`` mode is never changed (suppression cannot override it).

Standard: OpenTelemetry API, global ``TracerProvider`` (``opentelemetry.trace``).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from typing import Final

from fastmcp.telemetry import suppress_fastmcp_telemetry
from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

__all__ = ["quiet_core_path", "spans_cannot_record"]

#: Providers whose spans never record. Matched exactly: a subclass may record.
_NON_RECORDING_PROVIDERS: Final = frozenset({ProxyTracerProvider, NoOpTracerProvider})

#: Whether the environment names a provider for the API to load on first use. Read once: the
#: MCP SDK asks the API for a tracer when it is imported, which loads that provider then.
_PROVIDER_NAMED: Final = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ

_NO_SCOPE: Final = nullcontext()


def spans_cannot_record() -> bool:
    """Whether no tracer provider is configured, so every span would be a no-op.

    The API keeps the global provider in ``opentelemetry.trace._TRACER_PROVIDER``, set at most
    once per process; it is read directly because the public ``get_tracer_provider()`` also
    looks ``OTEL_PYTHON_TRACER_PROVIDER`` up in the environment on every call while no provider
    is set (a measurable part of a call). With none set, the answer is "cannot record" unless
    that variable named one at start-up. A ``NoOpTracerProvider`` never records. Any
    other provider (the SDK's, a vendor's, a subclass of those two) may, so FastMCP keeps its
    spans. ``tests/test_unrecorded_spans.py`` pins the API internal.
    """
    provider = trace._TRACER_PROVIDER
    if provider is None:
        return not _PROVIDER_NAMED
    return type(provider) in _NON_RECORDING_PROVIDERS


def quiet_core_path() -> AbstractContextManager[object]:
    """The scope to run a FastMCP core path in: suppressed while spans cannot record."""
    return suppress_fastmcp_telemetry() if spans_cannot_record() else _NO_SCOPE
