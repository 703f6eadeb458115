"""The writer: schema, chaining, checkpoints, one writer, crash recovery, failing closed."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import read_lines, records, segment_path, write_calls

from securemcp.audit import (
    AuditError,
    AuditLog,
    AuditLogLocked,
    AuditUnavailable,
    Ed25519Signer,
    Keyring,
    verify,
)
from securemcp.audit.chain import TS_PATTERN, genesis_prev
from securemcp.audit.merkle import leaf_hash
from securemcp.audit.storage import CHECKPOINTS_FILE, QUARANTINE_DIR, list_segments
from securemcp.context import Actor, Principal
from securemcp.errors import CallRefused


def open_log(directory: Path, signer: Ed25519Signer, **kw: Any) -> AuditLog:
    kw.setdefault("checkpoint_every", 10**9)
    kw.setdefault("checkpoint_interval", 3600)
    return AuditLog(directory, signer=signer, **kw).open()


def test_records_follow_schema_v1(log_dir: Path, signer: Ed25519Signer) -> None:
    principal = Principal(
        subject="alice",
        issuer="https://idp.example",
        client_id="cli",
        tenant="acme",
        act=(Actor(subject="agent-7", issuer="https://idp.example"),),
        claims={"secret_claim": "never copied"},
    )
    with AuditLog(log_dir, signer=signer, server="calc") as log:
        first = log.decision(
            call_id="c1",
            method="tools/call",
            target="add",
            result="allow",
            rule="scopes",
            policy_version="sha256:abc",
            identity=principal,
            arguments={"a": 1, "b": 2},
            trace_id="0af7651916cd43dd8448eb211c80319c",
        )
        second = log.outcome(
            call_id="c1",
            method="tools/call",
            target="add",
            outcome="ok",
            duration_ms=3.25,
            identity=principal,
        )
        log.auth_failure(reason="expired token", method="tools/call", credential_sha256="ab" * 32)
        log.config_change(what="rate_limits", details={"per_minute": 60}, config_version="v2")
        log.policy_change(policy_version="sha256:new", previous_version="sha256:abc")
    assert (first, second) == (1, 2)
    found = records(log_dir)
    assert [r["type"] for r in found] == [
        "log_open",
        "decision",
        "outcome",
        "auth_failure",
        "config_change",
        "policy_change",
        "log_close",
    ]
    decision, outcome = found[1], found[2]
    assert decision["identity"] == {
        "issuer": "https://idp.example",
        "subject": "alice",
        "client_id": "cli",
        "tenant": "acme",
        "actor": [{"subject": "agent-7", "issuer": "https://idp.example", "client_id": None}],
        "authenticated_by": "jwt",
        "verified": True,
    }
    assert decision["decision"] == {
        "result": "allow",
        "reason": "",
        "rule": "scopes",
        "policy_version": "sha256:abc",
    }
    assert decision["server"] == "calc" and decision["method"] == "tools/call"
    assert (
        decision["args_sha256"]
        == "43258cff783fe7036d8a43033f830adfc60ec037382473548ac742b888292777"
    )
    assert "args" not in decision and "never copied" not in json.dumps(found)
    assert outcome["call_id"] == decision["call_id"] and outcome["duration_ms"] == 3.25
    for seq, record in enumerate(found):
        assert record["v"] == 1 and record["seq"] == seq and record["log"] == found[0]["log"]
        assert TS_PATTERN.fullmatch(record["ts"])
    assert found[0]["prev"] == genesis_prev(found[0]["log"])
    lines = read_lines(segment_path(log_dir))
    for before, line in itertools.pairwise(lines):
        assert json.loads(line)["prev"] == leaf_hash(before).hex()
    assert [r["ts"] for r in found] == sorted(r["ts"] for r in found)


def test_a_policy_decision_object_is_recorded(log_dir: Path, signer: Ed25519Signer) -> None:
    from securemcp.policy.decision import Decision

    with open_log(log_dir, signer) as log:
        decision = Decision.constrain(
            "business hours", timeout_seconds=2.5, rule="r1", policy_version="sha256:p"
        )
        log.decision(call_id="c", method="tools/call", target="t", result=decision)
    recorded = records(log_dir)[1]["decision"]
    assert recorded == {
        "result": "constrain",
        "reason": "business hours",
        "rule": "r1",
        "policy_version": "sha256:p",
        "constraints": {"timeout_seconds": 2.5},
    }


def test_invalid_records_are_refused_before_anything_is_written(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    with open_log(log_dir, signer) as log:
        size = log.size
        with pytest.raises(ValueError, match="type"):
            log.append({"call_id": "x"})
        with pytest.raises(ValueError, match="seq"):
            log.append({"type": "decision", "seq": 5})
        with pytest.raises(ValueError):
            log.outcome(call_id="c", method="m", target="t", outcome="maybe", duration_ms=1)
        with pytest.raises(ValueError):
            log.append({"type": "x", "n": float("nan")})
        assert log.size == size
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_floats_and_unicode_are_canonical(log_dir: Path, signer: Ed25519Signer) -> None:
    keyring = Keyring([signer.verifier_key()])
    with open_log(log_dir, signer, record_arguments=True) as log:
        log.decision(
            call_id="c",
            method="tools/call",
            target="résumé",
            result="allow",
            arguments={"x": 1e21, "y": 0.1, "z": 10.0, "big": 2**70, "\U0001f602": "ok"},
            identity={"sub": "Zoë"},
        )
    assert verify(log_dir, keyring=keyring).ok
    args = records(log_dir)[1]["args"]
    assert args == {"x": 1e21, "y": 0.1, "z": 10, "big": str(2**70), "\U0001f602": "ok"}


def test_second_writer_is_refused(log_dir: Path, signer: Ed25519Signer) -> None:
    with open_log(log_dir, signer):
        second = AuditLog(log_dir, signer=signer)
        with pytest.raises(AuditLogLocked, match=f"pid {os.getpid()}"):
            second.open()
        # appending lazily opens, and then fails closed with a client-safe error
        with pytest.raises(AuditUnavailable) as info:
            second.append({"type": "decision"})
        assert "another process" in (info.value.reason or "")
    with open_log(log_dir, signer):  # released on close
        pass


def test_lazy_open_and_append_after_close(log_dir: Path, signer: Ed25519Signer) -> None:
    log = AuditLog(log_dir, signer=signer)
    assert log.append({"type": "config_change"}) == 1  # opens lazily (seq 0 is log_open)
    log.close()
    log.close()  # idempotent
    with pytest.raises(AuditUnavailable) as info:
        log.append({"type": "config_change"})
    assert "closed" in (info.value.reason or "")
    log.open()  # an explicit open starts a new session
    assert log.append({"type": "config_change"}) == 4
    log.close()
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_audit_unavailable_is_a_client_safe_refusal() -> None:
    error = AuditUnavailable(reason="disk full")
    assert isinstance(error, CallRefused)
    assert error.code == "audit_unavailable"
    assert str(error) == "audit_unavailable: The audit log is unavailable, so the call was refused."


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_folder_is_audit_unavailable(tmp_path: Path, signer: Ed25519Signer) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(AuditUnavailable):
            AuditLog(folder / "audit", signer=signer).append({"type": "decision"})
    finally:
        folder.chmod(0o700)


def test_an_unwritable_folder_is_audit_unavailable(tmp_path: Path, signer: Ed25519Signer) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    log = AuditLog(blocker / "audit", signer=signer)
    with pytest.raises(AuditUnavailable) as info:
        log.decision(call_id="c", method="tools/call", target="t", result="allow")
    assert "cannot open" in (info.value.reason or "")


def test_disk_errors_fail_closed_and_leave_nothing_half_written(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyring = Keyring([signer.verifier_key()])
    log = open_log(log_dir, signer)
    write_calls(log, 2)
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] == 1:  # half the line reaches the disk, then the disk is full
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", flaky_write)
    size = log.size
    with pytest.raises(AuditUnavailable) as info:
        log.decision(call_id="c", method="tools/call", target="t", result="allow")
    assert "No space left" in (info.value.reason or "")
    assert log.size == size
    monkeypatch.setattr(os, "write", real_write)
    write_calls(log, 1)  # the disk has room again: the log continues
    log.close()
    report = verify(log_dir, keyring=keyring)
    assert report.ok, report


def test_a_write_that_cannot_be_undone_disables_the_log(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(log_dir, signer)

    def broken(*args: Any) -> int:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", broken)
    monkeypatch.setattr(os, "ftruncate", broken)
    with pytest.raises(AuditUnavailable):
        log.append({"type": "decision"})
    monkeypatch.undo()
    with pytest.raises(AuditUnavailable) as info:
        log.append({"type": "decision"})
    assert "could not be undone" in (info.value.reason or "")
    log.close()
    log.open()  # a new writer session recovers
    log.close()


def test_a_full_disk_while_sealing_leaves_no_torn_checkpoint_line(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half a checkpoint line, then ENOSPC: the line is cut back, so the next checkpoint does not
    follow a torn line (which made the intact log verify as tampered for good)."""
    keyring = Keyring([signer.verifier_key()])
    log = open_log(log_dir, signer)
    write_calls(log, 2)
    log.checkpoint()
    cp_file = log_dir / CHECKPOINTS_FILE
    before = cp_file.read_bytes()
    write_calls(log, 1)
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:
        if fd == log._cp_fd:  # half the checkpoint line reaches the disk, then it is full
            real_write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(AuditUnavailable) as info:
        log.checkpoint()
    assert "No space left" in (info.value.reason or "")
    monkeypatch.setattr(os, "write", real_write)
    assert cp_file.read_bytes() == before
    write_calls(log, 1)  # the disk has room again: records and checkpoints continue
    log.checkpoint()
    live = verify(log_dir, keyring=keyring)
    assert live.ok and live.sealed == log.size, live
    log.close()
    report = verify(log_dir, keyring=keyring)
    assert report.ok and report.closed, report


