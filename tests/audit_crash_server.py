"""A securemcp stdio server for the crash tests in test_audit_crash.py (run as a script).

It writes its pid to ``$CRASH_TEST_PID_FILE`` at start-up (so the test can SIGKILL it) and audits
to ``$SECUREMCP_AUDIT_DIR`` with the development key in ``$SECUREMCP_KEY_DIR``. Checkpoints are
signed every ``$CRASH_TEST_CHECKPOINT_EVERY`` records (never on a timer, so the test can predict
what an unclean stop leaves). No verifier: every call runs as the development principal.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from securemcp import FastMCP, current
from securemcp.audit import AuditLog

log = AuditLog(
    os.environ["SECUREMCP_AUDIT_DIR"],
    fsync="never",
    checkpoint_every=int(os.environ.get("CRASH_TEST_CHECKPOINT_EVERY", "1000000")),
    checkpoint_interval=3600.0,
)
mcp = FastMCP("crash", audit=log)


@mcp.tool
async def work(n: int) -> str:
    await asyncio.sleep(0)  # let other calls interleave between this call's two records
    return current().call_id


if __name__ == "__main__":
    Path(os.environ["CRASH_TEST_PID_FILE"]).write_text(str(os.getpid()))
    mcp.run(show_banner=False)
