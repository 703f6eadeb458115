"""Exporting audit records and checkpoints off the machine.

A local attacker holding the signing key could rewrite the unsealed tail of a local log, so
records and signed checkpoints should also leave the machine:

* :class:`JsonLinesSink` writes each record (and each checkpoint) as one JSON line to any stream,
  for SIEM ingestion (stdout, a pipe, a socket file);
* :class:`OpenTelemetrySink` emits them as OpenTelemetry log records through the
  ``opentelemetry._logs`` API (a no-op until an SDK and exporter are configured);
* :class:`WitnessSink` hands every signed checkpoint to a callable (a C2SP ``tlog-witness``
  client, an object-lock bucket, a ticket system...). ``AuditLog(witness=...)`` does the same.

A sink's ``emit`` runs inside the audit append, in record order; if it raises, the append raises
:class:`~securemcp.audit.errors.AuditUnavailable` and the call is refused (the local record is
already written and stays valid). Checkpoint export errors are logged, never raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import IO, Any, Final, Protocol, runtime_checkable

from securemcp.audit import jcs

__all__ = ["JsonLinesSink", "OpenTelemetrySink", "Sink", "WitnessSink"]

#: OpenTelemetry event names of exported audit data.
RECORD_EVENT: Final = "securemcp.audit.record"
CHECKPOINT_EVENT: Final = "securemcp.audit.checkpoint"


@runtime_checkable
class Sink(Protocol):
    """Receives every record (with its header) and every signed checkpoint note."""

    def emit(self, record: dict[str, Any]) -> None:
        """Export one record; raise to make the append fail closed."""
        ...

    def emit_checkpoint(self, text: str) -> None:
        """Export one signed checkpoint note (C2SP signed-note text)."""
        ...


def _canonical(record: Mapping[str, Any]) -> str:
    return jcs.dumps(record).decode("utf-8")


class JsonLinesSink:
    """One JSON line per record on ``stream``; checkpoints as ``{"type":"checkpoint",...}``.

    Record lines are the records' canonical JSON, byte-identical to the local log's lines.
    """

    def __init__(self, stream: IO[str] | IO[bytes], *, flush: bool = True) -> None:
        self._stream = stream
        self._flush = flush
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            stream: Any = self._stream
            if "b" in getattr(stream, "mode", ""):
                stream.write(line.encode("utf-8") + b"\n")
            else:
                stream.write(line + "\n")
            if self._flush:
                stream.flush()

    def emit(self, record: dict[str, Any]) -> None:
        self._write(_canonical(record))

    def emit_checkpoint(self, text: str) -> None:
        self._write(_canonical({"type": "checkpoint", "note": text}))


class WitnessSink:
    """Sends each signed checkpoint to ``witness`` (records are not sent)."""

    def __init__(self, witness: Callable[[str], object]) -> None:
        self._witness = witness

    def emit(self, record: dict[str, Any]) -> None:
        return None

    def emit_checkpoint(self, text: str) -> None:
        self._witness(text)


class OpenTelemetrySink:
    """Emits records and checkpoints as OpenTelemetry log records (``opentelemetry._logs``).

    The body is the record's canonical JSON (so a collector forwards exactly what the local log
    holds); a few attributes allow filtering without parsing it. The current span context is
    attached by the API, so records correlate with the call's trace.

    Args:
        logger_provider: an ``opentelemetry._logs.LoggerProvider``; default: the global one.
        logger_name: instrumentation scope name.
    """

    def __init__(
        self, logger_provider: Any = None, *, logger_name: str = "securemcp.audit"
    ) -> None:
        from opentelemetry import _logs

        from securemcp import __version__

        self._api = _logs
        self._logger = _logs.get_logger(logger_name, __version__, logger_provider=logger_provider)

    def _emit(self, event: str, body: str, attributes: dict[str, Any]) -> None:
        api = self._api
        record = api.LogRecord(
            severity_number=api.SeverityNumber.INFO,
            severity_text="INFO",
            body=body,
            attributes={"event.name": event, **attributes},
        )
        self._logger.emit(record)

    def emit(self, record: dict[str, Any]) -> None:
        attributes: dict[str, Any] = {
            "securemcp.audit.log": record.get("log", ""),
            "securemcp.audit.seq": record.get("seq", -1),
            "securemcp.audit.type": record.get("type", ""),
        }
        for key, name in (
            ("call_id", "securemcp.call_id"),
            ("method", "mcp.method.name"),
            ("target", "securemcp.target"),
            ("outcome", "securemcp.outcome"),
        ):
            value = record.get(key)
            if isinstance(value, str):
                attributes[name] = value
        decision = record.get("decision")
        if isinstance(decision, Mapping) and isinstance(decision.get("result"), str):
            attributes["securemcp.decision"] = decision["result"]
        self._emit(RECORD_EVENT, _canonical(record), attributes)

    def emit_checkpoint(self, text: str) -> None:
        self._emit(CHECKPOINT_EVENT, text, {})