def test_a_failed_checkpoint_fsync_leaves_no_duplicate_checkpoint(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint line written but not synced is cut back too: the next checkpoint is for the
    same size, and two lines for one size read as a duplicated checkpoint."""
    log = open_log(log_dir, signer, fsync="always")
    write_calls(log, 1)
    before = (log_dir / CHECKPOINTS_FILE).read_bytes()
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if fd == log._cp_fd:
            raise OSError(errno.EIO, "I/O error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(AuditUnavailable):
        log.checkpoint()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert (log_dir / CHECKPOINTS_FILE).read_bytes() == before
    log.checkpoint()
    log.close()
    report = verify(log_dir, keyring=Keyring([signer.verifier_key()]))
    assert report.ok, report


def test_a_checkpoint_write_that_cannot_be_undone_disables_the_log(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = open_log(log_dir, signer)
    write_calls(log, 1)
    real_write = os.write

    def torn(fd: int, data: Any) -> int:
        if fd == log._cp_fd:
            real_write(fd, bytes(data)[:10])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    def broken(*args: Any) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "write", torn)
    monkeypatch.setattr(os, "ftruncate", broken)
    with pytest.raises(AuditUnavailable):
        log.checkpoint()
    monkeypatch.undo()
    with pytest.raises(AuditUnavailable) as info:  # fail closed: no record after a torn line
        log.append({"type": "decision"})
    assert "could not be undone" in (info.value.reason or "")
    log.close()
    log.open()  # a new writer session quarantines the torn line and recovers
    log.close()
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_torn_tail_is_quarantined_and_the_log_continues(
    log_dir: Path, signer: Ed25519Signer, caplog: pytest.LogCaptureFixture
) -> None:
    keyring = Keyring([signer.verifier_key()])
    log = open_log(log_dir, signer)
    write_calls(log, 3)
    log.checkpoint()
    write_calls(log, 1)
    # simulate a crash: no close, half a record on disk
    os.write(log._fd, b'{"args_sha256":"1234')
    log._release_files()
    log._opened = False
    log._stop.set()
    torn = verify(log_dir, keyring=keyring)
    assert (torn.status, torn.kind, torn.exit_code) == ("unsealed_tail", "torn_tail", 4)
    assert torn.records == 9 and torn.sealed == 7

    with (
        caplog.at_level(logging.WARNING, logger="securemcp.audit"),
        open_log(log_dir, signer) as reopened,
    ):
        write_calls(reopened, 1)
    assert "torn" in caplog.text
    quarantined = list((log_dir / QUARANTINE_DIR).iterdir())
    assert [p.read_bytes() for p in quarantined] == [b'{"args_sha256":"1234']
    found = records(log_dir)
    log_open = found[9]
    assert log_open["type"] == "log_open"
    assert log_open["recovered"]["bytes"] == 20
    report = verify(log_dir, keyring=keyring)
    assert report.ok, report
    assert report.quarantined == 1 and report.warnings


def test_a_torn_checkpoint_line_is_quarantined(log_dir: Path, signer: Ed25519Signer) -> None:
    with open_log(log_dir, signer) as log:
        write_calls(log, 1)
    with (log_dir / CHECKPOINTS_FILE).open("ab") as handle:
        handle.write(b'{"note":"securemcp')
    report = verify(log_dir, keyring=Keyring([signer.verifier_key()]))
    assert report.exit_code == 4 and report.warnings
    with open_log(log_dir, signer):
        pass
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_reopening_continues_the_chain(log_dir: Path, signer: Ed25519Signer) -> None:
    for _ in range(3):
        with open_log(log_dir, signer) as log:
            write_calls(log, 2)
    found = records(log_dir)
    assert [r["seq"] for r in found] == list(range(len(found)))
    assert len({r["log"] for r in found}) == 1
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_reopening_rehashes_when_the_saved_range_is_unusable(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    with open_log(log_dir, signer) as log:
        write_calls(log, 2)
    (log_dir / CHECKPOINTS_FILE).unlink()  # no saved range: the writer rehashes everything
    with open_log(log_dir, signer) as log:
        write_calls(log, 1)
    report = verify(log_dir, keyring=Keyring([signer.verifier_key()]))
    assert report.ok and report.records == 10


def test_refuses_a_log_that_lost_sealed_records(log_dir: Path, signer: Ed25519Signer) -> None:
    with open_log(log_dir, signer) as log:
        write_calls(log, 2)
    path = segment_path(log_dir)
    path.write_bytes(b"".join(line + b"\n" for line in read_lines(path)[:3]))
    with pytest.raises(AuditError, match="lost or removed"):
        open_log(log_dir, signer)


def test_refuses_another_origin(log_dir: Path, signer: Ed25519Signer) -> None:
    with AuditLog(log_dir, signer=signer, origin="example.com/log-a"):
        pass
    with pytest.raises(AuditError, match=r"example\.com/log-a"):
        AuditLog(log_dir, signer=signer, origin="example.com/log-b").open()


def test_segments_rotate_by_size_and_the_chain_continues(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    with open_log(log_dir, signer, segment_max_bytes=4096) as log:
        write_calls(log, 30)
    segments = list_segments(log_dir)
    assert len(segments) >= 4
    assert all(path.stat().st_size <= 4096 for _, path in segments)
    with open_log(log_dir, signer, segment_max_bytes=4096) as log:
        write_calls(log, 5)
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_checkpoints_every_n_records(log_dir: Path, signer: Ed25519Signer) -> None:
    notes: list[str] = []
    with open_log(log_dir, signer, checkpoint_every=10, witness=notes.append) as log:
        for _ in range(6):
            write_calls(log, 5)  # 10 records
            deadline = time.monotonic() + 5
            while log.size - int((log.last_checkpoint or "\n0").split("\n")[1]) >= 10:
                assert time.monotonic() < deadline, "no checkpoint was signed"
                time.sleep(0.01)
    assert len(notes) >= 7  # open + at least one per 10 records + close


def test_checkpoints_every_t_seconds(log_dir: Path, signer: Ed25519Signer) -> None:
    notes: list[str] = []
    with open_log(log_dir, signer, checkpoint_interval=0.2, witness=notes.append) as log:
        log.append({"type": "config_change"})
        deadline = time.monotonic() + 5
        while len(notes) < 2:
            assert time.monotonic() < deadline, "no timed checkpoint"
            time.sleep(0.02)
        sealed = verify(log_dir, keyring=Keyring([signer.verifier_key()]))
        assert sealed.ok and not sealed.closed


def test_idle_logs_sign_no_new_checkpoints(log_dir: Path, signer: Ed25519Signer) -> None:
    with open_log(log_dir, signer) as log:
        first = log.checkpoint()
        assert log.checkpoint() == first
    assert len(read_lines(log_dir / CHECKPOINTS_FILE)) == 2  # open and close


def test_witness_failures_are_logged_not_raised(
    log_dir: Path, signer: Ed25519Signer, caplog: pytest.LogCaptureFixture
) -> None:
    def down(note: str) -> None:
        raise ConnectionError("witness unreachable")

    with open_log(log_dir, signer, witness=[down]) as log:
        write_calls(log, 1)
    assert log.export_failures == 2 and "witness" in caplog.text


@pytest.mark.parametrize("policy", ["always", "never"])
def test_fsync_policies(log_dir: Path, signer: Ed25519Signer, policy: Any) -> None:
    with open_log(log_dir, signer, fsync=policy) as log:
        write_calls(log, 3)
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


def test_default_folder_and_development_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SECUREMCP_AUDIT_DIR", raising=False)
    monkeypatch.delenv("SECUREMCP_KEY_DIR", raising=False)
    with caplog.at_level(logging.WARNING, logger="securemcp.audit"), AuditLog() as log:
        write_calls(log, 1)
    assert "DEVELOPMENT audit signing key" in caplog.text
    key = tmp_path / ".securemcp" / "keys" / "audit-dev.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / ".securemcp" / "audit" / "audit-000000.jsonl").exists()
    keyring = Keyring.load(tmp_path / ".securemcp" / "keys" / "audit-dev.keyring")
    assert verify(tmp_path / ".securemcp" / "audit", keyring=keyring).ok
    caplog.clear()
    with AuditLog() as log:  # the key is reused, silently
        write_calls(log, 1)
    assert "DEVELOPMENT" not in caplog.text
    assert verify(tmp_path / ".securemcp" / "audit", keyring=keyring).ok


def test_environment_variable_moves_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signer: Ed25519Signer
) -> None:
    monkeypatch.setenv("SECUREMCP_AUDIT_DIR", str(tmp_path / "elsewhere"))
    with AuditLog(signer=signer) as log:
        assert log.directory == tmp_path / "elsewhere"
    assert list_segments(tmp_path / "elsewhere")


def test_files_are_private(log_dir: Path, signer: Ed25519Signer) -> None:
    with open_log(log_dir, signer) as log:
        write_calls(log, 1)
    assert stat.S_IMODE(log_dir.stat().st_mode) == 0o700
    for path in [segment_path(log_dir), log_dir / CHECKPOINTS_FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_appends_from_many_threads_form_one_chain(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    """1,000 concurrent calls (sync tools run in worker threads) give a contiguous log."""
    seqs: list[int] = []
    lock = threading.Lock()
    with open_log(log_dir, signer, checkpoint_every=100) as log:

        def call(index: int) -> None:
            identity = {"sub": f"user-{index % 7}"}
            a = log.decision(
                call_id=f"c{index}", method="tools/call", target="t", result="allow",
                identity=identity,
            )  # fmt: skip
            b = log.outcome(
                call_id=f"c{index}", method="tools/call", target="t", outcome="ok",
                duration_ms=1, identity=identity,
            )  # fmt: skip
            with lock:
                seqs.extend([a, b])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(1000)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(seqs) == list(range(1, 2001))
    report = verify(log_dir, keyring=Keyring([signer.verifier_key()]))
    assert report.ok and report.records == 2002
    by_call: dict[str, list[str]] = {}
    for record in records(log_dir)[1:-1]:
        by_call.setdefault(record["call_id"], []).append(record["type"])
    assert all(types == ["decision", "outcome"] for types in by_call.values())


def test_timestamps_never_go_backwards_when_the_clock_does(
    log_dir: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_log(log_dir, signer) as log:
        write_calls(log, 1)
        real = time.time_ns
        monkeypatch.setattr(time, "time_ns", lambda: real() - 3600 * 10**9)
        write_calls(log, 1)
        monkeypatch.setattr(time, "time_ns", real)
    found = records(log_dir)
    assert [r["ts"] for r in found] == sorted(r["ts"] for r in found)
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok


class KmsSigner:
    """A Signer whose private key never leaves its "KMS" (here: a private attribute)."""

    def __init__(self) -> None:
        self._inner = Ed25519Signer.generate("kms-key")
        self.calls = 0

    @property
    def key_name(self) -> str:
        return self._inner.key_name

    @property
    def key_id(self) -> bytes:
        return self._inner.key_id

    @property
    def public_key_bytes(self) -> bytes:
        return self._inner.public_key_bytes

    def sign(self, message: bytes) -> bytes:
        self.calls += 1
        return self._inner.sign(message)


def test_any_signer_implementation_works(log_dir: Path) -> None:
    from securemcp.audit import Signer

    kms = KmsSigner()
    assert isinstance(kms, Signer)
    with AuditLog(log_dir, signer=kms) as log:
        write_calls(log, 50)
    assert kms.calls == 2  # Ed25519 only at checkpoints: open and close
    keyring = Keyring()
    keyring.add(json.loads(read_lines(segment_path(log_dir))[0])["key"])
    assert verify(log_dir, keyring=keyring).ok
