"""Errors raised by the audit log.

:class:`AuditUnavailable` is the one a client can see: the pipeline lets it propagate when the
decision record cannot be written, so the tool never runs (DESIGN.md guarantee 4, fail closed).
The others are raised to the server author or operator and carry their detail in ``str()``.
"""

from __future__ import annotations

from securemcp.errors import CallRefused, SecureMCPError

__all__ = [
    "AuditError",
    "AuditLogLocked",
    "AuditUnavailable",
    "KeyringError",
    "SecretInRecord",
]


class AuditUnavailable(CallRefused):
    """The audit log could not be written, so the call was refused (fail closed).

    ``reason`` (internal) says why: the OS error, a sink failure, a closed or locked log.
    """

    code = "audit_unavailable"
    default_message = "The audit log is unavailable, so the call was refused."


class AuditError(SecureMCPError):
    """Base of audit errors raised to the server author or operator (never to a client)."""

    code = "audit_error"

    def __init__(self, message: str) -> None:
        super().__init__(message, reason=message)


class AuditLogLocked(AuditError, RuntimeError):
    """Another writer already holds the audit log's lock (one writer at a time)."""

    code = "audit_log_locked"


class SecretInRecord(AuditError, ValueError):
    """A record was refused because it contains a token, proof, header or secret."""

    code = "audit_secret_in_record"


class KeyringError(AuditError, ValueError):
    """A key, key file or keyring is malformed."""

    code = "invalid_key"
