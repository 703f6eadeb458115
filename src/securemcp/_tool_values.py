"""The values FastMCP hands a function tool for a parameter whose value its validation converts,
and the forms of a tools/call a policy judges.

When a policy is configured, securemcp refuses a tool argument whose JSON type the tool's input
schema does not declare (:mod:`securemcp.policy.arguments`), so ``amount: int`` receives the
number the policy judged. Two kinds of parameter escape that. FastMCP 4.1.2 validates the
arguments with pydantic before the function runs (``FunctionTool.run``: the function's
``TypeAdapter``, lax unless the server sets ``strict_input_validation``), and

* a parameter whose schema admits several JSON types for one value (``Decimal``: a number or a
  string; ``int | str``; ``Decimal | None``; ``list[Decimal]``; a model with a ``Decimal``
  field) receives ``Decimal(5000)`` for ``"5000"``, ``"5e3"``, ``"5000.0"``, ``" 5000 "`` and
  ``5000``: a rule ``amount = { gt = 1000 }`` never held on a string, ``amount = "5000"``
  never on a number;
* a parameter whose annotation rewrites a value of its one JSON type (``Annotated[str,
  StringConstraints(to_lower=True)]``, a ``UUID``, a ``datetime``, a model or a validator: see
  :func:`keeps_value`) receives ``"alice"`` for ``"ALICE"``, one UUID for each of its
  spellings.

:class:`ToolValues` validates each such parameter's value as the function's own validation
does (pydantic's lax validation of that parameter's annotation; never the function) and gives
the forms of the arguments the policy also judges (:class:`ArgumentForms`): as the function
receives them (JSON data: a ``Decimal`` as a number) and canonically written as text, one
text per value (``"5000"``, see :func:`~securemcp._template_values.spell`). Each parameter is
validated on its own (FastMCP validates the whole function, whose signature holds injected
parameters such as ``Context`` that a call never sends): a validator that reads the other
arguments may refuse here and pass there, and the call is then judged as sent. A strict
server refuses some values lax validation converts: judging those calls on one more form only
makes the decision stricter, and the call fails anyway. A value the validation refuses makes
FastMCP fail the call before the function runs: no other form then, and nothing to dodge.

An approval is bound to the arguments as the function receives them, exactly and with their
types (:func:`typed`): ``"5e3"`` and ``5000`` share one approval, ``7`` and ``"7"`` for
``int | str`` do not (the function receives different values), and neither do ``0.1`` and
``0.10000000000000000001`` (one float, two decimals).

Parameters that keep the value sent (``int``, ``float``, ``bool``, ``str``, ``int | None``,
``list[int]``...) are left out, so a plain typed tool costs nothing more per call. A mount's
forwarder (``FastMCPProviderTool``) with a multi-type parameter is followed to the mounted
server's tool (:class:`MountedTool`); its one-type parameters, and every parameter of other
tools (a proxy's, a transformed tool, a custom ``Tool`` class), are judged as sent.

This module speaks FastMCP's tool internals (``FunctionTool``, ``FastMCPProviderTool``).
"""

from __future__ import annotations

import collections.abc
import datetime
import enum
import json
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Annotated, Any, Final, Literal, Union
from uuid import UUID

import annotated_types
from fastmcp.server.providers.fastmcp_provider import FastMCPProviderTool
from fastmcp.tools.function_tool import FunctionTool
from fastmcp.utilities.versions import VersionSpec
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from securemcp._prompt_values import ArgumentForms, ConvertedParameter, jsonable, text_form
from securemcp._template_values import (
    UNRESOLVED,
    converted_parameters,
    decimal_number,
    decimal_text,
)
from securemcp.policy.request import same_json

__all__ = [
    "MountedTool",
    "ToolArgumentRespelling",
    "ToolValues",
    "keeps_value",
    "several_json_types",
    "tool_values",
    "typed",
]

#: How deep a mount's forwarders are followed (a mount of a mount of ...).
_MOUNT_DEPTH: Final = 8

#: JSON types that are one kind of value to a policy (an integer is a number).
_KIND: Final = {"integer": "number"}


