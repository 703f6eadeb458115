"""Key retirement: a keyring line can bound a retired key to checkpoints of at most N records.

The attack: after a rotation, whoever holds the old (retired, leaked) key rewrites the whole
log, deletes the checkpoints the new key signed, and re-signs every checkpoint with the old key.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import checkpoint_sizes, forge, records, write_calls

from securemcp.audit import AuditError, AuditLog, Ed25519Signer, Keyring, KeyringError, verify
from securemcp.audit.cli import register


def rotated_log(directory: Path, old: Ed25519Signer, new: Ed25519Signer) -> int:
    """A closed log: calls sealed by ``old``, a rotation to ``new``, more calls sealed by ``new``.

    Returns the size of the rotation checkpoint (the last one ``old`` signed).
    """
    with AuditLog(directory, signer=old, checkpoint_every=10**9, checkpoint_interval=3600) as log:
        write_calls(log, 3)
        log.checkpoint()
        log.rotate_key(new, reason="scheduled")
        rotated = log.size
        write_calls(log, 2, tool="delete_everything")
        log.checkpoint()
        write_calls(log, 2, tool="delete_everything")
    return rotated


def forge_with_old_key(directory: Path, old: Ed25519Signer) -> None:
    """Rewrite the log as the old key's holder: drop the rotation, disguise the calls after it
    (the log keeps its length) and re-sign every checkpoint with the old key alone."""
    bodies: list[dict[str, Any]] = []
    for body in records(directory):
        if body["type"] == "key_rotation":
            body = {**body, "type": "config_change", "what": "cache", "details": {}}
            del body["old_key"], body["new_key"]
        elif body.get("target") == "delete_everything":
            body = {**body, "target": "read_only"}
        bodies.append(body)
    forge(directory, bodies, old)


def test_without_retirement_the_old_key_forges_the_whole_log(tmp_path: Path) -> None:
    """An unannotated keyring line keeps its meaning: the key is trusted for every checkpoint."""
    old, new = Ed25519Signer.generate("audit-2025"), Ed25519Signer.generate("audit-2026")
    directory = tmp_path / "audit"
    rotated_log(directory, old, new)
    keyring = Keyring([old.verifier_key(), new.verifier_key()])
    assert verify(directory, keyring=keyring).ok
    forge_with_old_key(directory, old)
    assert not any(r.get("target") == "delete_everything" for r in records(directory))
    assert checkpoint_sizes(directory)[-1] == len(records(directory))  # one seals all
    report = verify(directory, keyring=keyring)
    assert report.ok, report  # the forgery verifies: nothing says the old key was retired
    assert report.signers == ["audit-2025"]


# --- retirement rejects the forgery; a legitimate rotated log still verifies ------------------


def retiring(old: Ed25519Signer, new: Ed25519Signer, after_size: int) -> Keyring:
    """The keyring file an operator writes after the rotation: old retired, new pinned."""
    text = (
        "# audit keys\n"
        f"{old.verifier_key()} retired-after-size={after_size}\n"
        f"{new.verifier_key()}\n"
    )
    return Keyring.parse(text)


@pytest.fixture
def rotated(tmp_path: Path) -> tuple[Path, Ed25519Signer, Ed25519Signer, int]:
    old, new = Ed25519Signer.generate("audit-2025"), Ed25519Signer.generate("audit-2026")
    directory = tmp_path / "audit"
    return directory, old, new, rotated_log(directory, old, new)


Rotated = tuple[Path, Ed25519Signer, Ed25519Signer, int]


def test_a_log_forged_with_a_retired_key_is_rejected(rotated: Rotated) -> None:
    directory, old, new, bound = rotated
    forge_with_old_key(directory, old)
    report = verify(directory, keyring=retiring(old, new, bound))
    assert (report.status, report.kind, report.exit_code) == ("untrusted", "retired_key", 3)
    assert "retired" in report.detail and "audit-2025" in report.detail
    assert report.first_bad_seq == bound


def test_the_legitimately_rotated_log_verifies_with_the_old_key_retired(rotated: Rotated) -> None:
    directory, old, new, bound = rotated
    report = verify(directory, keyring=retiring(old, new, bound))
    assert report.ok, report
    assert report.signers == ["audit-2025", "audit-2026"] and report.closed
    assert report.last_signed[str(old.verifier_key())] == bound  # the rotation checkpoint
    assert report.last_signed[str(new.verifier_key())] == report.records


def test_the_bound_is_inclusive(rotated: Rotated) -> None:
    """A retired key is trusted for checkpoints of exactly N records, not N + 1."""
    directory, old, new, bound = rotated
    forge_with_old_key(directory, old)
    sizes = checkpoint_sizes(directory)
    assert bound in sizes and sizes[-1] > bound
    for after in (bound, sizes[-1] - 1):
        report = verify(directory, keyring=retiring(old, new, after), allow_retired_seal=True)
        assert (report.kind, report.first_bad_seq) == ("retired_key", after), report
    at_last = retiring(old, new, sizes[-1])
    assert verify(directory, keyring=at_last, allow_retired_seal=True).ok
    assert verify(directory, keyring=at_last).kind == "retired_key"  # no current key sealed it


def test_a_log_cut_back_below_the_bound_and_resigned_is_rejected(rotated: Rotated) -> None:
    """Every forged checkpoint is within the old key's bound: the log's latest seal is then by
    a retired key only, which its holder could have produced."""
    directory, old, new, bound = rotated
    bodies = records(directory)[: bound - 1]
    bodies[2] = {**bodies[2], "target": "rewritten"}
    forge(directory, bodies, old, sizes=[len(bodies)])
    keyring = retiring(old, new, bound)
    report = verify(directory, keyring=keyring)
    assert (report.status, report.kind, report.exit_code) == ("untrusted", "retired_key", 3)
    assert report.first_bad_seq == 0 and "latest seal" in report.detail
    archive = verify(directory, keyring=keyring, allow_retired_seal=True)
    assert archive.ok, archive  # the reviewer accepts an archive sealed before the rotation


def test_a_witnessed_checkpoint_by_the_retired_key_vouches_for_an_archive(
    tmp_path: Path,
) -> None:
    """A log that ended before the rotation: the reviewer's own copy of its last checkpoint
    pins its content, so it verifies although only the retired key sealed it."""
    old, new = Ed25519Signer.generate("audit-2025"), Ed25519Signer.generate("audit-2026")
    directory = tmp_path / "audit"
    witnessed: list[str] = []
    with AuditLog(directory, signer=old, witness=witnessed.append) as log:
        write_calls(log, 3)
    size = checkpoint_sizes(directory)[-1]
    keyring = retiring(old, new, size)
    assert verify(directory, keyring=keyring).kind == "retired_key"
    note = tmp_path / "witnessed.note"
    note.write_text(witnessed[-1])
    assert verify(directory, keyring=keyring, trusted_checkpoint=note).ok
    retired_early = retiring(old, new, size - 1)
    report = verify(directory, keyring=retired_early, trusted_checkpoint=note)
    assert (report.status, report.kind) == ("untrusted", "retired_key"), report


def test_a_retired_key_cannot_mint_a_current_key(rotated: Rotated) -> None:
    """The old key's holder forges a rotation, within the bound, to a key of their own and
    seals the rest with it: a key learned on a retired key's word inherits its bound."""
    directory, old, new, bound = rotated
    attacker = Ed25519Signer.generate("audit-2026")
    bodies = [b for b in records(directory) if b.get("target") != "delete_everything"]
    at = next(i for i, b in enumerate(bodies) if b["type"] == "key_rotation")
    bodies[at] = {**bodies[at], "new_key": str(attacker.verifier_key())}
    forge(directory, bodies, old, sizes=[])
    _seal(directory, bodies, [(at + 1, [old, attacker]), (len(bodies), [attacker])])
    assert verify(directory, keyring=Keyring([old.verifier_key()])).ok  # before retirement
    report = verify(directory, keyring=retiring(old, new, bound))
    assert (report.status, report.kind) == ("untrusted", "retired_key"), report


