"""Rate limits and quotas per principal, per tool, per tenant and per client address.

Built on the ``limits`` library (standards.md §7.1). In-process memory by default; a real Redis
server (``redis://...``) shares one set of counters between every replica and process. For
``memory://`` the three ``limits`` strategies run as :mod:`securemcp.policy._memory_windows`, an
exact in-process copy of their semantics at a fraction of the cost per hit.

**Strategy: moving window** (a sliding log) by default. It is exact — N hits in any window of the
configured length, no 2x burst at a fixed window's edge — which is what "limit 10 means 10" and an
honest ``retry_after`` need (the time until the oldest hit leaves the window). Its cost is memory
O(limit) per key, fine for per-agent limits (tens to thousands); for very large quotas (say
100 000/day) choose ``strategy="fixed-window"`` (one counter) or ``"sliding-window-counter"``
(two counters, approximate). Caveat from the ``limits`` Redis script: moving-window timestamps
come from each client's clock, so keep replica clocks in sync (NTP).

**Keys** never join raw identifiers with ``/`` (``limits`` does not escape them, standards.md §7.1
pitfall): each bucket key is the SHA-256 of the canonical JSON array
``[namespace, limit name, dimension, tenant, issuer, subject, tool]`` (only the parts the dimension
uses), so ids containing ``/`` cannot collide and raw user ids never reach Redis. Principal keys
use verified claims only (the request's :class:`~securemcp.context.Principal`). The "tool" is the
component that serves the call: a tool or prompt name, a concrete resource's URI, or for a
resource template read ``["template", URI template]``. FastMCP turns many URIs into one read of a
template (``items://7``, ``items://07`` and ``items://+7`` all read item 7 when ``id: int``), so
a template's reads share one bucket, like a tool's calls whatever their arguments.

**Order** (standards.md §7.2): :meth:`RateLimiter.hit_address` runs *before* authentication and
costs no token verification (one SHA-256 of the address); :meth:`RateLimiter.hit` then checks
per-principal, per-principal-per-tool, per-tenant and per-tool limits in that order and stops at
the first refusal, so a caller over their own limit does not consume their tenant's or the tool's
shared budget (noisy-neighbour protection).

**Storage failure** (Redis unreachable): the configured behaviour applies — ``"deny"`` (fail
closed, the default) or ``"allow"`` — per limiter or per limit, and every failure is reported to
``on_storage_failure`` (for the audit log) and logged (at most every 10 s). After a failure the
storage is not retried for ``breaker_seconds`` (1 s), so an outage does not add a connection
timeout to every call.
"""

from __future__ import annotations

import fnmatch
import hashlib
import inspect
import ipaddress
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from limits import RateLimitItem, parse_many
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.aio.strategies import RateLimiter as _Strategy
from limits.storage import storage_from_string

from securemcp.context import Principal
from securemcp.policy._memory_windows import MemoryWindows, Window, memory_windows
from securemcp.policy.errors import RateLimited
from securemcp.policy.request import canonical_json

__all__ = [
    "RateDecision",
    "RateLimit",
    "RateLimiter",
    "StorageFailure",
]

logger = logging.getLogger("securemcp.policy.ratelimit")

Dimension = Literal["principal", "principal_tool", "tenant", "tool", "address"]
StorageBehaviour = Literal["deny", "allow"]
Strategy = Literal["moving-window", "fixed-window", "sliding-window-counter"]

_ORDER: Final[dict[str, int]] = {
    "address": 0,
    "principal": 1,
    "principal_tool": 2,
    "tenant": 3,
    "tool": 4,
}
_STRATEGIES: Final[dict[str, type[_Strategy]]] = {
    "moving-window": MovingWindowRateLimiter,
    "fixed-window": FixedWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}
_KEY_CACHE_LIMIT: Final = 65536
_LOG_EVERY: Final = 10.0

