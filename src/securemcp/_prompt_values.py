"""The values FastMCP hands a function prompt, and the forms of a prompts/get call a policy judges.

MCP prompt arguments are always strings on the wire (``GetPromptRequestParams.arguments`` is
``dict[str, str]``). FastMCP 4.1.2 converts them before a function prompt runs
(``fastmcp.prompts.function_prompt.FunctionPrompt.render``):

1. ``FunctionPrompt._convert_string_arguments``: for each string value of a parameter with an
   annotation, pydantic's lax ``validate_python`` of the text, else ``validate_json`` of it; a
   non-string result prefers ``validate_json`` when that succeeds;
2. the function's ``TypeAdapter`` validates every argument again (lax) before calling it.

So for ``amount: int`` the texts ``"5000"``, ``"05000"``, ``" 5000"``, ``"5_000"``, ``"+5000"``,
``"5e3"`` and ``"5000.0"`` all reach the function as 5000, and ``"true"`` as 1; for
``on: bool`` ``"yes"``, ``"on"``, ``"t"`` and ``"1"`` as ``True``. A rule comparing the text
(``amount = "5000"``) would be dodged, and a number condition (``amount = { gt = 1000 }``) would
never hold on a string. :class:`PromptValues` runs exactly those conversions (FastMCP's own
step 1, then pydantic's per-parameter validation; never the function) and gives the forms of the
arguments the policy also judges (:class:`ArgumentForms`). A value either step refuses makes
FastMCP fail the render before the function runs: no other form then, and nothing to dodge.

A mount's forwarder (``FastMCPProviderPrompt``) hands the render to the mounted server:
:class:`MountedPrompt` follows it to the mounted server's prompt.

This module speaks FastMCP's prompt internals (``FunctionPrompt``, its string conversion).
"""

from __future__ import annotations

import enum
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

from fastmcp.prompts.function_prompt import FunctionPrompt
from fastmcp.server.providers.fastmcp_provider import FastMCPProviderPrompt
from fastmcp.utilities.versions import VersionSpec
from pydantic import BaseModel, TypeAdapter

from securemcp._template_values import (
    UNRESOLVED,
    UnknownConversion,
    converted_parameters,
    decimal_number,
    decimal_text,
    spell,
)

__all__ = [
    "ArgumentForms",
    "ArgumentRespelling",
    "ConvertedParameter",
    "MountedPrompt",
    "PromptValues",
    "declared_prompt_values",
    "jsonable",
    "prompt_values",
    "text_form",
]

#: How deep a mount's forwarders are followed (a mount of a mount of ...).
_MOUNT_DEPTH: Final = 8

_UNRESOLVED: Final = UNRESOLVED


@dataclass(frozen=True, slots=True)
class ArgumentForms:
    """The forms of one prompt call's arguments, besides the arguments as sent.

    ``received``: every argument as the function receives it, as JSON data (numbers, booleans,
    lists, objects; see :func:`jsonable`): number conditions and argument bounds judge these.
    ``texts``: the converted arguments written canonically as text (:func:`spell`), one text
    per value (an approval is bound to it unless ``binding`` is given). Arguments FastMCP does
    not convert are as sent in every form.
    ``binding``: the arguments an approval is bound to, when not ``texts[0]``: a tool's
    arguments keep their JSON types (``7`` and ``"7"`` reach an ``int | str`` parameter as
    different values), see :mod:`securemcp._tool_values`.
    """

    received: Mapping[str, Any]
    texts: tuple[Mapping[str, Any], ...]
    binding: Mapping[str, Any] | None = None


def jsonable(value: Any) -> Any:
    """``value`` (as the function receives it) as JSON data a policy compares.

    An enum member by its value; ``bool``, ``int``, ``float``, ``str`` and ``None`` as they are;
    a finite ``Decimal`` as an ``int`` when whole (up to 300 digits), else a ``float``; lists,
    tuples and sets as lists; mappings and pydantic models (their fields, each as this function
    writes it) as objects; anything else as :func:`spell` writes it (a ``UUID`` in lower case,
    a ``datetime`` by ``str()``).
    """
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | float | str):
        if isinstance(value, bool):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value)
        return value if value is None or type(value) is str else str(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            return float(value)
        return decimal_number(*decimal_text(value))  # bounded: never int() of a long text
    if isinstance(value, BaseModel):
        value = value.model_dump()  # Python values: a Decimal field stays a number here
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return spell(value)


def text_form(value: Any) -> Any:
    """The canonical text of a received value: a scalar by :func:`spell`, a list item by item,
    an object as canonical JSON (sorted keys, no spaces) of its :func:`jsonable` form."""
    if isinstance(value, list | tuple | set | frozenset):
        return [text_form(item) for item in value]
    if isinstance(value, Mapping | BaseModel):
        return json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), default=str)
    return spell(value)