def several_json_types(schema: Any, root: Any, seen: frozenset[str] = frozenset()) -> bool:
    """Whether ``schema`` (a JSON schema within ``root``, for ``$ref``) admits more than one
    kind of JSON value other than ``null`` at some position: at the top, an array item or an
    object property (``integer`` and ``number`` are one kind). Over-approximates (``allOf`` and
    the branches of ``anyOf``/``oneOf`` are united): a parameter wrongly taken for multi-type
    only costs a conversion per call."""
    kinds: set[str] = set()
    return _collect(schema, root, seen, kinds) or len(kinds) > 1


def _collect(schema: Any, root: Any, seen: frozenset[str], kinds: set[str]) -> bool:
    """Adds the kinds ``schema`` admits at its position to ``kinds``; True when a deeper
    position admits several."""
    if not isinstance(schema, Mapping):
        return False
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen:
        target: Any = root
        if ref.startswith("#/"):
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                target = target.get(part) if isinstance(target, Mapping) else None
        if _collect(target, root, seen | {ref}, kinds):
            return True
    kind = schema.get("type")
    for name in [kind] if isinstance(kind, str) else kind if isinstance(kind, list) else ():
        if isinstance(name, str) and name != "null":
            kinds.add(_KIND.get(name, name))
    for key in ("anyOf", "oneOf", "allOf"):
        branches = schema.get(key)
        if isinstance(branches, list):
            for branch in branches:
                if _collect(branch, root, seen, kinds):
                    return True
    inner: list[Any] = []
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            inner.append(schema[key])
    for key in ("prefixItems",):
        if isinstance(schema.get(key), list):
            inner.extend(schema[key])
    properties = schema.get("properties")
    if isinstance(properties, Mapping):
        inner.extend(properties.values())
    return any(several_json_types(sub, root, seen) for sub in inner)


#: Annotations whose value pydantic hands the function as the JSON value sent (the JSON type
#: check has made sure of its type).
_PLAIN: Final = (str, int, float, bool, type(None), Any, object)
#: Generic origins whose items are converted one by one and whose shape is kept.
_CONTAINERS: Final = (list, tuple, Union, types.UnionType, collections.abc.Sequence)


#: Classes a policy sees as their ``str()`` in every form (see :func:`typed`).
_TEXT_VALUES: Final = frozenset({UUID, datetime.datetime, datetime.date, datetime.time})

_ENUM_MISSING: Final = getattr(enum.Enum._missing_, "__func__", None)


def keeps_value(hint: Any, depth: int = 0) -> bool:
    """Whether pydantic hands the function exactly the JSON value sent for ``hint`` (lax mode,
    once the value has a JSON type the schema declares): ``str``, ``int``, ``float``,
    ``bool``, ``None``, ``Any``, a ``Literal``, an enum without a ``_missing_`` hook, lists,
    tuples, unions and ``dict[str, ...]`` of those, and ``Annotated`` with descriptions and
    ``annotated_types`` constraints only (``gt``, ``max_length``: they refuse, never change).
    Anything else may change the value (``StringConstraints(to_lower=True)``, a validator, a
    ``UUID`` or ``datetime`` parsed from text, a model, a set): ``False``."""
    if depth > 8:
        return False
    if any(hint is plain for plain in _PLAIN):
        return True
    if isinstance(hint, type):
        if issubclass(hint, enum.Enum):
            missing: Any = hint._missing_  # a classmethod: compare the functions
            return getattr(missing, "__func__", None) is _ENUM_MISSING
        return hint is list or hint is tuple or hint is dict
    origin = typing.get_origin(hint)
    if origin is Literal:
        return True
    args = typing.get_args(hint)
    if origin is Annotated:
        return keeps_value(args[0], depth + 1) and all(_constrains_only(m) for m in args[1:])
    if origin is dict or origin is collections.abc.Mapping:
        return (not args or args[0] is str) and all(keeps_value(a, depth + 1) for a in args[1:])
    if any(origin is container for container in _CONTAINERS):
        return all(a is Ellipsis or keeps_value(a, depth + 1) for a in args)
    return False


