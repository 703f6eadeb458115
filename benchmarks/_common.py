"""Shared helpers for the benchmarks: interleaved side-by-side timing and ratio printing."""

from __future__ import annotations

import gc
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")

AUDIENCE = "https://bench.securemcp.test/mcp"


async def timed(fn: Callable[[], Awaitable[object]], n: int) -> float:
    """Mean seconds per call of ``n`` sequential awaits of ``fn`` (after a full collection)."""
    gc.collect()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n


async def side_by_side(
    name: str,
    bare: Callable[[], Awaitable[object]],
    secure: Callable[[], Awaitable[object]],
    *,
    n: int,
    rounds: int,
    warmup: int,
    slices: int = 10,
) -> float:
    """Time bare and securemcp in paired, finely interleaved rounds; print medians and the ratio.

    Each round runs ``n`` calls of each variant in ``slices`` alternating slices (the order
    flipping every slice), so machine drift within a round hits both variants alike. The ratio
    printed is the median of the rounds' own ratios (a paired estimate, steadier on a noisy
    machine than a ratio of medians); the spread of the round ratios follows it.
    """
    for _ in range(warmup):
        await bare()
        await secure()
    per_slice = max(1, n // slices)
    bare_times: list[float] = []
    secure_times: list[float] = []
    ratios: list[float] = []
    for round_number in range(rounds):
        bare_total = secure_total = 0.0
        for index in range(slices):
            if (round_number + index) % 2:
                secure_total += await timed(secure, per_slice)
                bare_total += await timed(bare, per_slice)
            else:
                bare_total += await timed(bare, per_slice)
                secure_total += await timed(secure, per_slice)
        bare_times.append(bare_total / slices)
        secure_times.append(secure_total / slices)
        ratios.append(secure_total / bare_total)
    b = statistics.median(bare_times) * 1e6
    s = statistics.median(secure_times) * 1e6
    ratio = statistics.median(ratios)
    print(
        f"{name:<44} bare {b:9.1f} us   securemcp {s:9.1f} us   ratio {ratio:5.3f}"
        f"   (rounds {min(ratios):.3f}-{max(ratios):.3f})"
    )
    sys.stdout.flush()
    return ratio


def install_sdk() -> None:
    """Install an OpenTelemetry SDK: a ``TracerProvider`` that samples and records every span
    (no exporter, so the figure is the instrumentation, not an exporter's I/O) and a
    ``MeterProvider`` with an in-memory reader. Call it before any server exists, as an
    application configures OpenTelemetry at start-up."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    trace.set_tracer_provider(TracerProvider())
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def parse_arguments(default_n: int, default_rounds: int) -> tuple[int, int]:
    """``[N] [ROUNDS] [--sdk]`` from the command line; ``--sdk`` installs an OpenTelemetry SDK
    (:func:`install_sdk`) before anything else runs."""
    arguments = [a for a in sys.argv[1:] if a != "--sdk"]
    if "--sdk" in sys.argv[1:]:
        install_sdk()
        print("(OpenTelemetry SDK installed: every span sampled and recorded, metrics in memory)")
    n = int(arguments[0]) if arguments else default_n
    rounds = int(arguments[1]) if len(arguments) > 1 else default_rounds
    return n, rounds


def fastmcp_with_core_savings(name: str = "bench", **kwargs: object) -> object:
    """A bare ``fastmcp.FastMCP`` given securemcp's savings in FastMCP's own path, nothing else.

    securemcp's server looks its components up without FastMCP's per-lookup task group
    (``securemcp._direct_lookups``), answers FastMCP's per-lookup read of session visibility
    rules without the state store while no rule exists (``securemcp._session_state``), skips
    building FastMCP's per-call span while no OpenTelemetry SDK could record it
    (``securemcp._unrecorded_spans``), opens a client request's span without asking the
    provider for FastMCP's tracer each time (``securemcp._request_spans.SeamSpans``), passes a
    call straight past FastMCP's schema dereferencing (``securemcp._dereference_listings``) and
    admits a component without an ``auth`` check without looking the caller's token up
    (``securemcp._component_auth``), which makes a call cheaper than bare FastMCP's.
    Measuring securemcp against this server instead isolates the cost of the security layer
    itself.
    """
    import fastmcp

    from securemcp import _dereference_listings
    from securemcp._component_auth import AdmitsUncheckedComponents
    from securemcp._component_auth import install as admit_unchecked_components
    from securemcp._direct_lookups import DirectLookups
    from securemcp._request_spans import install_seam_spans
    from securemcp._session_state import SkipsAbsentVisibilityRules
    from securemcp._unrecorded_spans import quiet_core_path

    class CoreSavingsFastMCP(  # type: ignore[misc]
        SkipsAbsentVisibilityRules,
        AdmitsUncheckedComponents,
        fastmcp.FastMCP,  # type: ignore[type-arg]
        DirectLookups,
    ):
        # securemcp.FastMCP's core-path overrides, minus the admission checks.
        async def call_tool(
            self,
            name: str,
            arguments: Any = None,
            *,
            version: Any = None,
            run_middleware: bool = True,
        ) -> Any:
            if not run_middleware:
                with quiet_core_path():
                    return await super().call_tool(
                        name, arguments, version=version, run_middleware=False
                    )
            return await super().call_tool(name, arguments, version=version, run_middleware=True)

        async def read_resource(
            self, uri: Any, *, version: Any = None, run_middleware: bool = True
        ) -> Any:
            if not run_middleware:
                with quiet_core_path():
                    return await super().read_resource(uri, version=version, run_middleware=False)
            return await super().read_resource(uri, version=version, run_middleware=True)

    server = CoreSavingsFastMCP(name, **kwargs)
    install_seam_spans(server)
    _dereference_listings.install(server)
    admit_unchecked_components()
    return server


def secure_server(idp: object, name: str = "bench") -> object:
    """securemcp with the whole stack on: verified JWT, scopes, a policy hook, a rate limit,
    both audit records (to a fresh temporary folder) and telemetry (API; no SDK installed)."""
    import tempfile

    import securemcp
    from securemcp.audit import AuditLog
    from securemcp.policy import Decision, RateLimit, RateLimiter

    def allow(request: object) -> Decision:
        return Decision.allow()

    mcp = securemcp.FastMCP(
        name,
        auth=idp.verifier(audience=AUDIENCE),  # type: ignore[attr-defined]
        policy=allow,
        rate_limits=RateLimiter(
            [RateLimit("per-user", "100000000/minute")], strategy="fixed-window"
        ),
        audit=AuditLog(tempfile.mkdtemp(prefix="securemcp-bench-")),
    )

    @mcp.tool(scopes=["calc"])
    async def add(a: int, b: int) -> int:
        return a + b

    return mcp
