"""Value predicates for the rules file: argument and claim conditions.

A condition is either a bare value (shorthand) or a table of operators that must all hold::

    amount   = { lt = 1000, ge = 0 }
    currency = { in = ["EUR", "USD"] }
    memo     = { max_length = 200, regex = "[a-z ]*" }
    dryrun   = true                          # shorthand: eq (for a claim: contains)

Operators: ``eq``, ``ne``, ``in``, ``not_in``, ``lt``, ``le``, ``gt``, ``ge`` (numbers only;
booleans are not numbers), ``regex`` (Python ``re``, **anchored**: the whole string must match),
``min_length``, ``max_length`` (strings, arrays, objects), ``contains`` / ``contains_any`` (an
array holds the value; a single string counts as a one-element array, which suits claims like
``aud`` or ``groups`` that IdPs emit either way) and ``present`` (``true``/``false``).

Every operator except ``present = false`` fails on a missing value, and a value of the wrong type
fails the operator instead of raising: conditions never error on untrusted input. JSON types are
kept apart (``true`` is not ``1``). Regular expressions run on attacker-controlled arguments with
a backtracking engine: keep them simple (no nested quantifiers) and pair them with
``max_length``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Final

from securemcp.policy.request import finite_json, freeze, is_number, same_json, thaw

__all__ = ["MISSING", "Predicate", "compile_predicate"]


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<missing>"


#: Stands for an absent argument or claim.
MISSING: Final = _Missing()


# Concrete type tuples: isinstance against ``int | float`` or an ABC is several times slower.
_SEQUENCES: Final = (list, tuple)
_SIZED: Final = (str, list, tuple, dict, MappingProxyType)
_SCALARS: Final = (str, int, float)


#: JSON equality at every depth (``true`` is not ``1``, arrays and objects compare by content).
_same: Final = same_json


def _has_len(value: Any) -> bool:
    return isinstance(value, _SIZED)


def _contains(value: Any, operand: Any) -> bool:
    """An array holds ``operand``; a single scalar counts as a one-element array."""
    if isinstance(value, _SEQUENCES):
        for item in value:  # noqa: SIM110 - hot path, no generator
            if _same(item, operand):
                return True
        return False
    if isinstance(value, _SCALARS):  # includes bool
        return _same(value, operand)
    return False


_Check = Callable[[Any], bool]


def _number_operand(op: str, operand: Any) -> float:
    if not is_number(operand):
        raise ValueError(f"'{op}' needs a number, got {_shown(operand)}")
    return float(operand)


def _list_operand(op: str, operand: Any) -> tuple[Any, ...]:
    if not isinstance(operand, tuple):
        raise ValueError(f"'{op}' needs a list, got {_shown(operand)}")
    return operand


def _shown(operand: Any) -> str:
    """An operand as the rules file wrote it (frozen arrays and tables shown as lists/dicts)."""
    return repr(thaw(operand))


def _length_operand(op: str, operand: Any) -> int:
    if not isinstance(operand, int) or isinstance(operand, bool) or operand < 0:
        raise ValueError(f"'{op}' needs a non-negative integer, got {_shown(operand)}")
    return operand


def _build(op: str, operand: Any) -> _Check:
    """The check for ``op``; ``operand`` is already frozen (:func:`freeze`), like the arguments
    and claims it is compared with, and holds no NaN or infinity."""
    if op == "eq":
        return lambda v: _same(v, operand)
    if op == "ne":
        return lambda v: v is not MISSING and not _same(v, operand)
    if op == "in":
        options = _list_operand(op, operand)
        if all(o.__class__ is str for o in options):
            strings = frozenset(options)
            return lambda v: v.__class__ is str and v in strings
        return lambda v: any(_same(v, o) for o in options)
    if op == "not_in":
        options = _list_operand(op, operand)
        return lambda v: v is not MISSING and not any(_same(v, o) for o in options)
    if op in ("lt", "le", "gt", "ge"):
        bound = _number_operand(op, operand)
        compare: Callable[[float, float], bool] = {
            "lt": float.__lt__,
            "le": float.__le__,
            "gt": float.__gt__,
            "ge": float.__ge__,
        }[op]
        return lambda v: is_number(v) and compare(float(v), bound)
    if op == "regex":
        if not isinstance(operand, str):
            raise ValueError(f"'regex' needs a string, got {_shown(operand)}")
        try:
            pattern = re.compile(operand)
        except re.error as exc:
            raise ValueError(f"invalid regex {operand!r}: {exc}") from None
        return lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None
    if op == "max_length":
        limit = _length_operand(op, operand)
        return lambda v: _has_len(v) and len(v) <= limit
    if op == "min_length":
        limit = _length_operand(op, operand)
        return lambda v: _has_len(v) and len(v) >= limit
    if op == "contains":
        if operand.__class__ is str:
            return lambda v: (
                v == operand if v.__class__ is str else isinstance(v, _SEQUENCES) and operand in v
            )
        return lambda v: _contains(v, operand)
    if op == "contains_any":
        options = _list_operand(op, operand)
        return lambda v: any(_contains(v, o) for o in options)
    if op == "present":
        if not isinstance(operand, bool):
            raise ValueError(f"'present' needs true or false, got {_shown(operand)}")
        return (lambda v: v is not MISSING) if operand else (lambda v: v is MISSING)
    raise ValueError(f"unknown operator {op!r}")


OPERATORS: Final = frozenset(
    {
        "eq",
        "ne",
        "in",
        "not_in",
        "lt",
        "le",
        "gt",
        "ge",
        "regex",
        "max_length",
        "min_length",
        "contains",
        "contains_any",
        "present",
    }
)


#: The operators whose text operands name a value (and are written canonically for a prompt
#: argument FastMCP converts, see :meth:`Predicate.respelled`).
_VALUE_OPERATORS: Final = frozenset({"eq", "ne", "in", "not_in", "contains", "contains_any"})
_LIST_OPERATORS: Final = frozenset({"in", "not_in", "contains_any"})
_AS_LIST: Final = {"eq": "in", "ne": "not_in", "contains": "contains_any"}
_RESPELLED_LIMIT: Final = 64


class Predicate:
    """A compiled condition on one value. Call it with the value (or :data:`MISSING`)."""

    __slots__ = ("_checks", "_respelled", "check")

    def __init__(self, checks: tuple[tuple[str, Any, _Check], ...]) -> None:
        self._checks = checks
        self._respelled: dict[tuple[str, Any], Predicate] = {}
        if len(checks) == 1:
            self.check: _Check = checks[0][2]
        else:
            functions = tuple(check for _op, _operand, check in checks)

            def check_all(value: Any) -> bool:
                for check in functions:  # noqa: SIM110 - hot path, no generator
                    if not check(value):
                        return False
                return True

            self.check = check_all

    def __call__(self, value: Any) -> bool:
        return self.check(value)

    def failure(self, value: Any) -> str | None:
        """The first operator ``value`` fails, as text (``None`` when all hold)."""
        for op, operand, check in self._checks:
            if not check(value):
                return f"{op} {_shown(operand)}"
        return None

    def respelled(self, name: str, respell: Callable[[str, Any], Any]) -> Predicate:
        """This condition with each text operand that names a value of argument ``name``
        (``eq``, ``ne``, ``in``, ``not_in``, ``contains``, ``contains_any``) naming that value
        as written and as ``respell`` writes it canonically (``CallRequest.canonical_argument``:
        ``"7.0"`` and ``"7"`` for ``price: float``), so a condition holds however the rule and
        the call write the value: ``eq`` holds for either text, ``ne`` for neither. A
        canonical text is used only when it is a fixed point (written canonically again, it
        stays): a conversion that changes its own output (a validator appending a suffix) would
        otherwise make the operand name another value. Cached per ``respell``."""
        key = (name, respell)
        cached = self._respelled.get(key)
        if cached is not None:
            return cached

        def texts(operand: Any) -> tuple[Any, ...]:
            if not isinstance(operand, str):
                return (operand,)
            canonical = respell(name, operand)
            if canonical == operand or respell(name, canonical) != canonical:
                return (operand,)
            return (operand, freeze(canonical))

        checks = []
        for op, operand, check in self._checks:
            if op in _VALUE_OPERATORS:
                listed = op in _LIST_OPERATORS and isinstance(operand, tuple)
                options = operand if listed else (operand,)
                named = tuple(text for option in options for text in texts(option))
                if named != options:
                    op = _AS_LIST.get(op, op)
                    operand = named
                    check = _build(op, named)
            checks.append((op, operand, check))
        cached = Predicate(tuple(checks))
        if len(self._respelled) >= _RESPELLED_LIMIT:
            self._respelled.clear()
        self._respelled[key] = cached
        return cached

    def describe(self) -> str:
        """The condition as text, e.g. ``lt 1000 and ge 0``."""
        return " and ".join(f"{op} {_shown(operand)}" for op, operand, _ in self._checks)


def compile_predicate(spec: Any, *, claim: bool = False) -> Predicate:
    """Compile one condition.

    A bare value is shorthand: ``eq`` for arguments, ``contains`` for claims; a bare list is
    ``in`` for arguments and ``contains_any`` for claims.

    Operands are frozen with the same :func:`~securemcp.policy.request.freeze` as the arguments
    and claims they are compared with (arrays become tuples, tables read-only mappings), so an
    array operand equals an array argument, and compared with :func:`same_json`, which keeps
    ``true`` apart from ``1`` at every depth.

    Raises:
        ValueError: unknown operators, operands of the wrong type, or a NaN/infinite number.
    """
    if isinstance(spec, Mapping):
        if not spec:
            raise ValueError("an empty condition table matches nothing useful; remove it")
        items = list(spec.items())
    elif isinstance(spec, list | tuple):
        items = [("contains_any" if claim else "in", list(spec))]
    else:
        items = [("contains" if claim else "eq", spec)]
    checks = []
    for op, operand in items:
        if not finite_json(operand):
            raise ValueError(f"'{op}' needs finite numbers (no nan or inf), got {operand!r}")
        frozen = freeze(operand)
        checks.append((str(op), frozen, _build(str(op), frozen)))
    return Predicate(tuple(checks))
