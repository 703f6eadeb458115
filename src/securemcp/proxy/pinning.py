"""Tool pinning: the defence against *rug pulls* by upstream MCP servers.

A rug pull is an upstream MCP server changing a tool's definition (its description, input
schema, annotations, ...) *after* the operator reviewed and approved it: the tool a model sees
tomorrow is not the tool a human looked at today. Like Invariant Labs' ``mcp-scan``
trust-on-first-use pinning, securemcp records a digest of every reviewed definition in a
lockfile (kept in git, reviewed like code) and the proxy compares what the upstream serves now
with what was locked.

This module is pure: it knows nothing about FastMCP or the network.

* :func:`definition_of` extracts the *pinned definition* of an ``mcp.types`` component: exactly
  the fields the proxy passes on to clients, under their MCP wire names.
* :func:`digest_of` is ``"sha256:"`` + the SHA-256 of its RFC 8785 (JCS) canonical form, so
  object member order never matters and every other change does.
* :class:`PinnedDefinition`, :class:`UpstreamLock` and :class:`Lockfile` model the lockfile;
  :meth:`Lockfile.load` validates strictly and re-verifies every digest, :meth:`Lockfile.save`
  writes atomically and deterministically.
* :func:`diff` compares a lock with the live components of an upstream.

Lockfile format (JSON, UTF-8, ASCII-escaped so hidden characters show up in review)::

    {"version": 1,
     "upstreams": {"<name>": {"locked_at": "2025-01-01T00:00:00Z",
                               "components": [{"kind": "tool", "key": "search",
                                               "digest": "sha256:...", "definition": {...},
                                               "findings": []}, ...]}}}
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import mcp.types as mt

from securemcp.audit import jcs
from securemcp.errors import ConfigurationError

__all__ = [
    "LOCKFILE_VERSION",
    "MAX_LOCKFILE_BYTES",
    "ComponentKind",
    "LockDiff",
    "Lockfile",
    "LockfileError",
    "PinStatus",
    "PinnedDefinition",
    "UpstreamLock",
    "definition_of",
    "diff",
    "digest_of",
    "key_of",
    "utc_timestamp",
]

ComponentKind = Literal["tool", "resource", "template", "prompt"]
PinStatus = Literal["pinned", "changed", "unpinned"]

#: The only lockfile format version this module reads and writes.
LOCKFILE_VERSION: Final = 1
#: Lockfiles larger than this are refused before parsing.
MAX_LOCKFILE_BYTES: Final = 16 * 1024 * 1024

_KINDS: Final[tuple[str, ...]] = get_args(ComponentKind)
_KIND_ORDER: Final = {kind: index for index, kind in enumerate(_KINDS)}
_KEY_FIELD: Final[Mapping[str, str]] = MappingProxyType(
    {"tool": "name", "resource": "uri", "template": "uriTemplate", "prompt": "name"}
)
_MODEL: Final[Mapping[str, type[Any]]] = MappingProxyType(
    {"tool": mt.Tool, "resource": mt.Resource, "template": mt.ResourceTemplate, "prompt": mt.Prompt}
)

# Pinned top-level fields per kind: wire name -> (expected JSON type, required).
_STR, _OBJECT, _ARRAY = "string", "object", "array"
_FIELDS: Final[Mapping[str, Mapping[str, tuple[str, bool]]]] = MappingProxyType(
    {
        "tool": {
            "name": (_STR, True),
            "title": (_STR, False),
            "description": (_STR, False),
            "inputSchema": (_OBJECT, True),
            "outputSchema": (_OBJECT, False),
            "annotations": (_OBJECT, False),
        },
        "resource": {
            "uri": (_STR, True),
            "name": (_STR, True),
            "title": (_STR, False),
            "description": (_STR, False),
            "mimeType": (_STR, False),
        },
        "template": {
            "uriTemplate": (_STR, True),
            "name": (_STR, True),
            "title": (_STR, False),
            "description": (_STR, False),
            "mimeType": (_STR, False),
        },
        "prompt": {
            "name": (_STR, True),
            "title": (_STR, False),
            "description": (_STR, False),
            "arguments": (_ARRAY, False),
        },
    }
)
_ANNOTATION_FIELDS: Final[Mapping[str, type]] = MappingProxyType(
    {
        "title": str,
        "readOnlyHint": bool,
        "destructiveHint": bool,
        "idempotentHint": bool,
        "openWorldHint": bool,
    }
)
_ARGUMENT_FIELDS: Final[Mapping[str, type]] = MappingProxyType(
    {"name": str, "title": str, "description": str, "required": bool}
)
_DIGEST_RE: Final = re.compile(r"sha256:[0-9a-f]{64}")
_FINDING_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TIMESTAMP_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|\+00:00)")


class LockfileError(ConfigurationError):
    """A lockfile is missing, unreadable, malformed or fails digest verification."""

    code = "invalid_lockfile"
    default_message = "The lockfile is invalid."


# --- helpers -----------------------------------------------------------------------------------


def _show(text: str, limit: int = 80) -> str:
    """``text`` quoted for a message: non-printables as ``\\uXXXX``, at most ``limit`` chars."""
    out: list[str] = []
    for char in text[:limit]:
        if char in "'\\":
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(f"\\u{ord(char):04x}" if ord(char) <= 0xFFFF else f"\\U{ord(char):08x}")
    return "'" + "".join(out) + ("..." if len(text) > limit else "") + "'"


def _label(kind: str, key: str, upstream: str | None = None) -> str:
    where = f"{kind} {_show(key)}"
    return where if upstream is None else f"upstream {_show(upstream)}: {where}"


def utc_timestamp(moment: datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp (``2025-01-01T12:00:00Z``), of ``moment`` or now."""
    moment = datetime.now(UTC) if moment is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_timestamp(text: object) -> str:
    if not isinstance(text, str) or not _TIMESTAMP_RE.fullmatch(text):
        raise ValueError("locked_at must be an RFC 3339 UTC timestamp such as 2025-01-01T00:00:00Z")
    try:
        datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("locked_at is not a valid date and time") from None
    return text


