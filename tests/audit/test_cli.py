"""``securemcp audit verify|show|tail`` and ``securemcp keys generate`` through register()."""

from __future__ import annotations

import argparse
import json
import stat
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from audit_helpers import read_lines, segment_path, write_calls, write_lines

from securemcp.audit import AuditLog, Ed25519Signer, Keyring
from securemcp.audit.cli import register
from securemcp.audit.storage import CHECKPOINTS_FILE

MakeLog = Callable[..., Path]


def main(argv: Sequence[str]) -> int:
    """What securemcp.cli.main does with register(): parse, then call ``func``."""
    parser = argparse.ArgumentParser(prog="securemcp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


@pytest.fixture
def keyring_file(tmp_path: Path, keyring: Keyring) -> Path:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring.dumps())
    return path


def test_verify_exit_codes(
    make_log: MakeLog, keyring_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_log(5)
    assert main(["audit", "verify", str(directory), "--keyring", str(keyring_file)]) == 0
    assert "VERIFIED" in capsys.readouterr().out

    path = segment_path(directory)
    lines = read_lines(path)
    write_lines(path, lines[:5] + lines[6:])
    assert main(["audit", "verify", str(directory), "--keyring", str(keyring_file)]) == 1
    out = capsys.readouterr().out
    assert "TAMPERED at seq 5 [deleted]" in out

    assert main(["audit", "verify", str(tmp_path / "nope"), "--keyring", str(keyring_file)]) == 2
    other = tmp_path / "other.txt"
    other.write_text(f"{Ed25519Signer.generate('x').verifier_key()}\n")
    write_lines(path, lines)
    assert main(["audit", "verify", str(directory), "--keyring", str(other)]) == 3
    write_lines(directory / CHECKPOINTS_FILE, read_lines(directory / CHECKPOINTS_FILE)[:-1])
    assert main(["audit", "verify", str(directory), "--keyring", str(keyring_file)]) == 4


def test_verify_json_report(
    make_log: MakeLog, keyring_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_log(3)
    path = segment_path(directory)
    lines = read_lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(path, lines)
    code = main(["audit", "verify", str(directory), "--keyring", str(keyring_file), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == report["exit_code"] == 1
    assert (report["status"], report["kind"], report["first_bad_seq"]) == (
        "tampered",
        "reordered",
        2,
    )


def test_verify_against_a_trusted_checkpoint_file(
    make_log: MakeLog, keyring_file: Path, tmp_path: Path
) -> None:
    directory = make_log(5)
    witnessed = tmp_path / "cp.jsonl"
    witnessed.write_bytes(read_lines(directory / CHECKPOINTS_FILE)[-1] + b"\n")
    args = ["audit", "verify", str(directory), "--keyring", str(keyring_file)]
    assert main([*args, "--trusted-checkpoint", str(witnessed)]) == 0
    path = segment_path(directory)
    write_lines(path, read_lines(path)[:9])
    write_lines(directory / CHECKPOINTS_FILE, read_lines(directory / CHECKPOINTS_FILE)[:3])
    assert main([*args, "--trusted-checkpoint", str(witnessed)]) == 1


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("checkpoint", b"{not json\n", "bad trusted checkpoint: Expecting property name"),
        ("checkpoint", b'{"note": 5}\n', "bad trusted checkpoint: the trusted checkpoint file"),
        ("checkpoint", b"\xff\xfe\n", "bad trusted checkpoint: 'utf-8' codec"),
        ("checkpoint", b'{"a":' + b"[" * 100_000 + b"\n", "bad trusted checkpoint: "),
        ("checkpoint", b"o\n" + b"9" * 5000 + b"\nAA==\n\n\xe2\x80\x94 k AAAAAAA=\n", "64 bits"),
        ("keyring", b"\xff\xfe\n", "bad keyring: 'utf-8' codec"),
    ],
)
def test_malformed_inputs_are_usage_errors_not_tampering(
    make_log: MakeLog,
    keyring_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes,
    message: str,
) -> None:
    """A bad --trusted-checkpoint or --keyring file exits 2 with a one-line reason; it used to
    raise (a traceback, exit 1: the code for a tampered log)."""
    directory = make_log(2)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    args = ["audit", "verify", str(directory), "--keyring"]
    args += (
        [str(bad)] if name == "keyring" else [str(keyring_file), "--trusted-checkpoint", str(bad)]
    )
    assert main(args) == 2
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("IO ERROR [usage]: ") and message in printed[0], printed[0]
    assert not any("0 verified" in line for line in printed)  # nothing read: no zero summary


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "verify", str(tmp_path)]) == 2
    assert "--keyring" in capsys.readouterr().err
    assert main(["audit"]) == 2
    assert main(["keys"]) == 2
    with pytest.raises(SystemExit) as info:
        main(["audit", "verify", "--bogus"])
    assert info.value.code == 2


def test_verify_with_no_path_uses_the_local_log_and_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SECUREMCP_AUDIT_DIR", raising=False)
    monkeypatch.delenv("SECUREMCP_KEY_DIR", raising=False)
    with AuditLog() as log:
        write_calls(log, 2)
    assert main(["audit", "verify"]) == 0
    captured = capsys.readouterr()
    assert "proves little" in captured.err and "VERIFIED" in captured.out


def test_show_and_tail_filter_records(
    log_dir: Path, signer: Ed25519Signer, capsys: pytest.CaptureFixture[str]
) -> None:
    with AuditLog(log_dir, signer=signer) as log:
        write_calls(log, 5, user="alice", tool="add")
        write_calls(log, 5, user="bob", tool="delete")
    assert main(["audit", "show", str(log_dir), "--json", "--user", "bob"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(shown) == 10 and {r["identity"]["subject"] for r in shown} == {"bob"}

    assert main(["audit", "show", str(log_dir), "--json", "--decision", "deny"]) == 0
    denied = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(denied) == 2 and all(r["decision"]["result"] == "deny" for r in denied)

    assert main(["audit", "tail", str(log_dir), "-n", "3", "--json", "--tool", "add"]) == 0
    tail = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in tail] == [8, 9, 10]

    assert main(["audit", "show", str(log_dir), "--since", "1h", "--until", "2999-01-01"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["SEQ", "TIME", "(UTC)"] and len(table) == 1 + 22
    assert any("deny" in row and "policy says no" in row for row in table)

    assert main(["audit", "show", str(log_dir), "--json", "--until", "2000-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit", "show", str(log_dir), "--since", "yesterday"]) == 2
    assert main(["audit", "tail", str(log_dir / "missing")]) == 2


def test_keys_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "prod.key"
    ring = tmp_path / "keyring.txt"
    args = ["keys", "generate", "--name", "prod-2026", "--out", str(key), "--keyring", str(ring)]
    assert main(args) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("prod-2026+")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Ed25519Signer.from_file(key).verifier_key() in Keyring.load(ring)
    assert main(args) == 2  # refuses to overwrite
    assert main([*args, "--force"]) == 0
    assert len(Keyring.load(ring)) == 2
    assert main(["keys", "generate", "--name", "bad name", "--out", str(tmp_path / "x")]) == 2


def test_keys_generate_defaults_to_the_key_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECUREMCP_KEY_DIR", str(tmp_path / "keys"))
    assert main(["keys", "generate"]) == 0
    assert (tmp_path / "keys" / "securemcp-audit.key").exists()
