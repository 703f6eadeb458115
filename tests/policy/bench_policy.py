"""Quick micro-benchmark of the policy hot path (not a test; run it directly).

    python tests/policy/bench_policy.py

Measures, in µs per call: building a CallRequest, ``evaluate()`` of a 50-rule file (a call
decided by the last rule, one that falls through to the default, one decided by an early rule,
one with argument and claim predicates), and ``RateLimiter.hit()`` in memory.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from securemcp.context import Principal
from securemcp.policy import CallRequest, evaluate
from securemcp.policy.ratelimit import RateLimit, RateLimiter
from securemcp.policy.rules import RulesPolicy


def fifty_rules() -> str:
    rules = ['name = "bench"\ndefault = "deny"\n']
    for i in range(48):
        rules.append(
            f'[[rule]]\nname = "r{i}"\neffect = "allow"\ntools = ["tool_{i}_*"]\n'
            f'scopes = ["s{i}"]\nclaims = {{ dept = "d{i}" }}\n'
            f"arguments = {{ n = {{ lt = {i + 10} }} }}\n"
        )
    rules.append(
        '[[rule]]\nname = "transfers"\neffect = "constrain"\ntools = ["transfer"]\n'
        'scopes = ["pay"]\nclaims = { groups = { contains = "finance" } }\n'
        'arguments = { amount = { lt = 1000 }, currency = { in = ["EUR", "USD"] } }\n'
        "[rule.constraints]\ntimeout_seconds = 5\n"
    )
    rules.append('[[rule]]\nname = "reads"\neffect = "allow"\nrisk = ["read"]\n')
    return "\n".join(rules)


def timed(label: str, n: int, fn: Any) -> None:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    print(f"{label:<58} {(time.perf_counter() - start) / n * 1e6:8.2f} µs")


async def atimed(label: str, n: int, fn: Any) -> None:
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    print(f"{label:<58} {(time.perf_counter() - start) / n * 1e6:8.2f} µs")


async def main() -> None:
    policy = RulesPolicy.from_string(fifty_rules())
    assert len(policy.rules) == 50
    alice = Principal(
        subject="alice",
        issuer="https://idp.example",
        scopes=frozenset({"pay"}),
        claims={"groups": ["finance"]},
    )
    args = {"amount": 10, "currency": "EUR"}
    transfer = CallRequest.build(alice, "transfer", args)
    read = CallRequest.build(alice, "get", {}, annotations={"readOnlyHint": True})
    miss = CallRequest.build(alice, "unknown", {})
    early = CallRequest.build(alice, "tool_0_x", {"n": 1})
    assert policy.evaluate(transfer).rule == "transfers"  # type: ignore[union-attr]
    assert policy.evaluate(read).rule == "reads"  # type: ignore[union-attr]
    n = 50_000
    timed("CallRequest.build (2 args)", n, lambda: CallRequest.build(alice, "transfer", args))
    timed("RulesPolicy.evaluate, 50 rules, predicates match (sync)", n, lambda: policy(transfer))
    timed("RulesPolicy.evaluate, 50 rules, last rule (sync)", n, lambda: policy(read))
    timed("RulesPolicy.evaluate, 50 rules, default deny (sync)", n, lambda: policy(miss))
    await atimed(
        "evaluate(policy, req), 50 rules, predicates match", n, lambda: evaluate(policy, transfer)
    )
    await atimed("evaluate(policy, req), 50 rules, last rule", n, lambda: evaluate(policy, read))
    await atimed("evaluate(policy, req), 50 rules, first rule", n, lambda: evaluate(policy, early))
    await atimed("evaluate(policy, req), 50 rules, default deny", n, lambda: evaluate(policy, miss))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "policy.toml")
        path.write_text(fifty_rules())  # noqa: ASYNC240 - set-up, not measured
        watched = RulesPolicy.from_file(path, reload=True)
        await atimed(
            "evaluate(policy, req), 50 rules, hot reload on", n, lambda: evaluate(watched, transfer)
        )
    # 1000 callers in rotation, so each moving-window log stays realistic (<= 20 entries)
    callers = [
        CallRequest.build(Principal(subject=f"user{i}", issuer="https://idp.example"), "t", {})
        for i in range(1000)
    ]
    m = 20_000
    for label, limits, strategy in [
        ("1 limit (moving window)", [RateLimit("user", "1000/minute")], "moving-window"),
        (
            "2 limits (moving window)",
            [
                RateLimit("user", "1000/minute"),
                RateLimit("user-tool", "1000/minute", per="principal_tool"),
            ],
            "moving-window",
        ),
        (
            "2 limits (fixed window)",
            [
                RateLimit("user", "1000/minute"),
                RateLimit("user-tool", "1000/minute", per="principal_tool"),
            ],
            "fixed-window",
        ),
    ]:
        limiter = RateLimiter(limits, strategy=strategy)  # type: ignore[arg-type]
        turn = iter(range(10**9))
        await atimed(
            f"RateLimiter.hit, memory, {label}",
            m,
            lambda limiter=limiter, turn=turn: limiter.hit(callers[next(turn) % 1000]),
        )
    small = RateLimiter([RateLimit("user", "100/minute")])
    for _ in range(100):
        await small.hit(transfer)
    await atimed(
        "RateLimiter.hit, memory, refused (incl. retry_after)", m, lambda: small.hit(transfer)
    )


if __name__ == "__main__":
    asyncio.run(main())