def _json_type(value: object) -> str:
    if isinstance(value, str):
        return _STR
    if isinstance(value, Mapping):
        return _OBJECT
    if isinstance(value, list):
        return _ARRAY
    return type(value).__name__


def _validate_definition(kind: str, definition: object) -> None:
    """Check a pinned definition's shape; raises ``ValueError`` naming the bad field only."""
    if kind not in _FIELDS:
        raise ValueError(f"unknown component kind {_show(str(kind))}")
    if not isinstance(definition, Mapping):
        raise ValueError("definition must be a JSON object")
    fields = _FIELDS[kind]
    for name, value in definition.items():
        if name not in fields:
            raise ValueError(f"field {_show(str(name))} is not pinned for a {kind}")
        expected, _ = fields[name]
        if _json_type(value) != expected:
            raise ValueError(f"field {name!r} must be a JSON {expected}")
    for name, (_, required) in fields.items():
        if required and name not in definition:
            raise ValueError(f"required field {name!r} is missing")
    _validate_members(definition.get("annotations", {}), _ANNOTATION_FIELDS, "annotations")
    for argument in definition.get("arguments", []):
        if not isinstance(argument, Mapping) or not isinstance(argument.get("name"), str):
            raise ValueError("every prompt argument must be an object with a string 'name'")
        _validate_members(argument, _ARGUMENT_FIELDS, "arguments")


def _validate_members(value: Mapping[str, Any], allowed: Mapping[str, type], where: str) -> None:
    for name, member in value.items():
        if name not in allowed:
            raise ValueError(f"{where}: member {_show(str(name))} is not allowed")
        # bool is a subclass of int, never the other way round: an exact type check suffices.
        if type(member) is not allowed[name]:
            raise ValueError(f"{where}: member {name!r} must be a {allowed[name].__name__}")


# --- definitions and digests -------------------------------------------------------------------


