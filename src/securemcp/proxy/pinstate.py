"""The running proxy's view of the lockfile: what is pinned, and what is blocked.

The lockfile (:mod:`securemcp.proxy.pinning`) is read at start-up and re-read when it changes on
disk (checked at most once a second, on the call path), so ``securemcp proxy lock`` re-approves a
changed tool without a restart. A file that fails to load keeps the previous pins in force and is
reported, exactly like a policy rules file.

A component whose live upstream definition no longer matches its pin is **blocked for every
caller** until the lockfile changes: one user's session seeing a rug pull protects all users. Each
block is reported once (log warning and an audit event), never on every call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securemcp.proxy.pinning import Lockfile, LockfileError, UpstreamLock

__all__ = ["Block", "PinState"]

logger = logging.getLogger("securemcp.proxy")

_CHECK_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class Block:
    """A component refused until re-locked."""

    upstream: str
    kind: str
    key: str
    reason: str  # "changed", "removed", "unpinned" or "collision"


class PinState:
    """The lockfile in force plus the set of blocked components (thread- and task-safe).

    Args:
        path: the lockfile. A missing file means "nothing is pinned": every upstream component
            is blocked, and start-up says to run ``securemcp proxy lock``.
        on_event: receives ``(event_name, fields)`` for the audit log (``proxy.pin_blocked``,
            ``proxy.lock_reloaded``, ``proxy.lock_reload_failed``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        quiet: bool = False,
    ) -> None:
        self.path = Path(path)
        self._quiet = quiet
        self.on_event = on_event
        self._clock = clock
        self._lock = threading.Lock()
        self._blocked: dict[tuple[str, str, str], Block] = {}
        self.generation = 0
        self._next_check = clock() + _CHECK_INTERVAL  # just read below
        self._signature = self._stat()
        self.lockfile = self._load_initial()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _load_initial(self) -> Lockfile:
        if self._signature is None:
            if self._quiet:
                return Lockfile.empty()
            logger.warning(
                "securemcp proxy: no lockfile at %s; every upstream component is blocked until "
                "you review and pin them with `securemcp proxy lock`",
                self.path,
            )
            return Lockfile.empty()
        return Lockfile.load(self.path)

    def _emit(self, event: str, fields: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event, fields)
        except Exception:
            logger.exception("securemcp proxy: could not record %s", event)

    def refresh(self) -> Lockfile:
        """The lockfile in force, re-read first if it changed on disk (at most once a second)."""
        now = self._clock()
        if now < self._next_check:
            return self.lockfile
        self._next_check = now + _CHECK_INTERVAL
        signature = self._stat()
        if signature == self._signature:
            return self.lockfile
        with self._lock:
            if signature == self._signature:
                return self.lockfile
            self._signature = signature
            try:
                lockfile = Lockfile.load(self.path) if signature is not None else Lockfile.empty()
            except LockfileError as exc:
                logger.error("securemcp proxy: lockfile reload failed, keeping the pins: %s", exc)
                self._emit("proxy.lock_reload_failed", {"error": str(exc)})
                return self.lockfile
            self.lockfile = lockfile
            cleared = len(self._blocked)
            self._blocked.clear()
            self.generation += 1
        logger.warning(
            "securemcp proxy: lockfile %s reloaded; %d block(s) cleared", self.path, cleared
        )
        self._emit("proxy.lock_reloaded", {"cleared_blocks": cleared})
        return lockfile

    def upstream(self, name: str) -> UpstreamLock | None:
        return self.refresh().upstream(name)

    def block(self, upstream: str, kind: str, key: str, reason: str) -> None:
        """Block one component for every caller until the lockfile changes (reported once)."""
        ident = (upstream, kind, key)
        with self._lock:
            if ident in self._blocked:
                return
            self._blocked[ident] = Block(upstream, kind, key, reason)
        if reason == "collision":
            logger.warning(
                "securemcp proxy: upstream %r %s %r is blocked: another component is exposed "
                "under the same name",
                upstream,
                kind,
                key,
            )
        else:
            logger.warning(
                "securemcp proxy: upstream %r %s %r is blocked: its definition %s since it was "
                "locked; review it and run `securemcp proxy lock` to re-approve",
                upstream,
                kind,
                key,
                {"changed": "changed", "removed": "disappeared"}.get(reason, "is not pinned"),
            )
        self._emit(
            "proxy.pin_blocked", {"upstream": upstream, "kind": kind, "key": key, "reason": reason}
        )

    @property
    def revision(self) -> tuple[int, int]:
        """Changes whenever the pins in force or the blocks change: a reload (which clears the
        blocks) bumps ``generation``, and within a generation blocks are only ever added."""
        return (self.generation, len(self._blocked))

    def blocked(self, upstream: str, kind: str, key: str) -> Block | None:
        return self._blocked.get((upstream, kind, key))

    def blocks(self) -> list[Block]:
        with self._lock:
            return list(self._blocked.values())
