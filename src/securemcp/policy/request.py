"""The description of a call that a policy decides on: :class:`CallRequest` and :class:`RiskClass`.

A policy sees *who* (the verified :class:`~securemcp.context.Principal`, never asserted identity —
DESIGN.md guarantee 2), *what* (method, target, read-only arguments, tags, MCP tool annotations and
a risk class) and *how* (transport). Everything is immutable, so a hook cannot change the call it
decides on.

Risk classes follow the MCP tool annotations (``ToolAnnotations`` in the MCP schema:
``readOnlyHint``, ``destructiveHint``, ``openWorldHint``) or are declared explicitly by the server
author, which always wins. Precedence when derived from annotations::

    destructiveHint true (and not readOnlyHint)   -> destructive
    readOnlyHint true and openWorldHint true      -> external
    readOnlyHint true                             -> read
    openWorldHint true                            -> external
    anything else (including no annotations)      -> write

Deliberate deviation from the MCP defaults (``destructiveHint`` and ``openWorldHint`` default to
true): applying them would make every un-annotated tool destructive and put every existing server
behind approvals. securemcp classifies an un-annotated tool as ``write`` (never ``read``: nothing
is assumed harmless) and only explicit hints move it. ``admin`` is never derived; declare it.
Annotations here are the server author's own declarations, not claims from a client.

Arguments are hashed with :func:`arguments_hash`: SHA-256 over a canonical JSON encoding (sorted
keys, no insignificant whitespace, UTF-8; the RFC 8785 JCS idea for the JSON that MCP carries), so
the same arguments always hash the same and approvals can be bound to them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import unquote, unquote_plus

from securemcp.context import Principal, freeze_claims

__all__ = [
    "CallRequest",
    "RiskClass",
    "annotations_mapping",
    "arguments_hash",
    "canonical_json",
    "finite_json",
    "freeze",
    "is_number",
    "resource_target",
    "same_json",
    "thaw",
]


class RiskClass(StrEnum):
    """How dangerous a call is, from least to most (``admin`` is declared, never derived)."""

    READ = "read"
    WRITE = "write"
    EXTERNAL = "external"
    DESTRUCTIVE = "destructive"
    ADMIN = "admin"

    @classmethod
    def classify(
        cls, annotations: Any = None, declared: RiskClass | str | None = None
    ) -> RiskClass:
        """The risk class of a tool: ``declared`` if given, else derived from its annotations.

        ``annotations`` may be a mapping, an object with hint attributes (FastMCP/MCP
        ``ToolAnnotations``) or ``None``.

        Raises:
            ValueError: ``declared`` is not a risk class name.
        """
        if declared is not None:
            member = _RISK_BY_VALUE.get(declared) if isinstance(declared, str) else None
            return member if member is not None else cls(declared)
        if annotations is None or annotations is _NO_ANNOTATIONS:
            return cls.WRITE
        hints = annotations_mapping(annotations)
        read_only = _hint(hints, "readOnlyHint")
        destructive = _hint(hints, "destructiveHint")
        open_world = _hint(hints, "openWorldHint")
        if destructive is True and read_only is not True:
            return cls.DESTRUCTIVE
        if open_world is True:
            return cls.EXTERNAL
        if read_only is True:
            return cls.READ
        return cls.WRITE


_RISK_BY_VALUE: Final[dict[str, RiskClass]] = {member.value: member for member in RiskClass}

_SNAKE: Final[dict[str, str]] = {
    "read_only_hint": "readOnlyHint",
    "destructive_hint": "destructiveHint",
    "idempotent_hint": "idempotentHint",
    "open_world_hint": "openWorldHint",
}


def _hint(annotations: Mapping[str, Any], name: str) -> bool | None:
    value = annotations.get(name)
    return value if isinstance(value, bool) else None


_SCALAR_TYPES: Final = frozenset({str, int, float, bool, type(None)})


def freeze(value: Any) -> Any:
    """A deeply read-only copy of JSON data (objects → mappingproxy, arrays → tuples).

    Same result as :func:`securemcp.context.freeze_claims`, with a fast path for scalars.
    """
    cls = value.__class__
    if cls in _SCALAR_TYPES:
        return value
    if cls is dict or cls is MappingProxyType:
        return MappingProxyType(
            {
                (k if k.__class__ is str else str(k)): (
                    v if v.__class__ in _SCALAR_TYPES else freeze(v)
                )
                for k, v in value.items()
            }
        )
    if cls is list or cls is tuple:
        return tuple(freeze(v) for v in value)
    return freeze_claims(value)


def thaw(value: Any) -> Any:
    """Frozen JSON data (see :func:`freeze`) back as plain lists and dicts (JSON-ready)."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, MappingProxyType):
        return {k: thaw(v) for k, v in value.items()}
    return value