def definition_of(kind: ComponentKind, component: Any) -> dict[str, Any]:
    """The pinned definition of an ``mcp.types`` Tool, Resource, ResourceTemplate or Prompt.

    Exactly the security-relevant fields the proxy serves to clients, under their MCP wire
    names, ``None`` values omitted (``_meta``, icons, size, execution, resource annotations are
    not pinned). Members are in a fixed order; nested schemas are fresh copies.

    Raises:
        TypeError: ``component`` is not the ``mcp.types`` model for ``kind``.
    """
    model = _MODEL.get(kind)
    if model is None:
        raise ValueError(f"unknown component kind {_show(str(kind))}")
    if not isinstance(component, model):
        raise TypeError(f"a {kind} must be an mcp.types.{model.__name__}")
    dumped: dict[str, Any] = component.model_dump(by_alias=True, exclude_none=True, mode="json")
    out: dict[str, Any] = {}
    for name in _FIELDS[kind]:
        if name in dumped:
            out[name] = dumped[name]
    if "annotations" in out:
        annotations = {
            k: out["annotations"][k] for k in _ANNOTATION_FIELDS if k in out["annotations"]
        }
        if annotations:
            out["annotations"] = annotations
        else:
            del out["annotations"]  # ``annotations: {}`` says nothing: same as absent
    if "arguments" in out:
        out["arguments"] = [
            {k: argument[k] for k in _ARGUMENT_FIELDS if k in argument}
            for argument in out["arguments"]
        ]
    return out


def key_of(kind: ComponentKind, definition: Mapping[str, Any]) -> str:
    """The identity of a component within its upstream: name, uri or uriTemplate."""
    field_name = _KEY_FIELD.get(kind)
    if field_name is None:
        raise ValueError(f"unknown component kind {_show(str(kind))}")
    key = definition.get(field_name)
    if not isinstance(key, str):
        raise ValueError(f"a {kind} definition needs a string {field_name!r}")
    return key


def digest_of(definition: Mapping[str, Any]) -> str:
    """``"sha256:"`` + hex SHA-256 of the RFC 8785 canonical JSON of ``definition``.

    Raises:
        ValueError, TypeError: ``definition`` is not I-JSON (e.g. integers beyond 2**53, NaN).
    """
    return "sha256:" + hashlib.sha256(jcs.dumps(definition)).hexdigest()


@dataclass(frozen=True, slots=True)
class PinnedDefinition:
    """One component's pinned definition and its digest.

    Construction verifies that ``key`` and ``digest`` belong to ``definition``, so an instance
    never lies about what it pins. Treat ``definition`` as read-only.
    """

    kind: ComponentKind
    key: str
    definition: Mapping[str, Any]
    digest: str
    findings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _validate_definition(self.kind, self.definition)
        if key_of(self.kind, self.definition) != self.key:
            raise ValueError(f"key {_show(self.key)} does not match its {self.kind} definition")
        if digest_of(self.definition) != self.digest:
            raise ValueError(f"digest of {_label(self.kind, self.key)} does not match")
        findings = tuple(sorted(set(self.findings)))
        for code in findings:
            if not isinstance(code, str) or not _FINDING_RE.fullmatch(code):
                raise ValueError(f"invalid finding code {_show(str(code))}")
        object.__setattr__(self, "findings", findings)

    def __hash__(self) -> int:
        return hash((self.kind, self.key, self.digest, self.findings))

    @classmethod
    def of(
        cls,
        kind: ComponentKind,
        component_or_definition: Any,
        *,
        findings: Iterable[str] = (),
    ) -> PinnedDefinition:
        """Pin an ``mcp.types`` component, or a definition dict already in pinned form."""
        if isinstance(component_or_definition, Mapping):
            definition: dict[str, Any] = copy.deepcopy(dict(component_or_definition))
        else:
            definition = definition_of(kind, component_or_definition)
        return cls(
            kind=kind,
            key=key_of(kind, definition),
            definition=definition,
            digest=digest_of(definition),
            findings=tuple(findings),
        )


def _sort_key(pin: PinnedDefinition) -> tuple[int, str]:
    return (_KIND_ORDER[pin.kind], pin.key)


