"""Export: JSON lines for a SIEM, OpenTelemetry logs, witnesses; a failing sink fails closed."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import read_lines, records, segment_path, write_calls

from securemcp.audit import (
    AuditLog,
    AuditUnavailable,
    Ed25519Signer,
    JsonLinesSink,
    Keyring,
    OpenTelemetrySink,
    Sink,
    WitnessSink,
    verify,
)
from securemcp.audit.checkpoint import parse_checkpoint


def test_json_lines_sink_streams_exactly_the_local_records(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    text, binary = io.StringIO(), io.BytesIO()
    binary.mode = "wb"  # type: ignore[misc]
    with AuditLog(
        log_dir, signer=signer, sinks=[JsonLinesSink(text), JsonLinesSink(binary)]
    ) as log:
        write_calls(log, 2)
    lines = text.getvalue().splitlines()
    exported = [line for line in lines if json.loads(line)["type"] != "checkpoint"]
    assert [line.encode() for line in exported] == read_lines(segment_path(log_dir))
    notes = [json.loads(line)["note"] for line in lines if json.loads(line)["type"] == "checkpoint"]
    assert len(notes) == 2 and all(parse_checkpoint(note) for note in notes)
    assert binary.getvalue().decode() == text.getvalue()


def test_witness_receives_every_signed_checkpoint(log_dir: Path, signer: Ed25519Signer) -> None:
    witnessed: list[str] = []
    sink_seen: list[str] = []
    with AuditLog(
        log_dir, signer=signer, witness=witnessed.append, sinks=[WitnessSink(sink_seen.append)]
    ) as log:
        write_calls(log, 2)
        log.checkpoint()
    assert len(witnessed) == 3 and witnessed == sink_seen
    checkpoint, note = parse_checkpoint(witnessed[-1])
    assert checkpoint.size == log.size
    good, _ = note.verify(Keyring([signer.verifier_key()]).lookup)
    assert good
    # a witnessed checkpoint is a trusted checkpoint for the verifier
    report = verify(
        log_dir, keyring=Keyring([signer.verifier_key()]), trusted_checkpoint=witnessed[-1]
    )
    assert report.ok


def test_opentelemetry_sink_emits_log_records(log_dir: Path, signer: Ed25519Signer) -> None:
    sdk = pytest.importorskip("opentelemetry.sdk._logs")
    export = pytest.importorskip("opentelemetry.sdk._logs.export")
    exporter = export.InMemoryLogRecordExporter()
    provider = sdk.LoggerProvider()
    provider.add_log_record_processor(export.SimpleLogRecordProcessor(exporter))
    sink = OpenTelemetrySink(provider)
    assert isinstance(sink, Sink)
    with AuditLog(log_dir, signer=signer, sinks=[sink]) as log:
        write_calls(log, 1)
    emitted = [item.log_record for item in exporter.get_finished_logs()]
    events = [r.attributes["event.name"] for r in emitted]
    assert events.count("securemcp.audit.record") == 4
    assert events.count("securemcp.audit.checkpoint") == 2
    decision = next(r for r in emitted if r.attributes.get("securemcp.audit.type") == "decision")
    assert decision.attributes["securemcp.decision"] == "allow"
    assert decision.attributes["mcp.method.name"] == "tools/call"
    assert json.loads(decision.body) == records(log_dir)[1]


class BrokenSink:
    def __init__(self) -> None:
        self.down = False

    def emit(self, record: dict[str, Any]) -> None:
        if self.down:
            raise ConnectionError("SIEM unreachable")

    def emit_checkpoint(self, text: str) -> None:
        if self.down:
            raise ConnectionError("SIEM unreachable")


def test_a_failing_sink_fails_closed_and_the_log_stays_valid(
    log_dir: Path, signer: Ed25519Signer
) -> None:
    sink = BrokenSink()
    with AuditLog(log_dir, signer=signer, sinks=[sink]) as log:
        write_calls(log, 1)
        sink.down = True
        with pytest.raises(AuditUnavailable) as info:
            log.decision(call_id="c", method="tools/call", target="t", result="allow")
        assert "SIEM unreachable" in (info.value.reason or "")
        assert "SIEM" not in str(info.value)  # the client message stays generic
        sink.down = False
        write_calls(log, 1)
    assert verify(log_dir, keyring=Keyring([signer.verifier_key()])).ok
    assert log.export_failures == 1