def _constrains_only(metadata: Any) -> bool:
    """Whether ``Annotated`` metadata only describes or refuses (never changes) a value."""
    if isinstance(metadata, str | annotated_types.BaseMetadata):
        return True
    if isinstance(metadata, FieldInfo):
        return all(_constrains_only(m) for m in metadata.metadata)
    return False


def typed(value: Any) -> Any:
    """``value`` (as the function receives it) as JSON data that keeps its type, exactly: what
    an approval is bound to.

    ``None``, ``bool``, ``int``, ``float`` and ``str`` as they are; a list, tuple or set as a
    list (a set sorted); every other value as a one-key object naming its kind, so no two
    values of different types share a form: a ``Decimal`` as ``{"decimal": "2.5"}`` (its exact
    plain text, bounded, see :func:`~securemcp._template_values.decimal_text`), a mapping as
    ``{"object": {...}}``, an enum member as ``{"enum": [class, value]}``, a pydantic model as
    ``{"model": [class, fields]}``, anything else as ``{"other": [class, str()]}``.
    """
    cls = value.__class__
    if value is None or cls is bool or cls is int or cls is float or cls is str:
        return value
    if isinstance(value, enum.Enum):
        return {"enum": [cls.__qualname__, typed(value.value)]}
    if isinstance(value, int | float | str):  # a subclass: its plain value
        return typed(_plain(value))
    if isinstance(value, Decimal):
        text = decimal_text(value)[0] if value.is_finite() else str(value)
        return {"decimal": text}
    if isinstance(value, BaseModel):
        fields = {name: typed(getattr(value, name)) for name in type(value).model_fields}
        return {"model": [cls.__qualname__, fields]}
    if isinstance(value, Mapping):
        return {"object": {str(key): typed(item) for key, item in value.items()}}
    if isinstance(value, list | tuple):
        return [typed(item) for item in value]
    if isinstance(value, set | frozenset):
        items = [typed(item) for item in value]
        return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=str))
    return {"other": [cls.__qualname__, str(value)]}


def _plain(value: int | float | str) -> int | float | str:
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


@dataclass(frozen=True, slots=True)
class ToolValues:
    """How FastMCP converts the arguments of one function tool that it may change.

    Compared by the tool's function; the per-parameter converters derive from it.
    """

    function: Any
    parameters: Mapping[str, ConvertedParameter] = field(compare=False, repr=False)

    def forms(self, arguments: Mapping[str, Any] | None) -> ArgumentForms | None:
        """The other forms of ``arguments`` (:class:`ArgumentForms`, with ``binding`` the
        arguments as :func:`typed` writes them); ``None`` when every argument reaches the
        function in the form sent, or when the validation refuses one (the call fails).

        Raises:
            UnknownConversion: a value's conversion cannot be told (the caller fails closed).
        """
        if not arguments:
            return None
        received = dict(arguments)
        texts = dict(arguments)
        binding = dict(arguments)
        changed = False
        for name, parameter in self.parameters.items():
            if name not in arguments:
                continue
            sent = arguments[name]
            try:
                value = parameter.received(sent)
            except (ValueError, TypeError, AttributeError, ArithmeticError):
                return None  # pydantic's ValidationError is a ValueError: the call fails
            cls = value.__class__
            if cls is str:  # a rewritten text (to_lower, a validator): itself in every form
                if value == sent:
                    continue
                received[name] = texts[name] = binding[name] = value
            elif cls in _TEXT_VALUES:  # what jsonable, text_form and typed write, at once
                received[name] = texts[name] = text = str(value)
                binding[name] = {"other": [cls.__qualname__, text]}
            elif cls is Decimal and value.is_finite():  # the usual case: its text once
                text, whole = decimal_text(value)  # bounded: never int() of a huge exponent
                received[name] = decimal_number(text, whole)
                texts[name] = text
                binding[name] = {"decimal": text}
            else:
                received[name] = jsonable(value)
                texts[name] = text_form(value)
                binding[name] = typed(value)
            changed = changed or not (
                same_json(received[name], sent)
                and same_json(texts[name], sent)
                and same_json(binding[name], sent)
            )
        if not changed:
            return None
        return ArgumentForms(received, (texts,), binding)


