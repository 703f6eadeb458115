"""Where the per-call time goes: securemcp's cost one feature at a time, against bare FastMCP.

Server-side ``call_tool`` (no client, as benchmark (b)), all servers timed interleaved in one run:
bare FastMCP; FastMCP given securemcp's savings in FastMCP's own call path (the base the
increments are measured from, so they show the security layer alone); securemcp with the
development identity and no audit ("pipeline only"); then a verified JWT; then each of audit
(two records), a policy hook and a rate limit added on top of the JWT; then everything. The
increments show what each feature costs *in place*, on the real call path, which is more than
the same code costs in a tight loop of its own.

    python benchmarks/bench_breakdown.py [N] [ROUNDS]
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import tempfile
import warnings
from typing import Any

from _common import AUDIENCE, fastmcp_with_core_savings, timed

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)

BASE = "FastMCP + core savings"
VARIANTS = (
    "bare FastMCP",
    BASE,
    "pipeline only",
    "+ JWT",
    "+ JWT + audit",
    "+ JWT + policy",
    "+ JWT + rate limit",
    "+ JWT + audit + policy + rate limit",
)


def build(variant: str, idp: Any) -> Any:
    if variant in ("bare FastMCP", BASE):
        import fastmcp

        bare: Any = fastmcp.FastMCP("bench") if variant != BASE else fastmcp_with_core_savings()

        @bare.tool
        async def add(a: int, b: int) -> int:
            return a + b

        return bare
    import securemcp
    from securemcp.audit import AuditLog
    from securemcp.policy import Decision, RateLimit, RateLimiter

    kwargs: dict[str, Any] = {"audit": False}
    if "JWT" in variant:
        kwargs["auth"] = idp.verifier(audience=AUDIENCE)
    if "audit" in variant:
        kwargs["audit"] = AuditLog(tempfile.mkdtemp(prefix="securemcp-bench-"))
    if "policy" in variant:
        kwargs["policy"] = lambda request: Decision.allow()
    if "rate limit" in variant:
        kwargs["rate_limits"] = RateLimiter(
            [RateLimit("per-user", "100000000/minute")], strategy="fixed-window"
        )
    secure = securemcp.FastMCP("bench", **kwargs)

    @secure.tool(scopes=["calc"])
    async def add(a: int, b: int) -> int:
        return a + b

    return secure


async def main(n: int, rounds: int) -> None:
    from securemcp.testing import FakeIdentityProvider, connect

    idp = FakeIdentityProvider(audience=AUDIENCE)
    servers = {variant: build(variant, idp) for variant in VARIANTS}
    args = {"a": 1, "b": 2}
    print(f"python {sys.version.split()[0]}  n={n} rounds={rounds}  (server-side call_tool)")
    # The token is presented the way connect() presents it; every server re-verifies it.
    async with connect(servers["+ JWT"], idp.token("alice", scopes=["calc"])):
        for server in servers.values():
            for _ in range(300):
                await server.call_tool("add", args)
        times: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for _ in range(rounds):
            for variant, server in servers.items():
                times[variant].append(await timed(lambda s=server: s.call_tool("add", args), n))
    base = statistics.median(times[BASE]) * 1e6
    for variant in VARIANTS:
        us = statistics.median(times[variant]) * 1e6
        print(f"{variant:<38} {us:8.1f} us   +{us - base:6.1f} us   ratio {us / base:5.3f}")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    asyncio.run(main(n, rounds))
