"""`securemcp demo` and the CLI: the quickstart must show real outcomes, not scripted ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from securemcp.cli import main
from securemcp.demo import run_demo


async def test_demo_outcomes_are_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREMCP_AUDIT_DIR", str(tmp_path / "audit"))
    steps = {(s.actor, s.action.split(" ")[0]): s for s in await run_demo()}
    assert steps[("alice", "tools/list")].outcome == ("add_note, archive_notes, list_notes, whoami")
    assert steps[("alice", "archive_notes")].outcome.startswith("REFUSED: approval_required")
    after = next(s for s in steps.values() if s.action.startswith("archive_notes, after"))
    assert after.outcome == "ALLOWED: archived 2 notes"
    assert steps[("alice", "add_note")].outcome.startswith("ALLOWED: added note #2 as alice")
    assert steps[("bob", "tools/list")].outcome == "list_notes, whoami"
    assert steps[("bob", "add_note")].outcome.startswith("REFUSED: insufficient_scope")
    assert "notes:write" in steps[("bob", "add_note")].outcome
    assert steps[("bob", "purge_notes")].outcome.startswith("REFUSED: insufficient_scope")
    assert steps[("mallory", "purge_notes")].outcome.startswith("REFUSED: invalid_token")
    # 10 calls: 4 allowed (decision + outcome), 3 refused (deny decision), 1 auth failure,
    # plus log_open and log_close
    assert steps[("audit", "signed,")].outcome.startswith("14 records in ")
    from securemcp.audit import Keyring, verify
    from securemcp.audit.keys import default_key_dir

    keyring = Keyring.parse((default_key_dir() / "audit-dev.keyring").read_text())
    assert verify(tmp_path / "audit", keyring=keyring).ok


def test_cli_demo_runs_in_a_fresh_process(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "SECUREMCP_ENV": "",
        "SECUREMCP_AUDIT_DIR": str(tmp_path / "audit"),
        "SECUREMCP_KEY_DIR": str(tmp_path / "keys"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "securemcp.cli", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "REFUSED: insufficient_scope" in done.stdout
    assert "eyJ" not in done.stdout + done.stderr  # no token ever printed


def test_cli_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert main(["--version"]) == 0
    assert "securemcp" in capsys.readouterr().out
    with pytest.raises(SystemExit) as excinfo:
        main(["no-such-command"])
    assert excinfo.value.code == 2
