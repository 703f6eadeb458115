"""The writer's watch on its pinned keyring: never seal with a key the operator retired.

An operator retires a key by adding ``retired-after-size=N`` to its keyring line
(:mod:`securemcp.audit.keys`, ``securemcp keys retire``), possibly while a server is writing
with it. :class:`RetiredSignerWatch` is asked before each checkpoint is signed (never per
record): for a keyring file it costs one ``stat(2)``, and the file is read again only when its
identity or contents changed (device, inode, size, modification or status-change time), so an
atomic replacement (``rename(2)``) and an edit in place are both seen. A retired signer, or a
keyring that can no longer be read or parsed, raises :class:`~securemcp.audit.errors.AuditError`:
the writer then fails closed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from securemcp.audit.errors import AuditError, KeyringError
from securemcp.audit.keys import Keyring, Signer, refuse_retired_signer

__all__ = ["RetiredSignerWatch"]

_Stamp = tuple[int, int, int, int, int]


class RetiredSignerWatch:
    """Refuses signers that ``keyring`` (a :class:`Keyring`, a keyring file, or ``None``:
    nothing to watch) retires, re-reading a file only when it changed."""

    __slots__ = ("_keyring", "_pinned", "_stamp")

    def __init__(self, keyring: Keyring | str | os.PathLike[str] | None) -> None:
        self._keyring = keyring
        self._pinned: Keyring | None = keyring if isinstance(keyring, Keyring) else None
        self._stamp: _Stamp | None = None

    def check(self, signers: Iterable[Signer], *, reload: bool = False) -> None:
        """Raise :class:`AuditError` if the keyring retires any of ``signers``.

        ``reload`` reads a keyring file even if it looks unchanged (at ``open``).

        Raises:
            AuditError: a signer is retired, or the keyring file cannot be read (or is
                malformed: :class:`KeyringError`, a subclass).
        """
        keyring = self._keyring
        if keyring is None:
            return
        if not isinstance(keyring, Keyring):
            self._refresh(keyring, reload)
        pinned = self._pinned
        assert pinned is not None
        for signer in signers:
            refuse_retired_signer(signer, pinned)

    def _refresh(self, path: str | os.PathLike[str], reload: bool) -> None:
        try:
            info = os.stat(path)  # stat only: never opens (nor blocks on) a FIFO
        except OSError as exc:
            self._stamp = self._pinned = None
            raise AuditError(f"cannot read the audit keyring {path}: {exc}") from exc
        stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if not reload and stamp == self._stamp and self._pinned is not None:
            return
        # Stamped before reading: a change while it is read shows at the next check.
        self._stamp = self._pinned = None
        try:
            pinned = Keyring.load(path)
        except KeyringError:
            raise
        except (OSError, ValueError) as exc:  # ValueError: not UTF-8 text
            raise AuditError(f"cannot read the audit keyring {path}: {exc}") from exc
        self._pinned, self._stamp = pinned, stamp