#: The storage error reported while the circuit is open (the storage is not retried yet).
_CIRCUIT_OPEN: Final = "circuit_open"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit.

    Attributes:
        name: reported on refusal (``retry_after`` + ``limit``) and in audit records.
        limit: ``limits`` notation: ``"10/minute"``, ``"3 per 2 seconds"``,
            ``"2/second;100/minute"`` (all must hold).
        per: ``principal`` (tenant, issuer, subject), ``principal_tool`` (… plus the tool),
            ``tenant``, ``tool`` (all callers together) or ``address`` (pre-authentication, by
            client address; checked only by :meth:`RateLimiter.hit_address`).
        tools: tool-name globs the limit applies to (empty: every tool). For resources they
            match the URI (as FastMCP reads it) or, for a template read, the URI template.
        cost: units each call consumes (an expensive tool may cost more).
        on_storage_error: overrides the limiter's behaviour when the storage fails.
    """

    name: str
    limit: str
    per: Dimension = "principal"
    tools: tuple[str, ...] = ()
    cost: int = 1
    on_storage_error: StorageBehaviour | None = None
    items: tuple[RateLimitItem, ...] = field(init=False, repr=False, compare=False)
    _tools: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.per not in _ORDER:
            raise ValueError(f"rate limit {self.name!r}: per must be one of {', '.join(_ORDER)}")
        tools: Any = self.tools
        if isinstance(tools, str):
            object.__setattr__(self, "tools", (tools,))
        try:
            items = tuple(parse_many(self.limit))
        except ValueError as exc:
            raise ValueError(f"rate limit {self.name!r}: {exc}") from None
        if not items:
            raise ValueError(f"rate limit {self.name!r}: no limit in {self.limit!r}")
        if self.cost < 1 or any(self.cost > item.amount for item in items):
            raise ValueError(
                f"rate limit {self.name!r}: cost must be between 1 and the limit amount"
            )
        if self.on_storage_error not in (None, "deny", "allow"):
            raise ValueError(f"rate limit {self.name!r}: on_storage_error must be deny or allow")
        pattern = (
            re.compile("|".join(f"(?:{fnmatch.translate(t)})" for t in self.tools))
            if self.tools
            else None
        )
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "_tools", pattern)

    def applies_to(self, tool: str) -> bool:
        """Whether this limit covers ``tool``."""
        return self._tools is None or self._tools.match(tool) is not None

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> RateLimit:
        """Build from ``{"name": .., "limit": .., "per": .., "tools": [..], "cost": ..}``."""
        values = dict(spec)
        if "tools" in values and not isinstance(values["tools"], str):
            values["tools"] = tuple(values["tools"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The outcome of a rate-limit check.

    Attributes:
        allowed: whether the call may proceed.
        retry_after: seconds until the refused call may succeed (0 when allowed).
        limit: name of the limit that refused (or whose storage failed).
        key: hashed bucket key of that limit (for the audit record; not reversible).
        storage_error: when the storage failed, the exception's type name (``circuit_open``
            while the storage is not retried after a failure); never its message.
    """

    allowed: bool
    retry_after: float = 0.0
    limit: str | None = None
    key: str | None = None
    storage_error: str | None = None

    def raise_if_refused(self) -> None:
        """Raise :class:`~securemcp.policy.errors.RateLimited` when the call is refused."""
        if not self.allowed:
            raise RateLimited(self.retry_after, self.limit, reason=self.storage_error or self.key)


ALLOWED: Final = RateDecision(True)


@dataclass(frozen=True, slots=True)
class StorageFailure:
    """A rate-limit storage failure, reported for the audit log.

    Attributes:
        limit: the limit being checked.
        error: the exception's type name (``circuit_open`` while the storage is not retried);
            never its message, which can name hosts or credentials (it is logged instead).
        behaviour: what was done about it (``deny`` or ``allow``).
        at: POSIX time.
    """

    limit: str
    error: str
    behaviour: StorageBehaviour
    at: float = field(default_factory=time.time)


class _HasRequestParts(Protocol):
    @property
    def principal(self) -> Principal: ...
    @property
    def tenant(self) -> str | None: ...
    @property
    def target(self) -> str: ...


def _async_uri(uri: str) -> str:
    if uri.startswith("async+"):
        return uri
    return "async+" + uri


