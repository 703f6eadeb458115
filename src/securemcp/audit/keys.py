"""Checkpoint signing keys: the :class:`Signer` protocol, Ed25519 key files, and the keyring.

* :class:`Signer` is all the audit log needs from a key, so a key can live in a KMS or HSM: a
  ``key_name``, the signed-note ``key_id``, the raw Ed25519 ``public_key_bytes`` and
  ``sign(message) -> signature``.
* :class:`Ed25519Signer` is the local implementation (``cryptography``, RFC 8032). Its key file
  is one line in the signer-key format of Go's ``golang.org/x/mod/sumdb/note``
  (``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ 32-byte seed)>``), written with mode 0600.
* A :class:`Keyring` is the verifier's pinned set of trusted public keys. Its file format is one
  C2SP signed-note verifier key per line (``<name>+<hex key id>+<base64(0x01 ‖ public key)>``);
  blank lines and lines starting with ``#`` are ignored. A line may go on, after white space,
  with ``retired-after-size=<N>``: the key is *retired* and trusted only for checkpoints of at
  most N records (a C2SP ``tlog-checkpoint`` tree size, which a Merkle log can check; a time
  bound would be chosen by whoever holds the key). Any other text after the key is an error, so
  a misspelt retirement never leaves a key trusted; a line without one means what it always
  meant, a key trusted for every checkpoint.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final, Protocol, runtime_checkable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from securemcp._files import (
    KEY_FILE_MAX_BYTES,
    KEYRING_MAX_BYTES,
    open_regular,
    read_regular_text,
)
from securemcp.audit.checkpoint import MAX_SIZE
from securemcp.audit.errors import AuditError, KeyringError
from securemcp.audit.note import ALG_ED25519, NoteError, VerifierKey, key_id, valid_key_name

__all__ = [
    "DEV_KEYRING_FILE",
    "DEV_KEY_FILE",
    "DEV_KEY_NAME",
    "RETIRED_AFTER_SIZE",
    "Ed25519Signer",
    "Keyring",
    "Signer",
    "default_key_dir",
    "generate_key_file",
    "keyring_line",
    "load_or_create_dev_signer",
    "parse_keyring_line",
    "refuse_retired_signer",
    "verifier_key",
]

logger = logging.getLogger("securemcp.audit")

#: Key name of the development key generated on first run.
DEV_KEY_NAME: Final = "securemcp-dev"
#: File names of the development key and its one-line keyring, under the key folder.
DEV_KEY_FILE: Final = "audit-dev.key"
DEV_KEYRING_FILE: Final = "audit-dev.keyring"

_PRIVATE_PREFIX: Final = "PRIVATE+KEY+"

#: The keyring annotation that retires a key: ``<verifier key> retired-after-size=<N>``.
RETIRED_AFTER_SIZE: Final = "retired-after-size"


@runtime_checkable
class Signer(Protocol):
    """Signs checkpoints. Implement this to keep the key in a KMS or HSM."""

    @property
    def key_name(self) -> str:
        """The signed-note key name (no spaces, no ``+``)."""
        ...

    @property
    def key_id(self) -> bytes:
        """The 4-byte signed-note key ID (see :func:`securemcp.audit.note.key_id`)."""
        ...

    @property
    def public_key_bytes(self) -> bytes:
        """The 32-byte raw Ed25519 public key."""
        ...

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        ...


def verifier_key(signer: Signer) -> VerifierKey:
    """The public verifier key of a signer (checks that its key id is consistent)."""
    key = VerifierKey.from_public_key(signer.key_name, signer.public_key_bytes)
    if key.key_id != signer.key_id:
        raise KeyringError(f"signer {signer.key_name!r} reports a key id that does not match")
    return key


class Ed25519Signer:
    """A local Ed25519 signing key (use a KMS-backed :class:`Signer` in production)."""

    __slots__ = ("_key", "_key_id", "_name", "_public")

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        if not valid_key_name(name):
            raise KeyringError(f"invalid key name {name!r}: no spaces, '+' or control characters")
        self._name = name
        self._key = private_key
        self._public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._key_id = key_id(name, self._public)

    @classmethod
    def generate(cls, name: str) -> Ed25519Signer:
        """A new random key."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_key_line(cls, line: str) -> Ed25519Signer:
        """Parse ``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 ‖ seed)>``."""
        line = line.strip()
        if not line.startswith(_PRIVATE_PREFIX):
            raise KeyringError("not a signing key (expected 'PRIVATE+KEY+...')")
        parts = line[len(_PRIVATE_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise KeyringError("a signing key is PRIVATE+KEY+<name>+<key id>+<key>")
        name, hex_id, b64 = parts
        try:
            raw = base64.b64decode(b64, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise KeyringError("the signing key is not valid base64") from exc
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise KeyringError("only Ed25519 signing keys are supported")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_id.hex() != hex_id:
            raise KeyringError("the signing key's id does not match the key")
        return signer

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Ed25519Signer:
        """Load a key file written by :func:`generate_key_file` (warns if others can read it).

        Raises:
            OSError: the file cannot be read, is not a regular file (a FIFO, a device: never
                waited on) or is larger than a key file can be.
        """
        fd = open_regular(path)
        with os.fdopen(fd, "rb") as handle:
            mode = os.fstat(fd).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                logger.warning(
                    "audit signing key %s is readable by other users (mode %o)", path, mode
                )
            data = handle.read(KEY_FILE_MAX_BYTES + 1)
        if len(data) > KEY_FILE_MAX_BYTES:
            raise KeyringError(f"{path} is too large to be a signing key file")
        return cls.from_private_key_line(data.decode("utf-8"))

    @property
    def key_name(self) -> str:
        return self._name

    @property
    def key_id(self) -> bytes:
        return self._key_id

    @property
    def public_key_bytes(self) -> bytes:
        return self._public

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)

    def private_key_line(self) -> str:
        """The key file line (secret: keep it out of logs)."""
        seed = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        blob = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"{_PRIVATE_PREFIX}{self._name}+{self._key_id.hex()}+{blob}"

    def verifier_key(self) -> VerifierKey:
        """The public key, as a keyring entry."""
        return VerifierKey(self._name, self._key_id, self._public)

    def __repr__(self) -> str:  # never show key material
        return f"<Ed25519Signer {self._name}+{self._key_id.hex()}>"


def _write_private(path: Path, content: str, *, overwrite: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
    fd = open_regular(path, flags, 0o600)  # never blocks on (nor writes into) a FIFO
    try:
        os.fchmod(fd, 0o600)  # also when the file existed, and regardless of the umask
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_key_file(
    path: str | os.PathLike[str], name: str, *, overwrite: bool = False
) -> Ed25519Signer:
    """Generate an Ed25519 key and write it to ``path`` with mode 0600.

    Raises:
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    signer = Ed25519Signer.generate(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    _write_private(path, signer.private_key_line() + "\n", overwrite=overwrite)
    return signer


def default_key_dir() -> Path:
    """``$SECUREMCP_KEY_DIR``, else ``./.securemcp/keys``."""
    return Path(os.environ.get("SECUREMCP_KEY_DIR") or Path(".securemcp") / "keys")


def load_or_create_dev_signer(key_dir: str | os.PathLike[str] | None = None) -> Ed25519Signer:
    """The development signing key under ``key_dir``, generated (with a warning) on first use.

    Also writes ``audit-dev.keyring`` beside it, the keyring that ``securemcp audit verify`` uses
    when given no arguments.
    """
    folder = Path(key_dir) if key_dir is not None else default_key_dir()
    key_path = folder / DEV_KEY_FILE
    keyring_path = folder / DEV_KEYRING_FILE
    try:
        signer = generate_key_file(key_path, DEV_KEY_NAME)
    except FileExistsError:
        signer = _load_when_written(key_path)
        if not keyring_path.exists():
            _write_dev_keyring(keyring_path, signer)
        return signer
    _write_dev_keyring(keyring_path, signer)
    logger.warning(
        "securemcp generated a DEVELOPMENT audit signing key at %s (keyring %s). A key on the "
        "same machine as the log proves little: use a KMS-backed Signer and a pinned keyring in "
        "production.",
        key_path,
        keyring_path,
    )
    return signer


def _load_when_written(path: Path) -> Ed25519Signer:
    # Another process may have just created the file and not yet written it.
    for _ in range(50):
        info = path.stat()
        if info.st_size or not stat.S_ISREG(info.st_mode):  # a FIFO never fills: refused below
            break
        time.sleep(0.01)
    return Ed25519Signer.from_file(path)


def _write_dev_keyring(path: Path, signer: Ed25519Signer) -> None:
    path.write_text(
        "# securemcp development audit key (a local key proves little; pin a real one)\n"
        f"{signer.verifier_key()}\n",
        encoding="utf-8",
    )


_COMMENT: Final = re.compile(r"\s*(#.*)?")
_SIZE: Final = re.compile(r"0|[1-9][0-9]{0,19}")


def _parse_bound(text: str) -> int:
    if _SIZE.fullmatch(text) is None or int(text) > MAX_SIZE:
        raise KeyringError(
            f"{RETIRED_AFTER_SIZE} takes a tree size (decimal, no leading zeros, at most 64 bits)"
        )
    return int(text)


def parse_keyring_line(line: str) -> tuple[VerifierKey, int | None]:
    """Parse one keyring line: a verifier key, optionally followed by ``retired-after-size=N``.

    Returns the key and its retirement bound (``None``: not retired).

    Raises:
        KeyringError: a malformed key, or anything after it but one well-formed retirement.
    """
    key_text, *annotations = line.split()
    try:
        key = VerifierKey.parse(key_text)
    except NoteError as exc:
        raise KeyringError(f"invalid verifier key: {exc}") from exc
    if not annotations:
        return key, None
    name, sep, value = annotations[0].partition("=")
    if len(annotations) > 1 or name != RETIRED_AFTER_SIZE or not sep:
        raise KeyringError(
            f"after the verifier key, only '{RETIRED_AFTER_SIZE}=<tree size>' may follow "
            f"(found {' '.join(annotations)!r})"
        )
    return key, _parse_bound(value)


def keyring_line(key: VerifierKey, retired_after_size: int | None = None) -> str:
    """The keyring line of ``key`` (with its retirement bound, when retired)."""
    if retired_after_size is None:
        return str(key)
    return f"{key} {RETIRED_AFTER_SIZE}={retired_after_size}"


class Keyring:
    """A pinned set of trusted verifier keys, looked up by ``(name, key id)``.

    A key may be *retired after size N*: trusted only for checkpoints of at most N records
    (:meth:`retired_after_size`). A key without a bound is *current*.
    """

    __slots__ = ("_keys", "_retired")

    def __init__(self, keys: Iterable[VerifierKey | str] = ()) -> None:
        self._keys: dict[tuple[str, bytes], VerifierKey] = {}
        self._retired: dict[tuple[str, bytes], int] = {}
        for key in keys:
            self.add(key)

    def add(self, key: VerifierKey | str, *, retired_after_size: int | None = None) -> VerifierKey:
        """Trust ``key`` (a :class:`VerifierKey` or a keyring line), retired if a bound is given.

        Raises:
            KeyringError: a malformed line, a negative or oversized bound, or a key already in
                the keyring with a different retirement (the file would be ambiguous).
        """
        if isinstance(key, str):
            key, bound = parse_keyring_line(key)
            if bound is not None:
                if retired_after_size not in (None, bound):
                    raise KeyringError(f"two retirement bounds given for key {key.name!r}")
                retired_after_size = bound
        if retired_after_size is not None and not 0 <= retired_after_size <= MAX_SIZE:
            raise KeyringError(f"{RETIRED_AFTER_SIZE} must be a tree size (0 to 2**64 - 1)")
        index = (key.name, key.key_id)
        known = self._keys.get(index)
        if known is not None and self._retired.get(index) != retired_after_size:
            raise KeyringError(
                f"key {key.name}+{key.key_id.hex()} is listed twice with different retirements"
            )
        self._keys[index] = key
        if retired_after_size is not None:
            self._retired[index] = retired_after_size
        return key

    def retire(self, key: VerifierKey, after_size: int) -> None:
        """Retire ``key`` (adding it if absent): trusted only for checkpoints of at most
        ``after_size`` records from now on."""
        if not 0 <= after_size <= MAX_SIZE:
            raise KeyringError(f"{RETIRED_AFTER_SIZE} must be a tree size (0 to 2**64 - 1)")
        index = (key.name, key.key_id)
        self._keys[index] = key
        self._retired[index] = after_size

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Parse a keyring file's text (one key line each, ``#`` comments, blank lines)."""
        keyring = cls()
        for number, line in enumerate(text.splitlines(), 1):
            if _COMMENT.fullmatch(line):
                continue
            try:
                keyring.add(line)
            except KeyringError as exc:
                raise KeyringError(f"keyring line {number}: {exc}") from exc
        return keyring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a keyring file.

        Raises:
            OSError: the file cannot be read, is not a regular file (a FIFO, a device: never
                waited on) or is larger than a keyring can be (:data:`KEYRING_MAX_BYTES`).
            ValueError: it is not UTF-8; :class:`KeyringError`: it is malformed.
        """
        return cls.parse(read_regular_text(path, limit=KEYRING_MAX_BYTES))

    def lookup(self, name: str, key_id: bytes) -> VerifierKey | None:
        """The trusted key with this name and id, if any (retired or not)."""
        return self._keys.get((name, key_id))

    def retired_after_size(self, key: VerifierKey) -> int | None:
        """The largest checkpoint size ``key`` is trusted for; ``None`` when it is current."""
        return self._retired.get((key.name, key.key_id))

    def dumps(self) -> str:
        """The keyring file text."""
        return "".join(
            keyring_line(key, self._retired.get(index)) + "\n" for index, key in self._keys.items()
        )

    def __contains__(self, key: object) -> bool:
        return isinstance(key, VerifierKey) and self._keys.get((key.name, key.key_id)) == key

    def __iter__(self) -> Iterator[VerifierKey]:
        return iter(list(self._keys.values()))

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        retired = f", {len(self._retired)} retired" if self._retired else ""
        return f"<Keyring {len(self._keys)} key(s){retired}>"


def refuse_retired_signer(signer: Signer, keyring: Keyring | str | os.PathLike[str] | None) -> None:
    """Raise :class:`AuditError` if ``keyring`` (a :class:`Keyring` or a keyring file, read now)
    retires ``signer``: a writer must never sign with a key the operator retired.

    Raises:
        AuditError: the key is retired, or the keyring file cannot be read (or is malformed:
            :class:`KeyringError`, a subclass).
    """
    if keyring is None:
        return
    try:
        pinned = keyring if isinstance(keyring, Keyring) else Keyring.load(keyring)
    except KeyringError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: not UTF-8 text
        raise AuditError(f"cannot read the audit keyring {keyring}: {exc}") from exc
    key = verifier_key(signer)
    bound = pinned.retired_after_size(key) if key in pinned else None
    if bound is not None:
        raise AuditError(
            f"the audit signing key {key.name}+{key.key_id.hex()} is retired in the keyring "
            f"(trusted only for checkpoints of at most {bound} records): configure its "
            "successor as the signer"
        )