def _seal(directory: Path, bodies: list[dict[str, Any]], seals: list[tuple[int, Any]]) -> None:
    """Rewrite checkpoints.jsonl with checkpoints at the given sizes, signed by those keys."""
    from securemcp.audit import jcs
    from securemcp.audit.checkpoint import Checkpoint
    from securemcp.audit.merkle import CompactRange, leaf_hash
    from securemcp.audit.note import sign_note
    from securemcp.audit.storage import CHECKPOINTS_FILE

    lines = (directory / "audit-000000.jsonl").read_bytes().split(b"\n")[:-1]
    assert len(lines) == len(bodies)
    compact, out = CompactRange(), []
    wanted = dict(seals)
    origin = bodies[0]["log"]
    for line in lines:
        compact.append(leaf_hash(line))
        if compact.size in wanted:
            text = Checkpoint(origin, compact.size, compact.root()).text()
            note = sign_note(text, wanted[compact.size])
            nodes = [n.hex() for n in compact.nodes]
            out.append(jcs.dumps({"note": note, "range": nodes}) + b"\n")
    (directory / CHECKPOINTS_FILE).write_bytes(b"".join(out))


def test_a_rotation_to_an_unpinned_key_inherits_the_retired_bound(rotated: Rotated) -> None:
    """Retiring the old key without pinning the new one leaves nothing current: the operator
    is told to pin it (``securemcp keys retire`` does)."""
    directory, old, _, bound = rotated
    keyring = Keyring.parse(f"{old.verifier_key()} retired-after-size={bound}\n")
    report = verify(directory, keyring=keyring)
    assert (report.status, report.kind) == ("untrusted", "retired_key"), report
    assert "does not pin" in report.detail


