"""Every kind of tampering is detected, named, and mapped to the right exit code."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import (
    checkpoint_sizes,
    forge,
    read_lines,
    records,
    segment_path,
    write_calls,
    write_lines,
)

from securemcp.audit import AuditLog, Ed25519Signer, Keyring, jcs, verify
from securemcp.audit.checkpoint import Checkpoint
from securemcp.audit.note import parse_note, sign_note
from securemcp.audit.storage import CHECKPOINTS_FILE, list_segments

MakeLog = Callable[..., Path]


def edit_record(directory: Path, seq: int, change: Callable[[dict[str, Any]], None]) -> None:
    path = segment_path(directory)
    lines = read_lines(path)
    record = json.loads(lines[seq])
    change(record)
    lines[seq] = jcs.dumps(record)
    write_lines(path, lines)


def expect(report: Any, status: str, kind: str | None, first_bad: int | None = None) -> None:
    assert (report.status, report.kind) == (status, kind), report
    if first_bad is not None:
        assert report.first_bad_seq == first_bad, report


def test_an_untouched_log_verifies(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    report = verify(directory, keyring=keyring)
    expect(report, "verified", None)
    assert report.exit_code == 0 and report.ok
    assert report.records == 22 and report.sealed == 22 and report.unsealed == 0
    assert report.closed and report.signers == ["test-key"]
    assert report.checkpoints == len(checkpoint_sizes(directory)) == report.trusted_checkpoints


def test_an_edited_value_is_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    edit_record(directory, 6, lambda r: r.update(target="delete_everything"))
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "edited", 6)
    assert report.exit_code == 1


def test_an_edited_prev_field_points_at_the_edited_record(
    make_log: MakeLog, keyring: Keyring
) -> None:
    directory = make_log(10)
    edit_record(directory, 6, lambda r: r.update(prev="0" * 64))
    expect(verify(directory, keyring=keyring), "tampered", "edited", 6)


def test_a_non_canonical_reserialization_is_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    same = json.loads(lines[6])
    lines[6] = json.dumps(same).encode()  # same JSON value, different bytes
    write_lines(path, lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "non_canonical", 6)
    assert report.exit_code == 1


@pytest.mark.parametrize("seq", [0, 6, 21])
def test_a_deleted_record_is_detected(make_log: MakeLog, keyring: Keyring, seq: int) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    del lines[seq]
    write_lines(path, lines)
    report = verify(directory, keyring=keyring)
    if seq == 21:  # the last record: the final checkpoint now covers more than the log holds
        expect(report, "tampered", "truncated", 21)
    else:
        expect(report, "tampered", "deleted", seq)
    assert report.exit_code == 1


def test_a_junk_record_inserted_is_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    forged = json.loads(lines[6])
    forged.update(seq=999, call_id="forged")
    lines.insert(6, jcs.dumps(forged))
    write_lines(path, lines)
    expect(verify(directory, keyring=keyring), "tampered", "inserted", 6)


def test_a_record_inserted_that_chains_onto_its_predecessor_is_detected(
    make_log: MakeLog, keyring: Keyring
) -> None:
    """The attacker computes seq and prev for the forged record; the next one still breaks."""
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    forged = json.loads(lines[6])
    forged["call_id"] = "forged"  # same seq and prev as the real seq 6
    lines.insert(6, jcs.dumps(forged))
    write_lines(path, lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "inserted", 6)
    assert report.exit_code == 1


def test_swapped_records_are_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    lines[6], lines[7] = lines[7], lines[6]
    write_lines(path, lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "reordered", 6)
    assert report.exit_code == 1


def test_a_record_moved_later_is_reordered(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    lines.insert(12, lines.pop(6))
    write_lines(path, lines)
    expect(verify(directory, keyring=keyring), "tampered", "reordered", 6)


def test_a_duplicated_record_is_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    lines = read_lines(path)
    lines.insert(7, lines[6])
    write_lines(path, lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "duplicated", 7)
    assert report.exit_code == 1


def test_a_truncated_tail_with_its_checkpoints_kept_is_detected(
    make_log: MakeLog, keyring: Keyring
) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    write_lines(path, read_lines(path)[:19])
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "truncated", 19)
    assert report.exit_code == 1


def test_a_truncated_tail_with_later_checkpoints_removed_is_an_unsealed_tail(
    make_log: MakeLog, keyring: Keyring
) -> None:
    directory = make_log(10)
    assert checkpoint_sizes(directory) == [1, 5, 9, 13, 17, 21, 22]
    path = segment_path(directory)
    write_lines(path, read_lines(path)[:19])
    cps = directory / CHECKPOINTS_FILE
    write_lines(cps, read_lines(cps)[:5])  # up to size 17
    report = verify(directory, keyring=keyring)
    expect(report, "unsealed_tail", "unsealed", 17)
    assert report.exit_code == 4 and report.sealed == 17 and report.unsealed == 2
    assert not report.closed


def test_a_truncated_tail_is_detected_against_a_trusted_checkpoint(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    """Cut exactly at a checkpoint with the later ones removed, the local files look like a live
    log; the checkpoint a witness kept proves the truncation."""
    directory = make_log(10)
    cps = directory / CHECKPOINTS_FILE
    witnessed = tmp_path / "witnessed.note"
    witnessed.write_text(json.loads(read_lines(cps)[-1])["note"])
    path = segment_path(directory)
    write_lines(path, read_lines(path)[:17])
    write_lines(cps, read_lines(cps)[:5])

    alone = verify(directory, keyring=keyring)
    expect(alone, "verified", None)
    assert not alone.closed  # the only local hint: no clean log_close

    report = verify(directory, keyring=keyring, trusted_checkpoint=witnessed)
    expect(report, "tampered", "truncated", 17)
    assert report.exit_code == 1


def _cut_at(directory: Path, size: int) -> None:
    """Roll the log back to its first ``size`` records and the checkpoints up to that size."""
    path = segment_path(directory)
    write_lines(path, read_lines(path)[:size])
    cps = directory / CHECKPOINTS_FILE
    sizes = checkpoint_sizes(directory)
    write_lines(cps, [line for line, n in zip(read_lines(cps), sizes, strict=True) if n <= size])


def test_a_rollback_past_a_key_rotation_is_detected_against_a_trusted_checkpoint(
    log_dir: Path, signer: Ed25519Signer, keyring: Keyring, tmp_path: Path
) -> None:
    """The witnessed checkpoint is signed by the rotated-to key only; cutting the log back
    before the rotation also removes what taught the verifier that key. The checkpoint the
    reviewer supplied must still prove the rollback (it was silently ignored: verified)."""
    new = Ed25519Signer.generate("test-key-2026")
    witnessed: list[str] = []
    with AuditLog(log_dir, signer=signer, checkpoint_every=10**9, witness=witnessed.append) as log:
        write_calls(log, 2)
        log.checkpoint()
        cut = log.size
        log.rotate_key(new)
        write_calls(log, 2, tool="delete_everything")
    note = tmp_path / "witnessed.note"
    note.write_text(witnessed[-1])
    assert f"\u2014 {signer.key_name} " not in witnessed[-1]  # the new key only
    assert verify(log_dir, keyring=keyring, trusted_checkpoint=note).ok
    _cut_at(log_dir, cut)
    assert verify(log_dir, keyring=keyring).ok  # alone, a rollback to a checkpoint looks live
    report = verify(log_dir, keyring=keyring, trusted_checkpoint=note)
    expect(report, "tampered", "truncated", cut)
    assert report.exit_code == 1 and "rolled back" in report.detail


def test_a_truncation_is_detected_against_a_checkpoint_by_an_unknown_key(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    """A supplied checkpoint is trusted by the reviewer whoever signed it (here a witness's
    own key, not in the keyring): a shorter log is truncated, a different prefix forked."""
    directory = make_log(10)
    last = Checkpoint.parse_text(parse_note(_last_note(directory)).text)
    witness = Ed25519Signer.generate("witness")
    note = sign_note(last.text(), [witness])
    other = sign_note(Checkpoint(last.origin, last.size, bytes(32)).text(), [witness])
    expect(verify(directory, keyring=keyring, trusted_checkpoint=note), "untrusted", "unknown_key")
    expect(verify(directory, keyring=keyring, trusted_checkpoint=other), "tampered", "forked")
    _cut_at(directory, 17)
    report = verify(directory, keyring=keyring, trusted_checkpoint=note)
    expect(report, "tampered", "truncated", 17)
    assert "not in the keyring" in report.detail


def test_a_trusted_checkpoint_the_log_never_reaches_is_never_ignored(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """For another log (even one longer than this one), or for 0 records: never verified."""
    directory = make_log(2)
    longer = make_log(10, directory=tmp_path / "other")
    report = verify(directory, keyring=keyring, trusted_checkpoint=_last_note(longer))
    expect(report, "io_error", "usage")
    assert "is for log" in report.detail
    origin = Checkpoint.parse_text(parse_note(_last_note(directory)).text).origin
    empty = sign_note(Checkpoint(origin, 0, hashlib.sha256().digest()).text(), [signer])
    expect(verify(directory, keyring=keyring, trusted_checkpoint=empty), "io_error", "usage")


def _last_note(directory: Path) -> str:
    note = json.loads(read_lines(directory / CHECKPOINTS_FILE)[-1])["note"]
    assert isinstance(note, str)
    return note


def test_records_resigned_with_another_key_are_untrusted(
    make_log: MakeLog, keyring: Keyring
) -> None:
    directory = make_log(10)
    bodies = records(directory)
    bodies[5]["decision"]["result"] = "allow"
    forge(directory, bodies, Ed25519Signer.generate("test-key"))  # same name, other key
    report = verify(directory, keyring=keyring)
    expect(report, "untrusted", "unknown_key")
    assert report.exit_code == 3


def test_a_rewrite_without_the_key_breaks_the_signed_roots(
    make_log: MakeLog, keyring: Keyring
) -> None:
    """Edited and re-chained, but the attacker cannot re-sign: the signed roots disagree."""
    directory = make_log(10)
    cps = read_lines(directory / CHECKPOINTS_FILE)
    bodies = records(directory)
    bodies[10]["identity"]["subject"] = "mallory"
    forge(directory, bodies, Ed25519Signer.generate("attacker"))
    write_lines(directory / CHECKPOINTS_FILE, cps)  # keep the genuine checkpoints
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "edited", 9)  # the last checkpoint that still matched covers 9
    assert report.exit_code == 1


def test_timestamps_going_backwards_are_detected(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer
) -> None:
    """Even re-chained and re-signed with the real key, time must not run backwards."""
    directory = make_log(10)
    bodies = records(directory)
    bodies[6]["ts"] = "2001-01-01T00:00:00.000000Z"
    forge(directory, bodies, signer)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "timestamp_regression", 6)
    assert report.exit_code == 1


def _fork(
    make_log: MakeLog, signer: Ed25519Signer, tmp_path: Path, *, mid_checkpoint: bool = False
) -> tuple[Path, Path]:
    """Two copies of one log, continued differently (same number of records each)."""
    a = make_log(5)
    b = tmp_path / "copy"
    shutil.copytree(a, b)
    for directory, user in ((a, "alice"), (b, "mallory")):
        with AuditLog(directory, signer=signer, checkpoint_every=10**9) as log:
            write_calls(log, 1, user=user)
            if mid_checkpoint and directory == b:
                log.checkpoint()
            write_calls(log, 2, user=user)
    return a, b


def test_a_fork_is_detected_against_a_witnessed_checkpoint(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer, tmp_path: Path
) -> None:
    a, b = _fork(make_log, signer, tmp_path)
    assert verify(a, keyring=keyring).ok and verify(b, keyring=keyring).ok
    other = json.loads(read_lines(b / CHECKPOINTS_FILE)[-1])["note"]
    report = verify(a, keyring=keyring, trusted_checkpoint=other)
    expect(report, "tampered", "forked")
    assert report.exit_code == 1


def test_a_fork_is_detected_from_mixed_checkpoints(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """Both branches checkpointed the same size with different roots."""
    a, b = _fork(make_log, signer, tmp_path)
    mine, theirs = read_lines(a / CHECKPOINTS_FILE), read_lines(b / CHECKPOINTS_FILE)
    shared = [line for line in mine if line in theirs]
    n = len(shared)
    merged = [*shared, mine[n], theirs[n], *mine[n + 1 :]]
    write_lines(a / CHECKPOINTS_FILE, merged)
    report = verify(a, keyring=keyring)
    expect(report, "tampered", "forked")


def test_a_checkpoint_from_another_history_is_a_fork(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer, tmp_path: Path
) -> None:
    """A checkpoint of the other branch, at a size this branch never checkpointed."""
    a, b = _fork(make_log, signer, tmp_path, mid_checkpoint=True)
    mine, theirs = read_lines(a / CHECKPOINTS_FILE), read_lines(b / CHECKPOINTS_FILE)
    foreign = theirs[-2]
    size = int(json.loads(foreign)["note"].split("\n")[1])
    assert size not in checkpoint_sizes(a)
    write_lines(a / CHECKPOINTS_FILE, [*mine[:-1], foreign, mine[-1]])
    report = verify(a, keyring=keyring)
    expect(report, "tampered", "forked")
    assert report.exit_code == 1


def test_a_record_spliced_from_another_log_is_detected(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    directory = make_log(10)
    other = make_log(10, directory=tmp_path / "other")
    lines = read_lines(segment_path(directory))
    lines[6] = read_lines(segment_path(other))[6]
    write_lines(segment_path(directory), lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "spliced", 6)
    assert report.exit_code == 1


def test_checkpoints_spliced_from_another_log_are_detected(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    directory = make_log(10)
    other = make_log(10, directory=tmp_path / "other")
    shutil.copy(other / CHECKPOINTS_FILE, directory / CHECKPOINTS_FILE)
    expect(verify(directory, keyring=keyring), "tampered", "spliced")


def _segmented(make_log: MakeLog) -> Path:
    directory = make_log(60, segment_max_bytes=4096)
    assert len(list_segments(directory)) >= 4
    return directory


@pytest.mark.parametrize("index", [0, 1, 2])
def test_a_removed_segment_is_detected(make_log: MakeLog, keyring: Keyring, index: int) -> None:
    directory = _segmented(make_log)
    assert verify(directory, keyring=keyring).ok
    first = [json.loads(read_lines(p)[0])["seq"] for _, p in list_segments(directory)]
    segment_path(directory, index).unlink()
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "missing_segment", first[index])
    assert report.exit_code == 1


def test_the_last_segment_removed_is_truncation(make_log: MakeLog, keyring: Keyring) -> None:
    directory = _segmented(make_log)
    segment_path(directory, -1).unlink()
    expect(verify(directory, keyring=keyring), "tampered", "truncated")


def test_a_bad_signature_by_a_trusted_key_is_tampering(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    cps = directory / CHECKPOINTS_FILE
    lines = read_lines(cps)
    entry = json.loads(lines[2])
    head, sig = entry["note"].rsplit(" ", 1)
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    entry["note"] = f"{head} {flipped}"
    lines[2] = jcs.dumps(entry)
    write_lines(cps, lines)
    report = verify(directory, keyring=keyring)
    expect(report, "tampered", "bad_signature")
    assert report.exit_code == 1


def test_an_altered_checkpoint_root_is_a_bad_signature(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    cps = directory / CHECKPOINTS_FILE
    lines = read_lines(cps)
    entry = json.loads(lines[2])
    origin, size, _root, rest = entry["note"].split("\n", 3)
    entry["note"] = "\n".join([origin, size, "A" * 43 + "=", rest])
    lines[2] = jcs.dumps(entry)
    write_lines(cps, lines)
    expect(verify(directory, keyring=keyring), "tampered", "bad_signature")


def test_an_altered_compact_range_is_detected(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(10)
    cps = directory / CHECKPOINTS_FILE
    lines = read_lines(cps)
    entry = json.loads(lines[3])
    entry["range"][0] = "0" * 64
    lines[3] = jcs.dumps(entry)
    write_lines(cps, lines)
    expect(verify(directory, keyring=keyring), "tampered", "bad_checkpoint")


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda lines: [lines[1], lines[0], *lines[2:]], "reordered"),
        (lambda lines: [lines[0], lines[0], *lines[1:]], "duplicated"),
        (lambda lines: [*lines[:2], b"{not json", *lines[2:]], "bad_checkpoint"),
    ],
)
def test_a_mangled_checkpoints_file_is_detected(
    make_log: MakeLog, keyring: Keyring, change: Callable[[list[bytes]], list[bytes]], kind: str
) -> None:
    directory = make_log(10)
    cps = directory / CHECKPOINTS_FILE
    write_lines(cps, change(read_lines(cps)))
    expect(verify(directory, keyring=keyring), "tampered", kind)


def test_a_torn_last_line_is_reported_and_the_rest_verifies(
    make_log: MakeLog, keyring: Keyring
) -> None:
    directory = make_log(10)
    path = segment_path(directory)
    with path.open("ab") as handle:
        handle.write(b'{"args_sha256":"ab')  # a crash in the middle of a write
    report = verify(directory, keyring=keyring)
    expect(report, "unsealed_tail", "torn_tail", 22)
    assert report.exit_code == 4 and report.records == 22 and report.sealed == 22


def test_a_log_without_checkpoints_is_untrusted(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(3)
    (directory / CHECKPOINTS_FILE).unlink()
    report = verify(directory, keyring=keyring)
    expect(report, "untrusted", "no_checkpoint")
    assert report.exit_code == 3


def test_a_live_log_has_an_unsealed_tail(
    log_dir: Path, keyring: Keyring, signer: Ed25519Signer
) -> None:
    log = AuditLog(log_dir, signer=signer, checkpoint_every=10**9, checkpoint_interval=3600)
    with log:
        write_calls(log, 3)
        report = verify(log_dir, keyring=keyring)
        expect(report, "unsealed_tail", "unsealed", 1)
        assert report.exit_code == 4 and report.records == 7 and report.unsealed == 6
        log.checkpoint()
        live = verify(log_dir, keyring=keyring)
        assert live.ok and not live.closed


def test_an_empty_keyring_trusts_nothing(make_log: MakeLog) -> None:
    report = verify(make_log(2), keyring=Keyring())
    expect(report, "untrusted", "unknown_key")


def test_io_errors_and_usage_errors_exit_2(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    expect(verify(tmp_path / "missing", keyring=keyring), "io_error", "io")
    (tmp_path / "empty").mkdir()
    assert verify(tmp_path / "empty", keyring=keyring).exit_code == 2
    bad_keyring = tmp_path / "keyring"
    bad_keyring.write_text("not a key\n")
    assert verify(make_log(1), keyring=bad_keyring).exit_code == 2
    other = make_log(1, directory=tmp_path / "other")
    note = json.loads(read_lines(other / CHECKPOINTS_FILE)[-1])["note"]
    report = verify(make_log(1), keyring=keyring, trusted_checkpoint=note)
    assert (report.exit_code, report.kind) == (2, "usage")


def test_a_segment_file_path_verifies_its_folder(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(2)
    assert verify(segment_path(directory), keyring=keyring).ok


def test_trust_follows_a_key_rotation(
    log_dir: Path, signer: Ed25519Signer, keyring: Keyring
) -> None:
    new = Ed25519Signer.generate("test-key-2026")
    with AuditLog(log_dir, signer=signer) as log:
        write_calls(log, 2)
        note = log.rotate_key(new, reason="scheduled")
        assert note.count("\u2014 ") == 2  # signed by both keys
        write_calls(log, 2)
    assert [r["type"] for r in records(log_dir)].count("key_rotation") == 1
    report = verify(log_dir, keyring=keyring)  # only the old key is pinned
    assert report.ok, report
    assert report.signers == ["test-key", "test-key-2026"]
    only_new = verify(log_dir, keyring=Keyring([new.verifier_key()]))
    expect(only_new, "untrusted", "unknown_key")  # pre-rotation checkpoints: old key only
    both = verify(log_dir, keyring=Keyring([signer.verifier_key(), new.verifier_key()]))
    assert both.ok


def test_a_forged_rotation_gains_no_trust(
    make_log: MakeLog, keyring: Keyring, signer: Ed25519Signer
) -> None:
    directory = make_log(3)
    attacker = Ed25519Signer.generate("attacker")
    bodies = records(directory)
    sizes = checkpoint_sizes(directory)
    bodies.append(
        {
            "type": "key_rotation",
            "old_key": str(signer.verifier_key()),
            "new_key": str(attacker.verifier_key()),
            "reason": "",
            "v": 1,
            "ts": bodies[-1]["ts"],
        }
    )
    forge(directory, bodies, attacker, sizes=[*sizes, len(bodies)])
    report = verify(directory, keyring=keyring)
    assert not report.ok and report.exit_code in (1, 3)


def test_parallel_verification_agrees(
    make_log: MakeLog, keyring: Keyring, monkeypatch: Any
) -> None:
    import securemcp.audit.verifier as verifier

    monkeypatch.setattr(verifier, "_PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(verifier, "_CHUNK_BYTES", 2000)
    directory = make_log(40)
    report = verify(directory, keyring=keyring, workers=2)
    assert report.ok and report.records == 82
    edit_record(directory, 50, lambda r: r.update(target="x"))
    expect(verify(directory, keyring=keyring, workers=2), "tampered", "edited", 50)


def test_progress_is_reported(make_log: MakeLog, keyring: Keyring) -> None:
    seen: list[tuple[int, int]] = []
    verify(make_log(3), keyring=keyring, progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1][0] == seen[-1][1] > 0
