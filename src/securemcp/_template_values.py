"""The values FastMCP hands a function resource template, and a read's canonical spelling.

FastMCP 4.1.2 converts the parameter values of a template read before the template's function
runs (``fastmcp.resources.template.FunctionResourceTemplate.read``):

1. a parameter annotated exactly ``int``, ``float`` or ``bool`` (the object, as
   ``inspect.signature`` shows it) is converted by ``int()``, ``float()``, or the words
   ``true``/``1``/``yes`` and ``false``/``0``/``no`` in any case;
2. the function is wrapped by pydantic's ``validate_call``, which validates every argument in
   lax mode: that converts the text for any other annotation too (``int | None``, a string
   annotation under ``from __future__ import annotations``, ``list[int]``, a ``UUID``,
   ``Annotated[str, StringConstraints(to_lower=True)]``...).

``int()`` strips whitespace and takes a sign, underscores and any Unicode decimal digit, so
``items://07``, ``items://+7``, ``items://%207`` and ``items://%EF%BC%97`` (a full-width 7) all
read item 7 of ``id: int``. A policy names a read by its text (RFC 3986 URI, RFC 6570 template),
so a read is also judged under its *canonical spelling*: the URI with each value written as
the function receives it (:func:`spell`), computed by running exactly those two conversions
(never the function). A value either conversion refuses makes FastMCP fail the read before
the function runs: no canonical spelling then, and nothing to dodge.

A mounted server's template reaches the mounting server as a forwarder
(``FastMCPProviderResourceTemplate``) that hands the read to the mounted server, whose template
converts the values: :class:`MountedTemplate` follows it there.

This module speaks FastMCP's template internals (``FunctionResourceTemplate``, its matcher).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final
from urllib.parse import quote, unquote_plus

from fastmcp.resources.template import (
    FunctionResourceTemplate,
    build_regex,
    expand_uri_template,
    extract_exploded_query_params,
    extract_query_params,
    forward_uri,
    match_uri_template,
)
from fastmcp.server.providers.fastmcp_provider import FastMCPProviderResourceTemplate
from fastmcp.utilities.versions import VersionSpec
from pydantic import TypeAdapter

from securemcp.policy.request import resource_target

__all__ = [
    "DECLARABLE",
    "UNRESOLVED",
    "MountedTemplate",
    "Respelling",
    "TemplateValues",
    "UnknownConversion",
    "converted_parameters",
    "decimal_number",
    "decimal_text",
    "declared_values",
    "spell",
    "template_target",
    "template_values",
]

#: What FastMCP's or pydantic's conversion raises for a value it refuses: the read then fails.
_REFUSED: Final = (ValueError, TypeError, AttributeError, ArithmeticError)

#: Annotations whose text reaches the function as it is (pydantic's lax ``str`` keeps a str).
_AS_TEXT: Final = (str, Any, object, inspect.Parameter.empty)

#: The words FastMCP reads for an exact ``bool`` annotation.
_TRUE: Final = ("true", "1", "yes")
_FALSE: Final = ("false", "0", "no")


class UnknownConversion(Exception):
    """securemcp cannot tell how the template converts a parameter value (policy fails closed)."""


#: Longest text a Decimal is written as (Python's own limit for int <-> str conversions).
MAX_DECIMAL_DIGITS: Final = 4300


def decimal_text(value: Decimal) -> tuple[str, bool]:
    """The exact plain text of a finite ``value`` (no exponent, no trailing zeros after the
    point), and whether it is whole.

    Written from its digits and exponent, never through ``int()`` (quadratic in the number of
    digits: ``Decimal("1e300000")`` would hold the event loop for seconds) nor ``normalize()``
    (it rounds to the context's 28 digits, so two values would share one spelling).

    Raises:
        UnknownConversion: the text would be longer than :data:`MAX_DECIMAL_DIGITS` (the call
            is refused, fail closed, before any work proportional to the value).
    """
    sign, digit_tuple, exponent = value.as_tuple()
    if not isinstance(exponent, int) or len(digit_tuple) > MAX_DECIMAL_DIGITS:
        raise UnknownConversion("a decimal value too long to judge")
    raw = "".join(map(str, digit_tuple))
    digits = raw.rstrip("0")
    if not digits:
        return "0", True
    exponent += len(raw) - len(digits)
    length = len(digits) + exponent if exponent >= 0 else max(len(digits), -exponent) + 1
    if length > MAX_DECIMAL_DIGITS:
        raise UnknownConversion("a decimal value too long to judge")
    minus = "-" if sign else ""
    if exponent >= 0:
        return f"{minus}{digits}{'0' * exponent}", True
    point = len(digits) + exponent
    if point > 0:
        return f"{minus}{digits[:point]}.{digits[point:]}", False
    return f"{minus}0.{'0' * -point}{digits}", False


#: Longest whole number (written out) a policy compares as an exact ``int``; a longer one is
#: compared as a ``float`` (``int()`` of 4300 digits takes about 0.2 ms, and a list of such
#: values, each a few bytes sent as ``"1e4299"``, would hold the event loop for seconds).
EXACT_DIGITS: Final = 300


def decimal_number(text: str, whole: bool) -> int | float:
    """The number a policy compares for a decimal's plain text (from :func:`decimal_text`): an
    exact ``int`` when whole and at most :data:`EXACT_DIGITS` long, else a ``float`` (the
    nearest; ``inf`` past its range). Linear in the text, never ``int()`` of a long one."""
    if whole and len(text) <= EXACT_DIGITS:
        return int(text)
    return float(text)


def spell(value: Any) -> str:
    """The canonical text of a value as the template function receives it: one text per value,
    however the value was written.

    ``bool`` as ``true``/``false``; ``int`` in decimal; ``float`` as Python's shortest
    round-trip ``repr`` (``2.5``, ``1e+16``, ``inf``, ``nan``), a whole number as the integer
    (``7`` for 7.0; ``-0.0`` as ``0``); a finite ``Decimal`` likewise, in plain notation without
    trailing zeros (``2.5`` for ``2.50``, ``100`` for ``1E+2``); an enum member by its value;
    ``str`` as it is; anything else as ``str()`` writes it (a ``UUID`` in lower case).
    """
    if isinstance(value, enum.Enum):
        value = value.value
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        number = float(value) or 0.0  # -0.0 reads as 0
        if math.isfinite(number) and number.is_integer():
            return str(int(number))
        return float.__repr__(number)
    if isinstance(value, Decimal) and value.is_finite():
        return decimal_text(value)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return value if isinstance(value, str) else str(value)


def _fastmcp_converted(annotation: Any, text: str) -> Any:
    """FastMCP's own conversion of a text value for an exact int/float/bool annotation."""
    if annotation is int:
        return int(text)
    if annotation is float:
        return float(text)
    lower = text.lower()
    if lower in _TRUE:
        return True
    if lower in _FALSE:
        return False
    raise ValueError("not a boolean word")


def _annotated(function: Any) -> Any:
    """The function whose annotations ``function`` has: a ``functools.partial``'s function, a
    callable object's ``__call__`` (``typing.get_type_hints`` reads neither itself)."""
    while isinstance(function, functools.partial):
        function = function.func
    if not inspect.isroutine(function) and not isinstance(function, type) and callable(function):
        return type(function).__call__
    return function


UNRESOLVED: Final = object()
_UNRESOLVED: Final = UNRESOLVED


def converted_parameters(function: Any) -> dict[str, tuple[Any, Any]] | None:
    """The named parameters of ``function`` whose text FastMCP or pydantic may convert, as
    ``name -> (annotation as inspect.signature shows it, resolved hint or UNRESOLVED)``; the
    parameters annotated as text are left out. ``None`` if the signature cannot be read.

    Shared by resource templates and prompts (:mod:`securemcp._prompt_values`), which FastMCP
    converts from the same kind of function.
    """
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    try:
        hints: Mapping[str, Any] | None = typing.get_type_hints(
            _annotated(function), include_extras=True
        )
    except Exception:  # unresolvable names: the parameters concerned are unknown
        hints = None
    parameters: dict[str, tuple[Any, Any]] = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        annotation = parameter.annotation
        hint = UNRESOLVED if hints is None else hints.get(name, annotation)
        if any(hint is text or annotation is text for text in _AS_TEXT):
            continue
        if hints is None and annotation == "str":
            continue
        parameters[name] = (annotation, hint)
    return parameters


@dataclass(slots=True)
class _Parameter:
    """One function parameter whose value FastMCP or pydantic may convert."""

    annotation: Any  # as inspect.signature shows it: what FastMCP's own step tests
    hint: Any  # resolved (typing.get_type_hints), or _UNRESOLVED
    adapter: TypeAdapter[Any] | None = None

    def received(self, value: Any) -> Any:
        """The value the function receives for ``value`` (the matcher's text, or a list)."""
        if isinstance(value, str) and (
            self.annotation is int or self.annotation is float or self.annotation is bool
        ):
            value = _fastmcp_converted(self.annotation, value)
        if self.adapter is None:
            if self.hint is _UNRESOLVED:
                raise UnknownConversion("a parameter's annotation cannot be resolved")
            try:
                self.adapter = TypeAdapter(self.hint)
            except Exception as exc:  # FastMCP's registration would have failed first
                raise UnknownConversion(f"no validator for the annotation: {exc!r}") from None
        return self.adapter.validate_python(value)


@dataclass(frozen=True, slots=True)
class TemplateValues:
    """How FastMCP converts the values of one function template's reads.

    Compared by the function FastMCP runs and the template's URI template (two copies of one
    template are equal); the per-parameter converters are derived from the function.
    """

    function: Any
    uri_template: str
    #: Non-exploded ``{?name}`` query parameters whose function parameter takes a list (FastMCP
    #: splits their first value on commas).
    list_params: frozenset[str]
    parameters: Mapping[str, _Parameter] = field(compare=False, repr=False)
    #: The template's ``{?...}`` names (``dry-run``) and the parameters they fill (``dry_run``).
    query_keys: Mapping[str, str] = field(compare=False, repr=False, default_factory=dict)
    #: The exploded ``{?name*}`` names (``ids``): FastMCP reads every value of each.
    exploded: frozenset[str] = field(compare=False, repr=False, default=frozenset())

    def spellings(self, uri: str, query_names: frozenset[str] | None) -> tuple[str, ...]:
        """The read's canonical spelling (as :func:`template_target` writes a target), or
        ``()`` when every value of ``uri`` is written as the function receives it
        (``items://7`` for ``id: int``), or when FastMCP will refuse one (the read fails).

        Raises:
            UnknownConversion: a value's conversion cannot be told (the caller fails closed).
        """
        spelled = self._spelled(uri)
        if spelled is None or not spelled[1]:
            return ()
        return (template_target(self._written(uri, spelled[0]), self.uri_template, query_names),)

    def canonical(self, uri: str, query_names: frozenset[str] | None) -> str | None:
        """The canonical spelling of any read ``uri`` of this template (its target as
        :func:`template_target` writes it when nothing is respelled); ``None`` when ``uri`` is
        not a read of this template or FastMCP would refuse one of its values. Never raises:
        a rules file canonicalizes the URIs its rules name with it (:class:`Respelling`)."""
        try:
            spelled = self._spelled(uri)
        except Exception:  # an unknown conversion, a failing validator: no canonical form
            return None
        if spelled is None:
            return None
        written = self._written(uri, spelled[0]) if spelled[1] else uri
        return template_target(written, self.uri_template, query_names)

    def _spelled(self, uri: str) -> tuple[dict[str, str | list[str]], bool] | None:
        """The canonical text of each converted value of ``uri``, and whether any differs from
        the text read; ``None`` when ``uri`` does not match or FastMCP refuses a value."""
        params = match_uri_template(uri, self.uri_template, list_params=self.list_params)
        if not params:
            return None
        spelled: dict[str, str | list[str]] = {}
        respelled = False
        for name, value in params.items():
            parameter = self.parameters.get(name)
            if parameter is None:
                continue
            try:
                received = parameter.received(value)
            except _REFUSED:
                return None  # FastMCP refuses it too: the function never runs
            if isinstance(received, list | tuple):
                items = [spell(item) for item in received]
                spelled[name] = items
                respelled = respelled or value != items
            else:
                spelled[name] = text = spell(received)
                respelled = respelled or value != text
        return spelled, respelled

    def _written(self, uri: str, spelled: Mapping[str, str | list[str]]) -> str:
        """``uri`` with each spelled value's text replaced by its canonical text,
        percent-encoded (:func:`template_target` decodes it again)."""
        path, _, query = _matched_part(uri, self.uri_template).partition("?")
        regex = build_regex(self.uri_template)
        match = regex.match(path) if regex is not None else None
        path_names: set[str] = set()
        if match is not None:
            pieces: list[str] = []
            end = 0
            spans = sorted((match.span(name), name) for name in match.groupdict())
            for (start, stop), name in spans:
                path_names.add(name)
                if name not in spelled:
                    continue
                pieces.append(path[end:start])
                pieces.append(_encoded(spelled[name]))
                end = stop
            pieces.append(path[end:])
            path = "".join(pieces)
        if not query:
            return path
        keys = self.query_keys
        exploded = self.exploded
        seen: dict[str, int] = {}
        parts: list[str] = []
        for part in query.split("&"):
            raw_name, _, _ = part.partition("=")
            name = unquote_plus(raw_name)
            key = keys.get(name)
            if not part or key is None or key not in spelled or key in path_names:
                parts.append(part)
                continue
            index = seen.get(key, 0)
            seen[key] = index + 1
            value = spelled[key]
            if name in exploded and isinstance(value, list):
                if index < len(value):
                    part = f"{raw_name}={quote(value[index], safe='')}"
            elif index == 0:  # FastMCP reads the first value of a name that is not exploded
                part = f"{raw_name}={_encoded(value)}"
            parts.append(part)
        return f"{path}?{'&'.join(parts)}"


def _encoded(value: str | list[str]) -> str:
    if isinstance(value, list):  # a list parameter's items, comma-joined (RFC 6570 3.2.8)
        return ",".join(quote(item, safe="") for item in value)
    return quote(value, safe="")


def _matched_part(uri: str, uri_template: str) -> str:
    """The part of ``uri`` FastMCP matches against ``uri_template``: all of it when the template
    spells out a literal ``#`` (``notes://{id}#x``), else the URI without its fragment
    (``match_uri_template``)."""
    return uri if "#" in uri_template else uri.partition("#")[0]


def _head(uri_template: str) -> str:
    """``uri_template`` before its literal ``#``, without ``{?...}`` query expressions."""
    depth = 0
    for index, char in enumerate(uri_template):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        elif char == "#" and depth == 0:
            uri_template = uri_template[:index]
            break
    return _QUERY_EXPRESSION.sub("", uri_template)


_QUERY_EXPRESSION: Final = re.compile(r"\{\?[^}]+\}")


def template_target(uri: str, uri_template: str, query_names: frozenset[str] | None) -> str:
    """A template read's target: :func:`~securemcp.policy.request.resource_target` of ``uri``.

    A template that spells out a literal ``#`` (``notes://{id}#x``) is matched by FastMCP
    against the whole URI, so a value may hold a ``#`` (``notes://a#b#x`` reads
    ``id = "a#b"``): cutting the URI at its first ``#`` would judge ``notes://a``. The target
    is then the template's part before its ``#`` written with the values FastMCP reads
    (``notes://a#b``), as a fragment is dropped from any other read.
    """
    if "#" not in uri_template:
        return resource_target(uri, query_names)
    params = match_uri_template(uri, uri_template)
    if params is None:  # not a read of this template (FastMCP finds no resource)
        return resource_target(uri, query_names)
    path = expand_uri_template(_head(uri_template), params)
    query = uri.partition("?")[2]
    return resource_target(f"{path.replace('#', '%23')}?{query}" if query else path, query_names)


@dataclass(frozen=True, slots=True)
class Respelling:
    """The canonical spelling of any read of one template (:meth:`TemplateValues.canonical`),
    as ``CallRequest.canonical_spelling`` carries it: a rules file writes the URIs its rules
    name this way too, so a rule matches a read however either writes its values."""

    values: TemplateValues
    query_names: frozenset[str] | None

    def __call__(self, uri: str) -> str | None:
        return self.values.canonical(uri, self.query_names)


#: How many mounts deep a read is followed to the template that converts its values.
_MOUNT_DEPTH: Final = 8


@dataclass(frozen=True, slots=True)
class MountedTemplate:
    """A mount's forwarder of a template (FastMCP's ``FastMCPProviderResourceTemplate``).

    ``server.mount(child, namespace=...)`` serves each template of ``child`` as a forwarder that
    re-expands the read's path for the child's own URI template and has the child read it: the
    child's template converts the values. :meth:`values` finds that template (as the child's
    read will) and gives its conversions, matched on the forwarder's URI template.
    """

    server: Any  # the mounted server (compared by identity)
    uri_template: str  # as this server serves it (items://ns/{id})
    original_uri_template: str  # as the mounted server serves it (items://{id})
    version: str | None

    async def values(self, uri: str, depth: int = 0) -> TemplateValues | None:
        """How the template that serves ``uri`` in the mounted server converts its values."""
        params = match_uri_template(uri, self.uri_template)
        if params is None or depth >= _MOUNT_DEPTH:
            return None
        forwarded = forward_uri(self.original_uri_template, params, uri)
        version = VersionSpec(eq=self.version) if self.version else None
        template = await self.server.get_resource_template(forwarded, version=version)
        inner = template_values(template) if template is not None else None
        if isinstance(inner, MountedTemplate):
            inner = await inner.values(forwarded, depth + 1)
        if inner is None:
            return None
        return dataclasses.replace(inner, uri_template=self.uri_template)


def template_values(component: Any) -> TemplateValues | MountedTemplate | None:
    """How ``component`` converts its reads' values, or ``None`` when it does not (a template
    that is not a FastMCP function template run by FastMCP's own ``read``, or whose parameters
    all take text). A mount's forwarder gives a :class:`MountedTemplate`. Never raises: a
    parameter whose annotation cannot be resolved is kept, and reads that give it a value fail
    closed (:class:`UnknownConversion`)."""
    if isinstance(component, FastMCPProviderResourceTemplate):
        original = component._original_uri_template
        if type(component)._read is not FastMCPProviderResourceTemplate._read or not original:
            return None
        return MountedTemplate(
            component._server, component.uri_template, original, component.version
        )
    if not isinstance(component, FunctionResourceTemplate):
        return None
    cls = type(component)
    if (
        cls.read is not FunctionResourceTemplate.read
        or cls._read is not FunctionResourceTemplate._read
    ):
        return None  # a subclass converts (or not) in its own way
    function = component.fn
    typed = converted_parameters(function)
    if not typed:
        return None
    parameters = {name: _Parameter(annotation, hint) for name, (annotation, hint) in typed.items()}
    list_params = frozenset(getattr(component, "_list_query_params", frozenset()))
    return _values(function, component.uri_template, list_params, parameters)


def _values(
    function: Any, uri_template: str, list_params: frozenset[str], parameters: dict[str, _Parameter]
) -> TemplateValues:
    return TemplateValues(
        function=function,
        uri_template=uri_template,
        list_params=list_params,
        parameters=parameters,
        query_keys={name: name.replace("-", "_") for name in extract_query_params(uri_template)},
        exploded=frozenset(extract_exploded_query_params(uri_template)),
    )


#: The annotations ``securemcp policy explain --param NAME=TYPE`` knows.
DECLARABLE: Final[Mapping[str, type]] = {"str": str, "int": int, "float": float, "bool": bool}


def declared_values(uri_template: str, types: Mapping[str, type]) -> TemplateValues:
    """How a function template converts its reads' values when its parameters (``types``, by
    name; ``dry-run`` is ``dry_run``) are annotated exactly with these types, for
    ``securemcp policy explain``, which has no server to look the template up in."""
    parameters = {
        name.replace("-", "_"): _Parameter(annotation, annotation)
        for name, annotation in types.items()
        if annotation is not str
    }
    return _values(None, uri_template, frozenset(), parameters)
