"""C2SP ``signed-note`` v1.0.0 with Ed25519 keys: sign, parse and verify notes.

A note is UTF-8 text ending in a newline, a blank line, then one signature line per signer::

    <text>\\n
    \\n
    — <key name> <base64(4-byte key ID ‖ signature)>\\n

* key ID = ``SHA-256(key name ‖ 0x0A ‖ 0x01 ‖ 32-byte Ed25519 public key)[:4]``; the signature
  (type ``0x01``, RFC 8032 Ed25519) is over the note text bytes;
* a verifier key is written ``<name>+<hex key ID>+<base64(0x01 ‖ public key)>``;
* verifiers ignore signatures from unknown keys, and a signature from a known key that does not
  verify rejects the whole note (the spec's "SHOULD reject");
* text must be valid UTF-8 with no control characters other than newline; at most
  :data:`MAX_SIGNATURES` signature lines are accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "ALG_ED25519",
    "MAX_SIGNATURES",
    "Note",
    "NoteError",
    "NoteSignature",
    "NoteSigner",
    "VerifierKey",
    "key_id",
    "parse_note",
    "sign_note",
    "valid_key_name",
]

#: Signature type byte of Ed25519 keys in signed-note.
ALG_ED25519: Final = 0x01

#: Most signature lines a note may carry (the spec asks verifiers to accept at least 16).
MAX_SIGNATURES: Final = 64

_DASH: Final = "\u2014 "  # em dash and a space start every signature line
_CONTROL: Final = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_SIG_LINE: Final = re.compile(r"\u2014 (\S+) ([A-Za-z0-9+/]+={0,2})")


class NoteError(ValueError):
    """A note or verifier key is malformed."""


def valid_key_name(name: str) -> bool:
    """A key name is non-empty, with no whitespace, no ``+`` and no control characters."""
    return (
        bool(name)
        and "+" not in name
        and not any(c.isspace() for c in name)
        and not (_CONTROL.search(name))
    )


def key_id(name: str, public_key: bytes, alg: int = ALG_ED25519) -> bytes:
    """The 4-byte signed-note key ID of an Ed25519 public key."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([alg]) + public_key).digest()[:4]


class NoteSigner(Protocol):
    """What :func:`sign_note` needs from a signer (see :class:`securemcp.audit.keys.Signer`)."""

    @property
    def key_name(self) -> str: ...

    @property
    def key_id(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A public key that can verify note signatures, identified by ``(name, key_id)``."""

    name: str
    key_id: bytes
    public_key: bytes

    @classmethod
    def from_public_key(cls, name: str, public_key: bytes) -> VerifierKey:
        """The verifier key for an Ed25519 public key (32 raw bytes) under ``name``."""
        if not valid_key_name(name):
            raise NoteError(f"invalid key name {name!r}")
        if len(public_key) != 32:
            raise NoteError("an Ed25519 public key is 32 bytes")
        return cls(name, key_id(name, public_key), public_key)

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse ``<name>+<hex key ID>+<base64(0x01 ‖ key)>``."""
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise NoteError("a verifier key is <name>+<hex key id>+<base64 key>")
        name, hex_id, b64 = parts
        if not valid_key_name(name):
            raise NoteError(f"invalid key name {name!r}")
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise NoteError("the key id must be 8 lower-case hex digits")
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise NoteError("the key is not valid base64") from exc
        if base64.b64encode(raw).decode() != b64:
            raise NoteError("the key is not canonical base64")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteError("only Ed25519 keys (type 0x01, 32 bytes) are supported")
        key = cls.from_public_key(name, raw[1:])
        if key.key_id.hex() != hex_id:
            raise NoteError("the key id does not match the key")
        return key

    def __str__(self) -> str:
        blob = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{blob}"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """``True`` when ``signature`` is this key's Ed25519 signature over ``message``."""
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the raw signature bytes."""

    name: str
    key_id: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Note:
    """A parsed note: its signed ``text`` and its signature lines, in order."""

    text: str
    signatures: tuple[NoteSignature, ...]

    def verify(
        self, lookup: Callable[[str, bytes], VerifierKey | None]
    ) -> tuple[list[VerifierKey], list[VerifierKey]]:
        """Check every signature whose key ``lookup(name, key_id)`` knows.

        Returns ``(good, bad)``: the known keys whose signatures verify, and those whose
        signatures do not. Signatures from unknown keys are ignored, as the spec requires.
        """
        good: list[VerifierKey] = []
        bad: list[VerifierKey] = []
        message = self.text.encode()
        for sig in self.signatures:
            key = lookup(sig.name, sig.key_id)
            if key is None:
                continue
            (good if key.verify(message, sig.signature) else bad).append(key)
        return good, bad


def _check_text(text: str) -> None:
    if not text.endswith("\n"):
        raise NoteError("note text must end with a newline")
    if _CONTROL.search(text):
        raise NoteError("note text must not contain control characters other than newline")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """Sign ``text`` with every signer; returns the complete note."""
    _check_text(text)
    if "\n\n" in text:
        raise NoteError("note text must not contain a blank line")
    if not signers:
        raise NoteError("a note needs at least one signature")
    lines = []
    message = text.encode()
    for signer in signers:
        blob = base64.b64encode(signer.key_id + signer.sign(message)).decode()
        lines.append(f"{_DASH}{signer.key_name} {blob}\n")
    return text + "\n" + "".join(lines)


def parse_note(note: str | bytes) -> Note:
    """Parse a note strictly (UTF-8, structure, base64); signatures are not checked here."""
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise NoteError("a note must be UTF-8") from exc
    if not note.endswith("\n"):
        raise NoteError("a note must end with a newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise NoteError("a note needs a blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    _check_text(text)
    lines = block.split("\n")[:-1]
    if not lines:
        raise NoteError("a note needs at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note may carry at most {MAX_SIGNATURES} signatures")
    signatures = []
    for line in lines:
        match = _SIG_LINE.fullmatch(line)
        if match is None or not valid_key_name(match.group(1)):
            raise NoteError("malformed signature line")
        try:
            blob = base64.b64decode(match.group(2), validate=True)
        except binascii.Error as exc:
            raise NoteError("malformed signature encoding") from exc
        if len(blob) < 5:
            raise NoteError("signature too short")
        if base64.b64encode(blob).decode() != match.group(2):
            raise NoteError("non-canonical signature encoding")
        signatures.append(NoteSignature(match.group(1), blob[:4], blob[4:]))
    return Note(text, tuple(signatures))


def signers_of(keys: Iterable[VerifierKey]) -> dict[tuple[str, bytes], VerifierKey]:
    """Index verifier keys by ``(name, key_id)`` for :meth:`Note.verify` lookups."""
    return {(k.name, k.key_id): k for k in keys}
