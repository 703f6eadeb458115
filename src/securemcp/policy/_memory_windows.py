"""In-process rate-limit windows for ``memory://``: ``limits``' three strategies, exactly, cheaper.

:class:`~securemcp.policy.ratelimit.RateLimiter` keeps ``limits`` for parsing limit strings and
for every shared storage (Redis, ...). For the default ``memory://`` it uses this module instead
of ``limits``' sync strategies over its ``MemoryStorage``: the same answers at a fraction of the
cost per hit (no key string built per hit, buckets looked up by the hashed key alone, one lock
and one clock read for all the items of a limit, ``retry_after`` computed in the same pass).

**Exact.** For any sequence of hits ``(time, key, item, cost)`` under a clock that does not go
back, each class below gives the same allowed/refused answers and the same ``retry_after``
(``max(0, reset_time - now)`` from the strategy's ``get_window_stats``) as ``limits`` 5.8:

* :class:`FixedWindows` = ``FixedWindowRateLimiter``: a window starts at a key's first hit and
  lasts ``item.get_expiry()`` seconds (it is over when ``now >= start + expiry``). Every hit,
  refused ones included, adds ``cost`` to the count; the hit is allowed when the new count is
  at most ``amount``. ``retry_after`` is the time left in the window.
* :class:`MovingWindows` = ``MovingWindowRateLimiter`` (``acquire_entry``): a hit of cost ``c``
  is refused when the ``amount - c + 1``-th newest entry has ``atime >= now - expiry``;
  otherwise ``c`` entries stamped ``now`` are added. Refused hits add nothing.
  ``retry_after`` is ``oldest entry with atime > now - expiry`` + ``expiry`` - ``now``.
* :class:`SlidingWindowCounters` = ``SlidingWindowCounterRateLimiter``: counters per window
  index ``int(now / expiry)`` (previous: ``int((now - expiry) / expiry)``), each kept until
  ``2 * expiry`` after it was started from zero; the previous count is weighted by the part of
  its window still inside the sliding window, with the very same float operations.

``limits`` quirks kept on purpose (none weakens a limit): a refused fixed-window hit still
counts, so after a refused cost of 4 a cost of 1 that would have fitted is refused too; a
moving-window hit at exactly ``atime + expiry`` of the blocking entry is refused (``>=``) while
``get_window_stats`` already counts that entry out (``>``), so the ``retry_after`` of such a
refusal points at the next entry; a sliding-window ``retry_after`` is the time until the
weighted count next drops by one (0 when it is exactly on a step), not until the refused cost
fits; ``limits`` re-checks the sliding window after incrementing and undoes the hit when a float
rounding makes the second check disagree (``(1 - 2**-52) + 0`` floors to 0, ``+ 2`` to 3);
before ``time == expiry`` (a fake clock near 0) the sliding window's previous and current
counters are one and the same, as ``int()`` truncates towards zero. What is *not* copied is
the race of ``limits``' background expiry thread, which drops a moving-window entry at
``atime + expiry <= now`` while a lookup at that instant still counts it: here only the lookup
rule decides, and the sweep drops only what no lookup can count any more.

**Bounded memory, no background work.** Each window keeps its buckets in order of when they
expire (a bucket is moved to the end when its expiry moves); every ``sweep_every`` hits the
expired buckets are popped from the front (the sweep stops at the first live one): amortised
O(1) per hit, memory at most the live buckets plus ``sweep_every``. No thread, no timer, no
asyncio task. A moving-window bucket keeps at most ``amount`` timestamps (``limits`` never
looks further back).

**Thread-safe**: one lock around each hit (all the items of one limit together).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from math import floor, inf
from typing import Any, ClassVar, Final

from limits import RateLimitItem

__all__ = [
    "FixedWindows",
    "MemoryWindows",
    "MovingWindows",
    "SlidingWindowCounters",
    "Window",
    "memory_windows",
]

#: Hits between two sweeps of expired buckets.
SWEEP_EVERY: Final = 256


class Window:
    """One limit item (``amount`` per ``expiry`` seconds) and its buckets, by bucket key.

    Items that ``limits`` would store under the same key suffix (same namespace, amount,
    multiples and granularity) share one :class:`Window`, as they share counters there.
    """

    __slots__ = ("amount", "buckets", "expiry")

    def __init__(self, amount: int, expiry: int) -> None:
        self.amount = amount
        self.expiry = expiry
        #: bucket key -> bucket, in order of expiry (the soonest first).
        self.buckets: OrderedDict[str, Any] = OrderedDict()


class MemoryWindows:
    """The buckets of one rate limiter for one strategy (see the module docstring).

    Args:
        clock: seconds since the epoch (``time.time``; tests pass a fake one). ``retry_after``
            is measured on the same clock.
        sweep_every: hits between two sweeps of expired buckets.
    """

    strategy: ClassVar[str]

    def __init__(
        self, clock: Callable[[], float] = time.time, *, sweep_every: int = SWEEP_EVERY
    ) -> None:
        if sweep_every < 1:
            raise ValueError("sweep_every must be at least 1")
        self.clock = clock
        self._sweep_every = sweep_every
        self._hits_to_sweep = sweep_every
        self._lock = threading.Lock()
        self._windows: dict[tuple[str, int, int, str], Window] = {}

    def window(self, item: RateLimitItem) -> Window:
        """The :class:`Window` that counts hits against ``item`` (created on first use)."""
        identity = (item.namespace, item.amount, item.multiples, item.GRANULARITY.name)
        with self._lock:
            window = self._windows.get(identity)
            if window is None:
                window = self._windows[identity] = Window(item.amount, item.get_expiry())
            return window

    def hit(self, windows: Sequence[Window], key: str, cost: int = 1) -> float | None:
        """Count ``cost`` against bucket ``key`` in each window, in order.

        Stops at the first window that refuses (the earlier ones stay consumed, as with one
        ``limits`` hit per item) and returns its ``retry_after`` in seconds; ``None`` when every
        window allowed the hit.
        """
        with self._lock:
            now = self.clock()
            self._hits_to_sweep -= 1
            if not self._hits_to_sweep:
                self._hits_to_sweep = self._sweep_every
                self._sweep(now)
            return self._consume(windows, key, cost, now)

    def bucket_count(self) -> int:
        """How many buckets are held (live or not yet swept)."""
        with self._lock:
            return sum(len(window.buckets) for window in self._windows.values())

    def reset(self) -> int:
        """Drop every bucket; returns how many there were."""
        with self._lock:
            count = 0
            for window in self._windows.values():
                count += len(window.buckets)
                window.buckets.clear()
            return count

    def _sweep(self, now: float) -> None:
        is_expired = self._is_expired
        for window in self._windows.values():
            buckets = window.buckets
            expired = []
            for key, bucket in buckets.items():
                if not is_expired(bucket, window.expiry, now):
                    break  # the rest expire later
                expired.append(key)
            for key in expired:
                del buckets[key]

    def _consume(self, windows: Sequence[Window], key: str, cost: int, now: float) -> float | None:
        raise NotImplementedError

    @staticmethod
    def _is_expired(bucket: Any, expiry: int, now: float) -> bool:
        """Whether ``bucket`` can no longer affect any answer (so it may be dropped)."""
        raise NotImplementedError


class FixedWindows(MemoryWindows):
    """``limits``' fixed window. A bucket is ``[count, window_end]``."""

    strategy = "fixed-window"

    def _consume(self, windows: Sequence[Window], key: str, cost: int, now: float) -> float | None:
        for window in windows:
            buckets = window.buckets
            bucket = buckets.get(key)
            if bucket is None:
                buckets[key] = bucket = [cost, now + window.expiry]
            elif bucket[1] <= now:  # the window is over: a new one starts with this hit
                bucket[0] = cost
                bucket[1] = now + window.expiry
                buckets.move_to_end(key)
            else:
                bucket[0] += cost  # refused hits count too, as in limits
            if bucket[0] > window.amount:
                retry_after: float = bucket[1] - now
                return retry_after if retry_after > 0.0 else 0.0
        return None

    @staticmethod
    def _is_expired(bucket: Any, expiry: int, now: float) -> bool:
        end: float = bucket[1]
        return end <= now


