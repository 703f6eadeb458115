"""Log lines a caller can trigger at will, limited per reason (OWASP Logging Cheat Sheet: log
injection and flooding; CWE-779, logging of excessive data).

A refused call costs a caller one request, and some refusals log a line each: a policy hook that
raises, a template value securemcp cannot judge (a ``Decimal`` over 4300 digits), a malformed
decision. Anyone able to make such a call could then fill the server log, and bury everything
else in it, at the rate they can send requests. :class:`LogLimiter` writes the first line of each
reason at once and then at most one line per reason per interval, saying how many lines of that
reason it left out since the last one. The audit log is not limited: every refused call keeps its
own ``decision`` record.

The reasons are bounded by the caller of :meth:`LogLimiter.log` (policy names, registered URI
templates, exception type names: never text a request chose); the table of reasons is bounded
too, so even an unexpected source of reasons cannot grow memory without limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Final

__all__ = ["DEFAULT_INTERVAL", "LogLimiter", "policy_failures"]

#: Seconds between two lines of one reason.
DEFAULT_INTERVAL: Final = 60.0
#: Reasons tracked at once; beyond, every new reason shares one line per interval.
_MAX_REASONS: Final = 1024
#: The reason every new reason counts as while the table is full.
_OVERFLOW: Final = ("*",)


class LogLimiter:
    """At most one log line per reason per ``interval`` seconds, the first one at once."""

    def __init__(
        self,
        interval: float = DEFAULT_INTERVAL,
        *,
        max_reasons: int = _MAX_REASONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self._max_reasons = max_reasons
        self._clock = clock
        # reason -> [time of its last line, lines left out since]
        self._seen: dict[Hashable, list[float]] = {}
        self._lock = threading.Lock()  # sync policy hooks may also run in worker threads

    def log(
        self,
        logger: logging.Logger,
        level: int,
        reason: Hashable,
        message: str,
        *args: Any,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` at ``level`` unless ``reason`` already had its line within the
        interval; returns whether it was logged. A line after left-out ones says how many."""
        if not logger.isEnabledFor(level):
            return False
        left_out = self._admit(reason)
        if left_out is None:
            return False
        if left_out:
            message += " (%d similar lines left out in the last %.0f s)"
            args = (*args, left_out, self.interval)
        logger.log(level, message, *args, exc_info=exc_info)
        return True

    def _admit(self, reason: Hashable) -> int | None:
        """``None`` to leave this line out, else how many lines of ``reason`` were left out."""
        now = self._clock()
        with self._lock:
            entry = self._seen.get(reason)
            if entry is None and len(self._seen) >= self._max_reasons:
                self._prune(now)
                if len(self._seen) >= self._max_reasons:
                    reason = _OVERFLOW
                    entry = self._seen.get(reason)
            if entry is None:
                self._seen[reason] = [now, 0.0]
                return 0
            if now - entry[0] < self.interval:
                entry[1] += 1
                return None
            left_out = int(entry[1])
            entry[0], entry[1] = now, 0.0
            return left_out

    def clear(self) -> None:
        """Forget every reason (the next line of each is written at once)."""
        with self._lock:
            self._seen.clear()

    def _prune(self, now: float) -> None:
        """Forget reasons with no line left out and none within the interval."""
        stale = [
            reason
            for reason, (last, left_out) in self._seen.items()
            if not left_out and now - last >= self.interval
        ]
        for reason in stale:
            del self._seen[reason]


#: The limiter of the policy's fail-closed lines (a hook that raises, returns a malformed or
#: wrong answer, or times out; a value or argument securemcp cannot judge), for the process.
policy_failures: Final = LogLimiter()
