"""Collecting the spans FastMCP and securemcp export, for the telemetry test modules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextmanager
def collecting_spans(exporter: InMemorySpanExporter) -> Iterator[None]:
    """Send every finished span to ``exporter``, without taking OTel's set-once global.

    If another module (tests/test_telemetry.py) already installed an SDK provider, listen in on
    it. Otherwise install one for the duration only, by setting the global the way
    OpenTelemetry's own test utilities reset it: ``trace.set_tracer_provider`` can succeed once
    per process, and a later module must still be able to install its own.
    """
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        current.add_span_processor(SimpleSpanProcessor(exporter))
        yield
    elif isinstance(current, trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(trace, "_TRACER_PROVIDER", provider)
            yield
    else:
        pytest.skip(f"a non-SDK global tracer provider is installed: {current!r}")
    exporter.shutdown()  # stop collecting once the caller is done


def span_fixtures() -> tuple[Callable[..., Any], Callable[..., Any]]:
    """A test module's span fixtures: collect while the module runs; ``spans``, cleared per test.

    Use as ``_tracing, spans = span_fixtures()`` at module level.
    """
    exporter = InMemorySpanExporter()

    @pytest.fixture(scope="module", autouse=True)
    def _tracing() -> Iterator[None]:
        with collecting_spans(exporter):
            yield

    @pytest.fixture
    def spans() -> InMemorySpanExporter:
        exporter.clear()
        return exporter

    return _tracing, spans
