"""Hot reload of a policy kept in a file, shared by every file-backed policy.

A rules file (:class:`~securemcp.policy.rules.RulesPolicy`) and a Cedar policy set
(:class:`~securemcp.policy.cedar.CedarPolicy`) reload the same way, as ToolHive and agentgateway
reload their configuration: on the call path, at most once per ``check_interval`` (1 s), the
file's ``stat`` signature (mtime, size, inode) is compared; when it changed, the file is read,
hashed (SHA-256: the ``policy_version``) and, if the content changed, compiled. The compiled
policy replaces the old one with a single reference assignment, so every call is decided by
exactly one complete version, never by a half-loaded one and never by none.

A file that fails to compile (or disappears) **keeps the previous policy in force** and is
reported loudly: ``logging.error`` on ``securemcp.policy`` and a :class:`PolicyChange` event
(``kind="reload_failed"``) to ``on_policy_change``, which the server connects to the audit log.
The same broken content is reported once, not on every check. Successful loads report
``kind="loaded"`` / ``"reloaded"`` with the old and new versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Literal, TypeVar

from securemcp._files import CONFIG_FILE_MAX_BYTES, read_regular

__all__ = [
    "CompileFailed",
    "HotReloadedPolicy",
    "PolicyChange",
    "PolicyChangeCallback",
    "read_policy_file",
]

logger = logging.getLogger("securemcp.policy")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A policy load, reload or failed reload (for the audit log).

    Attributes:
        kind: ``loaded``, ``reloaded`` or ``reload_failed``.
        source: the policy file.
        policy_version: the version now in force.
        previous_version: the version before (``None`` on first load).
        errors: for ``reload_failed``, every problem found (``file:line: message``).
        at: POSIX time of the event.
    """

    kind: Literal["loaded", "reloaded", "reload_failed"]
    source: str
    policy_version: str | None
    previous_version: str | None = None
    errors: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)


PolicyChangeCallback = Callable[[PolicyChange], object]
_Signature = tuple[int, int, int]


class CompileFailed(Exception):
    """A policy file's content does not compile; ``errors`` say why (``file:line: message``)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


Compiled = TypeVar("Compiled")


def read_policy_file(path: str | os.PathLike[str]) -> bytes:
    """A policy file's bytes: a regular file of at most 16 MiB (a FIFO or device named as the
    policy would otherwise hang the server's start-up or its reload forever).

    Raises:
        OSError: the file cannot be read, is not a regular file, or is too large.
    """
    return read_regular(path, limit=CONFIG_FILE_MAX_BYTES)


def content_version(data: bytes) -> str:
    """The ``policy_version`` of a policy file's content: ``sha256:<hex>``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class HotReloadedPolicy(Generic[Compiled]):
    """A policy compiled from a file and, with ``reload=True``, recompiled when it changes.

    Subclasses say how content compiles (:meth:`_compile`) and how a compiled policy names its
    version (:meth:`_version_of`); the rest (checking the file, keeping the previous version on
    a failure, reporting changes) is here.
    """

    def __init__(
        self,
        compiled: Compiled,
        *,
        path: str | os.PathLike[str] | None = None,
        reload: bool = False,
        check_interval: float = 1.0,
        on_policy_change: PolicyChangeCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._compiled = compiled
        self._path = Path(path) if path is not None else None
        self._reload = reload and self._path is not None
        self._interval = check_interval
        self._on_change = on_policy_change
        self._clock = clock
        self._next_check = clock() + check_interval
        self._signature: _Signature | None = self._stat()
        self._failed_version: str | None = None
        self._lock = threading.Lock()

    # --- what a subclass provides ---------------------------------------------------------

    def _compile(self, data: bytes, source: str) -> Compiled:
        """Compile a file's content, or raise :class:`CompileFailed`."""
        raise NotImplementedError

    def _version_of(self, compiled: Compiled) -> str:
        """The ``policy_version`` of a compiled policy."""
        raise NotImplementedError

    # --- public -------------------------------------------------------------------------------

    @property
    def source(self) -> str:
        """The policy file (``"<string>"`` for a policy built from text)."""
        return str(self._path) if self._path is not None else "<string>"

    @property
    def version(self) -> str:
        """``sha256:<hex>`` of the policy in force."""
        return self._version_of(self._compiled)

    def subscribe(self, callback: PolicyChangeCallback) -> None:
        """Also send every later :class:`PolicyChange` to ``callback`` (e.g. the audit log)."""
        previous = self._on_change

        def both(event: PolicyChange) -> None:
            if previous is not None:
                previous(event)
            callback(event)

        self._on_change = both

    def reload(self) -> bool:
        """Check the file now. ``True`` when a new version was installed."""
        with self._lock:
            return self._reload_locked(force=True)

    def _current(self) -> Compiled:
        """The compiled policy in force, after the periodic file check when it is due."""
        if self._reload and self._clock() >= self._next_check:
            self._check_file()
        return self._compiled

    # --- reloading --------------------------------------------------------------------------

    def _stat(self) -> _Signature | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _check_file(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; this call uses the version in force
        try:
            self._next_check = self._clock() + self._interval
            self._reload_locked(force=False)
        finally:
            self._lock.release()

    def _reload_locked(self, *, force: bool) -> bool:
        if self._path is None:
            return False
        signature = self._stat()
        if signature == self._signature and not force:
            return False
        self._signature = signature
        source = str(self._path)
        previous = self._version_of(self._compiled)
        try:
            data = read_policy_file(self._path)
        except OSError as exc:
            self._report_failure(source, previous, "missing", [f"{source}: cannot read: {exc}"])
            return False
        try:
            compiled = self._compile(data, source)
        except CompileFailed as exc:
            self._report_failure(source, previous, content_version(data), exc.errors)
            return False
        self._failed_version = None
        version = self._version_of(compiled)
        if version == previous:
            return False
        self._compiled = compiled
        logger.warning(
            "securemcp policy %s reloaded: %s -> %s", source, previous[:19], version[:19]
        )
        self._emit(PolicyChange("reloaded", source, version, previous))
        return True

    def _report_failure(self, source: str, previous: str, failed: str, errors: list[str]) -> None:
        if failed == self._failed_version:
            return  # this exact content was already reported
        self._failed_version = failed
        logger.error(
            "securemcp policy %s failed to reload; the previous policy %s stays in force:\n%s",
            source,
            previous[:19],
            "\n".join(errors),
        )
        self._emit(PolicyChange("reload_failed", source, previous, previous, tuple(errors)))

    def _emit(self, event: PolicyChange) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(event)
        except Exception:
            logger.exception("securemcp on_policy_change callback failed for %s", event.kind)
