"""The record header and the hash chain that links each record to the one before it.

Every record carries, besides its body, five header fields set by the writer:

* ``v`` — schema version (1);
* ``log`` — the log id, also the ``origin`` of its checkpoints (C2SP ``tlog-checkpoint``);
* ``seq`` — position in the log, from 0, contiguous across segments;
* ``ts`` — RFC 3339 UTC time with microseconds (``2026-09-01T12:00:00.123456Z``), never
  decreasing along the log;
* ``prev`` — hex of the RFC 9162 leaf hash ``SHA-256(0x00 ‖ previous record's line)``; the first
  record's ``prev`` is :func:`genesis_prev` of the log id, so a log cannot be re-rooted or spliced
  onto another one.

The leaf hash of a record is both its chain link and its Merkle tree leaf, so one SHA-256 per
record serves both.
"""

from __future__ import annotations

import calendar
import hashlib
import re
import time
import uuid
from typing import Final

__all__ = [
    "ORIGIN_PATTERN",
    "TS_PATTERN",
    "format_ts",
    "genesis_prev",
    "new_origin",
    "parse_ts",
    "valid_origin",
]

#: A log id: 1 to 255 printable ASCII characters, no spaces (it is a checkpoint's first line).
ORIGIN_PATTERN: Final = re.compile(r"[\x21-\x7e]{1,255}")

#: The only timestamp form records use.
TS_PATTERN: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")

_GENESIS_DOMAIN: Final = b"securemcp.audit/v1 genesis\n"


def valid_origin(origin: str) -> bool:
    """``True`` when ``origin`` can be a log id."""
    return ORIGIN_PATTERN.fullmatch(origin) is not None


def new_origin() -> str:
    """A fresh, globally unique log id."""
    return f"securemcp.local/audit/{uuid.uuid4().hex}"


def genesis_prev(origin: str) -> str:
    """The ``prev`` of a log's first record: a hash bound to the log id."""
    return hashlib.sha256(_GENESIS_DOMAIN + origin.encode()).hexdigest()


def format_ts(ns: int) -> str:
    """RFC 3339 UTC with microseconds, from nanoseconds since the epoch."""
    seconds, micros = divmod(ns // 1000, 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{micros:06d}Z"


def parse_ts(ts: str) -> int:
    """Nanoseconds since the epoch (microsecond precision) of a record timestamp."""
    if TS_PATTERN.fullmatch(ts) is None:
        raise ValueError(f"not a record timestamp: {ts!r}")
    seconds = calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S"))
    return (seconds * 1_000_000 + int(ts[20:26])) * 1000