# --- locks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpstreamLock:
    """The reviewed definitions of one upstream server, keyed by ``(kind, key)``."""

    upstream: str
    locked_at: str
    entries: Mapping[tuple[ComponentKind, str], PinnedDefinition]

    def __post_init__(self) -> None:
        if not isinstance(self.upstream, str) or not self.upstream:
            raise ValueError("an upstream name must be a non-empty string")
        _check_timestamp(self.locked_at)
        for (kind, key), pin in self.entries.items():
            if (pin.kind, pin.key) != (kind, key):
                raise ValueError(f"entry {_label(kind, key)} holds {_label(pin.kind, pin.key)}")
        ordered = sorted(self.entries.values(), key=_sort_key)
        object.__setattr__(
            self, "entries", MappingProxyType({(pin.kind, pin.key): pin for pin in ordered})
        )

    @classmethod
    def create(
        cls, upstream: str, pins: Iterable[PinnedDefinition], *, locked_at: str | None = None
    ) -> UpstreamLock:
        """A lock of ``pins`` (duplicate ``(kind, key)`` is a ``ValueError``), locked now."""
        entries: dict[tuple[ComponentKind, str], PinnedDefinition] = {}
        for pin in pins:
            if (pin.kind, pin.key) in entries:
                raise ValueError(f"duplicate {_label(pin.kind, pin.key)}")
            entries[(pin.kind, pin.key)] = pin
        return cls(upstream, utc_timestamp() if locked_at is None else locked_at, entries)

    def get(self, kind: ComponentKind, key: str) -> PinnedDefinition | None:
        """The pinned definition of ``kind``/``key``, or ``None``."""
        return self.entries.get((kind, key))

    def check(self, kind: ComponentKind, live: PinnedDefinition) -> PinStatus:
        """``"pinned"`` (same digest), ``"changed"`` (other digest) or ``"unpinned"``."""
        if live.kind != kind:
            raise ValueError(f"check({kind!r}, ...) was given a {live.kind}")
        pinned = self.get(kind, live.key)
        if pinned is None:
            return "unpinned"
        return "pinned" if pinned.digest == live.digest else "changed"


