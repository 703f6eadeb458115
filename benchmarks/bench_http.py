"""HTTP cost of securemcp vs bare FastMCP over real loopback (uvicorn), side by side in one run.

(c) sequential calls with a bearer token; (d) 64 concurrent clients (throughput).
Bare FastMCP authenticates with FastMCP's ``StaticTokenVerifier`` (the cheapest bearer check
FastMCP has, so the comparison is strict); securemcp verifies a real signed JWT (cached after
the first call) and runs its full pipeline: scopes, policy, rate limit, both audit records and
telemetry. A third column, the do-it-yourself FastMCP stack
(FastMCP's ``JWTVerifier`` + ``AuthMiddleware`` + logging middleware), is the peer baseline.
The "layer alone" line compares securemcp with the bare server given only securemcp's savings in
FastMCP's own call path (``_common.fastmcp_with_core_savings``): the security layer by itself.

    python benchmarks/bench_http.py [N] [ROUNDS] [--sdk]

With ``--sdk``, an OpenTelemetry SDK records every span and metric of both servers (and of the
clients, which run in the same process), as ``bench_calls.py --sdk`` does for (a) and (b).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
import warnings
from typing import Any

from _common import (
    AUDIENCE,
    fastmcp_with_core_savings,
    parse_arguments,
    secure_server,
    side_by_side,
)

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)

CLIENTS = 64


def build_bare(core_savings: bool = False) -> Any:
    import fastmcp
    from fastmcp.server.auth import StaticTokenVerifier

    verifier = StaticTokenVerifier(tokens={"static": {"client_id": "alice", "scopes": ["calc"]}})
    if core_savings:
        mcp: Any = fastmcp_with_core_savings("bench", auth=verifier)
    else:
        mcp = fastmcp.FastMCP("bench", auth=verifier)

    @mcp.tool
    async def add(a: int, b: int) -> int:
        return a + b

    return mcp


def build_diy(idp: Any) -> Any:
    import json

    import fastmcp
    from cryptography.hazmat.primitives import serialization
    from fastmcp.server.auth import JWTVerifier
    from fastmcp.server.auth import require_scopes as fastmcp_require_scopes
    from fastmcp.server.middleware import AuthMiddleware
    from fastmcp.server.middleware.logging import LoggingMiddleware
    from jwt.algorithms import RSAAlgorithm

    public_key = RSAAlgorithm.from_jwk(json.dumps(idp.jwks["keys"][0]))
    pem = public_key.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    verifier = JWTVerifier(public_key=pem, issuer=idp.issuer, audience=AUDIENCE, algorithm="RS256")
    mcp = fastmcp.FastMCP(
        "bench",
        auth=verifier,
        middleware=[AuthMiddleware(auth=fastmcp_require_scopes("calc")), LoggingMiddleware()],
    )

    @mcp.tool
    async def add(a: int, b: int) -> int:
        return a + b

    return mcp


def build_secure(idp: Any) -> Any:
    return secure_server(idp)


async def throughput(url: str, token: str, calls_per_client: int) -> float:
    from securemcp.testing import connect_http

    async def one_client() -> None:
        async with connect_http(url, token) as client:
            for _ in range(calls_per_client):
                await client.call_tool("add", {"a": 1, "b": 2})

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return CLIENTS * calls_per_client / (time.perf_counter() - start)


async def main(n: int, rounds: int) -> None:
    from securemcp.testing import FakeIdentityProvider, connect_http, serve_http

    idp = FakeIdentityProvider(audience=AUDIENCE)
    token = idp.token("alice", scopes=["calc"])
    args = {"a": 1, "b": 2}
    print(f"python {sys.version.split()[0]}  n={n} rounds={rounds}  (real loopback HTTP)")
    async with (
        serve_http(build_bare()) as bare_url,
        serve_http(build_secure(idp)) as secure_url,
        serve_http(build_diy(idp)) as diy_url,
        serve_http(build_bare(core_savings=True)) as layer_url,
    ):
        async with (
            connect_http(bare_url, "static") as bc,
            connect_http(secure_url, token) as sc,
            connect_http(diy_url, token) as dc,
            connect_http(layer_url, "static") as lc,
        ):
            await side_by_side(
                "(c) HTTP call_tool, bearer token",
                lambda: bc.call_tool("add", args),
                lambda: sc.call_tool("add", args),
                n=n,
                rounds=rounds,
                warmup=50,
            )
            await side_by_side(
                "(c) layer alone: vs FastMCP+core savings",
                lambda: lc.call_tool("add", args),
                lambda: sc.call_tool("add", args),
                n=n,
                rounds=rounds,
                warmup=50,
            )
            await side_by_side(
                "(c') peer: DIY FastMCP stack vs securemcp",
                lambda: dc.call_tool("add", args),
                lambda: sc.call_tool("add", args),
                n=n,
                rounds=rounds,
                warmup=50,
            )
        per_client = max(5, n // 20)
        bare_rates, secure_rates = [], []
        for _ in range(max(2, rounds // 2)):
            bare_rates.append(await throughput(bare_url, "static", per_client))
            secure_rates.append(await throughput(secure_url, token, per_client))
        b, s = statistics.median(bare_rates), statistics.median(secure_rates)
        print(
            f"(d) {CLIENTS} concurrent HTTP clients (calls/s)      bare {b:9.1f}      "
            f"securemcp {s:9.1f}      ratio {b / s:5.3f} (time per call)"
        )


if __name__ == "__main__":
    asyncio.run(main(*parse_arguments(300, 5)))
