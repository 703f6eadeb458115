"""Audit benchmarks: hot-path append cost and offline verification throughput.

Run: ``python benchmarks/bench_audit.py [--records N]`` (not collected by pytest).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from securemcp.audit import AuditLog, Ed25519Signer, Keyring, verify
from securemcp.context import Principal
from securemcp.policy.decision import Decision

PRINCIPAL = Principal(
    subject="alice@example.com",
    issuer="https://idp.example.com",
    client_id="claude-desktop",
    tenant="acme",
    scopes=frozenset({"calc:write"}),
)

DECISION = Decision.allow(rule="scopes", policy_version="sha256:9f86d081884c7d659a2feaa0c55ad015")


def bench_append(directory: Path, signer: Ed25519Signer, count: int) -> tuple[float, float, float]:
    """µs per decision record (a string result, then a policy ``Decision`` as the pipeline
    passes) and per outcome record (median of 5 rounds)."""
    decisions, objects, outcomes = [], [], []
    with AuditLog(directory, signer=signer, fsync="interval") as log:
        for _ in range(5):
            start = time.perf_counter()
            for index in range(count):
                log.decision(
                    call_id=f"8f1c2e0a-4b7d-4c1e-9a3f-{index:012d}",
                    method="tools/call",
                    target="add",
                    result="allow",
                    rule="scopes",
                    policy_version="sha256:9f86d081884c7d659a2feaa0c55ad015",
                    identity=PRINCIPAL,
                    arguments={"a": index, "b": 2},
                    trace_id="0af7651916cd43dd8448eb211c80319c",
                )
            middle = time.perf_counter()
            for index in range(count):
                log.decision(
                    call_id=f"8f1c2e0a-4b7d-4c1e-9a3f-{index:012d}",
                    method="tools/call",
                    target="add",
                    result=DECISION,
                    identity=PRINCIPAL,
                    arguments={"a": index, "b": 2},
                    trace_id="0af7651916cd43dd8448eb211c80319c",
                )
            third = time.perf_counter()
            for index in range(count):
                log.outcome(
                    call_id=f"8f1c2e0a-4b7d-4c1e-9a3f-{index:012d}",
                    method="tools/call",
                    target="add",
                    outcome="ok",
                    duration_ms=0.734,
                    identity=PRINCIPAL,
                    trace_id="0af7651916cd43dd8448eb211c80319c",
                )
            end = time.perf_counter()
            decisions.append((middle - start) / count * 1e6)
            objects.append((third - middle) / count * 1e6)
            outcomes.append((end - third) / count * 1e6)
    return statistics.median(decisions), statistics.median(objects), statistics.median(outcomes)


def bench_verify(directory: Path, keyring: Keyring, workers: int) -> tuple[float, int, str]:
    start = time.perf_counter()
    report = verify(directory, keyring=keyring, workers=workers)
    elapsed = time.perf_counter() - start
    return report.records / elapsed, report.records, report.status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=500_000, help="log size for verify")
    parser.add_argument("--append", type=int, default=20_000, help="records per append round")
    args = parser.parse_args()
    signer = Ed25519Signer.generate("bench")
    keyring = Keyring([signer.verifier_key()])
    with tempfile.TemporaryDirectory() as folder:
        decision_us, object_us, outcome_us = bench_append(
            Path(folder) / "append", signer, args.append
        )
        print(f"append decision record: {decision_us:.1f} µs/record (fsync='interval')")
        print(f"  with a policy Decision: {object_us:.1f} µs/record")
        print(f"append outcome record:  {outcome_us:.1f} µs/record (fsync='interval')")

        big = Path(folder) / "verify"
        with AuditLog(big, signer=signer, fsync="never") as log:
            for index in range(args.records // 2):
                log.decision(
                    call_id=f"c{index}",
                    method="tools/call",
                    target="add",
                    result="allow",
                    identity=PRINCIPAL,
                    arguments={"a": index},
                    trace_id="0af7651916cd43dd8448eb211c80319c",
                )
                log.outcome(
                    call_id=f"c{index}",
                    method="tools/call",
                    target="add",
                    outcome="ok",
                    duration_ms=1.5,
                    identity=PRINCIPAL,
                )
        size = sum(p.stat().st_size for p in big.glob("*.jsonl"))
        print(f"log: {log.size} records, {size / 1e6:.0f} MB")
        for workers in (1, 0):
            rate, records, status = bench_verify(big, keyring, workers or 2)
            label = "1 process" if workers == 1 else "parallel"
            print(f"verify ({label}): {rate:,.0f} records/s ({records} records, {status})")


if __name__ == "__main__":
    main()
