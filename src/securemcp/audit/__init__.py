"""securemcp's signed, tamper-evident audit log and its offline verifier.

Every tool call leaves a ``decision`` record before the tool runs and an ``outcome`` record after
it. Records are RFC 8785 canonical JSON lines, each hash-chained to the one before; an RFC 9162
Merkle tree over them is sealed by C2SP signed-note checkpoints signed with Ed25519; and
:func:`verify` checks a log offline against a pinned keyring. Start with :class:`AuditLog`;
the record schema and file formats are documented in ``docs/audit.md``.

Standards: RFC 8785 (JCS), RFC 9162 §2.1 (Merkle tree hashes and proofs), C2SP
``tlog-checkpoint`` v1.0.0 and ``signed-note`` v1.0.0, RFC 8032 (Ed25519), RFC 3339 (timestamps).
"""

from __future__ import annotations

from securemcp.audit.errors import (
    AuditError,
    AuditLogLocked,
    AuditUnavailable,
    KeyringError,
    SecretInRecord,
)
from securemcp.audit.guard import REDACTED
from securemcp.audit.keys import Ed25519Signer, Keyring, Signer, generate_key_file
from securemcp.audit.log import AuditLog
from securemcp.audit.note import VerifierKey
from securemcp.audit.reader import RecordFilter, iter_records, tail_records
from securemcp.audit.records import OUTCOMES, RECORD_TYPES, SCHEMA_VERSION
from securemcp.audit.sinks import JsonLinesSink, OpenTelemetrySink, Sink, WitnessSink
from securemcp.audit.verifier import VerificationReport, verify

__all__ = [
    "OUTCOMES",
    "RECORD_TYPES",
    "REDACTED",
    "SCHEMA_VERSION",
    "AuditError",
    "AuditLog",
    "AuditLogLocked",
    "AuditUnavailable",
    "Ed25519Signer",
    "JsonLinesSink",
    "Keyring",
    "KeyringError",
    "OpenTelemetrySink",
    "RecordFilter",
    "SecretInRecord",
    "Signer",
    "Sink",
    "VerificationReport",
    "VerifierKey",
    "WitnessSink",
    "generate_key_file",
    "iter_records",
    "tail_records",
    "verify",
]