@dataclass(slots=True)
class ConvertedParameter:
    """One function parameter whose value FastMCP converts (step 2 of the module docstring; a
    tool's parameters too, see :mod:`securemcp._tool_values`)."""

    hint: Any  # resolved (typing.get_type_hints), or _UNRESOLVED
    adapter: TypeAdapter[Any] | None = None

    def received(self, value: Any) -> Any:
        if self.adapter is None:
            if self.hint is _UNRESOLVED:
                raise UnknownConversion("a parameter's annotation cannot be resolved")
            try:
                self.adapter = TypeAdapter(self.hint)
            except Exception as exc:  # FastMCP's own TypeAdapter would have failed first
                raise UnknownConversion(f"no validator for the annotation: {exc!r}") from None
        return self.adapter.validate_python(value)


@dataclass(frozen=True, slots=True)
class PromptValues:
    """How FastMCP converts the arguments of one function prompt.

    Compared by the prompt object FastMCP renders; the per-parameter converters derive from it.
    """

    prompt: FunctionPrompt = field(compare=False)
    parameters: Mapping[str, ConvertedParameter] = field(compare=False, repr=False)
    #: FastMCP's step 2, built once: the prompt function's own arguments schema.
    _arguments: list[Any] = field(default_factory=list, compare=False, repr=False)

    def forms(self, arguments: Mapping[str, Any] | None) -> ArgumentForms | None:
        """The other forms of ``arguments`` (:class:`ArgumentForms`); ``None`` when every
        argument reaches the function exactly as sent, or when FastMCP refuses one (the render
        fails before the function runs).

        Raises:
            UnknownConversion: a value's conversion cannot be told (the caller fails closed).
        """
        if not arguments:
            return None
        parameters = self.parameters
        if not any(name in parameters for name in arguments):
            return None
        try:  # step 1: FastMCP's own conversion (any failure fails the render)
            converted = self.prompt._convert_string_arguments(dict(arguments))
        except Exception:
            return None
        try:  # step 2: the function's validation of every argument
            validated = self._validated(converted)
        except (ValueError, TypeError, AttributeError, ArithmeticError):
            return None  # pydantic's ValidationError is a ValueError: the render fails
        received = dict(arguments)
        texts: dict[str, Any] = dict(arguments)
        changed = False
        for name, sent in arguments.items():
            if name not in parameters or name not in validated:
                continue
            value = validated[name]
            received[name] = jsonable(value)
            texts[name] = text_form(value)
            changed = changed or type(value) is not str or value != sent
        if not changed:
            return None
        return ArgumentForms(received, (texts,))

    def _validated(self, converted: Mapping[str, Any]) -> Mapping[str, Any]:
        """FastMCP's step 2 (``FunctionPrompt.render``): the arguments the function's own
        ``TypeAdapter`` validates, as a whole (a validator sees the other arguments and its
        field's name, a ``Field`` default's constraints hold), without calling the function:
        its arguments schema only. A prompt whose schema is not FastMCP's usual one is
        validated parameter by parameter instead."""
        if not self._arguments:
            self._arguments.append(_arguments_validator(self.prompt.fn))
        validator = self._arguments[0]
        if validator is None:
            return {
                name: parameter.received(converted[name])
                for name, parameter in self.parameters.items()
                if name in converted
            }
        signature = inspect.signature(self.prompt.fn)
        kwargs = {name: value for name, value in converted.items() if name in signature.parameters}
        args, validated = validator.validate_python(kwargs)
        if args:  # positional values: named as the signature names them
            return signature.bind_partial(*args, **validated).arguments
        return validated  # type: ignore[no-any-return]


def _arguments_validator(function: Any) -> Any:
    """A validator of ``function``'s arguments as FastMCP's cached ``TypeAdapter`` of it
    validates them (its core schema's ``arguments_schema``, which never calls it), or ``None``
    when that schema has another shape."""
    from fastmcp.utilities.types import get_cached_typeadapter
    from pydantic_core import SchemaValidator

    try:
        schema: Any = get_cached_typeadapter(function).core_schema
        definitions = None
        if schema.get("type") == "definitions":
            definitions, schema = schema["definitions"], schema["schema"]
        if schema.get("type") != "call":
            return None
        arguments = schema["arguments_schema"]
        if definitions is not None:
            arguments = {"type": "definitions", "schema": arguments, "definitions": definitions}
        return SchemaValidator(arguments)
    except Exception:  # no usable schema: validated parameter by parameter
        return None


