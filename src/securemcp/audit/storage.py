"""The on-disk layout of an audit log folder, its single-writer lock and torn-tail recovery.

::

    <folder>/
      audit-000000.jsonl      records, one RFC 8785 canonical JSON object per line (LF)
      audit-000001.jsonl      the next segment (rotated by size; the chain continues across)
      checkpoints.jsonl       one line per signed checkpoint: {"note": ..., "range": [...]}
      quarantine/             torn last lines cut off after a crash, kept for inspection
      .lock                   held with an exclusive fcntl.flock by the one writer

A crash can leave the last line of a segment (or of ``checkpoints.jsonl``) without its LF: a
*torn* write. :func:`cut_torn_tail` moves those bytes to ``quarantine/`` and truncates the file
to its last complete line, so the log continues and everything before still verifies.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from securemcp._files import NotRegularFile, open_regular_binary
from securemcp.audit.errors import AuditLogLocked

__all__ = [
    "CHECKPOINTS_FILE",
    "LOCK_FILE",
    "QUARANTINE_DIR",
    "DirectoryLock",
    "cut_torn_tail",
    "default_audit_dir",
    "first_line",
    "iter_lines",
    "last_line",
    "list_segments",
    "segment_name",
    "torn_tail_offset",
]

CHECKPOINTS_FILE: Final = "checkpoints.jsonl"
LOCK_FILE: Final = ".lock"
QUARANTINE_DIR: Final = "quarantine"

_SEGMENT: Final = re.compile(r"audit-(\d{6,})\.jsonl")
_BLOCK: Final = 64 * 1024


def default_audit_dir() -> Path:
    """``$SECUREMCP_AUDIT_DIR``, else ``./.securemcp/audit``."""
    return Path(os.environ.get("SECUREMCP_AUDIT_DIR") or Path(".securemcp") / "audit")


def segment_name(number: int) -> str:
    """The file name of segment ``number``."""
    return f"audit-{number:06d}.jsonl"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    """The segments in ``directory`` as ``(number, path)``, in order.

    Raises:
        NotRegularFile: a segment name is taken by a FIFO, device, socket or folder (reading
            it could block forever; skipping it would hide records).
    """
    found = []
    for entry in os.scandir(directory):
        match = _SEGMENT.fullmatch(entry.name)
        if match:
            if not entry.is_file():
                raise NotRegularFile(
                    errno.EINVAL, f"the audit segment {entry.path} is not a regular file"
                )
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


def torn_tail_offset(path: Path) -> int:
    """The size of ``path`` up to and including its last LF (equal to the size if not torn)."""
    with open_regular_binary(path) as handle:
        size = handle.seek(0, os.SEEK_END)
        position = size
        while position > 0:
            start = max(0, position - _BLOCK)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            position = start
        return 0


def cut_torn_tail(
    path: Path, quarantine: Path, *, sync: bool = True
) -> tuple[int, int, str] | None:
    """Move a torn last line of ``path`` into ``quarantine/`` and truncate ``path``.

    Returns ``(offset, length, quarantine file name)``, or ``None`` when nothing was torn.
    """
    good = torn_tail_offset(path)
    size = path.stat().st_size
    if good == size:
        return None
    with open_regular_binary(path) as handle:
        handle.seek(good)
        torn = handle.read()
    quarantine.mkdir(mode=0o700, exist_ok=True)
    name = f"{path.name}.{good}.torn"
    target = quarantine / name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, torn)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, good)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return good, len(torn), name


def last_line(path: Path) -> bytes | None:
    """The last complete line of ``path`` without its LF, or ``None`` if there is none."""
    end = torn_tail_offset(path)
    if end == 0:
        return None
    with open_regular_binary(path) as handle:
        position = end - 1  # the final LF
        while position > 0:
            start = max(0, position - _BLOCK)
            handle.seek(start)
            block = handle.read(position - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                handle.seek(start + newline + 1)
                return handle.read(end - 1 - (start + newline + 1))
            position = start
        handle.seek(0)
        return handle.read(end - 1)


def first_line(path: Path) -> bytes | None:
    """The first complete line of ``path`` without its LF, or ``None``."""
    with open_regular_binary(path) as handle:
        line = handle.readline()
    return line[:-1] if line.endswith(b"\n") else None


def iter_lines(path: Path, *, skip: int = 0) -> Iterator[bytes]:
    """The complete lines of ``path`` without their LF, after skipping ``skip`` lines."""
    with open_regular_binary(path) as handle:
        for index, line in enumerate(handle):
            if not line.endswith(b"\n"):
                return
            if index >= skip:
                yield line[:-1]


class DirectoryLock:
    """An exclusive ``fcntl.flock`` on ``<folder>/.lock``: one writer per log at a time."""

    __slots__ = ("_fd", "path")

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`AuditLogLocked` naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise AuditLogLocked(
                    f"the audit log at {self.path.parent} is already open for writing by "
                    f"another process (pid {holder}); only one writer may hold it at a time"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