class ToolArgumentRespelling:
    """The canonical text of one argument's text value (``CallRequest.canonical_argument``) for
    one function tool: ``("amount", "5e3")`` -> ``"5000"`` for ``amount: Decimal``, validated
    as the tool's own validation does. A rules file writes the text values its argument
    conditions name this way too, so ``amount = "5e3"`` holds for ``5000`` (as
    :class:`~securemcp._prompt_values.ArgumentRespelling` does for prompts). Equal for one tool
    function (the rules file caches its respelled conditions by it)."""

    __slots__ = ("_values",)

    def __init__(self, values: ToolValues) -> None:
        self._values = values

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ToolArgumentRespelling)
            and other._values.function is self._values.function
        )

    def __hash__(self) -> int:
        return id(self._values.function)

    def __call__(self, name: str, value: Any) -> Any:
        """The canonical text of ``value`` for argument ``name``; ``value`` itself when it is
        no text, the parameter keeps the value sent, or the validation would refuse it."""
        parameter = self._values.parameters.get(name)
        if parameter is None or not isinstance(value, str):
            return value
        try:
            return text_form(parameter.received(value))
        except Exception:  # refused (or unknown): the rule's text is kept as written
            return value


def tool_values(component: Any) -> ToolValues | MountedTool | None:
    """How ``component`` converts its arguments, or ``None`` when every parameter keeps the
    value sent (see the module docstring) or it is not a FastMCP function tool run by FastMCP's
    own ``run``. A mount's forwarder gives a :class:`MountedTool`. Never raises: a multi-type
    parameter whose annotation cannot be resolved is kept, and calls that give it a value fail
    closed; a one-type one is judged as sent (FastMCP could not have registered the tool)."""
    schema = getattr(component, "parameters", None)
    if not isinstance(schema, Mapping):
        return None
    properties = schema.get("properties")
    if not isinstance(properties, Mapping):
        return None
    several = {str(name) for name, sub in properties.items() if several_json_types(sub, schema)}
    if isinstance(component, FastMCPProviderTool):
        if not several:
            return None  # a plain forwarded tool: no lookup per call
        forwarder: type[Any] = type(component)
        original = component._original_name
        if (
            forwarder._run is not FastMCPProviderTool._run
            or forwarder.run is not FastMCPProviderTool.run
            or not original
        ):
            return None
        return MountedTool(component._server, original, component.version)
    if not isinstance(component, FunctionTool) or type(component).run is not FunctionTool.run:
        return None  # a subclass validates (or not) in its own way
    typed_parameters = converted_parameters(component.fn)
    if not typed_parameters:
        return None
    parameters = {
        name: ConvertedParameter(hint)
        for name, (_, hint) in typed_parameters.items()
        # unresolved: a multi-type one fails closed per call; a one-type one is taken as sent
        if name in properties
        and (name in several or (hint is not UNRESOLVED and not keeps_value(hint)))
    }
    return ToolValues(component.fn, parameters) if parameters else None


@dataclass(frozen=True, slots=True)
class MountedTool:
    """A mount's forwarder of a tool (FastMCP's ``FastMCPProviderTool``) with a multi-type
    parameter: the mounted server's tool validates the arguments, :meth:`values` finds it."""

    server: Any  # the mounted server (compared by identity)
    name: str  # as the mounted server names it
    version: str | None

    async def values(self, depth: int = 0) -> ToolValues | None:
        """How the tool the mounted server runs converts its arguments."""
        if depth >= _MOUNT_DEPTH:
            return None
        version = VersionSpec(eq=self.version) if self.version else None
        tool = await self.server.get_tool(self.name, version=version)
        inner = tool_values(tool) if tool is not None else None
        if isinstance(inner, MountedTool):
            return await inner.values(depth + 1)
        return inner
