"""A running writer whose signing key is retired in its keyring stops at its next seal.

Before, the writer read the keyring only at ``open()`` and ``rotate_key()``: after an operator
retired its key in the keyring while the server ran, it went on signing checkpoints with the
retired key (``audit verify`` then reports ``retired_key``, or accepts them up to the bound).
Now it checks the keyring (a ``stat``, re-read only when the file changed) before each seal and
fails closed: the seal is refused and every later call is refused (``audit_unavailable``).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
from audit_helpers import checkpoint_sizes, write_calls

from securemcp import FastMCP
from securemcp.audit import AuditLog, AuditUnavailable, Ed25519Signer, Keyring, verify
from securemcp.audit.keys import keyring_line
from securemcp.audit.retirement import write_keyring
from securemcp.testing import connect


def quiet_log(directory: Path, signer: Ed25519Signer, keyring: Keyring | Path) -> AuditLog:
    """A writer that seals only when told to (the background sealer stays idle)."""
    return AuditLog(
        directory,
        signer=signer,
        keyring=keyring,
        checkpoint_every=10**9,
        checkpoint_interval=3600,
    )


@pytest.mark.parametrize("how", ["replaced", "edited-in-place"])
def test_the_writer_stops_signing_once_its_key_is_retired_in_the_keyring_file(
    tmp_path: Path, signer: Ed25519Signer, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring_line(signer.verifier_key()) + "\n")
    directory = tmp_path / "audit"
    log = quiet_log(directory, signer, path).open()
    write_calls(log, 2)
    log.checkpoint()
    sealed = checkpoint_sizes(directory)
    retired = keyring_line(signer.verifier_key(), log.size) + "\n"
    if how == "replaced":  # what `securemcp keys retire` does
        write_keyring(path, retired)
    else:
        with path.open("r+") as handle:
            handle.write(retired)
    write_calls(log, 1)
    with (
        caplog.at_level(logging.ERROR, logger="securemcp.audit"),
        pytest.raises(AuditUnavailable) as caught,
    ):
        log.checkpoint()
    assert "retired" in caught.value.reason
    assert any("retired" in r.getMessage() and "refused" in r.getMessage() for r in caplog.records)
    assert checkpoint_sizes(directory) == sealed  # nothing signed with the retired key
    with pytest.raises(AuditUnavailable):  # fail closed: calls are refused from now on
        write_calls(log, 1)
    log.close()
    assert checkpoint_sizes(directory) == sealed
    # No checkpoint past the bound: only the records after it are unsealed (and, as for any key
    # retired before a rotation, the latest seal is a retired key's, hence allow_retired_seal).
    report = verify(directory, keyring=path, allow_retired_seal=True)
    assert (report.status, report.sealed) == ("unsealed_tail", sealed[-1])


def test_the_writer_stops_signing_once_an_in_memory_keyring_retires_its_key(
    tmp_path: Path, signer: Ed25519Signer, keyring: Keyring
) -> None:
    log = quiet_log(tmp_path / "audit", signer, keyring).open()
    write_calls(log, 1)
    log.checkpoint()
    keyring.retire(signer.verifier_key(), log.size)
    write_calls(log, 1)
    with pytest.raises(AuditUnavailable) as caught:
        log.checkpoint()
    assert "retired" in caught.value.reason
    with pytest.raises(AuditUnavailable):
        write_calls(log, 1)
    log.close()


def test_the_background_sealer_notices_the_retirement(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring_line(signer.verifier_key()) + "\n")
    log = AuditLog(tmp_path / "audit", signer=signer, keyring=path, checkpoint_interval=0.05)
    with log:
        write_keyring(path, keyring_line(signer.verifier_key(), log.size) + "\n")
        write_calls(log, 1)
        refused = False
        for _ in range(200):
            try:
                write_calls(log, 1)
            except AuditUnavailable:
                refused = True
                break
            time.sleep(0.02)
        assert refused


def test_an_unreadable_keyring_at_seal_time_fails_closed(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring_line(signer.verifier_key()) + "\n")
    log = quiet_log(tmp_path / "audit", signer, path).open()
    write_calls(log, 1)
    path.write_text("not a key\n")
    with pytest.raises(AuditUnavailable) as caught:
        log.checkpoint()
    assert "keyring" in caught.value.reason
    with pytest.raises(AuditUnavailable):
        write_calls(log, 1)
    log.close()


def test_the_keyring_is_not_read_per_record_only_per_seal(
    tmp_path: Path, signer: Ed25519Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring_line(signer.verifier_key()) + "\n")
    log = quiet_log(tmp_path / "audit", signer, path).open()
    seen: list[str] = []
    real_stat = os.stat

    def spy(target: object, *args: object, **kwargs: object) -> os.stat_result:
        if str(target) == str(path):
            seen.append("stat")
        return real_stat(target, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", spy)
    write_calls(log, 50)
    assert seen == []
    log.checkpoint()
    assert seen == ["stat"]  # unchanged: one stat, no read
    monkeypatch.undo()
    log.close()


async def test_calls_are_refused_after_the_seal_that_found_the_key_retired(
    tmp_path: Path, signer: Ed25519Signer
) -> None:
    path = tmp_path / "keyring.txt"
    path.write_text(keyring_line(signer.verifier_key()) + "\n")
    log = quiet_log(tmp_path / "audit", signer, path)
    mcp = FastMCP("retiring", audit=log)
    runs = []

    @mcp.tool
    def echo(text: str) -> str:
        runs.append(text)
        return text

    async with connect(mcp, None) as client:
        assert not (await client.call_tool("echo", {"text": "a"})).is_error
        write_keyring(path, keyring_line(signer.verifier_key(), log.size) + "\n")
        assert not (await client.call_tool("echo", {"text": "b"})).is_error  # no seal yet
        with pytest.raises(AuditUnavailable):
            log.checkpoint()
        result = await client.call_tool("echo", {"text": "c"}, raise_on_error=False)
    assert result.is_error
    assert result.content[0].text.startswith("audit_unavailable:")
    assert "retired" not in result.content[0].text  # no internal detail
    assert runs == ["a", "b"]
    log.close()
