"""The offline verifier: is this audit log exactly what its signed checkpoints vouch for?

:func:`verify` needs only the log folder and a pinned :class:`~securemcp.audit.keys.Keyring`
(optionally a checkpoint obtained from a witness or a SIEM). It checks, following
``reference/standards.md`` §5.2:

1. every checkpoint line is canonical, its note parses (C2SP ``signed-note``), and any signature
   by a trusted key verifies (a bad one is tampering); checkpoint sizes strictly increase;
2. every record is canonical RFC 8785 JSON with a valid header, ``seq`` is contiguous from 0 across
   segments, ``prev`` chains each record to the one before (the first to the log id's genesis
   value), ``log`` never changes and ``ts`` never goes backwards;
3. at each checkpoint's size the recomputed RFC 9162 root equals the signed root (and the stored
   compact range equals the recomputed one);
4. no trusted checkpoint claims more records than the log holds (truncation), and an external
   checkpoint (``trusted_checkpoint``) is for this log and matches the prefix of its size (else
   the log forked); one covering more records than the log holds means the log was truncated or
   rolled back, whatever key signed it (the verdict is never ``verified`` while it is unmatched);
5. every checkpoint has a trusted signature; trust follows key rotations: a ``key_rotation``
   record sealed by a checkpoint signed by a trusted key *and* the new key adds the new key;
6. key retirement: a key the keyring marks ``retired-after-size=N`` is trusted only for
   checkpoints of at most N records, and a key learned from a rotation that only retired keys
   vouched for inherits the largest of their bounds (a retired key cannot mint a current one).
   The log's latest seal must carry a current key's signature (or be the supplied trusted
   checkpoint), else whoever holds a retired key could cut the log back below its bound and
   re-sign it; ``allow_retired_seal=True`` accepts such a log (an archive sealed before the
   rotation).

The result is a :class:`VerificationReport` with a ``status`` and a process ``exit_code``:
``verified`` 0, ``tampered`` 1 (with ``first_bad_seq`` and ``kind``), ``io_error`` 2,
``untrusted`` 3 (no trusted signature: kinds ``unknown_key``, ``no_checkpoint``, ``retired_key``)
and ``unsealed_tail`` 4 (records after the last trusted
checkpoint, or a torn last line left by a crash).

Which keys are trusted for which checkpoint (5 and 6) is :mod:`securemcp.audit.key_trust`.
Large logs are checked in parallel worker processes, chunk by chunk (:mod:`._scan`); the first
break in the chain is then named by :mod:`._classify`.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from securemcp._files import (
    TRUSTED_CHECKPOINT_MAX_BYTES,
    open_regular_binary,
    read_regular,
    read_regular_text,
)
from securemcp.audit import jcs
from securemcp.audit._classify import Finding, classify_break
from securemcp.audit._scan import BadRecord, ChunkResult, RecordHead, parse_head, scan_chunk
from securemcp.audit.chain import genesis_prev
from securemcp.audit.checkpoint import parse_checkpoint
from securemcp.audit.errors import KeyringError
from securemcp.audit.key_trust import CheckpointEntry, KeyTrust
from securemcp.audit.keys import Keyring
from securemcp.audit.merkle import CompactRange
from securemcp.audit.note import NoteError
from securemcp.audit.storage import CHECKPOINTS_FILE, QUARANTINE_DIR, list_segments

__all__ = ["EXIT_CODES", "STATUSES", "VerificationReport", "verify"]

#: Process exit code of each status.
EXIT_CODES: Final = {
    "verified": 0,
    "tampered": 1,
    "io_error": 2,
    "untrusted": 3,
    "unsealed_tail": 4,
}
STATUSES: Final = tuple(EXIT_CODES)

_PARALLEL_MIN_BYTES: Final = 32 * 1024 * 1024
_CHUNK_BYTES: Final = 8 * 1024 * 1024

Progress = Callable[[int, int], None]


@dataclass(slots=True)
class VerificationReport:
    """The verdict on one audit log.

    Attributes:
        status: ``verified``, ``tampered``, ``io_error``, ``untrusted`` or ``unsealed_tail``.
        exit_code: 0, 1, 2, 3 or 4 (see :data:`EXIT_CODES`).
        kind: what was found (``edited``, ``non_canonical``, ``deleted``, ``inserted``,
            ``reordered``, ``duplicated``, ``truncated``, ``forked``, ``spliced``,
            ``timestamp_regression``, ``bad_signature``, ``bad_checkpoint``,
            ``missing_segment``, ``malformed``, ``torn_tail``, ``unknown_key``,
            ``no_checkpoint``, ``retired_key``, ``unsealed``...), ``None`` when verified.
        first_bad_seq: the first sequence number that is not as it should be, when known.
        detail: one human-readable sentence.
        log_id: the log's id (``log`` field / checkpoint origin).
        records: records verified in order (the verified prefix).
        sealed: records covered by a trusted checkpoint that matched.
        segments, checkpoints, trusted_checkpoints: what was read.
        closed: the log ends with ``log_close`` and is sealed (a clean shutdown).
        signers: names of the trusted keys that signed matching checkpoints.
        last_signed: for each of those keys (its keyring line without annotation), the size of
            the largest matching checkpoint it signed: the bound to retire it at.
        learned_keys: keys trusted because a ``key_rotation`` record introduced them.
        quarantined: torn writes recovered by a writer after crashes (kept in ``quarantine/``).
        warnings: anything else a reviewer should know.
    """

    status: str
    exit_code: int
    path: str
    kind: str | None = None
    first_bad_seq: int | None = None
    detail: str = ""
    log_id: str | None = None
    records: int = 0
    sealed: int = 0
    segments: int = 0
    checkpoints: int = 0
    trusted_checkpoints: int = 0
    closed: bool = False
    signers: list[str] = field(default_factory=list)
    last_signed: dict[str, int] = field(default_factory=dict)
    learned_keys: list[str] = field(default_factory=list)
    quarantined: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """``True`` only for ``verified``."""
        return self.status == "verified"

    @property
    def unsealed(self) -> int:
        """Verified records not covered by a trusted checkpoint."""
        return max(0, self.records - self.sealed)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``--json`` output)."""
        out = asdict(self)
        out["unsealed"] = self.unsealed
        return out


