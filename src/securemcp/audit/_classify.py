"""The verifier's slow path: name the tampering behind the first record that breaks the chain.

Called once, at the first record that does not follow the verified prefix. It reads a few
records from there (or, to tell a reorder from a deletion, the rest of the log) and returns the
kind of tampering and the first sequence number that is wrong:

* ``spliced`` — a record of another log (different ``log`` id);
* ``duplicated`` — a byte-identical copy of a record already verified;
* ``inserted`` — a record with no place in the chain, before records that still chain;
* ``reordered`` — the expected record exists, but later in the log;
* ``deleted`` — the expected record is nowhere after this point;
* ``edited`` — the record before no longer hashes to what this one names as ``prev``
  (or this record's own ``prev`` was changed);
* ``timestamp_regression`` — the record chains, but is timestamped before its predecessor.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from securemcp.audit._scan import BadRecord, RecordHead, parse_head
from securemcp.audit.jcs import CanonicalParser
from securemcp.audit.merkle import leaf_hash

__all__ = ["Finding", "classify_break"]


@dataclass(frozen=True, slots=True)
class Finding:
    """A named anomaly: ``kind``, the first bad ``seq`` and a human-readable ``detail``."""

    kind: str
    first_bad_seq: int | None
    detail: str


def _heads(lines: Iterable[bytes]) -> Iterator[RecordHead | None]:
    parser = CanonicalParser()
    for raw in lines:
        if not raw.endswith(b"\n"):
            yield None
            continue
        try:
            yield parse_head(parser, raw[:-1], 0)[0]
        except BadRecord:
            yield None


def classify_break(
    bad: RecordHead,
    following: Iterator[bytes],
    *,
    expected_seq: int,
    expected_prev: str,
    last: RecordHead | None,
    log_id: str,
    line_of: Callable[[int], bytes | None],
) -> Finding:
    """Classify ``bad``, the first record that does not follow ``last`` (``None`` at seq 0).

    ``following`` yields the raw lines after ``bad``; ``line_of(seq)`` returns a verified
    record's line (without LF).
    """
    e = expected_seq
    if bad.log != log_id:
        return Finding("spliced", e, f"seq {e} is a record of another log ({bad.log!r})")
    if bad.seq < e:
        earlier = line_of(bad.seq)
        if earlier is not None and leaf_hash(earlier) == bad.digest:
            return Finding("duplicated", e, f"seq {bad.seq} appears again at position {e}")
    heads = _heads(following)
    if bad.seq == e and bad.prev != expected_prev:
        nxt = next(heads, None)
        if nxt is not None and nxt.seq == e and nxt.prev == expected_prev:
            return Finding("inserted", e, f"a foreign record was inserted before seq {e}")
        if e > 0 and (nxt is None or nxt.prev == bad.digest.hex()):
            return Finding("edited", e - 1, f"seq {e - 1} was modified (seq {e} no longer chains)")
        return Finding("edited", e, f"seq {e} was modified (it no longer chains)")
    if bad.seq == e and last is not None and bad.ts < last.ts:
        return Finding(
            "timestamp_regression", e, f"seq {e} ({bad.ts}) is timestamped before {last.ts}"
        )
    if bad.seq == e:  # pragma: no cover - scan_chunk only reports records that break something
        return Finding("edited", e, f"seq {e} is inconsistent")
    if bad.seq < e:
        if last is not None and bad.seq == e - 1:
            nxt = next(heads, None)
            if nxt is not None and nxt.seq == e and nxt.prev == bad.digest.hex():
                return Finding("inserted", e - 1, f"a forged seq {e - 1} was inserted")
        return Finding("inserted", e, f"position {e} holds a record claiming seq {bad.seq}")
    # bad.seq > e: the expected record is missing here. Right after (an intruder, or a swap),
    # later in the log (moved), or gone?
    nxt = next(heads, None)
    if nxt is not None and nxt.seq == e and nxt.prev == expected_prev:
        if bad.seq == e + 1 and bad.prev == nxt.digest.hex():
            return Finding("reordered", e, f"seq {e} and seq {e + 1} were swapped")
        return Finding("inserted", e, f"a foreign record was inserted before seq {e}")
    for head in heads:
        if head is not None and head.seq == e and head.prev == expected_prev:
            return Finding("reordered", e, f"seq {e} appears after seq {bad.seq}")
    missing = f"seq {e}" if bad.seq == e + 1 else f"seqs {e}-{bad.seq - 1}"
    return Finding("deleted", e, f"{missing} missing (the next record is seq {bad.seq})")