_ARRAYS: Final = (list, tuple)
_OBJECTS: Final = (dict, MappingProxyType)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality at every depth: ``true`` is not ``1``, an array equals an array (list or
    tuple) with equal items in order, an object equals an object with the same keys and equal
    values. Frozen (:func:`freeze`) and plain data compare alike.
    """
    a_cls = a.__class__
    b_cls = b.__class__
    if a_cls is bool or b_cls is bool:
        return a is b  # bool cannot be subclassed
    if a_cls in _SCALAR_TYPES and b_cls in _SCALAR_TYPES:
        return bool(a == b)
    if isinstance(a, _ARRAYS):
        if not isinstance(b, _ARRAYS) or len(a) != len(b):
            return False
        for x, y in zip(a, b, strict=True):  # noqa: SIM110 - no generator
            if not same_json(x, y):
                return False
        return True
    if isinstance(a, _OBJECTS):
        if not isinstance(b, _OBJECTS) or len(a) != len(b):
            return False
        for key, x in a.items():  # noqa: SIM110 - no generator
            if key not in b or not same_json(x, b[key]):
                return False
        return True
    if isinstance(b, _ARRAYS) or isinstance(b, _OBJECTS):  # noqa: SIM101
        return False
    return bool(a == b)


def is_number(value: Any) -> bool:
    """Whether ``value`` is a JSON number: an ``int`` or a ``float`` (or a subclass), never a
    ``bool`` (JSON ``true`` is not ``1``). NaN and infinities count; see :func:`finite_json`."""
    cls = value.__class__
    if cls is int or cls is float:
        return True
    return isinstance(value, _NUMBER_TYPES) and cls is not bool


_NUMBER_TYPES: Final = (int, float)  # a tuple: isinstance against ``int | float`` is slower


def finite_json(value: Any) -> bool:
    """Whether ``value`` holds no NaN or infinity at any depth (TOML allows ``nan``/``inf``,
    which would silently disable a bound or condition: every comparison with NaN is false)."""
    if value.__class__ is float:
        return math.isfinite(value)
    if isinstance(value, _ARRAYS):
        return all(finite_json(v) for v in value)
    if isinstance(value, _OBJECTS):
        return all(finite_json(v) for v in value.values())
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def resource_target(uri: str, query_names: frozenset[str] | None = None) -> str:
    """A resource URI as policies and rate limits see it: the way FastMCP reads it.

    FastMCP percent-decodes each template parameter it extracts (``files://%73ecret`` reads
    ``files://secret``), ignores the fragment, and reads only the query parameters its URI
    template names (the first value of each, every value of an exploded ``{?name*}``, listed in
    ``query_names`` as ``name*``). So the URI is taken here with the fragment dropped, the path
    percent-decoded, and the query reduced to those values of the parameters in
    ``query_names`` (all parameters when ``None``), decoded and in name order. Two spellings
    FastMCP resolves to the same resource give the same text, so they meet the same rules and
    the same rate-limit buckets. Spellings FastMCP would tell apart may share the text
    (``a%2Fb`` and ``a/b``): a deny rule then covers both. Only template reads are normalised
    (a concrete resource is found by its exact URI, see ``PolicyEnforcement.call_request``).
    """
    if "%" not in uri and "#" not in uri and "?" not in uri and "+" not in uri:
        return uri  # the usual case: nothing to decode
    base = uri.partition("#")[0]
    path, _, query = base.partition("?")
    target = unquote(path)
    if query:
        pairs = []
        seen: set[str] = set()
        for part in query.split("&"):
            name, _, value = part.partition("=")
            name = unquote_plus(name)
            if query_names is not None and name not in query_names:
                continue
            if name in seen and (query_names is None or f"{name}*" not in query_names):
                continue  # FastMCP reads the first value of a name that is not exploded
            seen.add(name)
            pairs.append((name, unquote_plus(value)))
        pairs.sort(key=lambda pair: pair[0])  # stable: repeated names keep their order
        if pairs:
            target += "?" + "&".join(f"{name}={value}" for name, value in pairs)
    return target


def _json_default(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(value, key=repr)
    raise TypeError(f"{type(value).__name__} is not JSON data")


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no whitespace, no NaN/Infinity.

    Raises:
        TypeError, ValueError: ``value`` is not JSON data.
    """
    text = json.dumps(
        value,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        allow_nan=False,
        default=_json_default,
    )
    return text.encode("utf-8")


def arguments_hash(arguments: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``arguments``.

    Values that are not JSON data hash by ``repr`` (still deterministic within a process).
    """
    try:
        data = canonical_json(arguments)
    except (TypeError, ValueError):
        data = repr(sorted((str(k), repr(v)) for k, v in arguments.items())).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


_NO_ANNOTATIONS: Final[Mapping[str, Any]] = MappingProxyType({})


def annotations_mapping(annotations: Any) -> Mapping[str, Any]:
    """MCP annotations as a read-only mapping with the schema's camelCase hint names.

    Accepts a mapping or an MCP/FastMCP ``ToolAnnotations``. The result can be cached per tool
    and passed to :meth:`CallRequest.build` (a read-only mapping is used as is), which saves a
    pydantic dump per call.
    """
    if annotations is None:
        return _NO_ANNOTATIONS
    if isinstance(annotations, MappingProxyType):
        return annotations
    if isinstance(annotations, Mapping):
        data = dict(annotations)
    else:
        dump = getattr(annotations, "model_dump", None)
        if not callable(dump):
            raise TypeError(
                f"annotations must be a mapping or ToolAnnotations, not {annotations!r}"
            )
        data = dump(by_alias=True, exclude_none=True)
    normalized = {_SNAKE.get(str(k), str(k)): v for k, v in data.items()}
    return freeze_claims(normalized)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One call, as a policy sees it. Build it with :meth:`build`.

    Attributes:
        principal: the verified caller.
        tenant: the caller's tenant (defaults to ``principal.tenant``).
        method: MCP method (``tools/call``, ``resources/read``, ``prompts/get``).
        target: tool name, resource URI or prompt name. For a resource template read, the URI
            as FastMCP reads it (:func:`resource_target`); when the template function receives
            typed values (``items://07`` is item 7 of ``id: int``), the policy is asked again
            with ``target`` set to the read's canonical spelling (``items://7``) and the
            strictest decision wins (``PolicyEnforcement.spellings``).
        arguments: the call's arguments, deeply read-only (lists become tuples). For a prompt
            whose function takes typed parameters (``amount: int``), the policy is asked again
            with the arguments as the function receives them (``5000``) and canonically written
            as text (``"5000"`` for ``"05000"``), and the strictest decision wins
            (``PolicyEnforcement.argument_forms``); likewise for a tool parameter the validation
            converts (``amount: Decimal`` receives ``"5e3"`` as 5000).
        tags: the component's FastMCP tags.
        annotations: the component's MCP annotations, read-only.
        risk: the risk class (declared, or derived from ``annotations``).
        transport: ``stdio``, ``streamable-http``, ``sse`` or ``in-memory``.
        version: the version of the component the call runs, as the server registered it
            (``"2"``), whatever the call asked for: FastMCP runs the highest version when it
            asks for none, and the highest in range for a range. ``None`` when the component is
            unversioned, or when ``version_resolved`` is false. Rules and approvals judge it
            (see :mod:`securemcp.policy.versions`).
        uri: for a resource template read, the URI exactly as the caller sent it (``target`` is
            it as FastMCP reads it, percent-decoded); ``None`` otherwise (a concrete resource's
            ``target`` is its URI, exactly as sent and registered).
        requested_version: the version the call asks for (``_meta.fastmcp.version``, or
            ``version=`` on a FastMCP client call), as written: an exact version (``"2.0"``) or
            a range (``">=1,<3"``); ``None`` when it asks for none. Informational: it need not
            be the version that runs.
        version_resolved: ``False`` when securemcp cannot tell which version runs: the
            component is unversioned here but forwards the call (and the version asked for) to a
            versioned component elsewhere, such as a FastMCP proxy of a versioned server, which
            chooses. A policy must not be more permissive then than for any version the call
            could run (a rules file refuses where a rule naming versions could apply).
        template: for a resource template read, the URI template of the template that serves
            it (``users://{email}/ssn``); ``None`` otherwise. Rate limits count the reads of a
            template together, as they count the calls of a tool whatever its arguments.
        canonical_spelling: for a read of a template whose function receives typed values,
            a function giving the canonical spelling of any URI of that template
            (``"grid://7.0/01"`` -> ``"grid://7/1"`` for ``a: float, b: int``; ``None`` when
            FastMCP would refuse a value or the URI is not one of the template's), else
            ``None``. A rules file writes the URIs its rules name this way too, so a rule
            matches a read however either writes its values.
        canonical_argument: for a prompt whose function takes typed parameters (or a tool
            with a parameter its validation converts, ``amount: Decimal``), a function
            giving the canonical text of a text value of an argument (``("price", "7.0")`` ->
            ``"7"`` for ``price: float``; any other value, and a value FastMCP would refuse,
            unchanged), else ``None``. A rules file writes the text values its argument
            conditions name this way too.
    """

    principal: Principal
    tenant: str | None
    method: str
    target: str
    arguments: Mapping[str, Any] = field(default_factory=lambda: _NO_ANNOTATIONS)
    tags: frozenset[str] = frozenset()
    annotations: Mapping[str, Any] = field(default_factory=lambda: _NO_ANNOTATIONS)
    risk: RiskClass = RiskClass.WRITE
    transport: str = "in-memory"
    version: str | None = None
    uri: str | None = None
    requested_version: str | None = None
    version_resolved: bool = True
    template: str | None = None
    canonical_spelling: Callable[[str], str | None] | None = field(
        default=None, compare=False, repr=False
    )
    canonical_argument: Callable[[str, Any], Any] | None = field(
        default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.arguments, MappingProxyType):
            object.__setattr__(self, "arguments", freeze(self.arguments))
        if not isinstance(self.annotations, MappingProxyType):
            object.__setattr__(self, "annotations", annotations_mapping(self.annotations))
        tags: Any = self.tags
        if not isinstance(tags, frozenset):
            object.__setattr__(self, "tags", frozenset(tags))
        risk: Any = self.risk
        if not isinstance(risk, RiskClass):
            object.__setattr__(self, "risk", RiskClass(risk))

    @classmethod
    def build(
        cls,
        principal: Principal,
        target: str,
        arguments: Mapping[str, Any] | None = None,
        *,
        method: str = "tools/call",
        tenant: str | None = None,
        tags: Iterable[str] = (),
        annotations: Any = None,
        risk: RiskClass | str | None = None,
        transport: str = "in-memory",
        version: str | None = None,
        uri: str | None = None,
        requested_version: str | None = None,
        version_resolved: bool = True,
        template: str | None = None,
    ) -> CallRequest:
        """Describe a call; freezes ``arguments`` and derives ``risk`` unless declared."""
        hints = annotations_mapping(annotations)
        if tenant is None:
            tenant = principal.tenant
        frozen = freeze(arguments) if arguments else _NO_ANNOTATIONS
        if not isinstance(tags, frozenset):
            tags = frozenset(tags)
        risk_class = RiskClass.classify(hints, risk)
        if cls is not CallRequest or type(frozen) is not MappingProxyType:
            return cls(
                principal=principal,
                tenant=tenant,
                method=method,
                target=target,
                arguments=frozen,
                tags=tags,
                annotations=hints,
                risk=risk_class,
                transport=transport,
                version=version,
                uri=uri,
                requested_version=requested_version,
                version_resolved=version_resolved,
                template=template,
            )
        # Every field is already in the form __post_init__ would give it: set the slots directly
        # (this runs once per policed call).
        request = object.__new__(CallRequest)
        _set_principal(request, principal)
        _set_tenant(request, tenant)
        _set_method(request, method)
        _set_target(request, target)
        _set_arguments(request, frozen)
        _set_tags(request, tags)
        _set_annotations(request, hints)
        _set_risk(request, risk_class)
        _set_transport(request, transport)
        _set_version(request, version)
        _set_uri(request, uri)
        _set_requested_version(request, requested_version)
        _set_version_resolved(request, version_resolved)
        _set_template(request, template)
        _set_canonical_spelling(request, None)
        _set_canonical_argument(request, None)
        return request

    def arguments_hash(self) -> str:
        """``sha256:<hex>`` of the canonical JSON of the arguments (see :func:`arguments_hash`)."""
        return arguments_hash(self.arguments)

    def with_arguments(self, arguments: Mapping[str, Any]) -> CallRequest:
        """This call with other ``arguments`` (frozen): ``dataclasses.replace(self,
        arguments=arguments)``, without its per-field work (a call judged in several forms
        makes one per form)."""
        if type(self) is not CallRequest:
            return dataclasses.replace(self, arguments=arguments)
        request = object.__new__(CallRequest)
        for name, setter in _SETTERS:
            setter(request, getattr(self, name))
        _set_arguments(request, freeze(arguments) if arguments else _NO_ANNOTATIONS)
        return request

    def with_canonical_argument(self, respell: Callable[[str, Any], Any] | None) -> CallRequest:
        """This call with ``canonical_argument`` set (as :meth:`with_arguments`, cheaply)."""
        if type(self) is not CallRequest:
            return dataclasses.replace(self, canonical_argument=respell)
        request = object.__new__(CallRequest)
        for name, setter in _SETTERS:
            setter(request, getattr(self, name))
        _set_arguments(request, self.arguments)
        _set_canonical_argument(request, respell)
        return request


def _slot_setter(name: str) -> Any:
    return CallRequest.__dict__[name].__set__


_set_principal = _slot_setter("principal")
_set_tenant = _slot_setter("tenant")
_set_method = _slot_setter("method")
_set_target = _slot_setter("target")
_set_arguments = _slot_setter("arguments")
_set_tags = _slot_setter("tags")
_set_annotations = _slot_setter("annotations")
_set_risk = _slot_setter("risk")
_set_transport = _slot_setter("transport")
_set_version = _slot_setter("version")
_set_uri = _slot_setter("uri")
_set_requested_version = _slot_setter("requested_version")
_set_version_resolved = _slot_setter("version_resolved")
_set_template = _slot_setter("template")
_set_canonical_spelling = _slot_setter("canonical_spelling")
_set_canonical_argument = _slot_setter("canonical_argument")
#: Every field but ``arguments``, with its slot setter (see :meth:`CallRequest.with_arguments`).
_SETTERS: Final = tuple(
    (f.name, _slot_setter(f.name)) for f in dataclasses.fields(CallRequest) if f.name != "arguments"
)
