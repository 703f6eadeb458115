"""Human approvals for calls a policy marks ``require_approval``.

The model is MACAW's "external attestations" and the out-of-band approval lesson of peers.md §5:
the approval never travels through the model. A call that needs approval is refused with
``approval_required`` and an approval id; a *different* principal holding an approver role or
scope approves (or denies) it through ``securemcp approvals approve ID`` or this Python API; the
same call then succeeds.

An approval is **bound** to the requesting principal (tenant, issuer, subject, client id), the
tool (and the version of the component that runs, if versioned; for a resource read, whether a
concrete resource or a template serves it, and which template), the SHA-256 of the canonical
arguments and the policy version hash, so it cannot be replayed
by another caller, for another tool, with other arguments or under a changed policy. It expires,
and it is **single-use** unless the approver grants it reusable for a time window. The requesting
principal can never approve its own request (compared by issuer and subject, whatever the
client), and the approver must satisfy an :class:`ApproverRequirement`.

Stores: :class:`~securemcp.policy.approvals_sqlite.SQLiteApprovalStore` (default file
``./.securemcp/approvals.sqlite3``) and
:class:`~securemcp.policy.approvals_redis.RedisApprovalStore` (replicas share one Redis). Both
implement :class:`ApprovalStore`; the decision logic lives here, in pure functions, so every store
enforces the same rules. The pipeline uses :class:`ApprovalGate`::

    decision = await evaluate(policy, request)
    if decision.effect is Effect.REQUIRE_APPROVAL:
        await gate.check(request, decision)   # raises ApprovalRequired / ApprovalInvalid

The CLI acts as the **local operator**: whoever can run ``securemcp approvals`` on this host and
read/write the store (the SQLite file, or the Redis credentials) is trusted as an approver, since
they could edit the store directly anyway. See :func:`local_operator`.
"""

from __future__ import annotations

import dataclasses
import getpass
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import quote, unquote

from securemcp.context import Principal
from securemcp.policy.decision import Decision
from securemcp.policy.errors import ApprovalInvalid, ApprovalRequired
from securemcp.policy.request import CallRequest, canonical_json

__all__ = [
    "DEFAULT_APPROVER_SCOPE",
    "DEFAULT_STORE_PATH",
    "Approval",
    "ApprovalGate",
    "ApprovalStatus",
    "ApprovalStore",
    "ApproverRequirement",
    "approval_target",
    "describe_target",
    "local_operator",
    "open_store",
    "principal_key",
]

#: Scope that makes a principal an approver (unless configured otherwise).
DEFAULT_APPROVER_SCOPE: Final = "securemcp:approve"
#: Where the default SQLite store lives, relative to the working directory.
DEFAULT_STORE_PATH: Final = os.path.join(".securemcp", "approvals.sqlite3")
#: Environment variable naming the store (a path or a ``redis://`` URL).
STORE_ENV: Final = "SECUREMCP_APPROVAL_STORE"
#: Default lifetime of a pending request and of a granted single-use approval (seconds).
DEFAULT_TTL: Final = 900.0