class ArgumentRespelling:
    """The canonical text of one argument's text value (``CallRequest.canonical_argument``) for
    one function prompt: ``("price", "7.0")`` -> ``"7"`` for ``price: float``, converted as
    FastMCP converts it. A rules file writes the text values its argument conditions name this
    way too, so a condition holds however the rule and the call write a value. Equal for one
    prompt (the rules file caches its respelled conditions by it)."""

    __slots__ = ("_values",)

    def __init__(self, values: PromptValues) -> None:
        self._values = values

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ArgumentRespelling) and other._values.prompt is self._values.prompt

    def __hash__(self) -> int:
        return id(self._values.prompt)

    def __call__(self, name: str, value: Any) -> Any:
        """The canonical text of ``value`` for argument ``name``; ``value`` itself when it is
        no text, the parameter takes text, or FastMCP would refuse it."""
        parameter = self._values.parameters.get(name)
        if parameter is None or not isinstance(value, str):
            return value
        try:
            converted = self._values.prompt._convert_string_arguments({name: value})[name]
            return text_form(parameter.received(converted))
        except Exception:  # refused (or unknown): the rule's text is kept as written
            return value


def prompt_values(component: Any) -> PromptValues | MountedPrompt | None:
    """How ``component`` converts its arguments, or ``None`` when it does not (a prompt that is
    not a FastMCP function prompt rendered by FastMCP's own ``render``, or whose parameters all
    take text). A mount's forwarder gives a :class:`MountedPrompt`. Never raises: a parameter
    whose annotation cannot be resolved is kept, and calls that give it a value fail closed
    (:class:`UnknownConversion`)."""
    if isinstance(component, FastMCPProviderPrompt):
        forwarder: type[Any] = type(component)
        original = component._original_name
        if (
            forwarder._render is not FastMCPProviderPrompt._render
            or forwarder.render is not FastMCPProviderPrompt.render
            or not original
        ):
            return None
        return MountedPrompt(component._server, original, component.version)
    if not isinstance(component, FunctionPrompt):
        return None
    cls = type(component)
    if (
        cls.render is not FunctionPrompt.render
        or cls._convert_string_arguments is not FunctionPrompt._convert_string_arguments
    ):
        return None  # a subclass converts (or not) in its own way
    typed = converted_parameters(component.fn)
    if not typed:
        return None
    return PromptValues(
        component, {name: ConvertedParameter(hint) for name, (_, hint) in typed.items()}
    )


def declared_prompt_values(types: Mapping[str, type]) -> PromptValues:
    """How a function prompt converts its arguments when its parameters (``types``, by name)
    are annotated exactly with these types, for ``securemcp policy explain --prompt-param``,
    which has no server to look the prompt up in: FastMCP's own conversion of a prompt whose
    function has that signature."""

    def declared(**arguments: Any) -> str:
        return ""

    signature = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation)
            for name, annotation in types.items()
        ]
    )
    declared.__signature__ = signature  # type: ignore[attr-defined]
    declared.__annotations__ = dict(types)
    prompt = FunctionPrompt.from_function(declared, name="declared")
    parameters = {name: ConvertedParameter(hint) for name, hint in types.items() if hint is not str}
    return PromptValues(prompt, parameters)


@dataclass(frozen=True, slots=True)
class MountedPrompt:
    """A mount's forwarder of a prompt (FastMCP's ``FastMCPProviderPrompt``).

    ``server.mount(child, namespace=...)`` serves each prompt of ``child`` as a forwarder that
    has the child render it: the child's prompt converts the arguments. :meth:`values` finds
    that prompt (as the child's render will) and gives its conversions.
    """

    server: Any  # the mounted server (compared by identity)
    name: str  # as the mounted server names it
    version: str | None

    async def values(self, depth: int = 0) -> PromptValues | None:
        """How the prompt the mounted server renders converts its arguments."""
        if depth >= _MOUNT_DEPTH:
            return None
        version = VersionSpec(eq=self.version) if self.version else None
        prompt = await self.server.get_prompt(self.name, version=version)
        inner = prompt_values(prompt) if prompt is not None else None
        if isinstance(inner, MountedPrompt):
            return await inner.values(depth + 1)
        return inner
