"""A writer killed with SIGKILL under load loses no acknowledged record, and its log verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from audit_helpers import records

from securemcp.audit import AuditLog, Ed25519Signer, Keyring, verify

CHILD = textwrap.dedent(
    """
    import sys, threading
    from securemcp.audit import AuditLog, Ed25519Signer

    signer = Ed25519Signer.from_file(sys.argv[2])
    log = AuditLog(sys.argv[1], signer=signer, checkpoint_every=50, fsync="interval").open()
    out_lock = threading.Lock()

    def serve(worker):
        n = 0
        while True:
            call = f"{worker}-{n}"
            log.decision(call_id=call, method="tools/call", target="t", result="allow")
            log.outcome(call_id=call, method="tools/call", target="t", outcome="ok",
                        duration_ms=0.1)
            with out_lock:  # the client has the result now
                sys.stdout.write(call + "\\n")
                sys.stdout.flush()
            n += 1

    for worker in range(4):
        threading.Thread(target=serve, args=(worker,), daemon=True).start()
    threading.Event().wait()
    """
)


def test_sigkill_under_load_loses_no_acknowledged_call(tmp_path: Path) -> None:
    key = tmp_path / "signing.key"
    from securemcp.audit import generate_key_file

    signer = generate_key_file(key, "crash-test")
    keyring = Keyring([signer.verifier_key()])
    directory = tmp_path / "audit"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(directory), str(key)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    deadline = time.monotonic() + 30
    while len(acknowledged) < 400 and time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        acknowledged.append(line.decode().strip())
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    acknowledged.extend(line.decode().strip() for line in child.stdout.read().splitlines())
    assert len(acknowledged) >= 400, "the writer produced too little before the deadline"

    report = verify(directory, keyring=keyring)
    assert report.status in ("unsealed_tail", "verified"), report
    assert report.kind in ("unsealed", "torn_tail", None)
    written = {(r["call_id"], r["type"]) for r in records(directory) if "call_id" in r}
    missing = [c for c in acknowledged if {(c, "decision"), (c, "outcome")} - written]
    assert not missing, f"{len(missing)} acknowledged calls lost"

    # a new writer recovers (quarantining any torn line), continues and seals the log
    with AuditLog(directory, signer=Ed25519Signer.from_file(key)) as log:
        log.append({"type": "config_change", "what": "restart"})
    after = verify(directory, keyring=keyring)
    assert after.ok and after.closed, after
    assert after.records > report.records
