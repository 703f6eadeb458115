"""The outcome of a policy evaluation: :class:`Decision`.

A decision is one of four effects (the PDP vocabulary of XACML / AGT / MACAW, narrowed to what an
MCP server can enforce):

* ``allow`` — run the call;
* ``deny`` — refuse it, with an internal ``reason`` for the audit log;
* ``require_approval`` — refuse it until a human approver approves exactly this call
  (see :mod:`securemcp.policy.approvals`);
* ``constrain`` — run it within :class:`Constraints`: argument bounds (checked before the tool
  runs), a timeout and a result-size limit (enforced by the pipeline).

Every decision records the ``rule`` that produced it and the ``policy_version`` (the SHA-256 of
the policy source), so the audit record says exactly which policy text decided (AGT's
``policy_version``; DESIGN.md guarantee 4). Decisions are immutable values.

The pipeline enforces a decision like this::

    if decision.effect is Effect.DENY: raise PolicyDenied(reason=decision.reason)
    if decision.effect is Effect.REQUIRE_APPROVAL: await approvals.check(request, decision)
    problems = decision.constraints.violations(request.arguments)
    if problems: raise PolicyDenied(reason="; ".join(problems))
    # run with anyio.fail_after(decision.constraints.timeout_seconds) when set, and refuse a
    # result larger than decision.constraints.max_result_bytes
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final

from securemcp.policy.request import finite_json, freeze, is_number, same_json, thaw

__all__ = ["NO_CONSTRAINTS", "ArgumentBound", "Constraints", "Decision", "Effect"]


class Effect(StrEnum):
    """What a decision tells the pipeline to do."""

    ALLOW = "allow"
    DENY = "deny"
    REQUIRE_APPROVAL = "require_approval"
    CONSTRAIN = "constrain"


_SIZED: Final = (str, list, tuple, dict, MappingProxyType)


def _count(value: object) -> bool:
    """``None`` or a non-negative integer (never a bool): a size or length limit."""
    return value is None or (isinstance(value, int) and value.__class__ is not bool and value >= 0)


@dataclass(frozen=True, slots=True)
class ArgumentBound:
    """Bounds on one argument. A bound applies only when the argument is present.

    Attributes:
        min: smallest allowed number (inclusive).
        max: largest allowed number (inclusive).
        enum: the only allowed values.
        max_length: longest allowed string, list or object.
    """

    min: float | None = None
    max: float | None = None
    enum: tuple[Any, ...] | None = None
    max_length: int | None = None

    def __post_init__(self) -> None:
        # The one validation of a bound, however it is built (see from_mapping).
        for key in ("min", "max"):
            bound = getattr(self, key)
            # A NaN bound compares false with everything, so it would silently never hold.
            if bound is not None and (not is_number(bound) or not math.isfinite(bound)):
                raise ValueError(f"{key} must be a finite number (not nan or inf), got {bound!r}")
        if not _count(self.max_length):
            raise ValueError("max_length must be a non-negative integer")
        enum: Any = self.enum
        if enum is not None:
            if not isinstance(enum, list | tuple):
                raise ValueError("enum must be a list")
            if not finite_json(enum):
                raise ValueError("enum values must be finite numbers (no nan or inf)")
            # Frozen like the arguments it is compared with (arrays are tuples there).
            object.__setattr__(self, "enum", freeze(enum))

    def violation(self, name: str, value: Any) -> str | None:
        """Describe how ``value`` breaks this bound, or ``None`` when it does not."""
        if self.enum is not None and not any(_same(value, e) for e in self.enum):
            return f"argument {name!r} is not one of the allowed values"
        if self.min is not None or self.max is not None:
            if not is_number(value) or (isinstance(value, float) and math.isnan(value)):
                return f"argument {name!r} must be a number"
            if self.min is not None and value < self.min:
                return f"argument {name!r} is below the minimum {self.min:g}"
            if self.max is not None and value > self.max:
                return f"argument {name!r} is above the maximum {self.max:g}"
        if self.max_length is not None:
            if not isinstance(value, _SIZED):
                return f"argument {name!r} has no length"
            if len(value) > self.max_length:
                return f"argument {name!r} is longer than {self.max_length}"
        return None

    def merge(self, other: ArgumentBound) -> ArgumentBound:
        """The tighter of two bounds (both must hold)."""
        enum: tuple[Any, ...] | None
        if self.enum is None or other.enum is None:
            enum = self.enum if other.enum is None else other.enum
        else:
            enum = tuple(v for v in self.enum if any(_same(v, o) for o in other.enum))
        return ArgumentBound(
            min=_tighter(self.min, other.min, max),
            max=_tighter(self.max, other.max, min),
            enum=enum,
            max_length=_tighter(self.max_length, other.max_length, min),
        )

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> ArgumentBound:
        """Build from ``{"min": .., "max": .., "enum": [..], "max_length": ..}``.

        Raises:
            ValueError: unknown keys or values of the wrong type.
        """
        if not isinstance(spec, Mapping):
            raise ValueError("bounds must be a table of min, max, enum, max_length")
        unknown = set(spec) - {"min", "max", "enum", "max_length"}
        if unknown:
            raise ValueError(f"unknown argument bound(s): {', '.join(sorted(unknown))}")
        return cls(
            min=spec.get("min"),
            max=spec.get("max"),
            enum=spec.get("enum"),
            max_length=spec.get("max_length"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The bound as JSON-ready data (unset fields omitted)."""
        out: dict[str, Any] = {}
        for key in ("min", "max", "max_length"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.enum is not None:
            out["enum"] = thaw(self.enum)
        return out


#: Equality that keeps ``True`` distinct from ``1`` at every depth (JSON types differ).
_same: Final = same_json


def _tighter(a: Any, b: Any, pick: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


_EMPTY: Final[Mapping[str, ArgumentBound]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Constraints:
    """Conditions an allowed call runs under.

    Attributes:
        max_result_bytes: refuse a result larger than this (serialized size).
        timeout_seconds: cancel the call after this many seconds.
        arguments: argument name → :class:`ArgumentBound`, checked before the tool runs.
    """

    max_result_bytes: int | None = None
    timeout_seconds: float | None = None
    arguments: Mapping[str, ArgumentBound] = field(default_factory=lambda: _EMPTY)

    def __post_init__(self) -> None:
        # The one validation of constraints, however they are built (see from_mapping).
        timeout: Any = self.timeout_seconds
        if timeout is not None:
            if not is_number(timeout) or not math.isfinite(timeout) or timeout <= 0:
                raise ValueError("timeout_seconds must be a positive finite number")
            object.__setattr__(self, "timeout_seconds", float(timeout))
        if not _count(self.max_result_bytes):
            raise ValueError("max_result_bytes must be a non-negative integer")
        arguments: Any = self.arguments
        if not isinstance(arguments, MappingProxyType):
            if not isinstance(arguments, Mapping):
                raise ValueError("arguments must be a table of argument name -> bounds")
            bounds: dict[str, ArgumentBound] = {}
            for name, bound in arguments.items():
                if isinstance(bound, ArgumentBound):
                    bounds[str(name)] = bound
                    continue
                if not isinstance(bound, Mapping):
                    raise ValueError(f"bounds for argument {name!r} must be a table")
                try:
                    bounds[str(name)] = ArgumentBound.from_mapping(bound)
                except ValueError as exc:
                    raise ValueError(f"argument {name!r}: {exc}") from None
            object.__setattr__(self, "arguments", MappingProxyType(bounds))

    def __bool__(self) -> bool:
        return bool(
            self.max_result_bytes is not None or self.timeout_seconds is not None or self.arguments
        )

    def violations(self, arguments: Mapping[str, Any]) -> tuple[str, ...]:
        """Every way ``arguments`` break the argument bounds (empty when they comply)."""
        problems: list[str] = []
        for name, bound in self.arguments.items():
            if name in arguments:
                problem = bound.violation(name, arguments[name])
                if problem is not None:
                    problems.append(problem)
        return tuple(problems)

    def merge(self, other: Constraints) -> Constraints:
        """Constraints that satisfy both ``self`` and ``other`` (the tighter of each)."""
        if not other:
            return self
        if not self:
            return other
        merged = dict(self.arguments)
        for name, bound in other.arguments.items():
            merged[name] = merged[name].merge(bound) if name in merged else bound
        return Constraints(
            max_result_bytes=_tighter(self.max_result_bytes, other.max_result_bytes, min),
            timeout_seconds=_tighter(self.timeout_seconds, other.timeout_seconds, min),
            arguments=merged,
        )

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> Constraints:
        """Build from ``{"max_result_bytes": .., "timeout_seconds": .., "arguments": {..}}``.

        Raises:
            ValueError: unknown keys or values of the wrong type.
        """
        unknown = set(spec) - {"max_result_bytes", "timeout_seconds", "arguments"}
        if unknown:
            raise ValueError(f"unknown constraint(s): {', '.join(sorted(unknown))}")
        return cls(
            max_result_bytes=spec.get("max_result_bytes"),
            timeout_seconds=spec.get("timeout_seconds"),
            arguments=spec.get("arguments", _EMPTY),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for audit records (unset fields omitted)."""
        out: dict[str, Any] = {}
        if self.max_result_bytes is not None:
            out["max_result_bytes"] = self.max_result_bytes
        if self.timeout_seconds is not None:
            out["timeout_seconds"] = self.timeout_seconds
        if self.arguments:
            out["arguments"] = {k: v.to_dict() for k, v in self.arguments.items()}
        return out


#: No constraints at all.
NO_CONSTRAINTS: Final = Constraints()


@dataclass(frozen=True, slots=True)
class Decision:
    """An immutable policy decision.

    Attributes:
        effect: allow, deny, require_approval or constrain.
        reason: why (internal: for the audit and server log, never sent to the client).
        rule: the rule or hook that produced the decision.
        policy_version: SHA-256 (hex) of the policy source, when the policy has one.
        constraints: conditions for ``constrain`` (and for an approved ``require_approval``).
        detail: internal diagnostic (e.g. the exception a failing hook raised), audit only.
    """

    effect: Effect
    reason: str = ""
    rule: str | None = None
    policy_version: str | None = None
    constraints: Constraints = NO_CONSTRAINTS
    detail: str = ""

    def __post_init__(self) -> None:
        # The pipeline tests effects by identity (``effect is Effect.DENY``): a plain string
        # ("deny") must become the member, and anything else must not be a decision at all,
        # or a hook's Decision("deny") would fall through to allow. A hook that builds an
        # invalid decision raises here, which the hook machinery turns into a fail-closed deny.
        effect: Any = self.effect
        if effect.__class__ is not Effect:
            try:
                object.__setattr__(self, "effect", Effect(effect))
            except (ValueError, TypeError):
                raise ValueError(
                    f"Decision effect must be one of {', '.join(e.value for e in Effect)}, "
                    f"got {effect!r}"
                ) from None
        if self.constraints.__class__ is not Constraints and not isinstance(
            self.constraints, Constraints
        ):
            raise TypeError(
                f"Decision constraints must be a Constraints, not {type(self.constraints).__name__}"
            )
        if not isinstance(self.reason, str) or not isinstance(self.detail, str):
            raise TypeError("Decision reason and detail must be strings")
        for name in ("rule", "policy_version"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"Decision {name} must be a string or None")

    @property
    def well_formed(self) -> bool:
        """Whether the fields still have the types ``__init__`` checked (a frozen dataclass can
        still be changed with ``object.__setattr__``; the enforcement point re-checks)."""
        return self.effect.__class__ is Effect and isinstance(self.constraints, Constraints)

    @classmethod
    def allow(
        cls, reason: str = "", *, rule: str | None = None, policy_version: str | None = None
    ) -> Decision:
        """Run the call."""
        if cls is Decision and not reason and rule is None and policy_version is None:
            return _ALLOW  # immutable, so one plain allow serves every call
        return cls(Effect.ALLOW, reason, rule, policy_version)

    @classmethod
    def deny(
        cls, reason: str, *, rule: str | None = None, policy_version: str | None = None
    ) -> Decision:
        """Refuse the call; ``reason`` goes to the audit log, not to the client."""
        return cls(Effect.DENY, reason, rule, policy_version)

    @classmethod
    def require_approval(
        cls,
        reason: str,
        *,
        rule: str | None = None,
        policy_version: str | None = None,
        constraints: Constraints | None = None,
    ) -> Decision:
        """Refuse the call until an approver approves exactly this call."""
        return cls(
            Effect.REQUIRE_APPROVAL, reason, rule, policy_version, constraints or NO_CONSTRAINTS
        )

    @classmethod
    def constrain(
        cls,
        reason: str = "",
        *,
        constraints: Constraints | None = None,
        max_result_bytes: int | None = None,
        timeout_seconds: float | None = None,
        arguments: Mapping[str, ArgumentBound | Mapping[str, Any]] | None = None,
        rule: str | None = None,
        policy_version: str | None = None,
    ) -> Decision:
        """Run the call within constraints (given whole, or as keyword parts)."""
        parts = Constraints(
            max_result_bytes=max_result_bytes,
            timeout_seconds=timeout_seconds,
            arguments=dict(arguments or {}),  # type: ignore[arg-type]
        )
        merged = (constraints or NO_CONSTRAINTS).merge(parts)
        return cls(Effect.CONSTRAIN, reason, rule, policy_version, merged)

    @property
    def allowed(self) -> bool:
        """``True`` for allow and constrain: the call may run (within constraints)."""
        return self.effect is Effect.ALLOW or self.effect is Effect.CONSTRAIN

    def with_source(
        self, *, rule: str | None = None, policy_version: str | None = None
    ) -> Decision:
        """A copy with ``rule`` / ``policy_version`` filled in where they are still unset."""
        if (rule is None or self.rule is not None) and (
            policy_version is None or self.policy_version is not None
        ):
            return self
        return dataclasses.replace(
            self,
            rule=self.rule if self.rule is not None else rule,
            policy_version=(
                self.policy_version if self.policy_version is not None else policy_version
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for audit records."""
        out: dict[str, Any] = {"effect": self.effect.value, "reason": self.reason}
        if self.rule is not None:
            out["rule"] = self.rule
        if self.policy_version is not None:
            out["policy_version"] = self.policy_version
        if self.constraints:
            out["constraints"] = self.constraints.to_dict()
        if self.detail:
            out["detail"] = self.detail
        return out


#: The plain allow decision :meth:`Decision.allow` returns when given nothing else.
_ALLOW: Final = Decision(Effect.ALLOW)
