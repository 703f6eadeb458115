"""Per-call cost of securemcp vs bare FastMCP, measured side by side in one run.

(a) in-memory client ``call_tool``; (b) server-side ``call_tool`` with no client. The "layer
alone" lines compare securemcp with a FastMCP given only securemcp's savings in FastMCP's own
call path (``_common.fastmcp_with_core_savings``): the cost of the security layer by itself.
securemcp runs with the whole stack on (``_common.secure_server``): a real verifier (fake IdP
token, verified once then served from the verified-token cache), a scoped tool, a policy hook, a
rate limit, both audit records and telemetry, and a fresh SecurityContext per call.

Without ``--sdk`` telemetry is the OpenTelemetry API alone, as in deployments without a collector:
securemcp then skips building FastMCP's per-call span (``securemcp._unrecorded_spans``) and its
own metric attributes, because nothing could record them. With ``--sdk`` an SDK records every
span and metric of both servers (a ``TracerProvider`` sampling everything, no exporter, so the
figure is the instrumentation and not an exporter's I/O; a ``MeterProvider`` with an in-memory
reader): FastMCP's span is recorded, and securemcp enriches it (with its step durations; a step
becomes a child span only when it refuses, fails or is slow) and records its metrics.

    python benchmarks/bench_calls.py [N] [ROUNDS] [--sdk]
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings

from _common import (
    AUDIENCE,
    fastmcp_with_core_savings,
    parse_arguments,
    secure_server,
    side_by_side,
)

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


def build_bare(core_savings: bool = False):  # type: ignore[no-untyped-def]
    import fastmcp

    mcp = fastmcp_with_core_savings("bench") if core_savings else fastmcp.FastMCP("bench")

    @mcp.tool
    async def add(a: int, b: int) -> int:
        return a + b

    return mcp


def build_secure(idp):  # type: ignore[no-untyped-def]
    return secure_server(idp)


async def main(n: int, rounds: int) -> None:
    from fastmcp import Client

    from securemcp.testing import FakeIdentityProvider, connect

    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("alice", scopes=["calc"])
    bare, secure = build_bare(), build_secure(idp)
    layer = build_bare(core_savings=True)
    args = {"a": 1, "b": 2}
    print(f"python {sys.version.split()[0]}  n={n} rounds={rounds}")

    async with Client(bare) as bc, Client(layer) as lc, connect(secure, token) as sc:
        await side_by_side(
            "(a) in-memory client call_tool",
            lambda: bc.call_tool("add", args),
            lambda: sc.call_tool("add", args),
            n=n,
            rounds=rounds,
            warmup=200,
        )
        await side_by_side(
            "(a) layer alone: vs FastMCP+core savings",
            lambda: lc.call_tool("add", args),
            lambda: sc.call_tool("add", args),
            n=n,
            rounds=rounds,
            warmup=200,
        )
        # (b) server-side, no client: the token is presented the same way connect() does
        await side_by_side(
            "(b) server-side call_tool (no client)",
            lambda: bare.call_tool("add", args),
            lambda: secure.call_tool("add", args),
            n=n * 2,
            rounds=rounds,
            warmup=200,
        )
        await side_by_side(
            "(b) layer alone: vs FastMCP+core savings",
            lambda: layer.call_tool("add", args),
            lambda: secure.call_tool("add", args),
            n=n * 2,
            rounds=rounds,
            warmup=200,
        )


if __name__ == "__main__":
    asyncio.run(main(*parse_arguments(1000, 5)))
