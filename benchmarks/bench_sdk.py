"""(a) and (b) again with an OpenTelemetry SDK installed: what a call costs when spans record.

``bench_calls.py`` runs with the OpenTelemetry API only, as most deployments without a collector
do. There, securemcp skips building FastMCP's per-call span (``securemcp._unrecorded_spans``)
and its own metric attributes, because nothing could record them. Once an operator installs an
SDK, both servers record FastMCP's ``SERVER`` span, and securemcp also enriches it (with the
durations of its steps: authenticate, authorize, audit decision, audit outcome; a step becomes a
child span only when it refuses, fails or is slow) and records its metrics. This script
installs a ``TracerProvider`` (every span sampled and recorded, then dropped: no exporter, so
the figure is the instrumentation and not an exporter's I/O) and a ``MeterProvider`` with an
in-memory reader, then measures both servers side by side as ``bench_calls.py`` does.
For (c) and (d) with an SDK: ``python benchmarks/bench_http.py [N] [ROUNDS] --sdk``.

    python benchmarks/bench_sdk.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings

from _common import AUDIENCE, install_sdk, secure_server, side_by_side

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


async def main(n: int, rounds: int) -> None:
    install_sdk()  # before any server exists, as an application configures it at start-up

    import fastmcp
    from fastmcp import Client

    from securemcp.testing import FakeIdentityProvider, connect

    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("alice", scopes=["calc"])
    bare = fastmcp.FastMCP("bench")

    @bare.tool
    async def add(a: int, b: int) -> int:
        return a + b

    secure = secure_server(idp)
    args = {"a": 1, "b": 2}
    print(f"python {sys.version.split()[0]}  n={n} rounds={rounds}  (OpenTelemetry SDK installed)")
    async with Client(bare) as bc, connect(secure, token) as sc:
        await side_by_side(
            "(a) in-memory client call_tool, SDK",
            lambda: bc.call_tool("add", args),
            lambda: sc.call_tool("add", args),
            n=n,
            rounds=rounds,
            warmup=200,
        )
        await side_by_side(
            "(b) server-side call_tool, SDK",
            lambda: bare.call_tool("add", args),
            lambda: secure.call_tool("add", args),
            n=n * 2,
            rounds=rounds,
            warmup=200,
        )


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    asyncio.run(main(n, rounds))
