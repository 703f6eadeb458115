"""Run every benchmark in turn (``nox -s bench``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

SCRIPTS = (
    ("bench_import.py",),
    ("bench_calls.py",),
    ("bench_calls.py", "--sdk"),
    ("bench_breakdown.py",),
    ("bench_telemetry_cost.py",),
    ("bench_http.py",),
    ("bench_http.py", "--sdk"),
    ("bench_memory.py",),
    ("bench_verify.py",),
    ("bench_audit.py",),
)

for script, *arguments in SCRIPTS:
    print(f"== {script} {' '.join(arguments)}".rstrip(), flush=True)
    subprocess.run([sys.executable, str(HERE / script), *arguments], check=True, cwd=HERE)
