"""The arguments a policy decides on are the arguments the tool receives.

FastMCP validates a tool's arguments with pydantic in *lax* mode by default
(``strict_input_validation=False``): the JSON string ``"5000"`` becomes the ``int`` 5000, the
string ``"false"`` or the number ``0`` becomes the ``bool`` ``False``. A policy, which sees the
JSON the client sent, would judge ``"5000"`` (no rule on ``amount > 1000`` matches a string) while
the tool runs with 5000.

securemcp closes that gap by **refusing coercion** when a policy is configured: each argument's
JSON type must be one the tool's published input schema (``tools/list``, ``Tool.parameters``)
declares for it, at every depth (properties, array items, ``$ref``/``$defs``, ``anyOf``/
``oneOf``/``allOf``, ``enum``/``const``). A call that does not match is refused with
``invalid_arguments`` (audited) before the policy runs. When the JSON types match, the lax
validator changes no value a policy can compare: a number stays that number (``5000.0`` for an
``integer`` becomes ``5000``), a string stays that string (a ``date-time`` string becomes a
``datetime`` of the same instant), a boolean stays that boolean.

Why refuse rather than hand the policy the validated values (and the tool exactly those)?
Validating without running the tool needs FastMCP's and pydantic's private call machinery
(the tool's type adapter *is* the call), and re-serializing validated values for the tool is
lossy (``SecretStr`` dumps masked, custom types may not round-trip). Refusing keeps the tool's
own validation the only one that builds values, needs only the public input schema, and costs a
few ``isinstance`` checks per argument (the checker is compiled once per schema). A client that
sends the types the schema declares, as every conforming client does, is never refused.

A parameter whose schema itself admits several JSON types for one value (``Decimal`` accepts a
number or a string; ``int | str``) passes this check in the form the client chose, and one whose
annotation rewrites a value of its type (a ``to_lower`` string, a ``UUID``) is changed after
it: such a call is also judged as the function receives it and in canonical text, the
strictest decision winning (:mod:`securemcp._tool_values`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

from securemcp.policy.request import is_number, same_json

__all__ = ["argument_type_error"]

_Check = Callable[[Any], str | None]  # None: fits; else the path of the first misfit


def _is_integer(value: Any) -> bool:
    cls = value.__class__
    if cls is int:
        return True
    if cls is float:
        return math.isfinite(value) and value.is_integer()
    return isinstance(value, int) and cls is not bool


_TYPES: Final[dict[str, Callable[[Any], bool]]] = {
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": is_number,
    "boolean": lambda v: v.__class__ is bool,
    "null": lambda v: v is None,
    "array": lambda v: isinstance(v, list | tuple),
    "object": lambda v: isinstance(v, Mapping),
}


class _Compiler:
    """Compiles a JSON schema into a check of JSON types (``None``: anything fits)."""

    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, list[_Check | None]] = {}

    def ref(self, pointer: str) -> _Check:
        cell = self.refs.get(pointer)
        if cell is None:
            cell = [None]
            self.refs[pointer] = cell
            target: Any = self.root
            if pointer.startswith("#/"):
                for part in pointer[2:].split("/"):
                    part = part.replace("~1", "/").replace("~0", "~")
                    target = target.get(part) if isinstance(target, Mapping) else None
            elif pointer != "#":
                target = None  # an external reference: FastMCP never emits one; no opinion
            cell[0] = self.compile(target) if isinstance(target, Mapping) else None

        def check(value: Any) -> str | None:
            inner = cell[0]  # late-bound: recursive models refer to themselves
            return None if inner is None else inner(value)

        return check

    def compile(self, schema: Any) -> _Check | None:
        if not isinstance(schema, Mapping):
            return None
        checks: list[_Check] = []
        ref = schema.get("$ref")
        if isinstance(ref, str):
            checks.append(self.ref(ref))
        kind = schema.get("type")
        kinds = [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else None
        if kinds is not None:
            tests = tuple(_TYPES[k] for k in kinds if isinstance(k, str) and k in _TYPES)
            if len(tests) == len(kinds):  # an unknown type name: no opinion
                checks.append(_type_check(tests))
        if "enum" in schema and isinstance(schema["enum"], list):
            options = tuple(schema["enum"])
            checks.append(lambda v: None if any(same_json(v, o) for o in options) else "")
        if "const" in schema:
            const = schema["const"]
            checks.append(lambda v: None if same_json(v, const) else "")
        for key in ("anyOf", "oneOf"):
            branches = schema.get(key)
            if isinstance(branches, list) and branches:
                compiled = [self.compile(b) for b in branches]
                if all(c is not None for c in compiled):
                    checks.append(_any_check(tuple(c for c in compiled if c is not None)))
        all_of = schema.get("allOf")
        if isinstance(all_of, list):
            checks.extend(c for c in (self.compile(s) for s in all_of) if c is not None)
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        if isinstance(properties, Mapping) or isinstance(extra, Mapping):
            fields = {
                str(name): check
                for name, sub in (properties or {}).items()
                if (check := self.compile(sub)) is not None
            }
            others = self.compile(extra) if isinstance(extra, Mapping) else None
            if fields or others is not None:
                checks.append(_object_check(fields, others))
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        if isinstance(items, Mapping) or isinstance(prefix, list):
            each = self.compile(items) if isinstance(items, Mapping) else None
            leading = tuple(self.compile(s) for s in prefix) if isinstance(prefix, list) else ()
            if each is not None or any(c is not None for c in leading):
                checks.append(_array_check(leading, each))
        if not checks:
            return None
        if len(checks) == 1:
            return checks[0]
        every = tuple(checks)

        def check_all(value: Any) -> str | None:
            for check in every:
                problem = check(value)
                if problem is not None:
                    return problem
            return None

        return check_all


def _type_check(tests: tuple[Callable[[Any], bool], ...]) -> _Check:
    if len(tests) == 1:
        test = tests[0]
        return lambda v: None if test(v) else ""
    return lambda v: None if any(t(v) for t in tests) else ""


def _any_check(branches: tuple[_Check, ...]) -> _Check:
    def check(value: Any) -> str | None:
        deepest = ""
        for branch in branches:
            problem = branch(value)
            if problem is None:
                return None
            if len(problem) > len(deepest):
                deepest = problem  # the branch that got furthest names the misfit best
        return deepest

    return check


def _object_check(fields: Mapping[str, _Check], others: _Check | None) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return None  # the object's own type is checked by its "type"
        for name, item in value.items():
            field_check = fields.get(name, others)
            if field_check is not None:
                problem = field_check(item)
                if problem is not None:
                    return f".{name}{problem}" if problem else f".{name}"
        return None

    return check


def _array_check(leading: tuple[_Check | None, ...], each: _Check | None) -> _Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, list | tuple):
            return None
        for index, item in enumerate(value):
            item_check = leading[index] if index < len(leading) else each
            if item_check is not None:
                problem = item_check(item)
                if problem is not None:
                    return f"[{index}]{problem}"
        return None

    return check


_CACHE: dict[int, tuple[Mapping[str, Any], _Check | None]] = {}
_CACHE_LIMIT: Final = 4096


def _checker(schema: Mapping[str, Any]) -> _Check | None:
    """The compiled check of ``schema``, remembered per schema object (identity-checked)."""
    key = id(schema)
    cached = _CACHE.get(key)
    if cached is not None and cached[0] is schema:
        return cached[1]
    check = _Compiler(schema).compile(schema)
    if len(_CACHE) >= _CACHE_LIMIT:
        _CACHE.clear()
    _CACHE[key] = (schema, check)
    return check


def argument_type_error(schema: Any, arguments: Mapping[str, Any]) -> str | None:
    """The first argument whose JSON type the input ``schema`` does not declare for it, as a path
    (``amount``, ``options.force``, ``argv[2]``); ``None`` when every argument fits.

    Arguments the schema does not describe, and schema keywords other than the structural and
    type keywords, are left to the tool's own validation.
    """
    if not isinstance(schema, Mapping) or not arguments:
        return None
    check = _checker(schema)
    if check is None:
        return None
    problem = check(arguments)
    if problem is None:
        return None
    return problem.lstrip(".") or "(arguments)"
