"""The default approval store: one SQLite file (``./.securemcp/approvals.sqlite3``).

Every read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, so concurrent server
processes and the ``securemcp approvals`` CLI sharing the file cannot both consume a single-use
approval (SQLite serializes writers across processes). The database runs in WAL mode; the
directory is created ``0700`` and the file ``0600``. Blocking calls run in a worker thread so
the event loop never waits on the disk. The rules themselves live in
:mod:`securemcp.policy.approvals`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import anyio.to_thread

from securemcp.context import Principal
from securemcp.policy.approvals import (
    DEFAULT_TTL,
    Approval,
    ApprovalStatus,
    ApproverRequirement,
    binding_key,
    consume_approval,
    decide_approval,
    new_approval,
)

__all__ = ["SQLiteApprovalStore"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    binding TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS approvals_binding ON approvals (binding, created_at);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created_at);
"""


class SQLiteApprovalStore:
    """An :class:`~securemcp.policy.approvals.ApprovalStore` in a SQLite file.

    Args:
        path: the database file (its directory is created when missing).
        approvers: who may approve (default: holders of ``securemcp:approve``).
        retention: seconds a decided or expired record is kept after it expires.
        clock: POSIX time source (injectable for tests).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        approvers: ApproverRequirement | None = None,
        retention: float = 7 * 86400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self.approvers = approvers or ApproverRequirement()
        self.retention = retention
        self._clock = clock
        self._ready = False

    # --- plumbing ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not self.path.exists():
                fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
                os.close(fd)
        connection = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        if not self._ready:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            self._ready = True
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    async def _run(self, fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(fn)

    @staticmethod
    def _load(row: tuple[str] | None) -> Approval | None:
        return Approval.from_dict(json.loads(row[0])) if row is not None else None

    @staticmethod
    def _save(connection: sqlite3.Connection, approval: Approval) -> None:
        connection.execute(
            "INSERT OR REPLACE INTO approvals (id, binding, status, created_at, expires_at, record)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                approval.id,
                approval.binding,
                approval.status.value,
                approval.created_at,
                approval.expires_at,
                json.dumps(approval.to_dict()),
            ),
        )

    def _get(self, connection: sqlite3.Connection, approval_id: str) -> Approval | None:
        row = connection.execute(
            "SELECT record FROM approvals WHERE id = ?", (approval_id,)
        ).fetchone()
        return self._load(row)

    def _latest(self, connection: sqlite3.Connection, binding: str) -> Approval | None:
        row = connection.execute(
            "SELECT record FROM approvals WHERE binding = ? ORDER BY created_at DESC LIMIT 1",
            (binding,),
        ).fetchone()
        return self._load(row)

    # --- the protocol -----------------------------------------------------------------------

    async def request(
        self,
        principal: Principal,
        tool: str,
        args_hash: str,
        policy_hash: str,
        ttl: float = DEFAULT_TTL,
        *,
        reason: str = "",
    ) -> str:
        """Record a pending request; returns the existing id when one is already pending."""
        binding = binding_key(principal, tool, args_hash, policy_hash)

        def work() -> str:
            now = self._clock()
            with self._transaction() as connection:
                latest = self._latest(connection, binding)
                if latest is not None and latest.state(now) is ApprovalStatus.PENDING:
                    return latest.id
                approval = new_approval(principal, tool, args_hash, policy_hash, ttl, now, reason)
                self._save(connection, approval)
                connection.execute(
                    "DELETE FROM approvals WHERE expires_at < ?", (now - self.retention,)
                )
                return approval.id

        return await self._run(work)

    async def _decide(
        self,
        approval_id: str,
        approver: Principal,
        *,
        approve: bool,
        reusable_for: float | None = None,
        note: str = "",
    ) -> Approval:
        def work() -> Approval:
            with self._transaction() as connection:
                updated = decide_approval(
                    self._get(connection, approval_id),
                    approval_id,
                    approver,
                    self.approvers,
                    self._clock(),
                    approve=approve,
                    reusable_for=reusable_for,
                    note=note,
                )
                self._save(connection, updated)
                return updated

        return await self._run(work)

    async def approve(
        self, approval_id: str, approver: Principal, reusable_for: float | None = None
    ) -> Approval:
        """Approve (single-use unless ``reusable_for`` seconds are given)."""
        return await self._decide(approval_id, approver, approve=True, reusable_for=reusable_for)

    async def deny(self, approval_id: str, approver: Principal, reason: str = "") -> Approval:
        """Deny the request."""
        return await self._decide(approval_id, approver, approve=False, note=reason)

    async def consume(
        self, approval_id: str, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval:
        """Use the approval for this exact call, or raise ``ApprovalInvalid``."""

        def work() -> Approval:
            with self._transaction() as connection:
                updated = consume_approval(
                    self._get(connection, approval_id),
                    approval_id,
                    principal,
                    tool,
                    args_hash,
                    policy_hash,
                    self._clock(),
                )
                self._save(connection, updated)
                return updated

        return await self._run(work)

    async def get(self, approval_id: str) -> Approval | None:
        """The approval with this id."""

        def work() -> Approval | None:
            connection = self._connect()
            try:
                return self._get(connection, approval_id)
            finally:
                connection.close()

        return await self._run(work)

    async def find(
        self, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval | None:
        """The most recent approval bound to exactly this call."""
        binding = binding_key(principal, tool, args_hash, policy_hash)

        def work() -> Approval | None:
            connection = self._connect()
            try:
                return self._latest(connection, binding)
            finally:
                connection.close()

        return await self._run(work)

    async def list(self, *, include_decided: bool = False) -> list[Approval]:
        """Pending, unexpired requests (or every retained record), oldest first."""

        def work() -> list[Approval]:
            connection = self._connect()
            try:
                if include_decided:
                    rows = connection.execute(
                        "SELECT record FROM approvals ORDER BY created_at"
                    ).fetchall()
                else:
                    rows = connection.execute(
                        "SELECT record FROM approvals WHERE status = ? AND expires_at > ?"
                        " ORDER BY created_at",
                        (ApprovalStatus.PENDING.value, self._clock()),
                    ).fetchall()
            finally:
                connection.close()
            return [Approval.from_dict(json.loads(row[0])) for row in rows]

        return await self._run(work)
