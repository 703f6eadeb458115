"""The audit log under crashes and failures, through real servers.

* A stdio server SIGKILLed mid-load: every result the client received has its ``decision`` and
  ``outcome`` on disk, the log verifies up to the crash (never ``tampered``), and the next start
  quarantines a torn tail and continues the chain so that old and new records verify together.
* A failing export sink refuses the call before the body runs, without leaking why, and leaves a
  local log that verifies.
* A policy hook that raises is refused and audited as a ``deny`` decision with no outcome.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.client.transports import PythonStdioTransport

from securemcp import FastMCP, current
from securemcp.audit import AuditLog, Ed25519Signer, Keyring, iter_records, verify
from securemcp.audit.keys import DEV_KEYRING_FILE
from securemcp.policy import Decision
from securemcp.testing import connect

SCRIPT = Path(__file__).with_name("audit_crash_server.py")
CALLERS = 20
CALLS_BEFORE_KILL = 300


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("test-audit-crash")


def _keyring(signer: Ed25519Signer) -> Keyring:
    return Keyring([signer.verifier_key()])


def _records(folder: Path) -> list[dict[str, Any]]:
    return list(iter_records(folder))


# --- 1. SIGKILL under load -----------------------------------------------------------------


def _transport(tmp_path: Path, run: int, checkpoint_every: int) -> PythonStdioTransport:
    return PythonStdioTransport(
        SCRIPT,
        env={
            "SECUREMCP_AUDIT_DIR": str(tmp_path / "audit"),
            "SECUREMCP_KEY_DIR": str(tmp_path / "keys"),
            "CRASH_TEST_PID_FILE": str(tmp_path / f"pid-{run}"),
            "CRASH_TEST_CHECKPOINT_EVERY": str(checkpoint_every),
            "FASTMCP_SHOW_SERVER_BANNER": "false",
            "FASTMCP_CHECK_FOR_UPDATES": "off",
        },
        cwd=str(tmp_path),
        keep_alive=False,
        log_file=tmp_path / f"stderr-{run}.txt",
    )


async def _load_then_kill(tmp_path: Path, checkpoint_every: int) -> tuple[list[str], int]:
    """Drive the server with CALLERS concurrent loops, SIGKILL it mid-load; the ids received."""
    received: list[str] = []
    failures: list[BaseException] = []
    pid, stuck = -1, -1
    loaded = asyncio.Event()

    async def caller(client: Client[Any], index: int) -> None:
        n = 0
        while True:
            try:
                result = await client.call_tool("work", {"n": index * 100_000 + n})
            except Exception as exc:  # the server died under us
                failures.append(exc)
                return
            received.append(result.data)
            if len(received) >= CALLS_BEFORE_KILL:
                loaded.set()
            n += 1

    try:
        async with Client(_transport(tmp_path, 1, checkpoint_every)) as client:
            pid = int((tmp_path / "pid-1").read_text())
            tasks = [asyncio.create_task(caller(client, i)) for i in range(CALLERS)]
            async with asyncio.timeout(30):
                await loaded.wait()
            os.kill(pid, signal.SIGKILL)
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            stuck = len(pending)
    except Exception:  # closing a session whose server was killed may raise; the data is in
        if stuck < 0:
            raise
    assert stuck == 0, "calls still waiting 10 s after the server was killed"
    assert len(failures) == CALLERS  # every caller was cut off by the kill, none finished early
    return received, pid


def _expected_after_crash(folder: Path) -> tuple[int, int, bool]:
    """From the raw files: (complete record lines, size of the last checkpoint, torn?)."""
    segments = sorted(folder.glob("audit-*.jsonl"))
    data = segments[-1].read_bytes()
    records = sum(path.read_bytes().count(b"\n") for path in segments)
    checkpoints = (folder / "checkpoints.jsonl").read_bytes()
    complete = checkpoints[: checkpoints.rfind(b"\n") + 1].splitlines()
    note = json.loads(complete[-1])["note"]
    sealed = int(note.split("\n")[1])  # a checkpoint's second line is the tree size
    torn = not data.endswith(b"\n") or not checkpoints.endswith(b"\n")
    return records, sealed, torn


@pytest.mark.parametrize("checkpoint_every", [1_000_000, 25], ids=["open-only", "every-25"])
async def test_sigkill_under_load_loses_no_acknowledged_call(
    tmp_path: Path, checkpoint_every: int
) -> None:
    folder = tmp_path / "audit"
    received, pid = await _load_then_kill(tmp_path, checkpoint_every)
    keyring = Keyring.load(tmp_path / "keys" / DEV_KEYRING_FILE)  # written by the server

    # Every acknowledged call was decided and finished on disk before the client saw it.
    records = _records(folder)
    assert len(set(received)) == len(received) >= CALLS_BEFORE_KILL
    decisions = {r["call_id"]: r for r in records if r["type"] == "decision"}
    outcomes = {r["call_id"]: r for r in records if r["type"] == "outcome"}
    for call_id in received:
        decision, outcome = decisions[call_id], outcomes[call_id]
        assert decision["decision"]["result"] == "allow"
        assert decision["target"] == "work"
        assert decision["identity"]["subject"] == "local-developer"
        assert outcome["outcome"] == "ok"
        assert decision["seq"] < outcome["seq"]
    assert set(outcomes) <= set(decisions)  # no outcome without its decision
    assert len(decisions) - len(received) <= CALLERS  # at most one call in flight per caller
    assert records[0]["type"] == "log_open" and records[0]["writer"]["pid"] == pid
    assert records[-1]["type"] != "log_close"

    # The verifier accepts everything up to the crash: an unsealed (or torn) tail, never tampering.
    lines, sealed, torn = _expected_after_crash(folder)
    report = verify(folder, keyring=keyring)
    assert report.records == lines == len(records)
    assert report.sealed == sealed and not report.closed
    if torn:
        assert (report.status, report.kind, report.exit_code) == ("unsealed_tail", "torn_tail", 4)
    elif sealed == lines:  # the kill landed right after a checkpoint
        assert (report.status, report.exit_code) == ("verified", 0)
    else:
        assert (report.status, report.kind, report.exit_code) == ("unsealed_tail", "unsealed", 4)
        assert report.first_bad_seq == sealed
    if checkpoint_every == 1_000_000:
        assert sealed == 1  # only the start-up checkpoint over log_open

    # A crash mid-write leaves a partial last line (SIGKILL alone practically never tears one).
    segment = sorted(folder.glob("audit-*.jsonl"))[-1]
    intact = segment.read_bytes()
    last = intact.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    fragment = last[: len(last) // 2]
    with segment.open("ab") as handle:
        handle.write(fragment)
    torn_report = verify(folder, keyring=keyring)
    assert (torn_report.status, torn_report.kind, torn_report.exit_code) == (
        "unsealed_tail",
        "torn_tail",
        4,
    )
    assert torn_report.records == lines and torn_report.first_bad_seq == lines

    # Restart on the same folder: the torn tail is quarantined, the chain continues, and a call
    # is served and audited; after a clean stop the whole log (old and new) verifies.
    async with Client(_transport(tmp_path, 2, checkpoint_every)) as client:
        result = await client.call_tool("work", {"n": -1})
    new_pid = int((tmp_path / "pid-2").read_text())
    assert new_pid != pid
    assert segment.read_bytes().startswith(intact)  # nothing before the crash was rewritten
    quarantined = list((folder / "quarantine").iterdir())
    assert [path.read_bytes() for path in quarantined] == [fragment]
    after = _records(folder)
    assert after[: len(records)] == records
    reopened = after[len(records)]
    assert reopened["type"] == "log_open" and reopened["writer"]["pid"] == new_pid
    assert reopened["seq"] == lines
    assert reopened["recovered"]["bytes"] == len(fragment)
    assert reopened["recovered"]["offset"] == len(intact)
    assert reopened["recovered"]["segment"] == segment.name
    new_calls = [r for r in after[len(records) :] if r.get("call_id") == result.data]
    assert [r["type"] for r in new_calls] == ["decision", "outcome"]
    assert after[-1]["type"] == "log_close"
    final = verify(folder, keyring=keyring)
    assert (final.status, final.exit_code, final.kind) == ("verified", 0, None), final
    assert final.records == len(after) and final.closed
    assert final.quarantined == 1


# --- 2. A failing export sink -------------------------------------------------------------


class FlakySink:
    """An exporter that raises while ``failing`` is set (e.g. the SIEM endpoint is down)."""

    def __init__(self) -> None:
        self.failing = False
        self.records: list[dict[str, Any]] = []

    def emit(self, record: dict[str, Any]) -> None:
        if self.failing:
            raise ConnectionError("siem.internal.example:6514 refused: credential sk-live-123")
        self.records.append(record)

    def emit_checkpoint(self, text: str) -> None:
        pass


def _sink_server(log: AuditLog) -> tuple[FastMCP, dict[str, int]]:
    runs = {"echo": 0}
    mcp = FastMCP("sink", audit=log)

    @mcp.tool
    def echo(text: str) -> str:
        runs["echo"] += 1
        return current().call_id

    return mcp, runs


async def test_a_failing_sink_refuses_the_call_and_the_local_log_verifies(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    sink = FlakySink()
    log = AuditLog(tmp_path, signer=signer, sinks=[sink])
    mcp, runs = _sink_server(log)
    async with connect(mcp) as client:
        ok = await client.call_tool("echo", {"text": "before"})
        sink.failing = True
        refused = await client.call_tool("echo", {"text": "during"}, raise_on_error=False)
        sink.failing = False
        after = await client.call_tool("echo", {"text": "after"})
    log.close()

    assert refused.is_error
    text = refused.content[0].text
    assert text.startswith("audit_unavailable:")
    for detail in ("siem", "6514", "sk-live", "ConnectionError", "FlakySink", "sink"):
        assert detail not in text
    assert runs["echo"] == 2  # the refused call's body never ran
    records = _records(tmp_path)
    calls = [r for r in records if r["type"] in ("decision", "outcome")]
    outcomes = {r["call_id"]: r for r in calls if r["type"] == "outcome"}
    assert {ok.data, after.data} <= set(outcomes)
    # The refused call's decision line reached the local log before the sink raised (as
    # documented: "the local record is written and stays valid"), and it is closed by a
    # "refused" outcome: no decision in the local log is left without its outcome.
    decisions = [r for r in calls if r["type"] == "decision"]
    assert {r["call_id"] for r in decisions} == set(outcomes)
    (refused_call,) = [r for r in decisions if r["call_id"] not in (ok.data, after.data)]
    closing = outcomes[refused_call["call_id"]]
    assert closing["outcome"] == "refused"
    assert closing["error"] == "audit_unavailable"
    assert [r["seq"] for r in records] == list(range(len(records)))
    report = verify(tmp_path, keyring=_keyring(signer))
    assert report.ok and report.closed, report
    assert report.records == len(records)


async def test_a_sink_still_failing_at_shutdown_leaves_a_sealed_local_log(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    sink = FlakySink()
    log = AuditLog(tmp_path, signer=signer, sinks=[sink])
    mcp, runs = _sink_server(log)
    async with connect(mcp) as client:
        await client.call_tool("echo", {"text": "x"})
        sink.failing = True
        refused = await client.call_tool("echo", {"text": "y"}, raise_on_error=False)
    assert refused.content[0].text.startswith("audit_unavailable:")
    assert runs["echo"] == 1
    log.close()  # the exporter is still down
    assert _records(tmp_path)[-1]["type"] == "log_close"
    report = verify(tmp_path, keyring=_keyring(signer))
    assert report.ok and report.closed, report


async def test_a_start_up_refused_by_a_failing_sink_can_be_retried_cleanly(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    sink = FlakySink()
    sink.failing = True
    # A short interval: the background sealer must seal the tail within it (a half-open log
    # has no sealer and never would).
    log = AuditLog(
        tmp_path, signer=signer, sinks=[sink], checkpoint_every=2, checkpoint_interval=0.2
    )
    mcp, runs = _sink_server(log)
    with pytest.raises(Exception, match="cannot open its audit log"):
        async with connect(mcp):
            pass
    assert runs["echo"] == 0
    sink.failing = False
    try:
        async with connect(mcp) as client:
            for n in range(4):
                await client.call_tool("echo", {"text": str(n)})
            # The background sealer checkpoints every 2 records; give it time on a busy machine
            # (the half-open bug this guards against never seals at all).
            for _ in range(1000):
                if verify(tmp_path, keyring=_keyring(signer)).status == "verified":
                    break
                await asyncio.sleep(0.01)
        report = verify(tmp_path, keyring=_keyring(signer))
        assert report.ok, report
    finally:
        log.close()


# --- 3. A raising policy hook -------------------------------------------------------------


async def test_a_raising_policy_is_refused_and_audited_as_a_deny(
    signer: Ed25519Signer, tmp_path: Path
) -> None:
    def broken(request: Any) -> Decision:
        raise RuntimeError("policy database at db.internal:5432 is down")

    runs = {"read": 0}
    log = AuditLog(tmp_path, signer=signer)
    mcp = FastMCP("policy", policy=broken, audit=log)

    @mcp.tool
    def read() -> str:
        runs["read"] += 1
        return "ok"

    async with connect(mcp) as client:
        result = await client.call_tool("read", {}, raise_on_error=False)
    log.close()

    assert result.is_error
    text = result.content[0].text
    assert text.startswith("policy_error:")
    assert "db.internal" not in text and "RuntimeError" not in text
    assert runs["read"] == 0
    records = _records(tmp_path)
    decisions = [r for r in records if r["type"] == "decision"]
    assert len(decisions) == 1
    decision = decisions[0]
    assert decision["target"] == "read" and decision["method"] == "tools/call"
    assert decision["decision"]["result"] == "deny"
    assert decision["decision"]["reason"] == "policy_error"
    assert decision["identity"]["subject"] == "local-developer"
    assert not [r for r in records if r["type"] == "outcome"]
    assert not [r for r in records if r.get("call_id") not in (None, decision["call_id"])]
    assert verify(tmp_path, keyring=_keyring(signer)).ok
