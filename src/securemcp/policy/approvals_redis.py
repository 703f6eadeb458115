"""Approval store in Redis, shared by every replica (``pip install 'securemcp[redis]'``).

Layout under ``key_prefix`` (default ``securemcp:approvals:``): ``rec:<id>`` holds the JSON record,
``bind:<binding hash>`` the latest id for a call binding, and the sorted set ``index`` every id by
creation time. Records expire from Redis ``retention`` seconds after the approval itself expires.

Read-modify-write uses optimistic transactions (``WATCH`` / ``MULTI`` / ``EXEC``, retried on
conflict), so two replicas cannot both consume one single-use approval. Expiry is judged with
this process's clock: keep replica clocks in sync (NTP). The approval rules live in
:mod:`securemcp.policy.approvals`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import WatchError

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

__all__ = ["RedisApprovalStore"]


def _text(value: object) -> str:
    """A Redis reply as text (bytes from redis-py < 8, str or bytes from later typings)."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


class RedisApprovalStore:
    """An :class:`~securemcp.policy.approvals.ApprovalStore` in Redis.

    Args:
        url: a ``redis://``, ``rediss://`` or ``unix://`` URL.
        approvers: who may approve (default: holders of ``securemcp:approve``).
        retention: seconds a record is kept after it expires.
        key_prefix: namespace for every key.
        clock: POSIX time source (injectable for tests).
        client: an existing ``redis.asyncio.Redis`` to use instead of ``url``.
    """

    def __init__(
        self,
        url: str,
        *,
        approvers: ApproverRequirement | None = None,
        retention: float = 7 * 86400.0,
        key_prefix: str = "securemcp:approvals:",
        clock: Callable[[], float] = time.time,
        client: aioredis.Redis | None = None,
    ) -> None:
        self._redis: aioredis.Redis = client or aioredis.Redis.from_url(
            url, socket_connect_timeout=2.0, socket_timeout=2.0
        )
        self.approvers = approvers or ApproverRequirement()
        self.retention = retention
        self._prefix = key_prefix
        self._clock = clock

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def _rec(self, approval_id: str) -> str:
        return f"{self._prefix}rec:{approval_id}"

    def _bind(self, binding: str) -> str:
        return f"{self._prefix}bind:{binding}"

    @property
    def _index(self) -> str:
        return f"{self._prefix}index"

    def _expire_ms(self, approval: Approval) -> int:
        """Milliseconds Redis keeps the record: until ``retention`` after the approval expires."""
        return max(1000, int((approval.expires_at + self.retention - self._clock()) * 1000))

    @staticmethod
    def _load(raw: Any) -> Approval | None:
        return Approval.from_dict(json.loads(raw)) if raw is not None else None

    async def _update(self, key: str, change: Callable[[Approval | None], Approval]) -> Approval:
        """Apply ``change`` to the record at ``key`` atomically (WATCH/MULTI, retried)."""
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    updated = change(self._load(await pipe.get(key)))
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(key, json.dumps(updated.to_dict()), px=self._expire_ms(updated))
                    await pipe.execute()
                    return updated
                except WatchError:
                    continue

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
        bind_key = self._bind(binding_key(principal, tool, args_hash, policy_hash))
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(bind_key)
                    now = self._clock()
                    current_id = await pipe.get(bind_key)
                    if current_id is not None:
                        latest = self._load(await pipe.get(self._rec(_text(current_id))))
                        if latest is not None and latest.state(now) is ApprovalStatus.PENDING:
                            await pipe.unwatch()  # type: ignore[no-untyped-call]
                            return latest.id
                    approval = new_approval(
                        principal, tool, args_hash, policy_hash, ttl, now, reason
                    )
                    expire = self._expire_ms(approval)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.set(self._rec(approval.id), json.dumps(approval.to_dict()), px=expire)
                    pipe.set(bind_key, approval.id, px=expire)
                    pipe.zadd(self._index, {approval.id: approval.created_at})
                    pipe.zremrangebyscore(self._index, "-inf", now - ttl - self.retention)
                    await pipe.execute()
                    return approval.id
                except WatchError:
                    continue

    async def approve(
        self, approval_id: str, approver: Principal, reusable_for: float | None = None
    ) -> Approval:
        """Approve (single-use unless ``reusable_for`` seconds are given)."""
        return await self._update(
            self._rec(approval_id),
            lambda current: decide_approval(
                current,
                approval_id,
                approver,
                self.approvers,
                self._clock(),
                approve=True,
                reusable_for=reusable_for,
            ),
        )

    async def deny(self, approval_id: str, approver: Principal, reason: str = "") -> Approval:
        """Deny the request."""
        return await self._update(
            self._rec(approval_id),
            lambda current: decide_approval(
                current,
                approval_id,
                approver,
                self.approvers,
                self._clock(),
                approve=False,
                note=reason,
            ),
        )

    async def consume(
        self, approval_id: str, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval:
        """Use the approval for this exact call, or raise ``ApprovalInvalid``."""
        return await self._update(
            self._rec(approval_id),
            lambda current: consume_approval(
                current, approval_id, principal, tool, args_hash, policy_hash, self._clock()
            ),
        )

    async def get(self, approval_id: str) -> Approval | None:
        """The approval with this id."""
        return self._load(await self._redis.get(self._rec(approval_id)))

    async def find(
        self, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval | None:
        """The most recent approval bound to exactly this call."""
        current_id = await self._redis.get(
            self._bind(binding_key(principal, tool, args_hash, policy_hash))
        )
        return await self.get(_text(current_id)) if current_id is not None else None

    async def list(self, *, include_decided: bool = False) -> list[Approval]:
        """Pending, unexpired requests (or every retained record), oldest first."""
        ids = await self._redis.zrange(self._index, 0, -1)
        if not ids:
            return []
        raws = await self._redis.mget([self._rec(_text(i)) for i in ids])
        now = self._clock()
        approvals = [a for a in (self._load(raw) for raw in raws) if a is not None]
        if include_decided:
            return approvals
        return [a for a in approvals if a.state(now) is ApprovalStatus.PENDING]