class RateLimiter:
    """Checks :class:`RateLimit` rules against a storage. See the module docstring.

    Args:
        rules: the limits.
        storage_uri: ``memory://`` (default, per process) or a ``limits`` storage URI such as
            ``redis://host:6379/0``, ``rediss://...``, ``redis+unix:///path.sock``,
            ``redis+sentinel://...``, ``redis+cluster://...``.
        on_storage_error: ``deny`` (default) or ``allow`` when the storage fails.
        on_storage_failure: called with a :class:`StorageFailure` on every failure.
        strategy: ``moving-window`` (default), ``fixed-window`` or ``sliding-window-counter``.
        namespace: separates deployments that share one Redis.
        breaker_seconds: after a storage failure, skip the storage for this long.
        ipv6_prefix: IPv6 client addresses are limited per network of this prefix length.
        storage_options: extra options for the storage (e.g. redis ``socket_timeout``).
    """

    def __init__(
        self,
        rules: Iterable[RateLimit | Mapping[str, Any]],
        storage_uri: str = "memory://",
        *,
        on_storage_error: StorageBehaviour = "deny",
        on_storage_failure: Callable[[StorageFailure], object] | None = None,
        strategy: Strategy = "moving-window",
        namespace: str = "securemcp",
        breaker_seconds: float = 1.0,
        ipv6_prefix: int = 64,
        storage_options: Mapping[str, Any] | None = None,
    ) -> None:
        if on_storage_error not in ("deny", "allow"):
            raise ValueError("on_storage_error must be 'deny' or 'allow'")
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}")
        parsed = [r if isinstance(r, RateLimit) else RateLimit.from_mapping(r) for r in rules]
        names = [r.name for r in parsed]
        if len(set(names)) != len(names):
            raise ValueError("rate limit names must be unique")
        parsed.sort(key=lambda r: _ORDER[r.per])
        self.rules: tuple[RateLimit, ...] = tuple(parsed)
        self._call_rules = tuple(r for r in parsed if r.per != "address")
        self._address_rules = tuple(r for r in parsed if r.per == "address")
        self.on_storage_error: StorageBehaviour = on_storage_error
        self._on_failure = on_storage_failure
        self._namespace = namespace
        self._breaker = breaker_seconds
        self._ipv6_prefix = ipv6_prefix
        options: dict[str, Any] = {"wrap_exceptions": True}
        uri = _async_uri(storage_uri)
        if uri.startswith(("async+redis", "async+rediss")):
            options |= {
                "implementation": "redispy",
                "socket_connect_timeout": 0.5,
                "socket_timeout": 0.5,
            }
        options |= dict(storage_options or {})
        # memory:// (without storage options): in-process windows, no await, no task, no thread
        self._memory: MemoryWindows | None = None
        self._memory_windows: dict[str, tuple[Window, ...]] = {}
        self._strategy: _Strategy | None = None
        if uri == "async+memory://" and not storage_options:
            self._memory = memory_windows(strategy)
            self._memory_windows = {
                rule.name: tuple(self._memory.window(item) for item in rule.items)
                for rule in parsed
            }
            self._storage: Any = self._memory
        else:
            self._storage = storage_from_string(uri, **options)
            self._strategy = _STRATEGIES[strategy](self._storage)
        self._keys: dict[tuple[Any, ...], str] = {}
        self._down_until = 0.0
        self._last_log = 0.0

    @property
    def storage(self) -> Any:
        """The storage (for tests and maintenance): a ``limits`` storage, or for ``memory://``
        the :class:`~securemcp.policy._memory_windows.MemoryWindows` holding the counters."""
        return self._storage

    # --- keys -------------------------------------------------------------------------------

    def _key(self, parts: tuple[Any, ...]) -> str:
        key = self._keys.get(parts)
        if key is None:
            key = hashlib.sha256(canonical_json([self._namespace, *parts])).hexdigest()
            if len(self._keys) >= _KEY_CACHE_LIMIT:
                self._keys.clear()
            self._keys[parts] = key
        return key

    def _parts(
        self, rule: RateLimit, request: _HasRequestParts, template: str | None = None
    ) -> tuple[Any, ...] | None:
        """The parts of ``rule``'s bucket key for ``request`` (``template``: the URI template
        serving a resource template read, counted in place of the URI read)."""
        principal = request.principal
        if rule.per == "principal":
            return (rule.name, "principal", request.tenant, principal.issuer, principal.subject)
        served: Any = request.target if template is None else ("template", template)
        if rule.per == "principal_tool":
            return (
                rule.name,
                "principal_tool",
                request.tenant,
                principal.issuer,
                principal.subject,
                served,
            )
        if rule.per == "tenant":
            if request.tenant is None:
                return None  # no tenant: nothing to share a tenant budget with
            return (rule.name, "tenant", request.tenant)
        return (rule.name, "tool", served)

    def _address(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address
        if ip.version == 6 and getattr(ip, "ipv4_mapped", None) is None:
            return str(ipaddress.ip_network(f"{ip}/{self._ipv6_prefix}", strict=False))
        mapped = getattr(ip, "ipv4_mapped", None)
        return str(mapped) if mapped is not None else str(ip)

    # --- checking ---------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[StorageFailure], object]) -> None:
        """Also report every storage failure to ``callback`` (e.g. the audit log)."""
        previous = self._on_failure

        def both(failure: StorageFailure) -> None:
            if previous is not None:
                previous(failure)
            callback(failure)

        self._on_failure = both

    async def hit(self, request: _HasRequestParts) -> RateDecision:
        """Count one call against every applicable limit; stop at the first refusal.

        A limit applies when its ``tools`` globs match the request's target or, for a resource
        template read (a :class:`~securemcp.policy.request.CallRequest` whose ``template`` is
        set), the template's URI template.
        """
        tool = request.target
        template: str | None = getattr(request, "template", None)
        degraded: RateDecision | None = None
        memory = self._memory
        for rule in self._call_rules:
            if not rule.applies_to(tool) and (template is None or not rule.applies_to(template)):
                continue
            parts = self._parts(rule, request, template)
            if parts is None:
                continue
            if memory is not None:  # in-process counters: no coroutine frame per rule
                decision = self._memory_hit(memory, rule, self._key(parts))
            else:
                decision = await self._hit(rule, self._key(parts))
            if decision is not None:
                if not decision.allowed:
                    return decision
                degraded = degraded or decision  # storage failed, this limit fails open
        return degraded or ALLOWED

    async def hit_address(self, address: str | None) -> RateDecision:
        """Pre-authentication limit per client address (``None``: no address, e.g. stdio)."""
        if not address or not self._address_rules:
            return ALLOWED
        network = self._address(address)
        degraded: RateDecision | None = None
        for rule in self._address_rules:
            decision = await self._hit(rule, self._key((rule.name, "address", network)))
            if decision is not None:
                if not decision.allowed:
                    return decision
                degraded = degraded or decision
        return degraded or ALLOWED

    async def _hit(self, rule: RateLimit, key: str) -> RateDecision | None:
        """``None`` when allowed; a decision when refused or the storage failed."""
        memory = self._memory
        if memory is not None:  # in-process: no await, no task, never fails on I/O
            return self._memory_hit(memory, rule, key)
        if self._down_until and time.monotonic() < self._down_until:
            return self._storage_failed(rule, key, None)
        try:
            strategy = self._strategy
            assert strategy is not None  # set whenever _memory is not
            for item in rule.items:
                if not await strategy.hit(item, key, cost=rule.cost):
                    stats = await strategy.get_window_stats(item, key)
                    retry_after = max(0.0, stats.reset_time - time.time())
                    return RateDecision(False, retry_after, rule.name, key)
        except Exception as exc:  # StorageError and anything the client library raises
            self._down_until = time.monotonic() + self._breaker
            return self._storage_failed(rule, key, exc)
        self._down_until = 0.0
        return None

    def _memory_hit(self, memory: MemoryWindows, rule: RateLimit, key: str) -> RateDecision | None:
        """:meth:`_hit` for the in-process counters, synchronously (the same failure handling:
        an unexpected error is a storage failure, decided by the rule's ``on_storage_error``)."""
        if self._down_until and time.monotonic() < self._down_until:
            return self._storage_failed(rule, key, None)
        try:
            refused = memory.hit(self._memory_windows[rule.name], key, rule.cost)
        except Exception as exc:
            self._down_until = time.monotonic() + self._breaker
            return self._storage_failed(rule, key, exc)
        self._down_until = 0.0
        if refused is not None:  # seconds until the limit allows the call again
            return RateDecision(False, refused, rule.name, key)
        return None

    def _storage_failed(self, rule: RateLimit, key: str, exc: Exception | None) -> RateDecision:
        """Decide a call whose limit could not be checked (``exc``; ``None``: the circuit is
        open) by the rule's ``on_storage_error``, and report it.

        Only the exception's type name goes into the decision and the :class:`StorageFailure`
        (and so into audit records and the refusal): a storage's message can name hosts, paths
        or, for a custom storage, credentials. The message goes to the server's log only.
        """
        behaviour = rule.on_storage_error or self.on_storage_error
        error = _CIRCUIT_OPEN if exc is None else type(exc).__name__
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY:
            self._last_log = now
            logger.error(
                "securemcp rate-limit storage failed (%s); limit %r %s calls (fail %s)",
                error if exc is None else f"{error}: {exc}",
                rule.name,
                "refuses" if behaviour == "deny" else "allows",
                "closed" if behaviour == "deny" else "open",
            )
        if self._on_failure is not None:
            try:
                self._on_failure(StorageFailure(rule.name, error, behaviour))
            except Exception:
                logger.exception("securemcp on_storage_failure callback failed")
        if behaviour == "allow":
            return RateDecision(True, 0.0, rule.name, key, storage_error=error)
        return RateDecision(False, self._breaker, rule.name, key, storage_error=error)

    async def reset(self) -> None:
        """Clear every counter in the storage (tests and maintenance)."""
        result = self._storage.reset()
        if inspect.isawaitable(result):
            await result
