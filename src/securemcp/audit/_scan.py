"""The verifier's fast path: check a contiguous run of records in one segment file.

:func:`scan_chunk` reads the complete lines in a byte range of a segment and, for each, checks
that it is canonical RFC 8785 JSON with a valid header, that ``seq`` counts up by one, that
``prev`` is the leaf hash of the record before it, that ``log`` does not change and that ``ts``
never goes backwards. It returns the leaf hashes (for the Merkle tree) and the first and last
records, so the caller can stitch chunks together, or stops at the first anomaly. It never
classifies an anomaly (that is :mod:`securemcp.audit._classify`'s slow path).

It is a top-level function over plain data so chunks can run in worker processes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Final

from securemcp._files import open_regular_binary
from securemcp.audit.chain import TS_PATTERN
from securemcp.audit.jcs import CanonicalParser, NotCanonical
from securemcp.audit.records import SCHEMA_VERSION

__all__ = ["Anomaly", "ChunkResult", "RecordHead", "parse_head", "scan_chunk"]

_HEX64: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class RecordHead:
    """The header fields of one record, its leaf hash and where it is."""

    seq: int
    prev: str
    ts: str
    log: str
    type: str
    digest: bytes
    offset: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    """The first line that failed a check: ``reason`` is ``torn``, ``malformed``,
    ``non_canonical``, ``unsupported_version`` or ``chain``."""

    offset: int
    reason: str
    detail: str


@dataclass(slots=True)
class ChunkResult:
    """What :func:`scan_chunk` found in ``[start, end)`` of ``path``."""

    path: str
    start: int
    end: int
    count: int = 0
    hashes: bytes = b""
    first: RecordHead | None = None
    last: RecordHead | None = None
    rotations: list[tuple[int, str]] = field(default_factory=list)
    closes: int = 0
    anomaly: Anomaly | None = None


class BadRecord(ValueError):
    """A line that is not a well-formed record (``reason`` as in :class:`Anomaly`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_head(
    parser: CanonicalParser, line: bytes, offset: int
) -> tuple[RecordHead, dict[str, object]]:
    """Parse and check one record line (without LF); raises :class:`BadRecord`."""
    try:
        record = parser.parse(line)
    except NotCanonical as exc:
        raise BadRecord("non_canonical", str(exc)) from None
    except (ValueError, RecursionError) as exc:
        raise BadRecord("malformed", f"not valid I-JSON: {exc}") from None
    if type(record) is not dict:
        raise BadRecord("malformed", "a record must be a JSON object")
    version = record.get("v")
    seq = record.get("seq")
    prev = record.get("prev")
    ts = record.get("ts")
    log = record.get("log")
    kind = record.get("type")
    if version != SCHEMA_VERSION:
        if type(version) is int:
            raise BadRecord("unsupported_version", f"record schema version {version}")
        raise BadRecord("malformed", "missing or invalid 'v'")
    if type(seq) is not int or seq < 0:
        raise BadRecord("malformed", "missing or invalid 'seq'")
    if type(prev) is not str or _HEX64.fullmatch(prev) is None:
        raise BadRecord("malformed", "missing or invalid 'prev'")
    if type(ts) is not str or TS_PATTERN.fullmatch(ts) is None:
        raise BadRecord("malformed", "missing or invalid 'ts'")
    if type(log) is not str or not log:
        raise BadRecord("malformed", "missing or invalid 'log'")
    if type(kind) is not str or not kind:
        raise BadRecord("malformed", "missing or invalid 'type'")
    digest = hashlib.sha256(b"\x00" + line).digest()
    return RecordHead(seq, prev, ts, log, kind, digest, offset), record


def scan_chunk(path: str, start: int, end: int) -> ChunkResult:
    """Check the lines that start in ``[start, end)`` of ``path`` (``start`` at a line start).

    The loop is the verifier's hot path: it keeps the previous record's fields in locals and
    builds :class:`RecordHead` objects only for the first and last records.
    """
    result = ChunkResult(path, start, end)
    parser = CanonicalParser()
    parse = parser.parse
    ts_ok = TS_PATTERN.fullmatch
    sha256 = hashlib.sha256
    hashes: list[bytes] = []
    keep = hashes.append
    prev_hex = prev_ts = log_id = last_prev = last_type = ""
    prev_seq = -1
    last_offset = offset = start
    with open_regular_binary(path) as handle:
        handle.seek(start)
        for raw in handle:
            if offset >= end:
                break
            if raw[-1:] != b"\n":
                result.anomaly = Anomaly(offset, "torn", "the last line has no line feed")
                break
            line = raw[:-1]
            try:
                get = parse(line).get
                seq, prev, ts, log, kind = (
                    get("seq"),
                    get("prev"),
                    get("ts"),
                    get("log"),
                    get("type"),
                )
                well_formed = (
                    get("v") == SCHEMA_VERSION
                    and type(seq) is int
                    and type(prev) is str
                    and type(ts) is str
                    and ts_ok(ts) is not None
                    and type(log) is str
                    and type(kind) is str
                    and log
                    and kind
                )
            except (ValueError, RecursionError, AttributeError):
                well_formed = False
            if not well_formed:
                try:  # the slow, precise check says what is wrong
                    parse_head(parser, line, offset)
                except BadRecord as exc:
                    result.anomaly = Anomaly(offset, exc.reason, str(exc))
                    break
                raise AssertionError("inconsistent record checks")  # pragma: no cover
            if prev_seq < 0:
                if _HEX64.fullmatch(prev) is None:
                    result.anomaly = Anomaly(offset, "malformed", "missing or invalid 'prev'")
                    break
                result.first = RecordHead(seq, prev, ts, log, kind, b"", offset)
                log_id = log
            elif log != log_id or seq != prev_seq + 1 or prev != prev_hex or ts < prev_ts:
                result.anomaly = Anomaly(offset, "chain", "the record does not follow")
                break
            digest = sha256(b"\x00" + line).digest()
            keep(digest)
            if kind == "key_rotation":
                new_key = get("new_key")
                if isinstance(new_key, str):
                    result.rotations.append((seq, new_key))
            elif kind == "log_close":
                result.closes += 1
            prev_hex, prev_seq, prev_ts = digest.hex(), seq, ts
            last_prev, last_type, last_offset = prev, kind, offset
            offset += len(raw)
    if hashes:
        first = result.first
        assert first is not None
        first_digest = hashes[0]
        result.first = RecordHead(
            first.seq, first.prev, first.ts, first.log, first.type, first_digest, first.offset
        )
        result.last = RecordHead(
            prev_seq, last_prev, prev_ts, log_id, last_type, hashes[-1], last_offset
        )
    else:
        result.first = None
    result.count = len(hashes)
    result.hashes = b"".join(hashes)
    result.end = offset if result.anomaly is None else result.anomaly.offset
    return result


def _link_problem(before: RecordHead, head: RecordHead) -> str:
    """Why ``head`` cannot follow ``before`` (empty when it can)."""
    if head.log != before.log:
        return f"record from another log ({head.log!r})"
    if head.seq != before.seq + 1:
        return f"seq {head.seq} follows seq {before.seq}"
    if head.prev != before.digest.hex():
        return f"seq {head.seq} does not chain to seq {before.seq}"
    if head.ts < before.ts:
        return f"seq {head.seq} is timestamped before seq {before.seq}"
    return ""
