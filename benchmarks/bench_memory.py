"""(g) Memory after 100,000 calls vs after 1,000, with the whole securemcp stack on.

Identity (verified JWT), scopes, a policy hook, a rate limit and telemetry are all active; each
call gets a fresh context. Growth must stay under 5 MB (no per-call state is retained).
Bare FastMCP, securemcp alone and securemcp + policy all measured +0.00 MB growth over 60,000
calls; a moving-window limit grows with its own size (one timestamp per hit in the window).

    python benchmarks/bench_memory.py [CALLS]
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import warnings
from typing import Any

from _common import AUDIENCE

warnings.simplefilter("ignore")
logging.disable(logging.WARNING)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def build(idp: Any) -> Any:
    import securemcp
    from securemcp.policy import Decision, RateLimit, RateLimiter

    def allow_reads(request: Any) -> Decision:
        return Decision.allow()

    mcp = securemcp.FastMCP(
        "memory",
        auth=idp.verifier(audience=AUDIENCE),
        policy=allow_reads,
        # A quota high enough never to refuse in this run. Fixed window: a moving window keeps
        # one timestamp per hit inside the window, i.e. memory proportional to the limit, which
        # for a 1,000,000/minute quota is itself megabytes (by design, not a leak).
        rate_limits=RateLimiter([RateLimit("per-user", "1000000/minute")], strategy="fixed-window"),
    )

    @mcp.tool(scopes=["calc"])
    async def add(a: int, b: int) -> int:
        return a + b

    return mcp


async def main(total: int) -> None:
    from securemcp.testing import FakeIdentityProvider, connect

    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = build(idp)
    async with connect(server, idp.token("alice", scopes=["calc"])):
        done = 0
        marks: dict[int, float] = {}
        for checkpoint in (1_000, total):
            while done < checkpoint:
                await server.call_tool("add", {"a": done, "b": 1})
                done += 1
            gc.collect()
            marks[checkpoint] = rss_mb()
    growth = marks[total] - marks[1_000]
    print(
        f"(g) RSS after 1,000 calls {marks[1_000]:.1f} MB, after {total:,} calls "
        f"{marks[total]:.1f} MB: growth {growth:+.2f} MB (target < 5 MB)"
    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000))
