"""A dependency-free progress bar on stderr, shown only on a terminal and only for large logs."""

from __future__ import annotations

import sys
import time
from typing import Final, TextIO

__all__ = ["ProgressBar"]

#: Logs smaller than this finish too fast to need a bar.
MIN_BYTES: Final = 16 * 1024 * 1024
_WIDTH: Final = 30


class ProgressBar:
    """``progress(done, total)`` callback drawing ``[#####.....]  42%  1.2 GB`` on one line."""

    def __init__(self, stream: TextIO | None = None, *, label: str = "verifying") -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._label = label
        self._enabled = bool(getattr(self._stream, "isatty", lambda: False)())
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int) -> None:
        if not self._enabled or total < MIN_BYTES:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = _WIDTH * done // total if total else _WIDTH
        bar = "#" * filled + "." * (_WIDTH - filled)
        percent = 100 * done // total if total else 100
        self._stream.write(f"\r{self._label} [{bar}] {percent:3d}%  {done / 1e6:,.0f} MB")
        self._stream.flush()
        self._drawn = True

    def finish(self) -> None:
        """Erase the bar (call once when done)."""
        if self._drawn:
            self._stream.write("\r" + " " * (len(self._label) + _WIDTH + 24) + "\r")
            self._stream.flush()
            self._drawn = False