def test_a_rotation_record_cannot_lift_a_pinned_retirement(rotated: Rotated) -> None:
    directory, old, new, _ = rotated
    keyring = Keyring.parse(f"{old.verifier_key()}\n{new.verifier_key()} retired-after-size=0\n")
    report = verify(directory, keyring=keyring)
    assert (report.status, report.kind) == ("untrusted", "retired_key"), report


# --- the keyring format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation",
    [
        "retired-after-size=",
        "retired-after-size=-1",
        "retired-after-size=+5",
        "retired-after-size=01",
        "retired-after-size=1e3",
        "retired-after-size=5.0",
        "retired-after-size=\u0665",  # an Arabic-Indic digit: int() would take it
        "retired-after-size=18446744073709551616",  # 2**64
        "retired-after-size=" + "9" * 400,
        "retired-after-size 5",
        "retired_after_size=5",
        "Retired-After-Size=5",
        "retired-after=5",
        "retired",
        "retired-after-size=5 retired-after-size=5",
        "retired-after-size=5 # old key",
        "# old key",
        "not_before=2026-01-01",
    ],
)
def test_a_malformed_retirement_is_a_usage_error(
    annotation: str, rotated: Rotated, tmp_path: Path
) -> None:
    """Never read as a key trusted for everything: parsing fails, and so does verify (exit 2)."""
    directory, old, new, _ = rotated
    text = f"{old.verifier_key()} {annotation}\n{new.verifier_key()}\n"
    with pytest.raises(KeyringError, match="keyring line 1"):
        Keyring.parse(text)
    path = tmp_path / "keyring.txt"
    path.write_text(text)
    report = verify(directory, keyring=path)
    assert (report.status, report.kind, report.exit_code) == ("io_error", "usage", 2), report
    assert "keyring" in report.detail


def test_a_key_listed_with_two_retirements_is_ambiguous() -> None:
    key = Ed25519Signer.generate("k").verifier_key()
    for text in (
        f"{key}\n{key} retired-after-size=5\n",
        f"{key} retired-after-size=5\n{key} retired-after-size=6\n",
    ):
        with pytest.raises(KeyringError, match=r"keyring line 2.*different retirements"):
            Keyring.parse(text)
    same = Keyring.parse(f"{key} retired-after-size=5\n\t{key}  retired-after-size=5  \n")
    assert len(same) == 1 and same.retired_after_size(key) == 5


def test_keyring_files_without_retirements_mean_what_they_meant() -> None:
    """Every key is current; the text round-trips unchanged; retired keys round-trip too."""
    keys = [Ed25519Signer.generate(f"k{i}").verifier_key() for i in range(3)]
    text = "".join(f"{key}\n" for key in keys)
    keyring = Keyring.parse("# pinned\n\n" + text)
    assert [keyring.retired_after_size(key) for key in keys] == [None, None, None]
    assert keyring.dumps() == text and repr(keyring) == "<Keyring 3 key(s)>"
    keyring.retire(keys[1], 42)
    again = Keyring.parse(keyring.dumps())
    assert again.retired_after_size(keys[1]) == 42 and again.dumps() == keyring.dumps()
    assert f"{keys[1]} retired-after-size=42\n" in again.dumps()
    assert Keyring([f"{keys[0]} retired-after-size=0"]).retired_after_size(keys[0]) == 0
    with pytest.raises(KeyringError):
        keyring.retire(keys[0], -1)


# --- the writer never signs with a retired key ----------------------------------------------


