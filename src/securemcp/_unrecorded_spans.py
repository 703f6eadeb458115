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

The scope is FastMCP's suppression marker, a value in the OpenTelemetry context, so everything
started inside the call copies it: a task the tool body spawns (``asyncio.create_task``, an
anyio task group's ``start_soon``) keeps it for its whole life. A worker started during warm-up,
before the application installed its SDK, would then never get FastMCP's spans (its
``fastmcp.Client`` calls, the servers it calls in-process), nor securemcp's request spans,
which follow FastMCP's mode. (The marker never hides the application's own spans: only FastMCP
reads it.) So the marker set here is not FastMCP's plain ``True`` but :data:`_QUIET`, which is
true only while no span could record: FastMCP tests the marker by truth, so once an SDK is
installed every holder of the marker, in-flight or spawned, gets FastMCP's spans back. While it
holds, suppressing changes nothing anyone could observe (see above). If FastMCP no longer has
the marker this module sets, the public ``suppress_fastmcp_telemetry()`` is used instead.

Standard: OpenTelemetry API, global ``TracerProvider`` (``opentelemetry.trace``) and context
(``opentelemetry.context``).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, Final

import fastmcp.telemetry as _fastmcp_telemetry
from fastmcp.telemetry import suppress_fastmcp_telemetry
from opentelemetry import context as otel_context
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


class _WhileNothingRecords:
    """FastMCP's suppression marker, true only while no span could record."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return spans_cannot_record()

    def __repr__(self) -> str:
        return "<suppressed while no span can record>"


_QUIET: Final = _WhileNothingRecords()

#: FastMCP's context key for its suppression marker (``fastmcp.telemetry``, private).
_SUPPRESS_KEY: Final[Any] = getattr(_fastmcp_telemetry, "_SUPPRESS_KEY", None)


class _QuietScope:
    """``suppress_fastmcp_telemetry()`` with :data:`_QUIET` as the marker (see the module)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_context.set_value(_SUPPRESS_KEY, _QUIET))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        otel_context.detach(self._token)


def quiet_core_path() -> AbstractContextManager[object]:
    """The scope to run a FastMCP core path in: suppressed while spans cannot record (and, for
    anything started inside it, only for as long as that lasts)."""
    if not spans_cannot_record():
        return _NO_SCOPE
    if _SUPPRESS_KEY is None:
        return suppress_fastmcp_telemetry()
    return _QuietScope()