class MovingWindows(MemoryWindows):
    """``limits``' moving window. A bucket is a deque of hit times, oldest first."""

    strategy = "moving-window"

    def _consume(self, windows: Sequence[Window], key: str, cost: int, now: float) -> float | None:
        for window in windows:
            amount = window.amount
            buckets = window.buckets
            times: deque[float] | None = buckets.get(key)
            if cost > amount:
                return _moving_retry_after(times, window.expiry, now)
            if times is not None:
                # limits' events[amount - cost], counted from the newest
                blocking = len(times) - 1 - amount + cost
                if blocking >= 0 and times[blocking] >= now - window.expiry:
                    return _moving_retry_after(times, window.expiry, now)
                buckets.move_to_end(key)
            else:
                buckets[key] = times = deque(maxlen=amount)
            if cost == 1:
                times.append(now)
            else:
                times.extend([now] * cost)
        return None

    @staticmethod
    def _is_expired(bucket: Any, expiry: int, now: float) -> bool:
        newest: float = bucket[-1]
        return newest < now - expiry  # strict: at equality the entry still blocks


def _moving_retry_after(times: deque[float] | None, expiry: int, now: float) -> float:
    """``limits``' ``get_moving_window`` + ``get_window_stats``: reset - now, at least 0."""
    if not times:
        start = now
    else:
        first_inside = bisect_right(times, now - expiry)  # first time > now - expiry
        # limits reads events[oldest - 1], i.e. events[-1] (the oldest) when none is inside
        start = times[first_inside] if first_inside < len(times) else times[0]
    retry_after = start + expiry - now
    return retry_after if retry_after > 0.0 else 0.0


