"""Fixtures and log-forging helpers for the audit tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import write_calls

from securemcp.audit import AuditLog, Ed25519Signer, Keyring


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("test-key")


@pytest.fixture
def keyring(signer: Ed25519Signer) -> Keyring:
    return Keyring([signer.verifier_key()])


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "audit"


@pytest.fixture
def make_log(log_dir: Path, signer: Ed25519Signer) -> Callable[..., Path]:
    """Write a closed log of ``calls`` calls with a checkpoint every ``every`` records or so.

    Checkpoints are signed explicitly (the background sealer is effectively off), so the
    checkpoint sizes are deterministic.
    """

    def make(calls: int = 10, *, every: int = 4, directory: Path | None = None, **kw: Any) -> Path:
        target = directory or log_dir
        kw.setdefault("signer", signer)
        log = AuditLog(target, checkpoint_every=10**9, checkpoint_interval=3600, **kw)
        with log:
            sealed = log.size
            for _ in range(calls):
                write_calls(log, 1)
                if log.size - sealed >= every:
                    log.checkpoint()
                    sealed = log.size
        return target

    return make
