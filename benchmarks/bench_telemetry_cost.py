"""What securemcp's telemetry costs benchmark (b) with an OpenTelemetry SDK, piece by piece.

Server-side ``call_tool`` (no client, as benchmark (b)) with an SDK recording every span and
metric (``_common.install_sdk``). securemcp with the whole stack on is timed side by side with
bare FastMCP, first as it is, then with one piece of its per-call telemetry record left out:
the whole record (``Telemetry.record``), the ``mcp.server.operation.duration`` histogram only,
the span attributes only. A diagnostic, not a configuration: securemcp always records all three.

It first measures the floor any server meeting the MCP semantic conventions pays here: bare
FastMCP against the same bare FastMCP recording only the convention's duration histogram, one
``Histogram.record`` per call (from a FastMCP middleware, timed against an identical middleware
that records nothing, so the line is the record alone), and after the full comparison it times
securemcp against that histogram-recording FastMCP: what securemcp costs over the floor.

    python benchmarks/bench_telemetry_cost.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from _common import AUDIENCE, install_sdk, parse_arguments, secure_server, side_by_side

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


class _NoHistogram:
    def record(self, *args: Any, **kwargs: Any) -> None:
        return None


@contextmanager
def without(piece: str, telemetry: Any) -> Iterator[None]:
    """Leave ``piece`` of ``telemetry``'s per-call record out while the block runs."""
    from securemcp._metrics import global_instruments

    instruments = global_instruments()
    assert instruments is not None  # install_sdk() set a meter provider
    histogram = instruments.duration
    record = telemetry.record
    if piece == "the telemetry record":
        telemetry.record = lambda *args, **kwargs: None
    elif piece == "the duration histogram":
        instruments.duration = _NoHistogram()  # type: ignore[assignment]
    elif piece == "the span attributes":
        telemetry.record = lambda span, **kwargs: record(None, **kwargs)
    try:
        yield
    finally:
        instruments.duration = histogram
        if "record" in vars(telemetry):
            del telemetry.record


def _timed_middleware(histogram: Any) -> Any:
    """A FastMCP middleware timing each ``tools/call``; records into ``histogram`` if given."""
    import time

    from fastmcp.server.middleware import Middleware

    class Timed(Middleware):
        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            started = time.perf_counter()
            try:
                return await call_next(context)
            finally:
                attributes = {
                    "mcp.method.name": "tools/call",
                    "gen_ai.tool.name": context.message.name,
                }
                if histogram is not None:
                    histogram.record(time.perf_counter() - started, attributes)

    return Timed()


async def the_histograms_floor(n: int, rounds: int) -> Any:
    """Bare FastMCP with and without one convention histogram record per call; returns the
    server that records it."""
    import fastmcp
    from opentelemetry import metrics

    from securemcp._metrics import DURATION_BUCKETS

    histogram = metrics.get_meter("floor").create_histogram(
        "mcp.server.operation.duration",
        unit="s",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
    )

    def server(recording: Any) -> Any:
        mcp = fastmcp.FastMCP("bench", middleware=[_timed_middleware(recording)])

        @mcp.tool
        async def add(a: int, b: int) -> int:
            return a + b

        return mcp

    without, with_histogram = server(None), server(histogram)
    args = {"a": 1, "b": 2}
    print("floor line: 'bare' = bare FastMCP, 'securemcp' = bare FastMCP + the histogram record")
    await side_by_side(
        "(b) floor: bare FastMCP + the histogram",
        lambda: without.call_tool("add", args),
        lambda: with_histogram.call_tool("add", args),
        n=n,
        rounds=rounds,
        warmup=300,
    )
    return with_histogram


async def main(n: int, rounds: int) -> None:
    import fastmcp

    from securemcp.testing import FakeIdentityProvider, connect

    idp = FakeIdentityProvider(audience=AUDIENCE)
    bare = fastmcp.FastMCP("bench")

    @bare.tool
    async def add(a: int, b: int) -> int:
        return a + b

    secure: Any = secure_server(idp)
    telemetry = secure._securemcp_pipeline._telemetry
    args = {"a": 1, "b": 2}
    call_bare: Callable[[], Any] = lambda: bare.call_tool("add", args)  # noqa: E731
    call_secure: Callable[[], Any] = lambda: secure.call_tool("add", args)  # noqa: E731
    print(f"python {sys.version.split()[0]}  n={n} rounds={rounds}  (server-side, SDK)")
    with_histogram = await the_histograms_floor(n, rounds)
    async with connect(secure, idp.token("alice", scopes=["calc"])):
        await side_by_side(
            "(b) everything on", call_bare, call_secure, n=n, rounds=rounds, warmup=300
        )
        print("next line: 'bare' = bare FastMCP + the histogram record (the floor's server)")
        await side_by_side(
            "(b) vs FastMCP recording the histogram",
            lambda: with_histogram.call_tool("add", args),
            call_secure,
            n=n,
            rounds=rounds,
            warmup=300,
        )
        for piece in ("the telemetry record", "the duration histogram", "the span attributes"):
            with without(piece, telemetry):
                await side_by_side(
                    f"(b) without {piece}",
                    call_bare,
                    call_secure,
                    n=n,
                    rounds=rounds,
                    warmup=300,
                )


if __name__ == "__main__":
    arguments = parse_arguments(2000, 5)
    if "--sdk" not in sys.argv:
        install_sdk()
    asyncio.run(main(*arguments))
