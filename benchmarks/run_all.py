"""Run every benchmark in turn (``nox -s bench``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

SCRIPTS = (
    "bench_import.py",
    "bench_calls.py",
    "bench_breakdown.py",
    "bench_http.py",
    "bench_sdk.py",
    "bench_memory.py",
    "bench_verify.py",
    "bench_audit.py",
)

for script in SCRIPTS:
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True, cwd=HERE)
