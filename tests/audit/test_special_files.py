"""A keyring, key file, checkpoint file or segment that is a FIFO or device is refused at once.

``open(2)`` of a FIFO blocks until a writer appears, so before the fix each of these hung the
writer's ``open()``, ``audit verify`` or ``keys retire`` forever. Every call runs in a thread
with a deadline; a call still blocked is released by opening the FIFO's other end, and fails.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

from securemcp.audit import AuditError, AuditLog, Ed25519Signer, Keyring, verify
from securemcp.audit.cli import register
from securemcp.audit.errors import AuditUnavailable
from securemcp.audit.keys import DEV_KEY_FILE, load_or_create_dev_signer
from securemcp.audit.storage import CHECKPOINTS_FILE, segment_name

T = TypeVar("T")
MakeLog = Callable[..., Path]

_DEADLINE = 5.0


def _release(fifo: Path) -> None:
    """Open the other end of ``fifo`` (both ends: a blocked reader or writer goes on)."""
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, flags))


def finishes(call: Callable[[], T], *fifos: Path) -> T:
    """``call()``, or a test failure if it is still blocked after the deadline."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(_DEADLINE)
    if thread.is_alive():
        for _ in range(50):  # it may block again on its next open of the FIFO
            for fifo in fifos:
                _release(fifo)
            thread.join(0.05)
            if not thread.is_alive():
                break
        pytest.fail(f"blocked for more than {_DEADLINE} s on a FIFO")
    if "error" in outcome:
        raise outcome["error"]
    result: T = outcome["value"]
    return result


def fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="securemcp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


# --- keyrings ---------------------------------------------------------------------------------


def test_keyring_load_refuses_a_fifo(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "keyring")
    with pytest.raises(OSError, match="FIFO"):
        finishes(lambda: Keyring.load(pipe), pipe)


def test_writer_open_refuses_a_fifo_keyring(tmp_path: Path, signer: Ed25519Signer) -> None:
    pipe = fifo(tmp_path / "keyring")
    log = AuditLog(tmp_path / "audit", signer=signer, keyring=pipe)
    with pytest.raises(AuditError, match="not a regular file"):
        finishes(log.open, pipe)
    assert not log.opened


def test_verify_reports_a_fifo_keyring_as_io_error(
    make_log: MakeLog, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = make_log(3)
    pipe = fifo(tmp_path / "keyring")
    report = finishes(lambda: verify(directory, keyring=pipe), pipe)
    assert (report.status, report.exit_code) == ("io_error", 2)
    assert "FIFO" in report.detail
    code = finishes(lambda: main(["audit", "verify", str(directory), "--keyring", str(pipe)]), pipe)
    assert code == 2
    assert "not a regular file" in capsys.readouterr().err


def test_keys_retire_refuses_a_fifo_keyring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = fifo(tmp_path / "keyring")
    argv = ["keys", "retire", "test-key", "--keyring", str(pipe), "--after-size", "3"]
    assert finishes(lambda: main(argv), pipe) == 2
    assert "not a regular file" in capsys.readouterr().err
    assert pipe.is_fifo()  # unchanged


def test_keys_generate_refuses_a_fifo_keyring_or_key_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pipe = fifo(tmp_path / "keyring")
    out = tmp_path / "new.key"
    argv = ["keys", "generate", "--out", str(out), "--keyring", str(pipe)]
    assert finishes(lambda: main(argv), pipe) == 2
    assert "not a regular file" in capsys.readouterr().err
    key_pipe = fifo(tmp_path / "pipe.key")
    argv = ["keys", "generate", "--out", str(key_pipe), "--force"]
    assert finishes(lambda: main(argv), key_pipe) == 2
    assert key_pipe.is_fifo()


def test_a_device_keyring_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OSError, match="device"):
        finishes(lambda: Keyring.load("/dev/null"))


def test_an_oversized_keyring_is_refused(tmp_path: Path, keyring: Keyring) -> None:
    path = tmp_path / "keyring"
    path.write_text(keyring.dumps() + "#" * (1024 * 1024) + "\n")
    with pytest.raises(OSError, match="larger than"):
        Keyring.load(path)
    assert verify(tmp_path, keyring=path).exit_code == 2


# --- key files --------------------------------------------------------------------------------


def test_key_file_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "signing.key")
    with pytest.raises(OSError, match="FIFO"):
        finishes(lambda: Ed25519Signer.from_file(pipe), pipe)


def test_dev_key_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    pipe = fifo(tmp_path / "keys" / DEV_KEY_FILE)
    started = time.monotonic()
    with pytest.raises(OSError, match="FIFO"):
        finishes(lambda: load_or_create_dev_signer(tmp_path / "keys"), pipe)
    assert time.monotonic() - started < 0.4  # no wait for another process to write it


# --- checkpoints and segments ------------------------------------------------------------------


def test_writer_refuses_a_fifo_checkpoint_file(make_log: MakeLog, signer: Ed25519Signer) -> None:
    directory = make_log(2)
    (directory / CHECKPOINTS_FILE).unlink()
    pipe = fifo(directory / CHECKPOINTS_FILE)
    log = AuditLog(directory, signer=signer)
    with pytest.raises(AuditUnavailable) as caught:
        finishes(log.open, pipe)
    assert "not a regular file" in caught.value.reason


def test_verify_reports_a_fifo_checkpoint_file(make_log: MakeLog, keyring: Keyring) -> None:
    directory = make_log(2)
    (directory / CHECKPOINTS_FILE).unlink()
    pipe = fifo(directory / CHECKPOINTS_FILE)
    report = finishes(lambda: verify(directory, keyring=keyring), pipe)
    assert (report.status, report.kind, report.exit_code) == ("io_error", "io", 2)


def test_verify_reports_a_fifo_trusted_checkpoint(
    make_log: MakeLog, keyring: Keyring, tmp_path: Path
) -> None:
    directory = make_log(2)
    pipe = fifo(tmp_path / "witnessed")
    report = finishes(lambda: verify(directory, keyring=keyring, trusted_checkpoint=pipe), pipe)
    assert (report.status, report.exit_code) == ("io_error", 2)


@pytest.mark.parametrize("existing", [False, True], ids=["new-log", "later-segment"])
def test_a_fifo_segment_is_refused_by_writer_verifier_and_reader(
    make_log: MakeLog,
    signer: Ed25519Signer,
    keyring: Keyring,
    log_dir: Path,
    capsys: pytest.CaptureFixture[str],
    existing: bool,
) -> None:
    if existing:
        make_log(2)
    pipe = fifo(log_dir / segment_name(1 if existing else 0))
    log = AuditLog(log_dir, signer=signer)
    with pytest.raises(AuditUnavailable) as caught:
        finishes(log.open, pipe)
    assert "not a regular file" in caught.value.reason
    report = finishes(lambda: verify(log_dir, keyring=keyring), pipe)
    assert (report.status, report.exit_code) == ("io_error", 2)
    assert finishes(lambda: main(["audit", "show", str(log_dir)]), pipe) == 2
    assert finishes(lambda: main(["audit", "tail", str(log_dir)]), pipe) == 2
    assert "not a regular file" in capsys.readouterr().err