@dataclass(frozen=True)
class Lockfile:
    """All upstream locks of one proxy; see the module docstring for the file format."""

    upstreams: Mapping[str, UpstreamLock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, lock in self.upstreams.items():
            if lock.upstream != name:
                raise ValueError(f"upstream {_show(name)} holds the lock of {_show(lock.upstream)}")
        object.__setattr__(
            self, "upstreams", MappingProxyType(dict(sorted(self.upstreams.items())))
        )

    @classmethod
    def empty(cls) -> Lockfile:
        """A lockfile with no upstreams."""
        return cls({})

    def upstream(self, name: str) -> UpstreamLock | None:
        """The lock of upstream ``name``, or ``None``."""
        return self.upstreams.get(name)

    def with_upstream(self, lock: UpstreamLock) -> Lockfile:
        """A new lockfile with ``lock`` replacing (or adding) its upstream's lock."""
        return Lockfile({**self.upstreams, lock.upstream: lock})

    # -- serialization --

    def to_json(self) -> dict[str, Any]:
        """The JSON document of this lockfile (components sorted by kind, then key)."""
        return {
            "version": LOCKFILE_VERSION,
            "upstreams": {
                name: {
                    "locked_at": lock.locked_at,
                    "components": [
                        {
                            "kind": pin.kind,
                            "key": pin.key,
                            "digest": pin.digest,
                            "definition": pin.definition,
                            "findings": list(pin.findings),
                        }
                        for pin in sorted(lock.entries.values(), key=_sort_key)
                    ],
                }
                for name, lock in sorted(self.upstreams.items())
            },
        }

    def dumps(self) -> str:
        """The exact text :meth:`save` writes: sorted keys, indent 2, ASCII, trailing newline."""
        text = json.dumps(
            self.to_json(), indent=2, sort_keys=True, ensure_ascii=True, allow_nan=False
        )
        return text + "\n"

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically: temp file in the same folder, fsync, ``os.replace``; mode 0o644."""
        target = Path(path)
        data = self.dumps().encode("ascii")
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(temp, 0o644)  # a lockfile is reviewed config, not a secret
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)

    @classmethod
    def loads(cls, data: str | bytes) -> Lockfile:
        """Parse and strictly validate lockfile text (see :meth:`load`)."""
        if len(data) > MAX_LOCKFILE_BYTES:
            raise LockfileError(f"lockfile is larger than {MAX_LOCKFILE_BYTES} bytes")
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            document = json.loads(
                text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant
            )
        except UnicodeDecodeError:
            raise LockfileError("lockfile is not valid UTF-8") from None
        except RecursionError:
            raise LockfileError("lockfile is nested too deeply") from None
        except ValueError as exc:
            raise LockfileError(f"lockfile is not valid JSON: {_short(exc)}") from None
        return _parse_document(document)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Lockfile:
        """Read a lockfile, validating its structure and re-verifying every digest.

        Raises:
            LockfileError: the file is missing, unreadable, over 16 MiB, not strict JSON
                (duplicate member names included), of another version, malformed, or an
                entry's digest does not match its definition (the message names upstream, kind
                and key, never the definition).
        """
        try:
            with open(path, "rb") as handle:
                data = handle.read(MAX_LOCKFILE_BYTES + 1)
        except FileNotFoundError:
            raise LockfileError(f"lockfile not found: {os.fspath(path)}") from None
        except OSError as exc:
            raise LockfileError(
                f"lockfile unreadable: {os.fspath(path)} ({exc.strerror or type(exc).__name__})"
            ) from None
        return cls.loads(data)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _short(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= 120 else text[:117] + "..."


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member name {_show(key, 40)}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_document(document: object) -> Lockfile:
    if not isinstance(document, dict):
        raise LockfileError("lockfile must be a JSON object")
    if set(document) != {"version", "upstreams"}:
        raise LockfileError("lockfile must have exactly the members 'version' and 'upstreams'")
    version = document["version"]
    if type(version) is not int or version != LOCKFILE_VERSION:
        raise LockfileError(
            f"unsupported lockfile version {_show(str(version), 20)} (expected {LOCKFILE_VERSION})"
        )
    upstreams = document["upstreams"]
    if not isinstance(upstreams, dict):
        raise LockfileError("'upstreams' must be a JSON object")
    return Lockfile({name: _parse_upstream(name, body) for name, body in upstreams.items()})


def _parse_upstream(name: str, body: object) -> UpstreamLock:
    where = f"upstream {_show(name)}"
    if not name:
        raise LockfileError("an upstream name must not be empty")
    if not isinstance(body, dict) or set(body) != {"locked_at", "components"}:
        raise LockfileError(f"{where} must have exactly the members 'locked_at' and 'components'")
    try:
        locked_at = _check_timestamp(body["locked_at"])
    except ValueError as exc:
        raise LockfileError(f"{where}: {exc}") from None
    components = body["components"]
    if not isinstance(components, list):
        raise LockfileError(f"{where}: 'components' must be a JSON array")
    entries: dict[tuple[ComponentKind, str], PinnedDefinition] = {}
    for index, entry in enumerate(components):
        pin = _parse_entry(name, index, entry)
        if (pin.kind, pin.key) in entries:
            raise LockfileError(f"duplicate entry for {_label(pin.kind, pin.key, name)}")
        entries[(pin.kind, pin.key)] = pin
    return UpstreamLock(name, locked_at, entries)


_ENTRY_REQUIRED: Final = frozenset({"kind", "key", "digest", "definition"})
_ENTRY_ALLOWED: Final = _ENTRY_REQUIRED | {"findings"}


def _parse_entry(upstream: str, index: int, entry: object) -> PinnedDefinition:
    where = f"upstream {_show(upstream)}: component #{index}"
    if not isinstance(entry, dict) or not _ENTRY_REQUIRED <= set(entry) <= _ENTRY_ALLOWED:
        raise LockfileError(
            f"{where} must have the members 'kind', 'key', 'digest', 'definition' "
            "and optionally 'findings'"
        )
    kind, key, digest = entry["kind"], entry["key"], entry["digest"]
    if kind not in _KINDS:
        raise LockfileError(f"{where}: unknown kind {_show(str(kind), 20)}")
    if not isinstance(key, str):
        raise LockfileError(f"{where}: 'key' must be a string")
    where = _label(kind, key, upstream)
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise LockfileError(f"{where}: 'digest' must be 'sha256:' and 64 lower-case hex digits")
    findings = entry.get("findings", [])
    if not isinstance(findings, list) or not all(
        isinstance(code, str) and _FINDING_RE.fullmatch(code) for code in findings
    ):
        raise LockfileError(f"{where}: 'findings' must be a list of finding codes")
    definition = entry["definition"]
    try:
        _validate_definition(kind, definition)
        actual_key = key_of(kind, definition)
        actual_digest = digest_of(definition)
    except (ValueError, TypeError) as exc:
        raise LockfileError(f"{where}: invalid definition: {_short(exc)}") from None
    except RecursionError:
        raise LockfileError(f"{where}: definition is nested too deeply") from None
    if actual_key != key:
        raise LockfileError(f"{where}: the definition is for {_show(actual_key)}")
    if actual_digest != digest:
        raise LockfileError(
            f"{where}: digest mismatch: the definition was edited after it was locked "
            "(re-run the lock command to review and re-pin it)"
        )
    return PinnedDefinition(kind, key, definition, digest, tuple(findings))


# --- diff --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LockDiff:
    """How live components compare with a lock; every tuple is sorted by (kind, key)."""

    added: tuple[PinnedDefinition, ...]
    removed: tuple[PinnedDefinition, ...]
    changed: tuple[tuple[PinnedDefinition, PinnedDefinition, tuple[str, ...]], ...]
    unchanged: tuple[PinnedDefinition, ...]

    @property
    def is_clean(self) -> bool:
        """Nothing added, removed or changed."""
        return not (self.added or self.removed or self.changed)

    def describe(self) -> list[str]:
        """One human-readable line per difference, e.g. ``changed tool 'x': description``."""
        lines = [f"added {_label(pin.kind, pin.key)}" for pin in self.added]
        lines += [f"removed {_label(pin.kind, pin.key)}" for pin in self.removed]
        lines += [
            f"changed {_label(new.kind, new.key)}: {', '.join(fields)}"
            for _, new, fields in self.changed
        ]
        return lines


def _changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, ...]:
    names = sorted(set(old) | set(new))
    return tuple(
        name
        for name in names
        if name not in old
        or name not in new
        or jcs.dumps(old[name]) != jcs.dumps(new[name])  # member order is not a change
    )


def diff(lock: UpstreamLock | None, live: Iterable[PinnedDefinition]) -> LockDiff:
    """Compare the live components of an upstream with its lock (``None``: nothing locked).

    Raises:
        ValueError: ``live`` holds two components with the same kind and key (an ambiguous
            upstream listing; the proxy must not pick one silently).
    """
    current: dict[tuple[ComponentKind, str], PinnedDefinition] = {}
    for pin in live:
        if (pin.kind, pin.key) in current:
            raise ValueError(f"the upstream lists {_label(pin.kind, pin.key)} twice")
        current[(pin.kind, pin.key)] = pin
    locked = dict(lock.entries) if lock is not None else {}
    added, removed, unchanged = [], [], []
    changed: list[tuple[PinnedDefinition, PinnedDefinition, tuple[str, ...]]] = []
    for ident, pin in current.items():
        old = locked.get(ident)
        if old is None:
            added.append(pin)
        elif old.digest == pin.digest:
            unchanged.append(pin)
        else:
            changed.append((old, pin, _changed_fields(old.definition, pin.definition)))
    removed = [pin for ident, pin in locked.items() if ident not in current]
    return LockDiff(
        added=tuple(sorted(added, key=_sort_key)),
        removed=tuple(sorted(removed, key=_sort_key)),
        changed=tuple(sorted(changed, key=lambda item: _sort_key(item[1]))),
        unchanged=tuple(sorted(unchanged, key=_sort_key)),
    )
