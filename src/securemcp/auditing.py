"""How the per-call pipeline writes the audit log (guarantee 4: nothing executes unaudited).

Per call: a ``decision`` record before the body runs (if it cannot be written the call is
refused with ``audit_unavailable`` and the body never runs), then an ``outcome`` record after
(if that cannot be written the result is withheld and the client gets ``audit_unavailable``).
Refusals are recorded as ``deny`` decisions; failed authentication as ``auth_failure``. A call
delegated to a mounted securemcp server is recorded once, by the server that received it.

With no configuration every server writes the default local log (``.securemcp/audit`` under the
working directory, or ``$SECUREMCP_AUDIT_DIR``); servers in one process share one writer per
directory, since a log has exactly one writer.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from securemcp.audit import AuditLog
from securemcp.context import Principal

__all__ = ["CallAuditor", "resolve_audit_log", "shared_log"]

logger = logging.getLogger("securemcp.audit")

_SHARED: dict[Path, AuditLog] = {}
_SHARED_LOCK = threading.Lock()


def _default_directory() -> Path:
    from securemcp.audit.storage import default_audit_dir

    return Path(default_audit_dir()).resolve()


def shared_log(directory: str | os.PathLike[str] | None = None) -> AuditLog:
    """The process-wide writer for ``directory`` (default: the default audit folder)."""
    path = Path(directory).resolve() if directory is not None else _default_directory()
    with _SHARED_LOCK:
        log = _SHARED.get(path)
        if log is None:
            log = AuditLog(path)
            _SHARED[path] = log
            atexit.register(_close_quietly, log)
        return log


def _close_quietly(log: AuditLog) -> None:
    try:
        log.close()
    except Exception:  # at interpreter exit: report, never raise
        logger.exception("securemcp could not close the audit log cleanly")


def resolve_audit_log(setting: Any) -> AuditLog | None:
    """The log for a server's ``audit=`` setting.

    ``None`` (default): the shared default log. A path: the shared log in that folder. An
    :class:`~securemcp.audit.AuditLog`: used as given. ``False``: no audit log (not recommended;
    warned about at start-up).
    """
    if setting is False:
        return None
    if setting is None:
        return shared_log()
    if isinstance(setting, AuditLog):
        return setting
    if isinstance(setting, str | os.PathLike):
        return shared_log(setting)
    raise TypeError(
        f"audit= must be an AuditLog, a directory path, None (default log) or False, "
        f"got {type(setting).__name__}"
    )


class CallAuditor:
    """Writes the records of guarded calls to one audit log."""

    def __init__(self, log: AuditLog, server_name: str) -> None:
        self.log = log
        self.server_name = server_name

    def auth_failure(
        self, *, reason: str | None, method: str, target: str, transport: str, trace_id: str | None
    ) -> None:
        """Record a refused authentication (best effort: the call is refused either way)."""
        try:
            self.log.auth_failure(
                reason=reason or "unauthenticated",
                method=method,
                target=target,
                transport=transport,
                trace_id=trace_id,
                server=self.server_name,
            )
        except Exception:
            logger.exception("securemcp could not audit an authentication failure")

    def decision(
        self,
        *,
        call_id: str,
        method: str,
        target: str,
        principal: Principal,
        arguments: Mapping[str, Any] | None,
        result: Any,
        reason: str = "",
        trace_id: str | None,
        component_version: str | None = None,
        rule: str | None = None,
        policy_version: str | None = None,
        version_resolved: bool = True,
        requested_version: str | None = None,
    ) -> None:
        """Record the decision; raises ``AuditUnavailable`` if it cannot be written."""
        self.log.decision(
            call_id=call_id,
            method=method,
            target=target,
            result=result,
            identity=principal,
            arguments=arguments,
            reason=reason,
            rule=rule,
            policy_version=policy_version,
            trace_id=trace_id,
            server=self.server_name,
            component_version=component_version,
            version_resolved=version_resolved,
            requested_version=requested_version,
        )

    def refusal(
        self,
        *,
        call_id: str,
        method: str,
        target: str,
        principal: Principal,
        arguments: Mapping[str, Any] | None,
        code: str,
        trace_id: str | None,
        component_version: str | None = None,
        rule: str | None = None,
        policy_version: str | None = None,
        version_resolved: bool = True,
        requested_version: str | None = None,
    ) -> None:
        """Record a refused call as a ``deny`` decision (best effort: it is refused anyway).

        ``rule`` and ``policy_version`` name the policy decision that refused it, if one did.
        """
        try:
            self.decision(
                call_id=call_id,
                method=method,
                target=target,
                principal=principal,
                arguments=arguments,
                result="deny",
                reason=code,
                trace_id=trace_id,
                component_version=component_version,
                rule=rule,
                policy_version=policy_version,
                version_resolved=version_resolved,
                requested_version=requested_version,
            )
        except Exception:
            logger.exception("securemcp could not audit a refused call")

    def outcome(
        self,
        *,
        call_id: str,
        method: str,
        target: str,
        principal: Principal,
        outcome: str,
        duration_ms: float,
        error: str | None,
        trace_id: str | None,
    ) -> None:
        """Record how the call ended; raises ``AuditUnavailable`` if it cannot be written."""
        self.log.outcome(
            call_id=call_id,
            method=method,
            target=target,
            outcome=outcome,
            duration_ms=duration_ms,
            identity=principal,
            error=error,
            trace_id=trace_id,
            server=self.server_name,
        )