class _Failure(Exception):
    def __init__(self, status: str, kind: str | None, seq: int | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.seq, self.detail = status, kind, seq, detail


def _tampered(kind: str, seq: int | None, detail: str) -> _Failure:
    return _Failure("tampered", kind, seq, detail)


def verify(
    path: str | os.PathLike[str],
    *,
    keyring: Keyring | str | os.PathLike[str],
    trusted_checkpoint: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    workers: int | None = None,
    allow_retired_seal: bool = False,
) -> VerificationReport:
    """Verify the audit log in folder ``path`` against the pinned ``keyring``.

    Args:
        path: the log folder (or one of its segment files).
        keyring: trusted keys: a :class:`Keyring` or a keyring file path.
        trusted_checkpoint: a signed checkpoint obtained out of band (from a witness, a SIEM):
            the note text, or a file holding it (or a ``checkpoints.jsonl``-style line). It is
            trusted because the caller supplied it: if the log holds fewer records, the verdict
            is ``tampered``/``truncated`` whoever signed it; it must be for this log (else
            ``io_error``) and match the log's prefix of its size (else ``forked``); it seals
            records only when a key in ``keyring`` (or one rotated to) signed it, within that
            key's retirement bound, and then counts as a current key's seal.
        progress: called as ``progress(bytes_done, bytes_total)`` while records are read.
        workers: worker processes for large logs (default: one per CPU; 1 disables).
        allow_retired_seal: accept a log whose latest seal is signed only by retired keys
            (within their bounds). By default that is ``untrusted`` (``retired_key``): a
            retired key's holder can forge any log no longer than its bound.

    A malformed or unreadable keyring or trusted checkpoint (bad JSON, not UTF-8, a size beyond
    64 bits) is reported as ``io_error`` (kind ``usage``), never raised.
    """
    target = Path(path)
    if target.is_file():
        target = target.parent
    report = VerificationReport("verified", 0, str(target))
    try:
        try:
            pinned = keyring if isinstance(keyring, Keyring) else Keyring.load(keyring)
        except (KeyringError, ValueError) as exc:  # ValueError: UnicodeDecodeError
            raise _Failure("io_error", "usage", None, f"bad keyring: {exc}") from None
        external = _load_trusted_checkpoint(trusted_checkpoint)
        _Run(target, pinned, external, report, progress, workers, allow_retired_seal).run()
    except _Failure as failure:
        report.status, report.kind = failure.status, failure.kind
        report.first_bad_seq, report.detail = failure.seq, failure.detail
    except (KeyringError, NoteError) as exc:
        report.status, report.kind, report.detail = "io_error", "usage", str(exc)
    except OSError as exc:
        report.status, report.kind, report.detail = "io_error", "io", f"cannot read: {exc}"
    report.exit_code = EXIT_CODES[report.status]
    return report


def _load_trusted_checkpoint(value: str | os.PathLike[str] | None) -> CheckpointEntry | None:
    """Read and parse the external checkpoint; a malformed one is a usage error (exit 2)."""
    if value is None:
        return None
    try:
        text = _read_trusted_checkpoint(value)
        checkpoint, note = parse_checkpoint(text)
    except (NoteError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, not UTF-8
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _Failure("io_error", "usage", None, f"bad trusted checkpoint: {detail}") from None
    return CheckpointEntry(0, checkpoint, note, text, [])


def _read_trusted_checkpoint(value: str | os.PathLike[str]) -> str:
    if isinstance(value, str) and "\n" in value:
        return value
    text = read_regular_text(value, limit=TRUSTED_CHECKPOINT_MAX_BYTES)
    if text.lstrip().startswith("{"):
        lines = [line for line in text.splitlines() if line.strip()]
        note = jcs.loads(lines[-1]).get("note")
        if not isinstance(note, str):
            raise NoteError("the trusted checkpoint file holds no note")
        return note
    return text


class _Run:
    """One verification (state shared by the steps)."""

    def __init__(
        self,
        directory: Path,
        pinned: Keyring,
        external: CheckpointEntry | None,
        report: VerificationReport,
        progress: Progress | None,
        workers: int | None,
        allow_retired_seal: bool,
    ) -> None:
        self.directory = directory
        self.trust = KeyTrust(pinned, report.learned_keys)
        self.allow_retired_seal = allow_retired_seal
        self.current_sealed = 0  # records sealed by a current key (or the supplied checkpoint)
        self.report = report
        self.progress = progress
        self.workers = workers if workers is not None else (os.cpu_count() or 1)
        self.external = external
        self.entries: list[CheckpointEntry] = []
        self.segments: list[tuple[int, Path]] = []
        self.first_seq: list[int] = []
        self.count = 0
        self.last: RecordHead | None = None
        self.log_id: str | None = None
        self.compact = CompactRange()
        self.mismatches: list[CheckpointEntry] = []
        self.torn = False
        self.next_entry = 0

    # --- keys (the trust itself is securemcp.audit.key_trust) ---------------------------------

    def judge(self, entry: CheckpointEntry) -> None:
        """Decide whether ``entry`` is signed by a trusted key (and learn rotated keys); a
        signature by a trusted key that does not verify is tampering."""
        bad = self.trust.judge(entry)
        if bad is not None:
            raise _tampered(
                "bad_signature",
                None,
                f"checkpoint for {entry.checkpoint.size} records (line {entry.line}) has a "
                f"signature by trusted key {bad.name!r} that does not verify",
            )

    # --- steps -----------------------------------------------------------------------------

    def run(self) -> None:
        if not self.directory.is_dir():
            raise _Failure("io_error", "io", None, f"{self.directory} is not a folder")
        self.segments = list_segments(self.directory)
        report = self.report
        report.segments = len(self.segments)
        quarantine = self.directory / QUARANTINE_DIR
        if quarantine.is_dir():
            report.quarantined = sum(1 for _ in quarantine.iterdir())
            if report.quarantined:
                report.warnings.append(
                    f"{report.quarantined} torn write(s) from crashes were recovered "
                    f"(see {QUARANTINE_DIR}/)"
                )
        if not self.segments:
            raise _Failure("io_error", "io", None, f"no audit log segments in {self.directory}")
        self.load_checkpoints()
        self.stream()
        self.finish()

    def load_checkpoints(self) -> None:
        path = self.directory / CHECKPOINTS_FILE
        if not path.exists():
            return
        data = read_regular(path)  # a FIFO or device is refused, never waited on
        lines = data.split(b"\n")
        if lines[-1]:
            self.report.warnings.append("the last checkpoint line is torn (a crash while sealing)")
            self.torn = True
        parser = jcs.CanonicalParser()
        previous: CheckpointEntry | None = None
        for number, line in enumerate(lines[:-1], 1):
            entry = self._parse_entry(parser, number, line)
            self.report.checkpoints += 1
            if previous is not None:
                self._check_order(previous, entry)
            previous = entry
            self.entries.append(entry)

    @staticmethod
    def _parse_entry(parser: jcs.CanonicalParser, number: int, line: bytes) -> CheckpointEntry:
        where = f"{CHECKPOINTS_FILE} line {number}"
        try:
            value = parser.parse(line)
            if type(value) is not dict or set(value) != {"note", "range"}:
                raise ValueError("expected exactly 'note' and 'range'")
            note_text, nodes = value["note"], value["range"]
            if not isinstance(note_text, str) or not isinstance(nodes, list):
                raise ValueError("'note' must be a string and 'range' a list")
            hashes = []
            for node in nodes:
                if not isinstance(node, str) or len(node) != 64 or node != node.lower():
                    raise ValueError("range nodes are 64 lower-case hex digits")
                hashes.append(bytes.fromhex(node))
            checkpoint, note = parse_checkpoint(note_text)
        except (ValueError, NoteError) as exc:
            raise _tampered("bad_checkpoint", None, f"{where} is malformed: {exc}") from None
        return CheckpointEntry(number, checkpoint, note, note_text, hashes)

    @staticmethod
    def _check_order(before: CheckpointEntry, entry: CheckpointEntry) -> None:
        a, b = before.checkpoint, entry.checkpoint
        if b.size > a.size:
            return
        if b.size < a.size:
            raise _tampered(
                "reordered", None, f"checkpoint line {entry.line} goes back to {b.size} records"
            )
        if b.root == a.root:
            raise _tampered(
                "duplicated", None, f"checkpoint line {entry.line} repeats size {b.size}"
            )
        raise _tampered(
            "forked",
            b.size,
            f"two checkpoints for {b.size} records have different roots (a forked log)",
        )

    def stream(self) -> None:
        sizes = [segment.stat().st_size for _, segment in self.segments]
        total = sum(sizes)
        done = 0
        parallel = self.workers > 1 and total >= _PARALLEL_MIN_BYTES
        executor: Executor | None = None
        if parallel:
            method = "fork" if threading.active_count() == 1 else "spawn"
            executor = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context(method)
            )
        try:
            expected_number = 0
            for index, (number, segment) in enumerate(self.segments):
                if number != expected_number:
                    missing = "segment 0" if expected_number == 0 else f"segment {expected_number}"
                    raise _tampered(
                        "missing_segment",
                        self.count,
                        f"{missing} is missing (found segment {number} next)",
                    )
                expected_number = number + 1
                self.first_seq.append(self.count)
                plan = _plan(segment, sizes[index], _CHUNK_BYTES if parallel else sizes[index])
                results: Iterator[ChunkResult]
                if executor is not None and len(plan) > 0:
                    results = executor.map(scan_chunk, *zip(*plan, strict=True))
                else:
                    results = (scan_chunk(*chunk) for chunk in plan)
                for result in results:
                    self.apply(result, index)
                    done += result.end - result.start
                    if self.progress is not None:
                        self.progress(done, total)
        finally:
            if executor is not None:
                executor.shutdown(wait=False, cancel_futures=True)

    def apply(self, chunk: ChunkResult, index: int) -> None:
        first = chunk.first
        if first is not None:
            if self.last is None:
                self.log_id = self.report.log_id = first.log
                if first.seq != 0 or first.prev != genesis_prev(first.log):
                    self.fail_chain(first, chunk, index)
            elif (
                first.log != self.last.log
                or first.seq != self.last.seq + 1
                or first.prev != self.last.digest.hex()
                or first.ts < self.last.ts
            ):
                self.fail_chain(first, chunk, index)
        self.trust.pending.extend(chunk.rotations)
        hashes = chunk.hashes
        entries = self.entries
        external = self.external
        for offset in range(0, len(hashes), 32):
            self.compact.append(hashes[offset : offset + 32])
            self.count += 1
            while entries and self.next_entry < len(entries):
                entry = entries[self.next_entry]
                if entry.checkpoint.size != self.count:
                    break
                self.check_entry(entry)
                self.next_entry += 1
            if external is not None and external.checkpoint.size == self.count:
                self.check_external(external)
        if chunk.last is not None:
            self.last = chunk.last
        if chunk.anomaly is not None:
            self.fail_anomaly(chunk, index)

    def check_entry(self, entry: CheckpointEntry) -> None:
        if entry.checkpoint.origin != self.log_id:
            raise _tampered(
                "spliced",
                None,
                f"checkpoint line {entry.line} belongs to log {entry.checkpoint.origin!r}",
            )
        self.judge(entry)
        if not entry.trusted:
            return
        self.report.trusted_checkpoints += 1
        if entry.checkpoint.root != self.compact.root():
            self.mismatches.append(entry)
            return
        if entry.range != self.compact.nodes:
            raise _tampered(
                "bad_checkpoint",
                None,
                f"checkpoint line {entry.line}: the stored compact range is wrong",
            )
        entry.matched = True
        size = self.report.sealed = entry.checkpoint.size
        if entry.current:
            self.current_sealed = size
        for key in entry.trusted_by:
            if key.name not in self.report.signers:
                self.report.signers.append(key.name)
            self.report.last_signed[str(key)] = size

    def check_external_origin(self, external: CheckpointEntry) -> None:
        if self.log_id is not None and external.checkpoint.origin != self.log_id:
            raise _Failure(
                "io_error",
                "usage",
                None,
                f"the trusted checkpoint is for log {external.checkpoint.origin!r}, "
                f"not {self.log_id!r}",
            )

    def check_external(self, external: CheckpointEntry) -> None:
        """The log's prefix of the external checkpoint's size must have its root.

        The reviewer supplied it, so a different root is a forked log whoever signed it; it
        seals records only if a trusted (pinned or rotated-to) key signed it.
        """
        self.check_external_origin(external)
        self.judge(external)
        if external.checkpoint.root != self.compact.root():
            raise _tampered(
                "forked",
                None,
                f"the log's first {external.checkpoint.size} records differ from the trusted "
                "checkpoint (a forked or rewritten log)",
            )
        if not external.trusted:
            if external.past_bound:
                raise _Failure(
                    "untrusted",
                    "retired_key",
                    None,
                    f"the trusted checkpoint is signed only by a key retired before "
                    f"{external.checkpoint.size} records ({_retired(external, self)})",
                )
            raise _Failure(
                "untrusted",
                "unknown_key",
                None,
                "the trusted checkpoint is not signed by a key in the keyring",
            )
        external.matched = True
        self.report.sealed = max(self.report.sealed, external.checkpoint.size)
        # The reviewer holds it: its root pins the prefix, whichever trusted key signed it.
        self.current_sealed = max(self.current_sealed, external.checkpoint.size)

    # --- failures --------------------------------------------------------------------------

    def fail_anomaly(self, chunk: ChunkResult, index: int) -> None:
        anomaly = chunk.anomaly
        assert anomaly is not None
        e = self.count
        if anomaly.reason == "torn":
            last_segment = index == len(self.segments) - 1
            if last_segment:
                self.torn = True
                self.report.warnings.append(
                    f"the last record (seq {e}) is torn: the writer crashed mid-write"
                )
                return
            raise _tampered("truncated", e, f"segment {self.segments[index][0]} ends mid-record")
        if anomaly.reason == "unsupported_version":
            raise _Failure("io_error", "unsupported_version", e, f"seq {e}: {anomaly.detail}")
        if anomaly.reason in ("malformed", "non_canonical"):
            raise _tampered(anomaly.reason, e, f"record at position {e}: {anomaly.detail}")
        bad = self._head_at(Path(chunk.path), anomaly.offset)
        self.fail_chain(bad, chunk, index)

    def fail_chain(self, bad: RecordHead, chunk: ChunkResult, index: int) -> None:
        finding = self._classify(bad, index)
        raise _tampered(finding.kind, finding.first_bad_seq, finding.detail)

    def _classify(self, bad: RecordHead, index: int) -> Finding:
        e = self.count
        log_id = self.log_id or bad.log
        expected_prev = self.last.digest.hex() if self.last is not None else genesis_prev(log_id)
        return classify_break(
            bad,
            self._lines_after(index, bad.offset),
            expected_seq=e,
            expected_prev=expected_prev,
            last=self.last,
            log_id=log_id,
            line_of=self._line_of,
        )

    def _head_at(self, path: Path, offset: int) -> RecordHead:
        with open_regular_binary(path) as handle:
            handle.seek(offset)
            raw = handle.readline()
        try:
            return parse_head(jcs.CanonicalParser(), raw.rstrip(b"\n"), offset)[0]
        except BadRecord as exc:  # pragma: no cover - the scan parsed it once already
            raise _tampered("malformed", self.count, str(exc)) from None

    def _lines_after(self, index: int, offset: int) -> Iterator[bytes]:
        with open_regular_binary(self.segments[index][1]) as handle:
            handle.seek(offset)
            handle.readline()
            yield from handle
        for _, segment in self.segments[index + 1 :]:
            with open_regular_binary(segment) as handle:
                yield from handle

    def _line_of(self, seq: int) -> bytes | None:
        if seq < 0 or seq >= self.count:
            return None
        index = max(i for i, first in enumerate(self.first_seq) if first <= seq)
        with open_regular_binary(self.segments[index][1]) as handle:
            for position, raw in enumerate(handle, self.first_seq[index]):
                if position == seq:
                    return raw.rstrip(b"\n")
        return None  # pragma: no cover

    # --- the verdict -----------------------------------------------------------------------

    def finish(self) -> None:
        report = self.report
        report.records = self.count
        for entry in self.entries[self.next_entry :]:
            if entry.checkpoint.origin != self.log_id:
                raise _tampered(
                    "spliced",
                    None,
                    f"checkpoint line {entry.line} belongs to log {entry.checkpoint.origin!r}",
                )
            self.judge(entry)
            if entry.trusted:
                raise _tampered(
                    "truncated",
                    self.count,
                    f"a trusted checkpoint covers {entry.checkpoint.size} records but the log "
                    f"holds {self.count}",
                )
        external = self.external
        if external is not None and not external.matched:
            self._fail_external(external)
        if self.mismatches:
            self._fail_mismatch()
        untrusted = [entry for entry in self.entries if not entry.trusted]
        if untrusted and untrusted[0].past_bound:
            first = untrusted[0]
            raise _Failure(
                "untrusted",
                "retired_key",
                min(self.trust.bound(key) or 0 for key in first.past_bound),
                f"the checkpoint for {first.checkpoint.size} records (line {first.line}) is "
                f"signed only by retired keys, past their bounds ({_retired(first, self)}); the "
                "log was re-signed with a retired key, or it was rotated to a key the keyring "
                "does not pin",
            )
        if untrusted:
            raise _Failure(
                "untrusted",
                "unknown_key",
                untrusted[0].checkpoint.size,
                f"{len(untrusted)} checkpoint(s) are not signed by a trusted key (first: "
                f"line {untrusted[0].line}); the keyring may be missing a key, or the log was "
                "re-signed",
            )
        if self.count and report.sealed == 0:
            raise _Failure("untrusted", "no_checkpoint", 0, "no checkpoint signed by a trusted key")
        if report.sealed > self.current_sealed and not self.allow_retired_seal:
            raise _Failure(
                "untrusted",
                "retired_key",
                self.current_sealed,
                f"the log's latest seal ({report.sealed} records) is signed only by retired keys "
                f"({', '.join(_retired_names(self))}), and their holder could have forged it; "
                "a current key never sealed the records from seq "
                f"{self.current_sealed} on (supply a witnessed checkpoint, or accept an archive "
                "sealed before the rotation: --allow-retired-seal, allow_retired_seal=True)",
            )
        report.closed = (
            self.last is not None and self.last.type == "log_close" and report.sealed == self.count
        )
        if self.torn:
            raise _Failure(
                "unsealed_tail",
                "torn_tail",
                self.count,
                f"{self.count} records verified up to a torn last write; "
                f"{report.unsealed} after the last checkpoint",
            )
        if report.sealed < self.count:
            raise _Failure(
                "unsealed_tail",
                "unsealed",
                report.sealed,
                f"{self.count} records chain correctly, but the last {report.unsealed} are "
                "not covered by a signed checkpoint yet",
            )
        report.detail = (
            f"{self.count} records in {report.segments} segment(s) verified against "
            f"{report.trusted_checkpoints} signed checkpoint(s)"
        )

    def _fail_external(self, external: CheckpointEntry) -> None:
        """A supplied checkpoint the log never reached: never ``verified``.

        The reviewer trusts the checkpoint they supplied, whatever key signed it: the log may
        have been cut back past the ``key_rotation`` record that would have taught the verifier
        the checkpoint's key, so an unknown signer must not make the checkpoint ignorable.
        """
        self.check_external_origin(external)
        size = external.checkpoint.size
        if size > self.count:
            self.judge(external)  # a bad signature by a trusted key is still reported as such
            signed = "" if external.trusted else " (its signer is not in the keyring)"
            raise _tampered(
                "truncated",
                self.count,
                f"the trusted checkpoint covers {size} records but the log holds "
                f"{self.count} (truncated or rolled back){signed}",
            )
        raise _Failure(  # only a checkpoint for 0 records gets here: it vouches for nothing
            "io_error",
            "usage",
            None,
            f"the trusted checkpoint (for {size} records) does not match any prefix of the log",
        )

    def _fail_mismatch(self) -> None:
        first = self.mismatches[0]
        later_match = any(
            entry.matched and entry.checkpoint.size > first.checkpoint.size
            for entry in self.entries
        )
        good = max(
            (e.checkpoint.size for e in self.entries if e.matched and e.line < first.line),
            default=0,
        )
        if later_match:
            raise _tampered(
                "forked",
                good,
                f"the checkpoint for {first.checkpoint.size} records (line {first.line}) "
                "belongs to a different history (a forked log)",
            )
        raise _tampered(
            "edited",
            good,
            f"records after seq {good - 1 if good else 0} no longer match the checkpoint for "
            f"{first.checkpoint.size} records (line {first.line}): they were rewritten",
        )


def _retired(entry: CheckpointEntry, run: _Run) -> str:
    """``'name' up to N records`` for each retired key that signed ``entry`` past its bound."""
    return ", ".join(run.trust.describe(entry.past_bound))


def _retired_names(run: _Run) -> list[str]:
    """The retired keys that signed the last matching checkpoint."""
    last = max((e for e in run.entries if e.matched), key=lambda e: e.checkpoint.size, default=None)
    keys = last.trusted_by if last is not None else []
    return run.trust.describe(keys) or ["none current"]


def _plan(path: Path, size: int, chunk: int) -> list[tuple[str, int, int]]:
    """Split a segment into ``(path, start, end)`` chunks that begin at line starts."""
    if size == 0:
        return []
    plan = []
    start = 0
    with open_regular_binary(path) as handle:
        while start < size:
            target = start + chunk
            if target >= size:
                plan.append((str(path), start, size))
                break
            handle.seek(target)
            handle.readline()
            end = handle.tell()
            plan.append((str(path), start, end))
            start = end
    return plan
