"""C2SP signed-note and tlog-checkpoint: the published example, signing, strict parsing."""

from __future__ import annotations

import base64

import pytest

from securemcp.audit import Ed25519Signer, Keyring, KeyringError, VerifierKey
from securemcp.audit.checkpoint import Checkpoint, parse_checkpoint
from securemcp.audit.note import NoteError, parse_note, sign_note

# C2SP signed-note.md, "Verifier keys" and "Example" (see reference/standards.md Appendix B).
EXAMPLE_VKEY = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k"
EXAMPLE_NOTE = (
    "This is an example message.\n\n\u2014 example.com/foo "
    "Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n"
)


def test_the_c2sp_example_verifies() -> None:
    key = VerifierKey.parse(EXAMPLE_VKEY)
    assert key.key_id.hex() == "530d903a"
    assert str(key) == EXAMPLE_VKEY
    note = parse_note(EXAMPLE_NOTE)
    assert note.text == "This is an example message.\n"
    good, bad = note.verify(Keyring([key]).lookup)
    assert good == [key] and bad == []


def test_a_changed_example_text_fails_with_the_known_key() -> None:
    tampered = EXAMPLE_NOTE.replace("example message", "examp1e message")
    good, bad = parse_note(tampered).verify(Keyring([EXAMPLE_VKEY]).lookup)
    assert good == [] and len(bad) == 1


def test_unknown_keys_are_ignored() -> None:
    good, bad = parse_note(EXAMPLE_NOTE).verify(Keyring().lookup)
    assert good == [] and bad == []


def test_sign_and_verify_with_several_keys() -> None:
    one, two = Ed25519Signer.generate("one"), Ed25519Signer.generate("two")
    note = sign_note("origin\n1\n" + base64.b64encode(b"\0" * 32).decode() + "\n", [one, two])
    parsed = parse_note(note)
    assert [s.name for s in parsed.signatures] == ["one", "two"]
    good, _ = parsed.verify(Keyring([two.verifier_key()]).lookup)
    assert good == [two.verifier_key()]


@pytest.mark.parametrize(
    "note",
    [
        "no newline",
        "text\n",  # no signatures
        "text\n\n",
        "text\n\n\u2014 name\n",
        "text\n\n- name AAAAAAAA\n",  # hyphen, not em dash
        "text\n\n\u2014 name !!!!\n",
        "text\n\n\u2014 name AAAA\n",  # too short
        "te\x01xt\n\n\u2014 name AAAAAAA=\n",
        "text\n\n\u2014 name AAAAAAB=\n",  # non-canonical base64 (padding bits set)
    ],
)
def test_malformed_notes_are_refused(note: str) -> None:
    with pytest.raises(NoteError):
        parse_note(note)


@pytest.mark.parametrize(
    "vkey",
    [
        "name+530d903a",
        "name+530D903A+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+00000000+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",  # wrong id
        "na me+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
        "example.com/foo+530d903a+AkyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k",
    ],
)
def test_malformed_verifier_keys_are_refused(vkey: str) -> None:
    with pytest.raises(NoteError):
        VerifierKey.parse(vkey)


def test_keyring_file_format() -> None:
    signer = Ed25519Signer.generate("prod-2026")
    text = f"# pinned audit keys\n\n{EXAMPLE_VKEY}\n  # rotated in 2026\n{signer.verifier_key()}\n"
    keyring = Keyring.parse(text)
    assert len(keyring) == 2 and signer.verifier_key() in keyring
    assert Keyring.parse(keyring.dumps()).dumps() == keyring.dumps()
    with pytest.raises(KeyringError, match="line 2"):
        Keyring.parse(f"{EXAMPLE_VKEY}\nnot-a-key\n")


def test_checkpoint_body_round_trip_and_strictness() -> None:
    checkpoint = Checkpoint("example.com/log", 42, bytes(range(32)))
    assert Checkpoint.parse_text(checkpoint.text()) == checkpoint
    signer = Ed25519Signer.generate("k")
    parsed, note = parse_checkpoint(sign_note(checkpoint.text(), [signer]))
    assert parsed == checkpoint and note.signatures[0].name == "k"
    root = base64.b64encode(bytes(32)).decode()
    for text in [
        f"example.com/log\n042\n{root}\n",  # leading zero
        f"example.com/log\n-1\n{root}\n",
        "example.com/log\n1\nAAAA\n",  # root not 32 bytes
        f"\n1\n{root}\n",
        f"example.com/log\n1\n{root}",
        f"example.com/log\n{2**64}\n{root}\n",  # beyond 64 bits
        f"example.com/log\n{'9' * 5000}\n{root}\n",  # int() refuses 5000 digits: ValueError
    ]:
        with pytest.raises(NoteError):
            Checkpoint.parse_text(text)
    largest = f"example.com/log\n{2**64 - 1}\n{root}\n"
    assert Checkpoint.parse_text(largest).size == 2**64 - 1