class SlidingWindowCounters(MemoryWindows):
    """``limits``' sliding window counter.

    A bucket is ``{window index: [count, expires_at]}``, mirroring the per-window counters
    ``limits`` keeps under ``f"{key}/{index}"`` (a counter expires ``2 * expiry`` after it was
    last started from zero; an expired counter counts 0).
    """

    strategy = "sliding-window-counter"

    def _consume(self, windows: Sequence[Window], key: str, cost: int, now: float) -> float | None:
        for window in windows:
            amount = window.amount
            expiry = window.expiry
            buckets = window.buckets
            counters: dict[int, list[Any]] | None = buckets.get(key)
            if cost > amount:
                return _sliding_retry_after(counters, expiry, now)
            previous_count = current_count = 0
            current_index = int(now / expiry)
            counter = None
            if counters is not None:
                previous = counters.get(int((now - expiry) / expiry))
                if previous is not None and previous[1] > now:
                    previous_count = previous[0]
                counter = counters.get(current_index)
                if counter is not None:
                    if counter[1] > now:
                        current_count = counter[0]
                    else:
                        counter = None
            previous_weight = 0.0
            if previous_count:
                previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry
                previous_weight = previous_count * previous_ttl / expiry
            if floor(previous_weight + current_count) + cost > amount:
                return _sliding_retry_after(counters, expiry, now)
            if counters is None:
                buckets[key] = counters = {}
            if counter is None or counter[0] == 0:  # (re)started: limits sets a new expiry
                for index in [i for i, c in counters.items() if c[1] <= now]:
                    del counters[index]
                counter = counters[current_index] = [current_count + cost, now + 2 * expiry]
                buckets.move_to_end(key)
            else:
                counter[0] += cost
            if floor(previous_weight + counter[0]) > amount:
                # limits' re-check after the increment (a float rounding can differ): undo
                counter[0] = max(counter[0] - cost, 0)
                return _sliding_retry_after(counters, expiry, now)
        return None

    @staticmethod
    def _is_expired(bucket: Any, expiry: int, now: float) -> bool:
        return all(counter[1] <= now for counter in bucket.values())


def _sliding_retry_after(counters: dict[int, list[Any]] | None, expiry: int, now: float) -> float:
    """``limits``' ``get_sliding_window`` + ``get_window_stats``: reset - now, at least 0."""
    previous_count = current_count = 0
    if counters is not None:
        previous = counters.get(int((now - expiry) / expiry))
        if previous is not None and previous[1] > now:
            previous_count = previous[0]
        current = counters.get(int(now / expiry))
        if current is not None and current[1] > now:
            current_count = current[0]
    if not (previous_count or current_count):
        return 0.0
    previous_reset_in = current_reset_in = inf
    if previous_count:
        previous_ttl = (1 - (((now - expiry) / expiry) % 1)) * expiry
        previous_reset_in = previous_ttl % (expiry / previous_count)
    if current_count:
        current_ttl = (1 - ((now / expiry) % 1)) * expiry + expiry
        current_reset_in = current_ttl % expiry
    retry_after = (now + min(previous_reset_in, current_reset_in)) - now
    return retry_after if retry_after > 0.0 else 0.0


_BY_STRATEGY: Final[dict[str, type[MemoryWindows]]] = {
    cls.strategy: cls for cls in (FixedWindows, MovingWindows, SlidingWindowCounters)
}


def memory_windows(
    strategy: str, clock: Callable[[], float] = time.time, *, sweep_every: int = SWEEP_EVERY
) -> MemoryWindows:
    """The in-process windows for ``strategy`` (a :class:`RateLimiter` strategy name)."""
    try:
        cls = _BY_STRATEGY[strategy]
    except KeyError:
        raise ValueError(f"unknown rate-limit strategy {strategy!r}") from None
    return cls(clock, sweep_every=sweep_every)
