"""Opening the files a user names (keyrings, key files, checkpoints, log segments, policy
files) safely.

POSIX ``open(2)`` blocks on a FIFO until the other end is opened: a keyring, key file,
``checkpoints.jsonl`` or segment path that is a named pipe would hang the writer's ``open()``,
``securemcp audit verify`` or ``securemcp keys retire`` forever, and a character device
(``/dev/zero``) would be read without end. Every such file is therefore opened with
``O_NONBLOCK`` (which makes ``open(2)`` of a FIFO return at once, or fail with ``ENXIO`` for
writing), checked with ``fstat(2)`` to be a regular file (``S_ISREG``), and only then used, with
``O_NONBLOCK`` cleared again; small files are read up to a bound. A refusal is a
:class:`NotRegularFile` or :class:`FileTooLarge`, both ``OSError``: every caller already turns an
``OSError`` into its usual failure (exit 2 for the CLI, ``io_error`` for the verifier,
:class:`~securemcp.audit.errors.AuditUnavailable` or ``AuditError`` for the writer, a failed
reload that keeps the previous policy in force for a policy file).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from typing import BinaryIO, Final

__all__ = [
    "CONFIG_FILE_MAX_BYTES",
    "KEYRING_MAX_BYTES",
    "KEY_FILE_MAX_BYTES",
    "TRUSTED_CHECKPOINT_MAX_BYTES",
    "FileTooLarge",
    "NotRegularFile",
    "open_regular",
    "open_regular_binary",
    "read_regular",
    "read_regular_text",
]

#: A keyring line is about 100 bytes: 1 MiB holds some ten thousand keys.
KEYRING_MAX_BYTES: Final = 1024 * 1024
#: A signing key file is one line of about 100 bytes.
KEY_FILE_MAX_BYTES: Final = 64 * 1024
#: A rules file, Cedar policy set or proxy configuration is text people write: 16 MiB is plenty.
CONFIG_FILE_MAX_BYTES: Final = 16 * 1024 * 1024
#: A trusted checkpoint may be given as a whole ``checkpoints.jsonl`` (its last line is used).
TRUSTED_CHECKPOINT_MAX_BYTES: Final = 64 * 1024 * 1024

_OPEN_FLAGS: Final = os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


class NotRegularFile(OSError):
    """The path names a FIFO, device, socket or folder where a regular file is required."""


class FileTooLarge(OSError):
    """The file is larger than the bound for what it should hold."""


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """``os.open`` that never blocks on a FIFO and refuses anything but a regular file.

    Raises:
        NotRegularFile: ``path`` is a FIFO, device, socket or folder (nothing was read or
            written; for writing, a FIFO without a reader fails the same way).
        OSError: ``path`` cannot be opened.
    """
    try:
        fd = os.open(path, flags | _OPEN_FLAGS, mode)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader; a folder
            raise NotRegularFile(exc.errno, f"{os.fspath(path)} is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(
                errno.EINVAL, f"{os.fspath(path)} is {_kind(info.st_mode)}, not a regular file"
            )
        if not flags & os.O_NONBLOCK:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular_binary(path: str | os.PathLike[str]) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only (see :func:`open_regular`)."""
    return os.fdopen(open_regular(path), "rb")


def read_regular(path: str | os.PathLike[str], *, limit: int | None = None) -> bytes:
    """The bytes of the regular file ``path``, at most ``limit`` of them.

    Raises:
        NotRegularFile: see :func:`open_regular`.
        FileTooLarge: the file holds more than ``limit`` bytes.
    """
    with open_regular_binary(path) as handle:
        data = handle.read() if limit is None else handle.read(limit + 1)
    if limit is not None and len(data) > limit:
        raise FileTooLarge(
            errno.EFBIG, f"{os.fspath(path)} is larger than {limit} bytes; refusing to read it"
        )
    return data


def read_regular_text(path: str | os.PathLike[str], *, limit: int) -> str:
    """The UTF-8 text of the regular file ``path`` (at most ``limit`` bytes).

    Raises:
        NotRegularFile, FileTooLarge: see :func:`read_regular`.
        UnicodeDecodeError: the file is not UTF-8 (a ``ValueError``).
    """
    return read_regular(path, limit=limit).decode("utf-8")
