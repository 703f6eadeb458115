"""securemcp's metric instruments, bound once per OpenTelemetry meter provider.

Implements the metrics of the OpenTelemetry semantic conventions for MCP
(``mcp.server.operation.duration``: a histogram in seconds with the convention's bucket
boundaries) and securemcp's own counters, with the OpenTelemetry metrics API only.

**Counters are kept in process and reported by asynchronous counters.** A synchronous
``Counter.add`` costs an SDK tens of microseconds per call (it hashes the attribute set, finds the
aggregation, takes its lock and offers an exemplar), more than the rest of securemcp's metrics
together. A call only needs to count, so each counter here is a table of cumulative counts per
attribute set (one dictionary increment under a lock), and an ``ObservableCounter`` reports the
table whenever the SDK collects. For an exporter the two are the same instrument kind: a
monotonic sum, cumulative or delta as the reader asks. What is lost is the counters' exemplars;
the duration histogram, which keeps them, links calls to traces.

**One binding per provider.** An SDK accepts an instrument name once per meter and drops the
callbacks of a second registration, so every server in the process that reports to the same
provider shares one :class:`Instruments` (found in a weak registry keyed by the provider). The
global provider is resolved when it is first needed, not when a server is built: until an
application sets one (or names one in ``OTEL_PYTHON_METER_PROVIDER``), nothing is recorded or
counted, as with the API's own no-op instruments.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable
from typing import Final

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_api

__all__ = [
    "CARDINALITY_LIMIT",
    "DURATION_BUCKETS",
    "CumulativeCounts",
    "Instruments",
    "for_provider",
    "global_instruments",
]

#: Recommended bucket boundaries for ``mcp.server.operation.duration`` (seconds).
DURATION_BUCKETS: Final = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)

#: Whether the environment names a meter provider for the API to load on first use (read once).
_METER_PROVIDER_NAMED: Final = "OTEL_PYTHON_METER_PROVIDER" in os.environ


#: Distinct attribute sets a counter keeps before it counts new ones together as overflow, as
#: the SDK's default cardinality limit does for its own aggregations.
CARDINALITY_LIMIT: Final = 2000

#: The table key of the overflow count, reported with ``otel.metric.overflow=true``.
_OVERFLOW: Final = ("otel.metric.overflow",)


class CumulativeCounts:
    """Cumulative counts per attribute set, reported at each collection.

    ``keys`` names the attributes, in the order of the value tuples given to :meth:`add`; a
    ``None`` value leaves its attribute out. The attribute sets come from bounded vocabularies
    (method names, decisions, reason codes); should more than ``limit`` distinct sets arrive all
    the same, the rest are counted together under ``otel.metric.overflow=true`` (the
    OpenTelemetry convention), so the table's memory stays bounded.
    """

    __slots__ = ("_counts", "_keys", "_limit", "_lock")

    def __init__(self, keys: tuple[str, ...], limit: int = CARDINALITY_LIMIT) -> None:
        self._keys = keys
        self._limit = limit
        self._counts: dict[tuple[str | None, ...], int] = {}
        self._lock = threading.Lock()

    def add(self, values: tuple[str | None, ...]) -> None:
        """Count one event with these attribute values."""
        with self._lock:
            count = self._counts.get(values)
            if count is None:
                count = 0
                if len(self._counts) >= self._limit:
                    values = _OVERFLOW
                    count = self._counts.get(_OVERFLOW, 0)
            self._counts[values] = count + 1

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The ``ObservableCounter`` callback: every attribute set's count so far."""
        with self._lock:
            counts = list(self._counts.items())
        keys = self._keys
        observations = []
        for values, count in counts:
            if values is _OVERFLOW:
                observations.append(Observation(count, {"otel.metric.overflow": True}))
                continue
            attributes = {k: v for k, v in zip(keys, values, strict=True) if v is not None}
            observations.append(Observation(count, attributes))
        return observations


class Instruments:
    """The duration histogram and the three counters, registered with one meter provider."""

    __slots__ = ("__weakref__", "approvals", "decisions", "duration", "rate_limited")

    def __init__(self, provider: metrics.MeterProvider) -> None:
        from securemcp import __version__

        meter = provider.get_meter("securemcp", __version__)
        self.duration = meter.create_histogram(
            "mcp.server.operation.duration",
            unit="s",
            description="Duration of MCP requests handled by the server, as seen by securemcp.",
            explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
        )
        self.decisions = CumulativeCounts(
            ("mcp.method.name", "securemcp.decision", "securemcp.reason")
        )
        meter.create_observable_counter(
            "securemcp.authz.decisions",
            callbacks=[self.decisions.observe],
            unit="{call}",
            description="Calls by securemcp decision and reason.",
        )
        self.rate_limited = CumulativeCounts(("mcp.method.name",))
        meter.create_observable_counter(
            "securemcp.ratelimit.rejections",
            callbacks=[self.rate_limited.observe],
            unit="{call}",
            description="Calls refused by a rate limit.",
        )
        self.approvals = CumulativeCounts(("securemcp.approval.event",))
        meter.create_observable_counter(
            "securemcp.approvals",
            callbacks=[self.approvals.observe],
            unit="{approval}",
            description="Approval requests and their resolutions.",
        )


_BOUND: weakref.WeakKeyDictionary[metrics.MeterProvider, Instruments] = weakref.WeakKeyDictionary()
_BINDING: Final = threading.Lock()


def for_provider(provider: metrics.MeterProvider) -> Instruments:
    """The instruments registered with ``provider`` (registered on first use, once)."""
    instruments = _BOUND.get(provider)
    if instruments is None:
        with _BINDING:
            instruments = _BOUND.get(provider)
            if instruments is None:
                instruments = _BOUND[provider] = Instruments(provider)
    return instruments


#: The global provider last resolved and its instruments (checked by identity on every call).
_last_global: tuple[metrics.MeterProvider, Instruments] | None = None


def global_instruments() -> Instruments | None:
    """The instruments of the global meter provider, or ``None`` while none is set.

    Reads ``opentelemetry.metrics._internal._METER_PROVIDER`` (set at most once per process by
    ``metrics.set_meter_provider``) instead of calling ``get_meter_provider()``, which looks at
    the environment on every call. A provider named by ``OTEL_PYTHON_METER_PROVIDER`` is loaded
    the way the API loads it, the first time it is needed.
    """
    global _last_global
    provider = _metrics_api._METER_PROVIDER
    last = _last_global
    if last is not None and last[0] is provider:
        return last[1]
    if provider is None:
        if not _METER_PROVIDER_NAMED:
            return None
        loaded: metrics.MeterProvider | None = metrics.get_meter_provider()  # loads, sets it
        if loaded is None or isinstance(loaded, _metrics_api._ProxyMeterProvider):
            return None  # it could not be loaded or set: nothing records
        provider = loaded
    instruments = for_provider(provider)
    _last_global = (provider, instruments)
    return instruments