def test_the_writer_refuses_a_signer_its_keyring_retires(tmp_path: Path) -> None:
    old, new = Ed25519Signer.generate("audit-2025"), Ed25519Signer.generate("audit-2026")
    directory = tmp_path / "audit"
    bound = rotated_log(directory, old, new)
    path = tmp_path / "keyring.txt"
    path.write_text(retiring(old, new, bound).dumps())
    before = (directory / "checkpoints.jsonl").read_bytes()
    with pytest.raises(AuditError, match="retired"):
        AuditLog(directory, signer=old, keyring=path).open()
    assert (directory / "checkpoints.jsonl").read_bytes() == before  # nothing signed
    with AuditLog(directory, signer=new, keyring=path) as log:  # the successor is fine
        write_calls(log, 1)
        with pytest.raises(AuditError, match="retired"):
            log.rotate_key(old)
        assert log.signer is new
    assert verify(directory, keyring=path).ok


def test_the_writer_fails_closed_on_a_bad_keyring(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate("audit-2026")
    path = tmp_path / "keyring.txt"
    path.write_text(f"{signer.verifier_key()} retired-after-size=soon\n")
    with pytest.raises(KeyringError):
        AuditLog(tmp_path / "audit", signer=signer, keyring=path).open()
    with pytest.raises(AuditError, match="cannot read the audit keyring"):
        AuditLog(tmp_path / "audit", signer=signer, keyring=tmp_path / "missing").open()
    assert not list((tmp_path / "audit").glob("audit-*.jsonl"))


# --- securemcp keys retire / audit verify --allow-retired-seal -------------------------------


def main(argv: Sequence[str]) -> int:
    """What securemcp.cli.main does with register(): parse, then call ``func``."""
    parser = argparse.ArgumentParser(prog="securemcp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


def test_keys_retire_from_the_log_then_the_forgery_fails(
    rotated: Rotated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runbook: rotate, pin the new key, retire the old key against the log it signed.

    A keyring that pinned only the old key (the new one learned from the rotation) is refused
    and told which line to add: the rotation rests on the old key's word alone, so the new key
    is never pinned automatically."""
    directory, old, new, bound = rotated
    path = tmp_path / "keyring.txt"
    path.write_text(f"# production audit keys\n{old.verifier_key()}\n")
    path.chmod(0o640)
    verify_cmd = ["audit", "verify", str(directory), "--keyring", str(path)]
    retire = ["keys", "retire", "audit-2025", "--keyring", str(path), "--log", str(directory)]
    assert main(verify_cmd) == 0
    capsys.readouterr()
    assert main(retire) == 2
    err = capsys.readouterr().err
    assert "does not pin" in err and str(new.verifier_key()) in err and "unchanged" in err
    assert path.read_text() == f"# production audit keys\n{old.verifier_key()}\n"

    with path.open("a") as handle:
        handle.write(f"{new.verifier_key()}\n")
    assert main(retire) == 0
    out = capsys.readouterr()
    assert out.out == f"{old.verifier_key()} retired-after-size={bound}\n"
    assert "1 log(s) still verify" in out.err
    assert path.read_text() == (
        "# production audit keys\n"
        f"{old.verifier_key()} retired-after-size={bound}\n"
        f"{new.verifier_key()}\n"
    )
    assert path.stat().st_mode & 0o777 == 0o640
    assert main(verify_cmd) == 0
    assert main(retire) == 0
    assert "already retired" in capsys.readouterr().err
    forge_with_old_key(directory, old)
    assert main(verify_cmd) == 3
    assert "[retired_key]" in capsys.readouterr().out


def test_keys_retire_refuses_the_key_that_still_seals_the_log(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retiring before rotating would leave the log sealed by a retired key only."""
    signer = Ed25519Signer.generate("audit-2025")
    directory = tmp_path / "audit"
    with AuditLog(directory, signer=signer) as log:
        write_calls(log, 2)
    path = tmp_path / "keyring.txt"
    path.write_text(f"{signer.verifier_key()}\n")
    argv = ["keys", "retire", "audit-2025", "--keyring", str(path), "--log", str(directory)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "would no longer verify" in err and "rotate" in err and "unchanged" in err
    assert path.read_text() == f"{signer.verifier_key()}\n"


def test_keys_retire_refuses_a_log_that_does_not_verify(
    rotated: Rotated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory, old, _, _ = rotated
    segment = directory / "audit-000000.jsonl"
    lines = segment.read_bytes().split(b"\n")
    segment.write_bytes(b"\n".join(lines[:3] + lines[4:]))  # a record deleted
    path = tmp_path / "keyring.txt"
    path.write_text(f"{old.verifier_key()}\n")
    argv = ["keys", "retire", "audit-2025", "--keyring", str(path), "--log", str(directory)]
    assert main(argv) == 2
    assert "does not verify against the keyring (tampered [deleted]" in capsys.readouterr().err
    assert path.read_text() == f"{old.verifier_key()}\n"


def test_keys_retire_with_an_explicit_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, two = Ed25519Signer.generate("a"), Ed25519Signer.generate("a")
    path = tmp_path / "keyring.txt"
    path.write_text(f"{one.verifier_key()}\n{two.verifier_key()}\n")
    retire = ["keys", "retire", "--keyring", str(path)]
    assert main([*retire, "a", "--after-size", "7"]) == 2
    assert "several keys are named 'a'" in capsys.readouterr().err
    assert main([*retire, "nope", "--after-size", "7"]) == 2
    assert main([*retire, f"a+{one.key_id.hex()}", "--after-size", "-1"]) == 2
    assert main([*retire, f"a+{one.key_id.hex()}", "--after-size", "7"]) == 0
    assert "no log was checked" in capsys.readouterr().err
    assert Keyring.load(path).retired_after_size(one.verifier_key()) == 7
    assert main([*retire, f"a+{one.key_id.hex()}", "--after-size", "9"]) == 2
    assert "already retired after 7" in capsys.readouterr().err
    other = Ed25519Signer.generate("gone").verifier_key()
    before = path.read_text()
    assert main([*retire, str(other), "--after-size", "0"]) == 2  # never added: see below
    assert path.read_text() == before
    with pytest.raises(SystemExit):
        main([*retire, "a"])  # --log or --after-size is required


def test_verify_allow_retired_seal(rotated: Rotated, tmp_path: Path) -> None:
    directory, old, new, _ = rotated
    bodies = records(directory)[:5]
    forge(directory, bodies, old, sizes=[5])
    path = tmp_path / "keyring.txt"
    path.write_text(retiring(old, new, 5).dumps())
    argv = ["audit", "verify", str(directory), "--keyring", str(path)]
    assert main(argv) == 3
    assert main([*argv, "--allow-retired-seal"]) == 0


def test_a_non_ascii_key_line_is_a_keyring_error(tmp_path: Path) -> None:
    """It was a bare ValueError (base64 of non-ASCII text), so ``AuditLog(keyring=...)`` and
    other callers catching ``KeyringError`` let it through."""
    key = str(Ed25519Signer.generate("k").verifier_key())
    with pytest.raises(KeyringError, match="keyring line 1"):
        Keyring.parse(key[:-2] + "\u0665=\n")
    with pytest.raises(KeyringError):
        Ed25519Signer.from_private_key_line("PRIVATE+KEY+k+00000000+AQ\u0665")


def test_keys_retire_never_adds_trust_in_a_key_the_keyring_does_not_pin(
    rotated: Rotated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A retired key's line still trusts the key up to its bound: "retiring" a key the keyring
    never held (given in full, e.g. copied from a suspicious rotation record, or learned from a
    log's rotation) must be refused with nothing written, never append a line that trusts it."""
    directory, old, new, _ = rotated
    forger = Ed25519Signer.generate("audit-forger")
    path = tmp_path / "keyring.txt"
    original = f"# our keys\n{old.verifier_key()}\n"
    path.write_text(original)
    for spec, extra in (
        (str(forger.verifier_key()), ["--after-size", "1000"]),
        (str(new.verifier_key()), ["--log", str(directory)]),  # learned from the rotation
    ):
        assert main(["keys", "retire", spec, "--keyring", str(path), *extra]) == 2
        assert "not in the keyring" in capsys.readouterr().err
        assert path.read_text() == original
    assert forger.verifier_key() not in Keyring.load(path)


def test_the_writer_reports_a_keyring_that_is_not_text_as_an_audit_error(tmp_path: Path) -> None:
    signer = Ed25519Signer.generate("audit-2026")
    path = tmp_path / "keyring.txt"
    path.write_bytes(b"\xff\xfe not utf-8\n")
    with pytest.raises(AuditError, match="cannot read the audit keyring"):
        AuditLog(tmp_path / "audit", signer=signer, keyring=path).open()
    assert not list((tmp_path / "audit").glob("audit-*.jsonl"))
