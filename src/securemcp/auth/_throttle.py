"""How many audit records unauthenticated HTTP refusals may add: bounded per source and overall.

A request with a forged, expired or missing token costs an attacker nothing, and each refusal is
worth an ``auth_failure`` audit record. Recording every one would turn the audit log into a
disk-filling amplifier; recording none would hide the attack. :class:`FailureThrottle` keeps the
middle: at most one record per source and reason per interval, at most a few distinct reasons
per source, and at most ``max_records`` records per interval overall. Every record says how many
refusals it stands for, so the log still shows each burst and its size.

What counts as one source: an IPv4 address, or an IPv6 ``/64`` (one subscriber's allocation:
an attacker rotating through the 2**64 addresses of one prefix is still one source). Reasons are
whatever the verifier said; a custom verifier's free-text reasons cannot multiply the records,
because each source gets at most ``max_reasons_per_source`` of them. Memory is bounded by
``max_sources``; when the table is full of sources seen within the interval, further refusals
are counted against the overall budget instead of being tracked.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["FailureThrottle", "ThrottledRecord", "source_of"]

#: Stands for "every other reason" once a source has used up its distinct reasons.
OTHER_REASONS = "*"
#: The key of the overall budget's record (refusals no per-source record covered).
_OVERALL = ("*", "*")


class ThrottledRecord(NamedTuple):
    """Write a record for this refusal; it also stands for ``left_out`` earlier ones."""

    left_out: int
    overall: bool  # left_out counts refusals from any source (the budget was exhausted)


def source_of(address: str | None) -> str:
    """The throttle's unit for a client address: the IPv4 address, or the IPv6 ``/64``."""
    if not address:
        return "?"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]  # not an IP (a Unix socket, a test client): itself, bounded
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailureThrottle:
    """Admit at most one audit record per source and reason per ``interval`` (see module doc)."""

    def __init__(
        self,
        interval: float = 1.0,
        *,
        max_records: int = 100,
        max_sources: int = 4096,
        max_reasons_per_source: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._max_records = max_records
        self._max_sources = max_sources
        self._max_reasons = max_reasons_per_source
        self._clock = clock
        # (source, reason) -> [time of its last record, refusals left out since]
        self._seen: dict[tuple[str, str], list[float]] = {}
        self._reasons: dict[str, int] = {}  # source -> distinct reasons tracked
        self._window = -float("inf")  # start of the current budget interval
        self._records = 0  # records admitted in the current budget interval
        self._overall = [-float("inf"), 0.0]  # the overall record: [last, left out]

    def admit(self, address: str | None, reason: str) -> ThrottledRecord | None:
        """``None`` to leave this refusal out of the audit log; else the record to write."""
        now = self._clock()
        if now - self._window >= self._interval:
            self._window, self._records = now, 0
            if len(self._reasons) >= self._max_sources:
                self._prune(now)
        source = source_of(address)
        key = (source, reason)
        entry = self._seen.get(key)
        if entry is None and self._reasons.get(source, 0) >= self._max_reasons:
            key = (source, OTHER_REASONS)
            entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self._interval:
            entry[1] += 1
            return None
        new_source = entry is None and source not in self._reasons
        if self._records >= self._max_records or (
            new_source and len(self._reasons) >= self._max_sources
        ):
            return self._admit_overall(now)
        self._records += 1
        if entry is None:
            self._seen[key] = [now, 0.0]
            self._reasons[source] = self._reasons.get(source, 0) + 1
            return ThrottledRecord(0, overall=False)
        left_out = int(entry[1])
        entry[0], entry[1] = now, 0.0
        return ThrottledRecord(left_out, overall=False)

    def _admit_overall(self, now: float) -> ThrottledRecord | None:
        overall = self._overall
        if now - overall[0] < self._interval:
            overall[1] += 1
            return None
        left_out = int(overall[1])
        overall[0], overall[1] = now, 0.0
        return ThrottledRecord(left_out, overall=True)

    def _prune(self, now: float) -> None:
        """Forget sources with no record within the interval (run at most once per interval)."""
        stale = [key for key, entry in self._seen.items() if now - entry[0] >= self._interval]
        for key in stale:
            entry = self._seen.pop(key)
            if entry[1]:  # its left-out refusals are carried by the next overall record
                self._overall[1] += entry[1]
            source = key[0]
            remaining = self._reasons[source] - 1
            if remaining:
                self._reasons[source] = remaining
            else:
                del self._reasons[source]

    def __len__(self) -> int:
        """How many (source, reason) pairs are tracked."""
        return len(self._seen)
