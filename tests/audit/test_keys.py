"""Signing keys: key files (mode 0600), the Signer protocol, development keys."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from securemcp.audit import Ed25519Signer, KeyringError, Signer, generate_key_file
from securemcp.audit.keys import (
    DEV_KEY_FILE,
    DEV_KEYRING_FILE,
    Keyring,
    load_or_create_dev_signer,
    verifier_key,
)


def test_generated_key_files_are_private_and_load_back(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "prod.key"
    signer = generate_key_file(path, "prod-2026")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Ed25519Signer.from_file(path)
    assert loaded.verifier_key() == signer.verifier_key()
    assert loaded.sign(b"m") == signer.sign(b"m")  # Ed25519 is deterministic
    assert path.read_text().startswith("PRIVATE+KEY+prod-2026+")
    assert "PRIVATE" not in repr(loaded)


def test_an_existing_key_is_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    first = generate_key_file(path, "k")
    with pytest.raises(FileExistsError):
        generate_key_file(path, "k")
    path.chmod(0o644)
    second = generate_key_file(path, "k", overwrite=True)
    assert second.verifier_key() != first.verifier_key()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_loading_a_world_readable_key_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "k.key"
    generate_key_file(path, "k")
    path.chmod(0o644)
    Ed25519Signer.from_file(path)
    assert "readable by other users" in caplog.text


@pytest.mark.parametrize(
    "text",
    ["", "PRIVATE+KEY+k", "PRIVATE+KEY+k+00000000+AAAA", "k+00000000+AQ=="],
)
def test_malformed_key_files_are_refused(text: str) -> None:
    with pytest.raises(KeyringError):
        Ed25519Signer.from_private_key_line(text)


def test_key_names_are_validated() -> None:
    for name in ["", "has space", "has+plus", "tab\t"]:
        with pytest.raises(KeyringError):
            Ed25519Signer.generate(name)


def test_signer_protocol_and_consistency() -> None:
    signer = Ed25519Signer.generate("k")
    assert isinstance(signer, Signer)
    assert verifier_key(signer) == signer.verifier_key()

    class Liar:
        key_name = "k"
        key_id = b"\0\0\0\0"
        public_key_bytes = signer.public_key_bytes

        def sign(self, message: bytes) -> bytes:
            return signer.sign(message)

    with pytest.raises(KeyringError, match="key id"):
        verifier_key(Liar())


def test_development_key_is_created_once(tmp_path: Path) -> None:
    first = load_or_create_dev_signer(tmp_path)
    second = load_or_create_dev_signer(tmp_path)
    assert first.verifier_key() == second.verifier_key()
    assert stat.S_IMODE((tmp_path / DEV_KEY_FILE).stat().st_mode) == 0o600
    assert first.verifier_key() in Keyring.load(tmp_path / DEV_KEYRING_FILE)
    (tmp_path / DEV_KEYRING_FILE).unlink()  # e.g. a crash between the two writes
    load_or_create_dev_signer(tmp_path)
    assert first.verifier_key() in Keyring.load(tmp_path / DEV_KEYRING_FILE)
