"""securemcp's metric instruments (``securemcp._metrics``), read back through an SDK reader.

The counters are kept in process and reported by asynchronous counters, bound once per meter
provider: every server reporting to a provider must be counted (an SDK drops the callbacks of a
second registration of the same name), nothing is built while no provider is set, a provider
set after the server was built still receives its counts, and the counted attribute sets stay
bounded whatever reason a caller passes.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest
from opentelemetry.metrics import _internal as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Sum
from opentelemetry.util._once import Once

from securemcp import _metrics, telemetry


def record(
    recorder: telemetry.Telemetry, reason: str = "ok", error_type: str | None = None
) -> None:
    recorder.record(
        None,
        method="tools/call",
        target="where",
        decision="allow" if error_type is None else "deny",
        reason=reason,
        error_type=error_type,
        duration_s=0.001,
        principal=None,
        call_id="c1",
    )


def metric(reader: InMemoryMetricReader, name: str) -> Any:
    data = reader.get_metrics_data()
    found = [
        m
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for m in scope.metrics
        if m.name == name
    ]
    return found[0] if found else None


def counts(reader: InMemoryMetricReader, name: str = "securemcp.authz.decisions") -> dict[Any, int]:
    found = metric(reader, name)
    if found is None:
        return {}
    return {tuple(sorted(p.attributes.items())): p.value for p in found.data.data_points}


def decision(reason: str = "ok", verdict: str = "allow") -> tuple[tuple[str, str], ...]:
    return (
        ("mcp.method.name", "tools/call"),
        ("securemcp.decision", verdict),
        ("securemcp.reason", reason),
    )


@pytest.fixture
def no_global_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """No global meter provider set or named (restored afterwards)."""
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", None)
    monkeypatch.setattr(_metrics, "_METER_PROVIDER_NAMED", False)
    monkeypatch.setattr(_metrics, "_last_global", None)


def test_counters_are_monotonic_sums_and_the_histogram_keeps_the_convention_buckets() -> None:
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    record(recorder)
    record(recorder)
    decisions = metric(reader, "securemcp.authz.decisions")
    assert isinstance(decisions.data, Sum) and decisions.data.is_monotonic
    assert decisions.unit == "{call}"
    assert counts(reader) == {decision(): 2}
    assert counts(reader) == {decision(): 2}  # cumulative: a second collection repeats the total
    (point,) = metric(reader, "mcp.server.operation.duration").data.data_points
    assert point.count == 2
    assert list(point.explicit_bounds) == list(_metrics.DURATION_BUCKETS)


def test_every_server_reporting_to_one_provider_is_counted() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    first, second = telemetry.Telemetry(provider), telemetry.Telemetry(provider)
    record(first)
    record(second)
    record(second, "policy_denied", "policy_denied")
    assert counts(reader) == {decision(): 2, decision("policy_denied", "deny"): 1}


def test_servers_reporting_to_different_providers_are_counted_apart() -> None:
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    first, second = (telemetry.Telemetry(MeterProvider(metric_readers=[r])) for r in readers)
    record(first)
    record(second)
    record(second)
    assert [counts(r) for r in readers] == [{decision(): 1}, {decision(): 2}]


def test_nothing_is_built_while_no_provider_is_set(
    no_global_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unexpected(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("instruments bound without a provider")

    monkeypatch.setattr(_metrics, "for_provider", unexpected)
    recorder = telemetry.Telemetry()
    assert not telemetry.metrics_can_record()
    record(recorder)  # no provider: nothing built, nothing raised
    recorder.approval("requested")


def test_a_provider_set_after_the_server_was_built_receives_its_counts(
    no_global_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = telemetry.Telemetry()
    record(recorder)  # before: dropped, as the API's no-op instruments drop it
    reader = InMemoryMetricReader()
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER", MeterProvider(metric_readers=[reader]))
    record(recorder)
    recorder.approval("requested")
    assert counts(reader) == {decision(): 1}
    assert counts(reader, "securemcp.approvals") == {
        (("securemcp.approval.event", "requested"),): 1
    }


def test_a_replaced_global_provider_is_noticed(
    no_global_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binding to the global provider is cached by identity, never beyond a change (tests
    and embedding applications swap the API's global the way OpenTelemetry's test kit does)."""
    recorder = telemetry.Telemetry()
    readers = [InMemoryMetricReader(), InMemoryMetricReader()]
    for reader in readers:
        monkeypatch.setattr(metrics_api, "_METER_PROVIDER", MeterProvider(metric_readers=[reader]))
        record(recorder)
    assert [counts(r) for r in readers] == [{decision(): 1}, {decision(): 1}]


def test_a_provider_named_in_the_environment_is_loaded_on_first_use(
    no_global_provider: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_PYTHON_METER_PROVIDER", "sdk_meter_provider")
    monkeypatch.setattr(_metrics, "_METER_PROVIDER_NAMED", True)
    monkeypatch.setattr(metrics_api, "_METER_PROVIDER_SET_ONCE", Once())
    recorder = telemetry.Telemetry()
    assert telemetry.metrics_can_record()
    record(recorder)
    assert isinstance(metrics_api._METER_PROVIDER, MeterProvider)
    assert _metrics.global_instruments() is _metrics.for_provider(metrics_api._METER_PROVIDER)


def test_a_provider_given_to_the_server_records_whatever_the_global_state(
    no_global_provider: None,
) -> None:
    reader = InMemoryMetricReader()
    record(telemetry.Telemetry(meter_provider=MeterProvider(metric_readers=[reader])))
    assert counts(reader) == {decision(): 1}


def test_an_unknown_reason_is_counted_as_other_so_the_counters_stay_bounded() -> None:
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    for n in range(50):
        record(recorder, f"free text {n} Bearer eyJ.secret", f"free text {n}")
    assert counts(reader) == {decision("_OTHER", "deny"): 50}
    (point,) = metric(reader, "mcp.server.operation.duration").data.data_points
    assert point.attributes["error.type"] == "_OTHER"


def test_rate_limited_calls_are_counted_per_method() -> None:
    reader = InMemoryMetricReader()
    recorder = telemetry.Telemetry(meter_provider=MeterProvider(metric_readers=[reader]))
    record(recorder, "rate_limited", "rate_limited")
    record(recorder, "rate_limited", "rate_limited")
    record(recorder, "policy_denied", "policy_denied")
    assert counts(reader, "securemcp.ratelimit.rejections") == {
        (("mcp.method.name", "tools/call"),): 2
    }


def test_counts_from_many_threads_are_not_lost() -> None:
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: provoke lost updates
    try:
        table = _metrics.CumulativeCounts(("k",))
        threads = [
            threading.Thread(target=lambda: [table.add(("v",)) for _ in range(20_000)])
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    (observation,) = table.observe(None)  # type: ignore[arg-type]
    assert observation.value == 8 * 20_000
    assert dict(observation.attributes or {}) == {"k": "v"}


def test_a_flood_of_distinct_attribute_sets_is_counted_as_overflow_in_bounded_memory() -> None:
    table = _metrics.CumulativeCounts(("k",), limit=3)
    for n in range(100):
        table.add((f"value-{n}",))
    table.add(("value-0",))  # a set seen before the limit keeps its own count
    observed = {
        tuple(sorted((o.attributes or {}).items())): o.value
        for o in table.observe(None)  # type: ignore[arg-type]
    }
    assert observed == {
        (("k", "value-0"),): 2,
        (("k", "value-1"),): 1,
        (("k", "value-2"),): 1,
        (("otel.metric.overflow", True),): 97,
    }
    assert len(table._counts) == 4
