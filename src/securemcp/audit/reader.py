"""Reading audit records back for people: filters and time parsing for ``audit show`` / ``tail``.

Reading is not verifying: these functions parse what is on disk (skipping lines that do not
parse, and counting them) so an operator can look at a log, even a damaged one. Use
:func:`securemcp.audit.verify` to decide whether it can be trusted.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from securemcp._files import open_regular_binary, read_regular
from securemcp.audit.chain import parse_ts
from securemcp.audit.storage import list_segments

__all__ = ["RecordFilter", "iter_records", "parse_time", "tail_records"]

_RELATIVE: Final = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(value: str, *, now: float | None = None) -> int:
    """Nanoseconds since the epoch for ``value``.

    Accepts RFC 3339 / ISO 8601 (``2026-09-01T12:00:00Z``, a date ``2026-09-01``, with or without
    an offset; naive times are UTC) or a duration ago (``30s``, ``15m``, ``2h``, ``7d``, ``1w``).
    """
    text = value.strip()
    match = _RELATIVE.fullmatch(text)
    if match:
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        return int(((now if now is not None else time.time()) - seconds) * 1e9)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a time: {value!r} (use RFC 3339 like 2026-09-01T12:00:00Z, or 15m / 2h / 7d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000


@dataclass(frozen=True, slots=True)
class RecordFilter:
    """Which records to show; every set field must match.

    Attributes:
        user: ``identity.subject``.
        tool: ``target`` (tool, resource or prompt name).
        decision: ``decision.result`` (only decision records have one).
        type: record ``type``.
        since, until: bounds on ``ts`` (nanoseconds since the epoch, inclusive).
    """

    user: str | None = None
    tool: str | None = None
    decision: str | None = None
    type: str | None = None
    since: int | None = None
    until: int | None = None

    def __call__(self, record: Mapping[str, Any]) -> bool:
        if self.type is not None and record.get("type") != self.type:
            return False
        if self.user is not None:
            identity = record.get("identity")
            if not isinstance(identity, Mapping) or identity.get("subject") != self.user:
                return False
        if self.tool is not None and record.get("target") != self.tool:
            return False
        if self.decision is not None:
            decision = record.get("decision")
            if not isinstance(decision, Mapping) or decision.get("result") != self.decision:
                return False
        if self.since is not None or self.until is not None:
            try:
                ts = parse_ts(str(record.get("ts")))
            except ValueError:
                return False
            if self.since is not None and ts < self.since:
                return False
            if self.until is not None and ts > self.until:
                return False
        return True


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def iter_records(
    directory: str | Path, *, where: RecordFilter | None = None
) -> Iterator[dict[str, Any]]:
    """The records of the log in ``directory``, oldest first, that match ``where``."""
    keep = where or RecordFilter()
    for _, segment in list_segments(Path(directory)):
        with open_regular_binary(segment) as handle:
            for raw in handle:
                if not raw.endswith(b"\n"):
                    break
                record = _parse(raw)
                if record is not None and keep(record):
                    yield record


def tail_records(
    directory: str | Path, count: int, *, where: RecordFilter | None = None
) -> list[dict[str, Any]]:
    """The last ``count`` matching records, oldest first (reads segments from the newest)."""
    keep = where or RecordFilter()
    found: deque[dict[str, Any]] = deque()
    if count <= 0:
        return []
    for _, segment in reversed(list_segments(Path(directory))):
        lines = read_regular(segment).split(b"\n")[:-1]  # a torn last line is dropped
        for raw in reversed(lines):
            record = _parse(raw)
            if record is not None and keep(record):
                found.appendleft(record)
                if len(found) == count:
                    return list(found)
    return list(found)
