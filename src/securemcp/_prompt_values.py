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
    decimal_text,
    spell,
)

__all__ = ["ArgumentForms", "MountedPrompt", "PromptValues", "prompt_values"]

#: How deep a mount's forwarders are followed (a mount of a mount of ...).
_MOUNT_DEPTH: Final = 8

_UNRESOLVED: Final = UNRESOLVED


@dataclass(frozen=True, slots=True)
class ArgumentForms:
    """The forms of one prompt call's arguments, besides the arguments as sent.

    ``received``: every argument as the function receives it, as JSON data (numbers, booleans,
    lists, objects; see :func:`jsonable`): number conditions and argument bounds judge these.
    ``texts``: the converted arguments written canonically as text (:func:`spell`), the first
    form canonical (an approval is bound to it), a second one when a whole-number float is also
    written ``7.0``. Arguments FastMCP does not convert are as sent in every form.
    """

    received: Mapping[str, Any]
    texts: tuple[Mapping[str, Any], ...]


def jsonable(value: Any) -> Any:
    """``value`` (as the function receives it) as JSON data a policy compares.

    An enum member by its value; ``bool``, ``int``, ``float``, ``str`` and ``None`` as they are;
    a finite ``Decimal`` as an ``int`` when whole, else a ``float``; lists, tuples and sets as
    lists; mappings and pydantic models as objects; anything else as :func:`spell` writes it
    (a ``UUID`` in lower case, a ``datetime`` by ``str()``).
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
        text, whole = decimal_text(value)  # bounded: never int() of a huge exponent
        return int(text) if whole else float(text)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return spell(value)[0]


def _texts(value: Any) -> tuple[Any, Any]:
    """(canonical, alternative) text of a received value: scalars by :func:`spell`, lists item
    by item, objects as canonical JSON (sorted keys, no spaces) of their :func:`jsonable` form."""
    if isinstance(value, list | tuple | set | frozenset):
        items = [_texts(item) for item in value]
        return [item[0] for item in items], [item[1] for item in items]
    if isinstance(value, Mapping | BaseModel):
        text = json.dumps(jsonable(value), sort_keys=True, separators=(",", ":"), default=str)
        return text, text
    return spell(value)


@dataclass(slots=True)
class _Parameter:
    """One function parameter whose value FastMCP converts (step 2 of the module docstring)."""

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
    parameters: Mapping[str, _Parameter] = field(compare=False, repr=False)

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
        received = dict(arguments)
        texts: dict[str, Any] = dict(arguments)
        alternative: dict[str, Any] = dict(arguments)
        changed = two_forms = False
        for name, sent in arguments.items():
            parameter = parameters.get(name)
            if parameter is None:
                continue
            try:  # step 2: the function's validation of that parameter
                value = parameter.received(converted[name])
            except (ValueError, TypeError, AttributeError, ArithmeticError):
                return None  # pydantic's ValidationError is a ValueError: the render fails
            received[name] = jsonable(value)
            texts[name], alternative[name] = _texts(value)
            changed = changed or type(value) is not str or value != sent
            two_forms = two_forms or texts[name] != alternative[name]
        if not changed:
            return None
        if two_forms:
            return ArgumentForms(received, (texts, alternative))
        return ArgumentForms(received, (texts,))


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
    return PromptValues(component, {name: _Parameter(hint) for name, (_, hint) in typed.items()})


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