class ApprovalStatus(StrEnum):
    """Lifecycle of an approval. ``expired`` is derived from the clock, never stored."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"
    EXPIRED = "expired"


def principal_key(principal: Principal) -> str:
    """SHA-256 of (tenant, issuer, subject, client id): what an approval is bound to."""
    parts = [principal.tenant, principal.issuer, principal.subject, principal.client_id]
    return hashlib.sha256(canonical_json(parts)).hexdigest()


def approval_target(
    method: str,
    target: str,
    version: str | None = None,
    *,
    resolved: bool = True,
    requested: str | None = None,
    template: str | None = None,
) -> str:
    """What an approval names as its ``tool``: the tool's name for ``tools/call``, else the
    method and the target (``prompts/get summarize``, ``resources/read notes://x``); for a
    versioned component, ``METHOD@VERSION TARGET`` (``tools/call@2 purge``), ``VERSION`` being
    the version that runs (:attr:`CallRequest.version`), however the call asked for it; for a
    resource template read, ``resources/read#TEMPLATE URI`` (``resources/read#x://{name}
    x://a``), ``TEMPLATE`` being the URI template of the template that serves the read
    (:attr:`CallRequest.template`), after the version if any.

    An approval is bound to the kind of call and the component it was granted for: one granted
    for a prompt can never be spent on a tool of the same name (MCP tool names cannot contain a
    space), one granted for version 1 never on version 2, even for a call that asks for no
    version and ran v1 then (the highest) but runs v2 now, and one granted for reading the
    concrete resource ``x://a`` never on the template ``x://{name}`` reading the same URI text
    (``x://%61``), nor the reverse: they are different components, with different code. The
    version and the template are percent-encoded (no space and no ``#`` can appear in them),
    so a versioned target never equals an unversioned one or another version's, and a
    template read's never a concrete read's or another template's. Unversioned targets of
    tools, prompts and concrete resources keep the form they always had, so existing
    approvals stay valid.

    A version securemcp cannot resolve (``resolved=False``: a forwarder to versioned components
    elsewhere) is bound to the version asked for, as ``METHOD@?ASKED TARGET`` (``ASKED`` empty
    when none was): never the target of a resolved version, whose encoding cannot start with
    ``?``.
    """
    kind = method
    if not resolved:
        kind = f"{method}@?{quote(requested or '', safe=_VERSION_SAFE)}"
    elif version is not None:
        kind = f"{method}@{quote(version, safe=_VERSION_SAFE)}"
    if template is not None:
        kind = f"{kind}#{quote(template, safe=_TEMPLATE_SAFE)}"
    return target if kind == "tools/call" else f"{kind} {target}"


_VERSION_SAFE: Final = "<>=,.+-_~!"
#: Characters a URI template keeps in an approval's ``tool`` (RFC 6570 operators, URI
#: delimiters); never a space (it ends the kind) nor ``#`` (it starts the template).
_TEMPLATE_SAFE: Final = ":/{}?&=,*+.;!$'()@-_~"
_KIND: Final = re.compile(
    r"^(tools/call|prompts/get|resources/read)(?:@([^\s#]*))?(?:#(\S*))? (.*)$", re.DOTALL
)


def describe_target(tool: str) -> str:
    """An approval's ``tool`` for people: ``'purge' version 2`` for ``tools/call@2 purge``;
    ``'purge' version unresolved (asked for 1)`` for ``tools/call@?1 purge``;
    ``resources/read 'x://a' of template 'x://{name}'`` for ``resources/read#x://{name} x://a``.
    """
    found = _KIND.match(tool)
    if found is None or (found.group(2) is None and found.group(3) is None):
        return repr(tool)
    method, version, template, target = found.groups()
    kind = "" if method == "tools/call" else f"{method} "
    described = f"{kind}{target!r}"
    if template is not None:
        described += f" of template {unquote(template)!r}"
    if version is None:
        return described
    if version.startswith("?"):
        asked = _printable(unquote(version[1:]))
        return f"{described} version unresolved" + (f" (asked for {asked})" if asked else "")
    return f"{described} version {_printable(unquote(version))}"


def _printable(text: str) -> str:
    """``text`` as is when printable, else quoted with escapes: a version asked for is the
    caller's text, and must not put a line break or a terminal control into a listing."""
    return text if text.isprintable() else repr(text)


def binding_key(principal: Principal, tool: str, args_hash: str, policy_hash: str) -> str:
    """SHA-256 of everything an approval is bound to (for looking approvals up)."""
    parts = [principal_key(principal), tool, args_hash, policy_hash]
    return hashlib.sha256(canonical_json(parts)).hexdigest()


def _who(principal: Principal) -> str:
    return f"{principal.subject} ({principal.issuer})"


@dataclass(frozen=True, slots=True)
class Approval:
    """One approval request and its outcome. Times are POSIX seconds."""

    id: str
    status: ApprovalStatus
    binding: str
    principal_key: str
    subject: str
    issuer: str
    client_id: str | None
    tenant: str | None
    tool: str
    args_hash: str
    policy_hash: str
    reason: str
    created_at: float
    expires_at: float
    decided_by: str | None = None
    decided_at: float | None = None
    reusable: bool = False
    uses: int = 0
    note: str = ""

    def state(self, now: float) -> ApprovalStatus:
        """The status at time ``now`` (``expired`` once past ``expires_at``, unless used)."""
        if self.status is not ApprovalStatus.USED and now >= self.expires_at:
            return ApprovalStatus.EXPIRED
        return self.status

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (for stores and for the audit log)."""
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Approval:
        """Inverse of :meth:`to_dict`."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in fields}
        values["status"] = ApprovalStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ApproverRequirement:
    """Who may approve: any of ``scopes`` in the token, or any of ``roles`` in ``role_claim``.

    Scope matching is exact (the development wildcard ``*`` does not make anyone an approver).
    """

    scopes: frozenset[str] = frozenset({DEFAULT_APPROVER_SCOPE})
    roles: frozenset[str] = frozenset()
    role_claim: str = "roles"

    def permits(self, principal: Principal) -> bool:
        """Whether ``principal`` is an approver."""
        if not self.scopes.isdisjoint(principal.scopes):
            return True
        if not self.roles:
            return False
        held = principal.claims.get(self.role_claim)
        if isinstance(held, str):
            return held in self.roles
        if isinstance(held, list | tuple):
            return any(isinstance(role, str) and role in self.roles for role in held)
        return False


def local_operator(requirement: ApproverRequirement | None = None) -> Principal:
    """The approver identity of the ``securemcp approvals`` CLI: the local OS user.

    Its issuer is ``securemcp:local-operator`` and its subject ``user@host``; it holds every
    approver scope and role of ``requirement`` (file or Redis access already implies that trust).
    """
    requirement = requirement or ApproverRequirement()
    try:
        user = getpass.getuser()
    except Exception:  # no login name (containers without a passwd entry)
        user = f"uid-{os.getuid()}" if hasattr(os, "getuid") else "unknown"
    return Principal(
        subject=f"{user}@{socket.gethostname()}",
        issuer="securemcp:local-operator",
        scopes=requirement.scopes | {DEFAULT_APPROVER_SCOPE},
        claims={requirement.role_claim: sorted(requirement.roles)},
        verified=False,
        authenticated_by="local-operator",
    )


# --- the rules every store enforces ------------------------------------------------------------


def new_approval(
    principal: Principal,
    tool: str,
    args_hash: str,
    policy_hash: str,
    ttl: float,
    now: float,
    reason: str = "",
) -> Approval:
    """A fresh pending approval request."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    return Approval(
        id="apr_" + secrets.token_urlsafe(15),
        status=ApprovalStatus.PENDING,
        binding=binding_key(principal, tool, args_hash, policy_hash),
        principal_key=principal_key(principal),
        subject=principal.subject,
        issuer=principal.issuer,
        client_id=principal.client_id,
        tenant=principal.tenant,
        tool=tool,
        args_hash=args_hash,
        policy_hash=policy_hash,
        reason=reason,
        created_at=now,
        expires_at=now + ttl,
    )


def decide_approval(
    approval: Approval | None,
    approval_id: str,
    approver: Principal,
    requirement: ApproverRequirement,
    now: float,
    *,
    approve: bool,
    reusable_for: float | None = None,
    note: str = "",
) -> Approval:
    """The approval after ``approver`` approves or denies it.

    Raises:
        ApprovalInvalid: unknown, already decided, expired, self-approval, or not an approver.
    """
    if approval is None:
        raise ApprovalInvalid("unknown", approval_id)
    if approver.issuer == approval.issuer and approver.subject == approval.subject:
        raise ApprovalInvalid("self_approval", approval_id)
    if not requirement.permits(approver):
        raise ApprovalInvalid("not_an_approver", approval_id)
    state = approval.state(now)
    if state is ApprovalStatus.EXPIRED:
        raise ApprovalInvalid("expired", approval_id)
    if state is not ApprovalStatus.PENDING:
        raise ApprovalInvalid("already_decided", approval_id)
    if reusable_for is not None and reusable_for <= 0:
        raise ValueError("reusable_for must be positive")
    window = reusable_for if reusable_for is not None else approval.expires_at - approval.created_at
    return dataclasses.replace(
        approval,
        status=ApprovalStatus.APPROVED if approve else ApprovalStatus.DENIED,
        decided_by=_who(approver),
        decided_at=now,
        reusable=approve and reusable_for is not None,
        expires_at=now + window if approve else approval.expires_at,
        note=note,
    )


def consume_approval(
    approval: Approval | None,
    approval_id: str,
    principal: Principal,
    tool: str,
    args_hash: str,
    policy_hash: str,
    now: float,
) -> Approval:
    """The approval after one use by this exact call.

    Raises:
        ApprovalInvalid: with ``why`` naming the first check that failed.
    """
    if approval is None:
        raise ApprovalInvalid("unknown", approval_id)
    if approval.principal_key != principal_key(principal):
        raise ApprovalInvalid("other_principal", approval_id)
    if approval.tool != tool:
        raise ApprovalInvalid("other_tool", approval_id)
    if approval.args_hash != args_hash:
        raise ApprovalInvalid("other_arguments", approval_id)
    if approval.policy_hash != policy_hash:
        raise ApprovalInvalid("policy_changed", approval_id)
    state = approval.state(now)
    if state is ApprovalStatus.USED:
        raise ApprovalInvalid("used", approval_id)
    if state is ApprovalStatus.EXPIRED:
        raise ApprovalInvalid("expired", approval_id)
    if state is not ApprovalStatus.APPROVED:
        raise ApprovalInvalid(state.value, approval_id)  # pending or denied
    return dataclasses.replace(
        approval,
        uses=approval.uses + 1,
        status=ApprovalStatus.APPROVED if approval.reusable else ApprovalStatus.USED,
    )


# --- the store protocol -----------------------------------------------------------------------


@runtime_checkable
class ApprovalStore(Protocol):
    """Where approval requests live. Every method is atomic with respect to the others."""

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
        """Record a pending request and return its id (the existing id if one is pending)."""
        ...

    async def approve(
        self, approval_id: str, approver: Principal, reusable_for: float | None = None
    ) -> Approval:
        """Approve; single-use unless ``reusable_for`` seconds are given."""
        ...

    async def deny(self, approval_id: str, approver: Principal, reason: str = "") -> Approval:
        """Deny the request."""
        ...

    async def consume(
        self, approval_id: str, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval:
        """Use the approval for this exact call, or raise :class:`ApprovalInvalid`."""
        ...

    async def get(self, approval_id: str) -> Approval | None:
        """The approval with this id."""
        ...

    async def find(
        self, principal: Principal, tool: str, args_hash: str, policy_hash: str
    ) -> Approval | None:
        """The most recent approval bound to exactly this call."""
        ...

    async def list(self, *, include_decided: bool = False) -> list[Approval]:
        """Pending requests (and, with ``include_decided``, every retained one), oldest first."""
        ...


# --- the gate the pipeline calls ---------------------------------------------------------------


class ApprovalGate:
    """Enforces ``require_approval`` decisions against a store.

    Args:
        store: the approval store.
        ttl: lifetime (seconds) of a new request, and of a granted single-use approval.
        clock: POSIX time source (injectable for tests).
    """

    def __init__(
        self,
        store: ApprovalStore,
        *,
        ttl: float = DEFAULT_TTL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self._clock = clock

    async def check(
        self, request: CallRequest, decision: Decision, *, approval_id: str | None = None
    ) -> Approval:
        """Consume the approval for this exact call, or refuse it.

        With ``approval_id`` (e.g. one the client quotes back), that approval must fit this
        call; otherwise the approval bound to this call is looked up.

        Returns:
            the consumed approval (for the audit record: who approved, when).

        Raises:
            ApprovalRequired: no approval yet; a pending request exists (its id is in the error).
            ApprovalInvalid: the approval was denied, or ``approval_id`` does not fit this call.
        """
        principal = request.principal
        args_hash = request.arguments_hash()
        policy_hash = decision.policy_version or ""
        tool = approval_target(
            request.method,
            request.target,
            request.version,
            resolved=request.version_resolved,
            requested=request.requested_version,
            template=request.template,
        )
        if approval_id is not None:
            return await self.store.consume(approval_id, principal, tool, args_hash, policy_hash)
        existing = await self.store.find(principal, tool, args_hash, policy_hash)
        if existing is not None:
            state = existing.state(self._clock())
            if state is ApprovalStatus.APPROVED:
                return await self.store.consume(
                    existing.id, principal, tool, args_hash, policy_hash
                )
            if state is ApprovalStatus.PENDING:
                raise ApprovalRequired(existing.id, reason=decision.reason)
            if state is ApprovalStatus.DENIED:
                raise ApprovalInvalid("denied", existing.id)
        new_id = await self.store.request(
            principal, tool, args_hash, policy_hash, self.ttl, reason=decision.reason
        )
        raise ApprovalRequired(new_id, reason=decision.reason)


def open_store(
    spec: str | os.PathLike[str] | None = None,
    *,
    approvers: ApproverRequirement | None = None,
) -> ApprovalStore:
    """Open the approval store named by ``spec``.

    ``None`` uses ``$SECUREMCP_APPROVAL_STORE`` or ``./.securemcp/approvals.sqlite3``; a
    ``redis://``, ``rediss://`` or ``unix://`` URL opens a Redis store; anything else is a
    SQLite file path (``sqlite:///path`` also accepted).
    """
    raw = os.fspath(spec) if spec is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE_PATH
    if raw.startswith(("redis://", "rediss://", "unix://")):
        from securemcp.policy.approvals_redis import RedisApprovalStore

        return RedisApprovalStore(raw, approvers=approvers)
    from securemcp.policy.approvals_sqlite import SQLiteApprovalStore

    return SQLiteApprovalStore(raw.removeprefix("sqlite://"), approvers=approvers)
