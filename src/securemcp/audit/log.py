"""The audit log writer: hash-chained JSON lines sealed by signed checkpoints.

One :class:`AuditLog` owns one folder (layout in :mod:`securemcp.audit.storage`). ``append``
is on every call's hot path, so it does one ``write`` of one line and no signature: it stamps the
header (:mod:`securemcp.audit.chain`), screens the record for secrets
(:mod:`securemcp.audit.guard`), encodes it as RFC 8785 JSON (:mod:`securemcp.audit.jcs`), writes
it, and folds its hash into the RFC 9162 tree (:mod:`securemcp.audit.merkle`). A background
thread signs a C2SP checkpoint every ``checkpoint_every`` records or ``checkpoint_interval``
seconds (and ``close`` signs the last one), and fsyncs on the ``"interval"`` policy.

:meth:`AuditLog.decision` and :meth:`AuditLog.outcome`, twice per tool call, skip the record
``dict``: they fill a template in canonical member order with encoded, cached fragments
(:mod:`securemcp.audit._lines`) and write the same bytes the generic path would. Unusual values
(and recorded arguments) take the generic path.

Failure is closed: any ``OSError`` while writing (full disk, read-only folder, lost device) and
any sink error raise :class:`~securemcp.audit.errors.AuditUnavailable`, so the pipeline refuses
the call. A failed write is cut back to the last complete record, so nothing half-written stays.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from json.encoder import encode_basestring as _enc
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal, Self

from securemcp._files import open_regular
from securemcp.audit import jcs
from securemcp.audit._lines import OUTCOME_JSON, decision_json, site_json, version_json, vetted
from securemcp.audit.chain import format_ts, genesis_prev, new_origin, parse_ts, valid_origin
from securemcp.audit.checkpoint import Checkpoint, parse_checkpoint
from securemcp.audit.errors import AuditError, AuditLogLocked, AuditUnavailable
from securemcp.audit.guard import DEFAULT_SENSITIVE_KEYS, check_encoded, screen
from securemcp.audit.jcs import MAX_SAFE_INTEGER, format_number, plain_float
from securemcp.audit.keyring_watch import RetiredSignerWatch
from securemcp.audit.keys import Keyring, Signer, load_or_create_dev_signer, verifier_key
from securemcp.audit.merkle import CompactRange, leaf_hash
from securemcp.audit.note import NoteError, sign_note
from securemcp.audit.records import (
    HEADER_FIELDS,
    SCHEMA_VERSION,
    _duration,
    args_sha256,
    auth_failure_record,
    config_change_record,
    decision_record,
    key_rotation_record,
    log_close_record,
    log_open_record,
    outcome_record,
    policy_change_record,
)
from securemcp.audit.sinks import Sink
from securemcp.audit.storage import (
    CHECKPOINTS_FILE,
    QUARANTINE_DIR,
    DirectoryLock,
    cut_torn_tail,
    default_audit_dir,
    first_line,
    iter_lines,
    last_line,
    list_segments,
    segment_name,
)

__all__ = ["AuditLog", "FsyncPolicy"]

logger = logging.getLogger("securemcp.audit")

FsyncPolicy = Literal["interval", "always", "never"]

_MIB: Final = 1024 * 1024
#: How often the ``"interval"`` fsync policy syncs written records, at most (seconds).
_FSYNC_TICK: Final = 1.0
_APPEND_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)

#: Records between folds of the pending leaf hashes into the Merkle range (see _fold).
_FOLD_EVERY: Final = 1024

#: SHA-256 already fed the RFC 9162 leaf prefix 0x00; copying it is cheaper than a new hash.
_LEAF_HASH: Final = hashlib.sha256(b"\x00")

_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A forked child shares the parent's lock and file descriptions: it must not write.
    for log in list(_open_logs):
        log._fail("the audit log was opened by the parent process (fork)")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # rare: a signal or a nearly full disk; write the rest
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]


class AuditLog:
    """A signed, hash-chained, append-only audit log in a local folder.

    Args:
        directory: the log folder; ``None`` means ``$SECUREMCP_AUDIT_DIR`` or
            ``./.securemcp/audit``. Created (mode 0700) if missing.
        signer: signs checkpoints (a :class:`~securemcp.audit.keys.Signer`, e.g. a KMS key).
            ``None`` generates a development key on first run under ``key_dir`` (with a warning).
        checkpoint_every: sign a checkpoint after this many records...
        checkpoint_interval: ...or after this many seconds with unsealed records.
        fsync: ``"interval"`` (fsync at most every second and at each checkpoint), ``"always"``
            (fsync every record: durable, slow) or ``"never"`` (leave it to the OS).
        segment_max_bytes: start a new segment file when the current one would exceed this.
        sinks: exporters (:class:`~securemcp.audit.sinks.Sink`) that receive every record and
            checkpoint; a sink that raises makes the append fail closed.
        record_arguments: store (redacted) raw tool arguments, not only their hash.
        redact_keys: key fragments redacted from recorded arguments, in addition to the guard's.
        witness: a callable (or several) receiving each signed checkpoint note, to copy it off the
            machine; its errors are logged, never raised.
        origin: the log id for a new log (default: a random one); an existing log keeps its own.
        server: default ``server`` of records built by :meth:`decision` and friends.
        key_dir: folder of the development key (default ``$SECUREMCP_KEY_DIR`` or
            ``./.securemcp/keys``).
        keyring: the pinned keyring the log's verifiers use (a
            :class:`~securemcp.audit.keys.Keyring` or a file, read at each :meth:`open` and
            :meth:`rotate_key`): a signer it retires (``retired-after-size=N``) is refused
            there with :class:`~securemcp.audit.errors.AuditError`, so the log never signs
            with a key the operator retired. Before each checkpoint it is checked again (a
            ``stat``; a file is re-read only when it changed): if it now retires the signer, or
            cannot be read, the checkpoint is not signed and the log fails closed (every append
            raises :class:`AuditUnavailable`) until it is reopened with a current signer.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        signer: Signer | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval: float = 60.0,
        fsync: FsyncPolicy = "interval",
        segment_max_bytes: int = 64 * _MIB,
        sinks: Iterable[Sink] = (),
        record_arguments: bool = False,
        redact_keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
        witness: Callable[[str], object] | Iterable[Callable[[str], object]] | None = None,
        origin: str | None = None,
        server: str | None = None,
        key_dir: str | os.PathLike[str] | None = None,
        keyring: Keyring | str | os.PathLike[str] | None = None,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        if checkpoint_interval <= 0:
            raise ValueError("checkpoint_interval must be positive")
        if fsync not in ("interval", "always", "never"):
            raise ValueError("fsync must be 'interval', 'always' or 'never'")
        if segment_max_bytes < 4096:
            raise ValueError("segment_max_bytes must be at least 4096")
        if origin is not None and not valid_origin(origin):
            raise ValueError("origin must be 1-255 printable ASCII characters without spaces")
        self._directory = Path(directory) if directory is not None else default_audit_dir()
        self._signer_arg = signer
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = checkpoint_interval
        self.fsync: FsyncPolicy = fsync
        self.segment_max_bytes = segment_max_bytes
        self.sinks: tuple[Sink, ...] = tuple(sinks)
        self.record_arguments = record_arguments
        self.redact_keys: tuple[str, ...] = tuple(redact_keys)
        if witness is None:
            self.witnesses: tuple[Callable[[str], object], ...] = ()
        elif callable(witness):
            self.witnesses = (witness,)
        else:
            self.witnesses = tuple(witness)
        self.server = server
        self._origin_arg = origin
        self._key_dir = key_dir
        self._keyring_watch = RetiredSignerWatch(keyring)

        self._lock = threading.Lock()  # writer state; never held while signing
        self._cp_lock = threading.RLock()  # serialises checkpoints (taken before _lock)
        self._dir_lock: DirectoryLock | None = None
        self._signer: Signer | None = None
        self._opened = False
        self._closed = False
        self._failed: str | None = None
        self._fd = -1
        self._cp_fd = -1
        self._segment = 0
        self._segment_size = 0
        self._origin = ""
        self._seq = 0
        self._prev = ""
        self._last_ns = 0
        self._ts_second = -1
        self._ts_prefix = ""
        self._origin_key: str | None = None  # the log id that _origin_json encodes
        self._origin_json: str | None = None
        self._origin_vetted = False
        self._range = CompactRange()
        self._pending: list[bytes] = []  # leaf hashes not yet in _range (see _fold)
        self._cp_size = 0
        self._cp_time = time.monotonic()
        self._last_note: str | None = None
        self._unsynced = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._sealer: threading.Thread | None = None
        self.export_failures = 0

    # --- properties ------------------------------------------------------------------------

    @property
    def directory(self) -> Path:
        """The log folder."""
        return self._directory

    @property
    def origin(self) -> str:
        """The log id (``log`` field of records, ``origin`` of checkpoints); set by :meth:`open`."""
        return self._origin

    @property
    def size(self) -> int:
        """Records in the log so far (the next record's ``seq``)."""
        return self._seq

    @property
    def opened(self) -> bool:
        """``True`` between :meth:`open` and :meth:`close`."""
        return self._opened

    @property
    def signer(self) -> Signer | None:
        """The key signing checkpoints (after :meth:`open`)."""
        return self._signer

    @property
    def last_checkpoint(self) -> str | None:
        """The most recent signed checkpoint note written by this writer."""
        return self._last_note

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> Self:
        """Take the folder's lock, recover after a crash, write ``log_open`` and a checkpoint.

        Raises:
            AuditLogLocked: another writer holds the log.
            AuditUnavailable: the folder cannot be created, read or written.
            AuditError: the folder holds a different log or one that lost sealed records.
        """
        with self._cp_lock:
            with self._lock:
                if self._opened:
                    return self
                try:
                    recovered = self._open_files()
                except OSError as exc:
                    self._release_files()
                    raise AuditUnavailable(reason=f"cannot open the audit log: {exc}") from exc
                except BaseException:
                    self._release_files()
                    raise
                self._opened = True
                self._closed = False
                self._failed = None
            signer = self._signer
            assert signer is not None
            writer = {"pid": os.getpid(), "host": socket.gethostname(), "version": _version()}
            try:
                self.append(
                    log_open_record(
                        key=str(verifier_key(signer)),
                        writer=writer,
                        segment=segment_name(self._segment),
                        recovered=recovered,
                        server=self.server,
                    )
                )
                self._checkpoint()
            except BaseException:
                # Not open after all: a retry must run open() again (sealer, checkpoints).
                with self._lock:
                    self._release_files()
                    self._opened = False
                raise
        self._stop.clear()
        self._sealer = threading.Thread(
            target=self._run_sealer, name="securemcp-audit-sealer", daemon=True
        )
        self._sealer.start()
        _open_logs.add(self)
        atexit.register(self._close_at_exit)
        return self

    def close(self) -> None:
        """Write ``log_close`` and a final checkpoint, sync, and release the folder."""
        if not self._opened:
            return
        try:
            self.append(log_close_record(server=self.server))
        except (AuditUnavailable, OSError) as exc:
            # A failing sink raises after the local line is written: still seal the local log.
            logger.error("could not record log_close cleanly: %s", exc)
        try:
            self._checkpoint()
        except (AuditUnavailable, OSError) as exc:
            logger.error("could not seal the audit log cleanly on close: %s", exc)
        self._stop.set()
        self._wake.set()
        sealer, self._sealer = self._sealer, None
        if sealer is not None and sealer is not threading.current_thread():
            sealer.join()
        with self._cp_lock, self._lock:
            if self.fsync != "never" and self._failed is None:
                for fd in (self._fd, self._cp_fd):
                    try:
                        os.fsync(fd)
                    except OSError as exc:
                        logger.error("audit log fsync on close failed: %s", exc)
            self._release_files()
            self._opened = False
            self._closed = True
        _open_logs.discard(self)
        atexit.unregister(self._close_at_exit)

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close_at_exit(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - best effort at interpreter exit
            logger.exception("closing the audit log at exit failed")

    def _fail(self, reason: str) -> None:
        self._failed = reason

    # --- appending -------------------------------------------------------------------------

    def append(self, record: Mapping[str, Any]) -> int:
        """Append one record (a JSON object with a ``type``); returns its ``seq``.

        The log adds the header fields (``v``, ``log``, ``seq``, ``ts``, ``prev``). Opens the log
        first if it was never opened (after :meth:`close`, only an explicit :meth:`open` reopens
        it). Synchronous and thread-safe: one ``write`` of one line, no signature.

        Raises:
            SecretInRecord: the record holds a token, proof, header or secret (nothing written).
            ValueError, TypeError: the record is not a JSON object with a string ``type``, or sets
                a header field (nothing written).
            AuditUnavailable: the log could not be written, or a sink failed.
        """
        body = dict(record)
        kind = body.get("type")
        if not isinstance(kind, str) or not kind:
            raise ValueError("an audit record needs a string 'type'")
        if not HEADER_FIELDS.isdisjoint(body):
            reserved = ", ".join(sorted(HEADER_FIELDS.intersection(body)))
            raise ValueError(f"the log sets {reserved} itself")
        return self._append_body(body, screen(body))

    def _append_built(self, body: dict[str, Any], *free_form: str) -> int:
        """Append a record made by a builder in :mod:`.records`.

        Its fixed fields have safe names and JSON-ready values, so only the ``free_form`` parts
        (caller-supplied objects) need the full screen; every string still passes the encoded
        check in :meth:`_append_locked`.
        """
        plain = True
        for name in free_form:
            value = body.get(name)
            if value is not None and not screen({name: value}):
                plain = False
        duration = body.get("duration_ms")
        if type(duration) is float and not plain_float(duration):
            plain = False
        return self._append_body(body, plain)

    def _append_body(self, body: dict[str, Any], plain: bool) -> int:
        if not self._opened:
            if self._closed:
                raise AuditUnavailable(reason="the audit log was closed")
            self._open_for_append()
        with self._lock:
            return self._append_locked(body, plain)

    def _open_for_append(self) -> None:
        try:
            self.open()
        except AuditLogLocked as exc:
            raise AuditUnavailable(reason=str(exc)) from exc
        except AuditError as exc:
            raise AuditUnavailable(reason=str(exc)) from exc

    def _append_locked(self, body: dict[str, Any], plain: bool) -> int:
        if not self._opened or self._failed is not None:
            raise AuditUnavailable(reason=self._failed or "the audit log is closed")
        now, ts = self._stamp()
        seq = self._seq
        body["v"] = SCHEMA_VERSION
        body["log"] = self._origin
        body["seq"] = seq
        body["ts"] = ts
        body["prev"] = self._prev
        line = jcs.dumps_plain(body) if plain else jcs.dumps(body)
        check_encoded(line)
        return self._commit(line, now, seq, body)

    def _stamp(self) -> tuple[int, str]:
        """The next record's time (ns, never decreasing) and its ``ts``; under ``_lock``."""
        now = time.time_ns()
        if now < self._last_ns:  # the wall clock stepped back: keep timestamps monotonic
            now = self._last_ns
        micros = now // 1000
        second = micros // 1_000_000
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = format_ts(now)[:19]
        return now, f"{self._ts_prefix}.{micros % 1_000_000:06d}Z"

    def _append_template(
        self, head: str, mid: str, tail: str, end: str, caller: str, body: dict[str, Any] | None
    ) -> int:
        """Append a record whose canonical line is ``head`` + log id + ``mid`` + ``prev`` + seq
        + ``tail`` + ``ts`` + ``end`` (see :mod:`._lines`).

        ``caller`` is every caller-controlled JSON token of the line not vetted before, joined:
        it gets the same Unicode and secrets checks as a whole line on the generic path (see
        :mod:`._lines` for why that is exactly as strict). ``body`` is the record as the generic
        builder makes it, for sinks (``None`` without sinks: then it is never built).
        """
        if not self._opened:
            if self._closed:
                raise AuditUnavailable(reason="the audit log was closed")
            self._open_for_append()
        with self._lock:
            if not self._opened or self._failed is not None:
                raise AuditUnavailable(reason=self._failed or "the audit log is closed")
            origin = self._origin
            if origin is not self._origin_key:
                self._encode_origin(origin)
            origin_json = self._origin_json
            if not self._origin_vetted:
                if origin_json is None:
                    raise ValueError("the log id is not a valid JSON string")
                caller += origin_json
            # check_encoded looks for "eyJ", " " and "\\" first; an ASCII text (no surrogates,
            # and its UTF-8 is itself) holding none passes it, so skip the encoding and the call.
            if not caller.isascii() or "eyJ" in caller or " " in caller or "\\" in caller:
                try:
                    encoded = caller.encode("utf-8")
                except UnicodeEncodeError as exc:
                    raise ValueError("strings must be valid Unicode (no lone surrogates)") from exc
                check_encoded(encoded)
            now = time.time_ns()  # as in _stamp, inlined: this is the hot path
            if now < self._last_ns:
                now = self._last_ns
            micros = now // 1000
            second = micros // 1_000_000
            if second != self._ts_second:
                self._ts_second = second
                self._ts_prefix = format_ts(now)[:19]
            # ts: the second's prefix, then the microseconds zero-padded to 6 digits (cheaper
            # than a "06d" format spec).
            prefix = self._ts_prefix
            fraction = str(micros - second * 1_000_000 + 1_000_000)[1:]
            seq = self._seq
            prev = self._prev
            text = f'{head}{origin_json}{mid}{prev}","seq":{seq}{tail}{prefix}.{fraction}Z{end}'
            if body is not None:
                body["v"] = SCHEMA_VERSION
                body["log"] = origin
                body["seq"] = seq
                body["ts"] = f"{prefix}.{fraction}Z"
                body["prev"] = prev
            return self._commit(text.encode(), now, seq, body)

    def _encode_origin(self, origin: str) -> None:
        self._origin_key = origin
        try:
            self._origin_json = jcs.dumps(origin).decode("utf-8")
        except (TypeError, ValueError):
            self._origin_json, self._origin_vetted = None, False
        else:
            self._origin_vetted = vetted(self._origin_json)

    def _commit(self, line: bytes, now: int, seq: int, body: dict[str, Any] | None) -> int:
        """Write one encoded, checked record line and advance the chain; under ``_lock``."""
        data = line + b"\n"
        length = len(data)
        size = self._segment_size
        if size and size + length > self.segment_max_bytes:
            self._rotate_segment()
            size = 0
        try:
            _write_all(self._fd, data)
        except OSError as exc:
            self._undo_partial_write(exc)
            raise AuditUnavailable(reason=f"audit write failed: {exc}") from exc
        leaf = _LEAF_HASH.copy()  # RFC 9162 leaf hash SHA-256(0x00 || line), as merkle.leaf_hash
        leaf.update(line)
        digest = leaf.digest()
        self._pending.append(digest)
        self._prev = digest.hex()
        self._seq = seq + 1
        self._last_ns = now
        self._segment_size = size + length
        self._unsynced = True
        if self.fsync == "always":
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self._fail(f"fsync failed: {exc}")
                raise AuditUnavailable(reason=f"audit fsync failed: {exc}") from exc
        if self.sinks:
            self._export(body if body is not None else jcs.loads(line))
        if (seq + 1 - self._cp_size) % self.checkpoint_every == 0:
            self._wake.set()  # the sealer also polls, so waking it once per N records is enough
        if not (seq + 1) % _FOLD_EVERY:
            self._fold()
        return seq

    def _fold(self) -> None:
        """Fold the pending leaf hashes into the Merkle range; under ``_lock``.

        A record's leaf hash is computed as it is written (it is the next record's ``prev``),
        but the tree is only read to sign a checkpoint: folding leaves in batches there (and
        every _FOLD_EVERY records) costs much less per record than one at a time on each call.
        """
        pending = self._pending
        if pending:
            self._range.extend(pending)
            pending.clear()

    def _undo_partial_write(self, exc: OSError) -> None:
        try:
            os.ftruncate(self._fd, self._segment_size)
        except OSError as undo:
            self._fail(f"audit write failed ({exc}) and could not be undone ({undo})")

    def _export(self, record: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.emit(record)
            except Exception as exc:
                self.export_failures += 1
                raise AuditUnavailable(
                    reason=f"audit sink {type(sink).__name__} failed: {exc!r}"
                ) from exc

    def _rotate_segment(self) -> None:
        try:
            if self.fsync != "never":
                os.fsync(self._fd)
            fd = os.open(
                self._directory / segment_name(self._segment + 1), _APPEND_FLAGS | os.O_EXCL, 0o600
            )
        except OSError as exc:
            raise AuditUnavailable(reason=f"audit segment rotation failed: {exc}") from exc
        os.close(self._fd)
        self._fd = fd
        self._segment += 1
        self._segment_size = 0
        self._sync_directory()

    def _sync_directory(self) -> None:
        if self.fsync == "never":
            return
        fd = os.open(self._directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        except OSError:  # pragma: no cover - some filesystems refuse directory fsync
            pass
        finally:
            os.close(fd)

    # --- record builders (what the pipeline calls) -----------------------------------------

    def decision(
        self,
        *,
        call_id: str,
        method: str,
        target: str | None,
        result: Any,
        identity: Any = None,
        arguments: Mapping[str, Any] | None = None,
        reason: str = "",
        rule: str | None = None,
        policy_version: str | None = None,
        trace_id: str | None = None,
        server: str | None = None,
        record_arguments: bool | None = None,
        component_version: str | None = None,
        version_resolved: bool = True,
        requested_version: str | None = None,
    ) -> int:
        """Append the ``decision`` record written before a tool runs; returns its ``seq``.

        ``result`` is ``"allow"``/``"deny"``/... or a ``securemcp.policy.Decision`` (its effect,
        reason, rule, policy version and constraints are read). ``identity`` is a ``Principal``
        or a mapping. ``arguments`` are hashed; they are stored (redacted) only when
        ``record_arguments`` (default: the log's setting) is true. ``component_version`` (the
        version of a versioned component) is recorded only when given. ``version_resolved=False``
        (a forwarding component: which version runs is not known here) records
        ``component_version: null`` and the caller's ``requested_version``, on the generic path
        (see :func:`~securemcp.audit.records.decision_record`).
        """
        if server is None:
            server = self.server
        if record_arguments is None:
            record_arguments = self.record_arguments
        fragment = None
        if version_resolved and not (record_arguments and arguments is not None):
            fragment = decision_json(result, reason, rule, policy_version)
        if fragment is not None:
            try:  # encode_basestring raises TypeError for anything but a str: generic path
                call = "null" if call_id is None else _enc(call_id)
                trace = "null" if trace_id is None else _enc(trace_id)
                site = site_json(identity, method, target, server)
                # ,"component_version":"2" sorts between call_id and decision (RFC 8785)
                versioned = "" if component_version is None else version_json(component_version)
            except TypeError:
                fragment = None
        body = None
        if fragment is None or self.sinks:
            body = decision_record(
                call_id=call_id,
                method=method,
                target=target,
                result=result,
                identity=identity,
                arguments=arguments,
                reason=reason,
                rule=rule,
                policy_version=policy_version,
                trace_id=trace_id,
                server=server,
                record_arguments=record_arguments,
                redact_keys=self.redact_keys,
                component_version=component_version,
                version_resolved=version_resolved,
                requested_version=requested_version,
            )
            if fragment is None:  # unusual values: screen all of the generic record
                return self._append_body(body, screen(body))
        digest = args_sha256(arguments, self.redact_keys) if body is None else body["args_sha256"]
        hashed = "null" if digest is None else f'"{digest}"'
        decided, decided_vetted = fragment
        caller = call + trace + versioned
        if not decided_vetted:
            caller += decided
        if not site.vetted:
            caller += site.text
        return self._append_template(
            f'{{"args_sha256":{hashed},"call_id":{call}{versioned},'
            f'"decision":{decided},"identity":{site.identity},"log":',
            f'{site.method},"prev":"',
            f'{site.server_target}{trace},"ts":"',
            '","type":"decision","v":1}',
            caller,
            body,
        )

    def outcome(
        self,
        *,
        call_id: str,
        method: str,
        target: str | None,
        outcome: str,
        duration_ms: float,
        identity: Any = None,
        error: str | None = None,
        trace_id: str | None = None,
        server: str | None = None,
    ) -> int:
        """Append the ``outcome`` record written after a call (``ok``, ``tool_error``, ``error``,
        ``timeout`` or ``refused``); returns its ``seq``."""
        if server is None:
            server = self.server
        ended = OUTCOME_JSON.get(outcome) if type(outcome) is str else None
        elapsed = None
        if ended is not None:
            if type(duration_ms) is float and 0.0 <= duration_ms < 1e9:
                # The canonical text of _duration's value, round(duration_ms, 3), in one step:
                # "%.3f" rounds the same way (correctly, half to even), and below 1e12 the
                # shortest repr of that float is this decimal without trailing zeros (at most
                # 15 significant digits); an integral one is written as an int. Adding 0.0 turns
                # -0.0 (which passes the range test) into 0.0: RFC 8785 writes zero as "0",
                # never "-0".
                elapsed = f"{duration_ms + 0.0:.3f}".rstrip("0").rstrip(".")
            else:
                value = _duration(duration_ms)
                if type(value) is float:  # repr is canonical where jcs.plain_float says so
                    text = repr(value)
                    plain = "e" not in text and "n" not in text and not text.endswith(".0")
                    elapsed = text if plain else format_number(value)
                elif type(value) is int and -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                    elapsed = str(value)
        if elapsed is not None:
            try:  # encode_basestring raises TypeError for anything but a str: generic path
                call = "null" if call_id is None else _enc(call_id)
                trace = "null" if trace_id is None else _enc(trace_id)
                failure = "null" if error is None else _enc(error)
                site = site_json(identity, method, target, server)
            except TypeError:
                elapsed = None
        body = None
        if elapsed is None or self.sinks:
            body = outcome_record(
                call_id=call_id,
                method=method,
                target=target,
                outcome=outcome,
                duration_ms=duration_ms,
                identity=identity,
                error=error,
                trace_id=trace_id,
                server=server,
            )
            if elapsed is None:  # unusual values: screen all of the generic record
                return self._append_body(body, screen(body))
        caller = f"{call}{failure}{trace}"
        if not site.vetted:
            caller += site.text
        return self._append_template(
            f'{{"call_id":{call},"duration_ms":{elapsed},"error":{failure},'
            f'"identity":{site.identity},"log":',
            f'{site.method},"outcome":{ended},"prev":"',
            f'{site.server_target}{trace},"ts":"',
            '","type":"outcome","v":1}',
            caller,
            body,
        )

    def auth_failure(
        self,
        *,
        reason: str,
        method: str | None = None,
        target: str | None = None,
        call_id: str | None = None,
        identity: Any = None,
        credential_sha256: str | None = None,
        transport: str | None = None,
        trace_id: str | None = None,
        server: str | None = None,
    ) -> int:
        """Append an ``auth_failure`` record (no tool ran); returns its ``seq``."""
        return self._append_built(
            auth_failure_record(
                reason=reason,
                method=method,
                target=target,
                call_id=call_id,
                identity=identity,
                credential_sha256=credential_sha256,
                transport=transport,
                trace_id=trace_id,
                server=server if server is not None else self.server,
            )
        )

    def config_change(
        self,
        *,
        what: str,
        details: Mapping[str, Any] | None = None,
        config_version: str | None = None,
        identity: Any = None,
    ) -> int:
        """Append a ``config_change`` record; returns its ``seq``."""
        return self._append_built(
            config_change_record(
                what=what,
                details=details,
                config_version=config_version,
                identity=identity,
                server=self.server,
            ),
            "details",
        )

    def policy_change(
        self,
        *,
        policy_version: str,
        previous_version: str | None = None,
        source: str | None = None,
        identity: Any = None,
    ) -> int:
        """Append a ``policy_change`` record; returns its ``seq``."""
        return self._append_built(
            policy_change_record(
                policy_version=policy_version,
                previous_version=previous_version,
                source=source,
                identity=identity,
                server=self.server,
            )
        )

    # --- checkpoints and keys --------------------------------------------------------------

    def checkpoint(self) -> str | None:
        """Sign a checkpoint now if records were added since the last one; returns the latest
        signed note (``None`` before the log is opened).

        Raises :class:`AuditUnavailable` if the checkpoint cannot be written or synced; the
        partial line is then cut from ``checkpoints.jsonl`` (or, if that fails too, the log is
        marked failed and refuses appends until reopened).
        """
        if not self._opened:
            return None
        return self._checkpoint()

    def rotate_key(self, new_signer: Signer, *, reason: str = "") -> str:
        """Switch to ``new_signer``: writes ``key_rotation`` and a checkpoint signed by both keys.

        Verifiers that trust the old key learn the new one from that checkpoint. A
        ``new_signer`` that the log's ``keyring`` retires is refused (:class:`AuditError`,
        nothing written).
        """
        new_key = str(verifier_key(new_signer))
        with self._cp_lock:
            self._keyring_watch.check((new_signer,), reload=True)
            old = self._signer
            if old is None or not self._opened:
                raise AuditUnavailable(reason="the audit log is not open")
            self.append(
                key_rotation_record(old_key=str(verifier_key(old)), new_key=new_key, reason=reason)
            )
            note = self._checkpoint(signers=(old, new_signer))
            with self._lock:
                self._signer = new_signer
            assert note is not None
            return note

    def sync(self) -> None:
        """fsync written records now."""
        with self._lock:
            if not self._opened or not self._unsynced:
                return
            fd = os.dup(self._fd)
            self._unsynced = False
        try:
            os.fsync(fd)
        except OSError:
            self._unsynced = True
            raise
        finally:
            os.close(fd)

    def _checkpoint(self, signers: Iterable[Signer] | None = None) -> str | None:
        with self._cp_lock:
            with self._lock:
                if not self._opened or self._failed is not None:
                    return self._last_note
                self._fold()
                size = self._range.size
                if size == self._cp_size and signers is None and self._last_note is not None:
                    return self._last_note
                root = self._range.root()
                nodes = [node.hex() for node in self._range.nodes]
                origin = self._origin
                chosen = tuple(signers) if signers is not None else (self._signer,)
            self._refuse_retired(chosen)  # type: ignore[arg-type]
            if self.fsync != "never":
                self.sync()  # never sign a checkpoint over records that are not on disk
            note = sign_note(Checkpoint(origin, size, root).text(), chosen)  # type: ignore[arg-type]
            line = jcs.dumps({"note": note, "range": nodes}) + b"\n"
            try:
                before = os.fstat(self._cp_fd).st_size
            except OSError as exc:
                logger.error("writing an audit checkpoint failed: %s", exc)
                raise AuditUnavailable(reason=f"checkpoint write failed: {exc}") from exc
            try:
                _write_all(self._cp_fd, line)
                if self.fsync != "never":
                    os.fsync(self._cp_fd)
            except OSError as exc:
                logger.error("writing an audit checkpoint failed: %s", exc)
                self._undo_partial_checkpoint(before, exc)
                raise AuditUnavailable(reason=f"checkpoint write failed: {exc}") from exc
            with self._lock:
                self._cp_size = size
                self._cp_time = time.monotonic()
                self._last_note = note
            self._export_checkpoint(note)
            return note

    def _refuse_retired(self, signers: tuple[Signer, ...]) -> None:
        """Fail closed instead of signing with a key the keyring now retires; under ``_cp_lock``.

        An operator may retire the running writer's key: from then on, its checkpoints would be
        ``retired_key`` to every verifier (or, below the bound, a forger's equal). The log is
        marked failed, so every later append (every call) is refused until it is reopened.
        """
        try:
            self._keyring_watch.check(signers)
        except AuditError as exc:
            reason = f"refused to sign an audit checkpoint: {exc}"
            logger.error(
                "audit log %s: %s. The log is closed to writes (every call is refused with "
                "audit_unavailable) until it is reopened with a current signer.",
                self._directory,
                reason,
            )
            with self._lock:
                self._fail(reason)
            raise AuditUnavailable(reason=reason) from exc

    def _undo_partial_checkpoint(self, size: int, exc: OSError) -> None:
        """Cut ``checkpoints.jsonl`` back to ``size`` bytes after a failed checkpoint write.

        A torn line (a full disk) followed by later checkpoints would make the intact log verify
        as tampered, and a complete but unsynced line would be repeated by the next checkpoint
        (a duplicate). If the cut itself fails, the log is marked failed: every later append is
        refused (fail closed) until it is reopened, which quarantines a torn checkpoint line.
        """
        try:
            os.ftruncate(self._cp_fd, size)
        except OSError as undo:
            with self._lock:
                self._fail(f"checkpoint write failed ({exc}) and could not be undone ({undo})")

    def _export_checkpoint(self, note: str) -> None:
        for sink in self.sinks:
            try:
                sink.emit_checkpoint(note)
            except Exception:
                self.export_failures += 1
                logger.exception("audit sink %s failed to export a checkpoint", type(sink).__name__)
        for witness in self.witnesses:
            try:
                witness(note)
            except Exception:
                self.export_failures += 1
                logger.exception("audit witness %r failed", witness)

    def _run_sealer(self) -> None:
        tick = min(_FSYNC_TICK, self.checkpoint_interval)
        while not self._stop.is_set():
            self._wake.wait(tick)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                pending = self._seq - self._cp_size
                age = time.monotonic() - self._cp_time
                if pending >= self.checkpoint_every or (
                    pending and age >= self.checkpoint_interval
                ):
                    self._checkpoint()
                elif self.fsync == "interval" and self._unsynced:
                    self.sync()
            except Exception:
                logger.exception("the audit log's background checkpoint failed")

    # --- opening and recovery --------------------------------------------------------------

    def _open_files(self) -> dict[str, Any] | None:
        directory = self._directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._dir_lock = DirectoryLock(directory)
        self._dir_lock.acquire()
        self._signer = (
            self._signer_arg
            if self._signer_arg is not None
            else load_or_create_dev_signer(self._key_dir)
        )
        verifier_key(self._signer)  # fail early on an inconsistent signer
        self._keyring_watch.check((self._signer,), reload=True)
        sync = self.fsync != "never"
        quarantine = directory / QUARANTINE_DIR
        recovered: dict[str, Any] | None = None
        segments = list_segments(directory)
        if segments:
            cut = cut_torn_tail(segments[-1][1], quarantine, sync=sync)
            if cut is not None:
                offset, length, name = cut
                recovered = {
                    "segment": segments[-1][1].name,
                    "offset": offset,
                    "bytes": length,
                    "quarantine": name,
                }
                logger.warning(
                    "audit log %s: a torn last record (%d bytes, from a crash) was moved to %s/%s",
                    directory,
                    length,
                    QUARANTINE_DIR,
                    name,
                )
        cp_path = directory / CHECKPOINTS_FILE
        if cp_path.exists() and cut_torn_tail(cp_path, quarantine, sync=sync) is not None:
            logger.warning("audit log %s: a torn checkpoint line was quarantined", directory)
        self._resume(segments, cp_path)
        number = segments[-1][0] if segments else 0
        path = directory / segment_name(number)
        self._fd = open_regular(path, _APPEND_FLAGS, 0o600)  # never a FIFO: it would block
        self._segment = number
        self._segment_size = os.fstat(self._fd).st_size
        self._cp_fd = open_regular(cp_path, _APPEND_FLAGS, 0o600)
        self._sync_directory()
        return recovered

    def _resume(self, segments: list[tuple[int, Path]], cp_path: Path) -> None:
        """Restore the chain head and the Merkle tree from what is on disk."""
        last = None
        for _, path in reversed(segments):
            last = last_line(path)
            if last is not None:
                break
        if last is None:
            self._origin = self._origin_arg or new_origin()
            self._seq, self._prev, self._last_ns = 0, genesis_prev(self._origin), 0
            self._range, self._pending = CompactRange(), []
            self._cp_size, self._last_note = 0, None
            return
        try:
            head = jcs.loads(last)
            origin, seq, ts = head["log"], head["seq"], head["ts"]
            self._last_ns = parse_ts(ts)
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditError(
                f"the last record in {self._directory} is unreadable ({exc}); run "
                "`securemcp audit verify` on it"
            ) from None
        if self._origin_arg is not None and origin != self._origin_arg:
            raise AuditError(
                f"{self._directory} holds the audit log {origin!r}, not {self._origin_arg!r}"
            )
        self._origin, self._seq, self._prev = origin, seq + 1, leaf_hash(last).hex()
        self._range, self._pending = self._rebuild_range(segments, cp_path), []
        if self._range.size != self._seq:
            raise AuditError(
                f"the audit log in {self._directory} is inconsistent ({self._range.size} records "
                f"on disk, last seq {seq}); run `securemcp audit verify` on it"
            )

    def _rebuild_range(self, segments: list[tuple[int, Path]], cp_path: Path) -> CompactRange:
        start = CompactRange()
        self._cp_size, self._last_note = 0, None
        saved = last_line(cp_path) if cp_path.exists() else None
        if saved is not None:
            try:
                entry = jcs.loads(saved)
                checkpoint, _ = parse_checkpoint(entry["note"])
                nodes = [bytes.fromhex(h) for h in entry["range"]]
                candidate = CompactRange(checkpoint.size, nodes)
            except (ValueError, KeyError, TypeError, NoteError):
                logger.warning("the last audit checkpoint is unreadable; rehashing the whole log")
            else:
                if checkpoint.size > self._seq:
                    raise AuditError(
                        f"the audit log in {self._directory} has a checkpoint for "
                        f"{checkpoint.size} records but only {self._seq} on disk: records were "
                        "lost or removed; run `securemcp audit verify` on it"
                    )
                if candidate.root() == checkpoint.root and checkpoint.origin == self._origin:
                    start = candidate
                    self._cp_size, self._last_note = checkpoint.size, entry["note"]
        compact = start
        # Hash the records after the checkpoint: find the segment holding seq == compact.size.
        firsts = []
        for number, path in segments:
            line = first_line(path)
            firsts.append((jcs.loads(line)["seq"] if line is not None else None, number, path))
        begin = 0
        for index, (first, _, _) in enumerate(firsts):
            if first is not None and first <= compact.size:
                begin = index
        for first, _, path in firsts[begin:]:
            if first is None:
                continue
            skip = max(0, compact.size - first)
            for line in iter_lines(path, skip=skip):
                compact.append(leaf_hash(line))
        return compact

    def _release_files(self) -> None:
        for name in ("_fd", "_cp_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
                setattr(self, name, -1)
        if self._dir_lock is not None:
            self._dir_lock.release()
            self._dir_lock = None

    def __repr__(self) -> str:
        state = "open" if self._opened else "closed"
        return f"<AuditLog {self._directory} {state} size={self._seq}>"


def _version() -> str:
    from securemcp import __version__

    return __version__
