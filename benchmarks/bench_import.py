"""(e) ``import securemcp`` vs ``import fastmcp``: wall time of fresh interpreters, interleaved.

python benchmarks/bench_import.py [RUNS]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def wall(statement: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True)
    return time.perf_counter() - start


def main(runs: int) -> None:
    pairs = [
        ("import fastmcp", "import securemcp"),
        ("from fastmcp import FastMCP", "from securemcp import FastMCP"),
    ]
    for bare_stmt, secure_stmt in pairs:
        wall(bare_stmt), wall(secure_stmt)  # warm the OS file cache
        bare, secure = [], []
        for _ in range(runs):
            bare.append(wall(bare_stmt))
            secure.append(wall(secure_stmt))
        b, s = statistics.median(bare) * 1e3, statistics.median(secure) * 1e3
        print(f"(e) {secure_stmt:<36} {b:7.1f} ms vs {s:7.1f} ms   ratio {s / b:5.3f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
