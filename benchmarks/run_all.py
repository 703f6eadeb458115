"""Run every benchmark in turn (``nox -s bench``)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).parent

for script in ("bench_import.py", "bench_calls.py", "bench_http.py", "bench_memory.py"):
    print(f"== {script}", flush=True)
    subprocess.run([sys.executable, str(HERE / script)], check=True, cwd=HERE)
