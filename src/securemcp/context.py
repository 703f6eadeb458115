"""The per-call security context: who is calling, what they call, and how.

Guarantee 1 of securemcp: every ``tools/call``, ``resources/read`` and ``prompts/get`` runs inside a
*fresh*, immutable :class:`SecurityContext` bound in a :class:`contextvars.ContextVar` and reset
in ``finally``. The context is *closed* when its call ends, so a background task that kept a
reference (or inherited the ContextVar) gets :class:`~securemcp.errors.ContextClosed` instead of
the caller's identity.

Neither :class:`Principal` nor :class:`SecurityContext` ever holds a raw credential.
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, NoReturn

from securemcp.errors import ContextClosed, NoActiveCall

__all__ = [
    "Actor",
    "Principal",
    "SecurityContext",
    "bind",
    "current",
    "freeze_claims",
]

#: Scope that grants everything, honoured **only** for unverified development principals.
DEVELOPMENT_WILDCARD: Final = "*"


def freeze_claims(value: Any) -> Any:
    """A deeply read-only copy of decoded JSON claims (dicts → mappingproxy, lists → tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({str(k): freeze_claims(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze_claims(v) for v in value)
    return value


@dataclass(frozen=True, slots=True)
class Actor:
    """One link of an RFC 8693 ``act`` (actor) chain: who is acting on the subject's behalf."""

    subject: str
    issuer: str | None = None
    client_id: str | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """A caller whose identity was established by a credential (or, in development, assumed).

    Attributes:
        subject: the ``sub`` of the credential (unique within ``issuer``).
        issuer: who vouched for the subject (the token's ``iss``).
        client_id: the OAuth client acting for the subject (``client_id`` / ``azp``), if any.
        scopes: granted scopes, exact and case-sensitive.
        tenant: tenant or organisation, from a configured claim, if any.
        claims: every verified claim, read-only.
        act: the RFC 8693 actor chain, outermost (current) actor first.
        verified: ``False`` only for the development principal; never ``False`` in production.
        authenticated_by: how identity was established (``"jwt"``, ``"development"``, ...).
        expires_at: POSIX time after which the credential is no longer valid, if known.
    """

    subject: str
    issuer: str
    client_id: str | None = None
    scopes: frozenset[str] = frozenset()
    tenant: str | None = None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    act: tuple[Actor, ...] = ()
    verified: bool = True
    authenticated_by: str = "jwt"
    expires_at: float | None = None

    def __post_init__(self) -> None:
        expires_at: object = self.expires_at
        if expires_at is not None and (
            type(expires_at) not in (int, float) or not math.isfinite(expires_at)  # type: ignore[arg-type]
        ):
            # NaN would never compare as past, infinity cannot become FastMCP's integer expiry
            raise ValueError(f"expires_at must be a finite POSIX time or None, not {expires_at!r}")
        scopes: object = self.scopes  # callers may pass any iterable of strings
        if not isinstance(scopes, frozenset):
            object.__setattr__(self, "scopes", frozenset(self.scopes))
        if not isinstance(self.claims, MappingProxyType):
            object.__setattr__(self, "claims", freeze_claims(dict(self.claims)))

    def missing_scopes(self, required: Iterable[str]) -> frozenset[str]:
        """The scopes in ``required`` that this principal does not hold.

        The development wildcard ``"*"`` counts only for an unverified development principal; in
        a verified token it is an ordinary (meaningless) scope string.
        """
        needed = frozenset(required)
        if not self.verified and DEVELOPMENT_WILDCARD in self.scopes:
            return frozenset()
        return needed - self.scopes

    @property
    def pseudonym(self) -> str:
        """Stable pseudonymous id for telemetry: a hash of (issuer, subject) and the tenant when
        there is one (a multi-tenant issuer's ``sub`` may be unique only within its tenant),
        never the subject."""
        return _pseudonym(self.issuer, self.subject, self.tenant)


@functools.lru_cache(maxsize=4096)
def _pseudonym(issuer: str, subject: str, tenant: str | None) -> str:
    """The first 16 hex digits of SHA-256(issuer NUL subject), for the callers seen recently.

    With a tenant, the parts are length-prefixed (``len:part`` each), so no subject or tenant
    spelling can make two callers one; without one the value is the one earlier releases gave.
    """
    if tenant is None:
        material = f"{issuer}\x00{subject}"
    else:
        material = "".join(f"{len(part)}:{part}" for part in (issuer, subject, tenant))
    return hashlib.sha256(material.encode()).hexdigest()[:16]


_CLOSED_READABLE: Final = frozenset({"call_id", "closed"})


class SecurityContext:
    """The immutable security context of one call. Read it with :func:`current`.

    Every attribute except ``call_id`` and ``closed`` raises
    :class:`~securemcp.errors.ContextClosed` once the call has ended.
    """

    __slots__ = (
        "_call_id",
        "_method",
        "_open",
        "_origin",
        "_parent_call_id",
        "_principal",
        "_server_name",
        "_started_at",
        "_target",
        "_trace_id",
        "_transport",
    )

    _call_id: str
    _method: str
    _open: bool
    _origin: object
    _parent_call_id: str | None
    _principal: Principal
    _server_name: str
    _started_at: datetime | float  # a POSIX timestamp until first read (see _begin)
    _target: str
    _trace_id: str | None
    _transport: str

    def __init__(
        self,
        *,
        call_id: str,
        method: str,
        target: str,
        principal: Principal,
        transport: str,
        started_at: datetime,
        trace_id: str | None = None,
        server_name: str = "",
        parent_call_id: str | None = None,
    ) -> None:
        # The slots' own setters: __setattr__ refuses, and object.__setattr__ is slower.
        _set_call_id(self, call_id)
        _set_method(self, method)
        _set_target(self, target)
        _set_principal(self, principal)
        _set_transport(self, transport)
        _set_started_at(self, started_at)
        _set_trace_id(self, trace_id)
        _set_server_name(self, server_name)
        _set_parent_call_id(self, parent_call_id)
        _set_origin(self, None)
        _set_open(self, True)

    @classmethod
    def _begin(
        cls,
        call_id: str,
        method: str,
        target: str,
        principal: Principal,
        transport: str,
        trace_id: str | None,
        server_name: str,
        parent_call_id: str | None,
        origin: object = None,
    ) -> SecurityContext:
        """The context of a call starting now (the pipeline's constructor).

        ``started_at`` is kept as a POSIX timestamp and becomes a ``datetime`` when first read:
        building one per call costs more than most calls ever read it. ``origin`` is the request
        the caller's credential came with (see ``securemcp.pipeline``): a task that outlives
        the call inherits it, and is refused the credential once the call has ended.
        """
        context = object.__new__(cls)
        _set_call_id(context, call_id)
        _set_method(context, method)
        _set_target(context, target)
        _set_principal(context, principal)
        _set_transport(context, transport)
        _set_started_at(context, time.time())
        _set_trace_id(context, trace_id)
        _set_server_name(context, server_name)
        _set_parent_call_id(context, parent_call_id)
        _set_origin(context, origin)
        _set_open(context, True)
        return context

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError(f"SecurityContext is immutable; cannot set {name!r}")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"SecurityContext is immutable; cannot delete {name!r}")

    def __repr__(self) -> str:
        state = "open" if self._open else "closed"
        return f"<SecurityContext call_id={self._call_id} {state}>"

    def _live(self) -> None:
        if not self._open:
            raise ContextClosed(reason=f"call {self._call_id} has ended")

    def _close(self) -> None:
        _set_open(self, False)

    @property
    def call_id(self) -> str:
        """Unique id of this call (also in audit records and spans)."""
        return self._call_id

    @property
    def closed(self) -> bool:
        """``True`` once the call has ended."""
        return not self._open

    @property
    def method(self) -> str:
        """MCP method: ``tools/call``, ``resources/read``, ``prompts/get`` or a ``*/list``."""
        self._live()
        return self._method

    @property
    def target(self) -> str:
        """Tool name, resource URI or prompt name as this server addresses it."""
        self._live()
        return self._target

    @property
    def principal(self) -> Principal:
        """The verified caller."""
        self._live()
        return self._principal

    @property
    def transport(self) -> str:
        """``stdio``, ``streamable-http``, ``sse`` or ``in-memory``."""
        self._live()
        return self._transport

    @property
    def started_at(self) -> datetime:
        """When the call started (UTC)."""
        self._live()
        started: datetime | float = self._started_at
        if type(started) is float:  # from _begin: the same instant, as a datetime from now on
            started = datetime.fromtimestamp(started, UTC)
            _set_started_at(self, started)
        return started  # type: ignore[return-value]

    @property
    def trace_id(self) -> str | None:
        """W3C trace id of the call's span, when tracing is active."""
        self._live()
        return self._trace_id

    @property
    def server_name(self) -> str:
        """Name of the securemcp server that bound this context."""
        self._live()
        return self._server_name

    @property
    def parent_call_id(self) -> str | None:
        """For a call delegated to a mounted server, the call id of the outer call."""
        self._live()
        return self._parent_call_id


def _slot_setter(name: str) -> Any:
    return SecurityContext.__dict__[name].__set__


_set_call_id = _slot_setter("_call_id")
_set_method = _slot_setter("_method")
_set_target = _slot_setter("_target")
_set_principal = _slot_setter("_principal")
_set_transport = _slot_setter("_transport")
_set_started_at = _slot_setter("_started_at")
_set_trace_id = _slot_setter("_trace_id")
_set_server_name = _slot_setter("_server_name")
_set_parent_call_id = _slot_setter("_parent_call_id")
_set_open = _slot_setter("_open")
_set_origin = _slot_setter("_origin")


_CURRENT: contextvars.ContextVar[SecurityContext | None] = contextvars.ContextVar(
    "securemcp.security_context", default=None
)


def current() -> SecurityContext:
    """Return the security context of the call in progress.

    Raises:
        NoActiveCall: outside a tool, resource or prompt call.
        ContextClosed: inside a task that outlived the call it was started from.
    """
    context = _CURRENT.get()
    if context is None:
        raise NoActiveCall()
    context._live()
    return context


def peek() -> SecurityContext | None:
    """The bound context, open or closed, without raising (for securemcp's own plumbing)."""
    return _CURRENT.get()


@contextmanager
def bind(context: SecurityContext) -> Iterator[SecurityContext]:
    """Bind ``context`` for the duration of a call; reset and close it in ``finally``."""
    token = _CURRENT.set(context)
    try:
        yield context
    finally:
        _CURRENT.reset(token)
        context._close()
