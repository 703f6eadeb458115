"""Audit record schema version 1: the record types and the builders that make them.

Every record is one JSON object. The log sets the header fields (``v``, ``log``, ``seq``, ``ts``,
``prev``, see :mod:`securemcp.audit.log`); the builders here set ``type`` and the body. The schema
is documented in ``docs/audit.md``; in short:

* ``decision`` — written *before* the tool runs: ``call_id``, ``server``, ``identity``,
  ``method``, ``target``, ``args_sha256`` (SHA-256 of the RFC 8785 canonical JSON of the
  arguments; raw ``args`` only when recording arguments is enabled, and then redacted),
  ``decision`` {``result``, ``reason``, ``rule``, ``policy_version``}, ``trace_id``, and
  ``component_version`` when the component decided on is versioned (``null``, with the caller's
  ``requested_version``, when the version that runs cannot be resolved: a proxy picks it);
* ``outcome`` — written after: the same ``call_id``, ``outcome`` (``ok`` / ``tool_error`` /
  ``error`` / ``timeout`` / ``refused``), ``duration_ms`` and an optional ``error`` code;
* ``auth_failure`` (no tool ran), ``config_change``, ``policy_change``, ``key_rotation``,
  ``log_open``, ``log_close``.

``identity`` is always the same shape: {``issuer``, ``subject``, ``client_id``, ``tenant``,
``actor`` (the RFC 8693 actor chain, outermost first), ``authenticated_by``, ``verified``}.
Builders never copy a credential: identity comes from a principal's public attributes only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from securemcp.audit import jcs
from securemcp.audit.guard import DEFAULT_SENSITIVE_KEYS, REDACTED, redact, sensitive_key
from securemcp.audit.jcs import _C_ENCODER

__all__ = [
    "HEADER_FIELDS",
    "OUTCOMES",
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "args_sha256",
    "auth_failure_record",
    "config_change_record",
    "decision_record",
    "identity_fields",
    "key_rotation_record",
    "log_close_record",
    "log_open_record",
    "outcome_record",
    "policy_change_record",
]

#: The record schema version written in every record's ``v``.
SCHEMA_VERSION: Final = 1

#: Fields the log itself sets on every record; callers may not supply them.
HEADER_FIELDS: Final = frozenset({"v", "log", "seq", "ts", "prev"})

#: Record types of schema version 1.
RECORD_TYPES: Final = (
    "decision",
    "outcome",
    "auth_failure",
    "config_change",
    "policy_change",
    "key_rotation",
    "log_open",
    "log_close",
)

#: Values of an outcome record's ``outcome``.
OUTCOMES: Final = ("ok", "tool_error", "error", "timeout", "refused")

_NO_IDENTITY: Final[dict[str, Any]] = {
    "issuer": None,
    "subject": None,
    "client_id": None,
    "tenant": None,
    "actor": [],
    "authenticated_by": None,
    "verified": False,
}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _getter(source: Any) -> Callable[[str], Any]:
    if isinstance(source, Mapping):
        return source.get

    def get(name: str) -> Any:
        return getattr(source, name, None)

    return get


def _field(source: Any, *names: str) -> Any:
    get = _getter(source)
    for name in names:
        value = get(name)
        if value is not None:
            return value
    return None


def _first(value: Any, fallback: Any) -> Any:
    return value if value is not None else fallback


def _actor_chain(act: Any) -> list[dict[str, str | None]]:
    chain: list[dict[str, str | None]] = []
    if act is None:
        return chain
    # A nested RFC 8693 ``act`` claim ({"sub": ..., "act": {...}}) or a sequence of actors.
    items: Iterable[Any] = [act] if isinstance(act, Mapping) else act
    for item in items:
        while item is not None:
            chain.append(
                {
                    "subject": _text(_field(item, "subject", "sub")),
                    "issuer": _text(_field(item, "issuer", "iss")),
                    "client_id": _text(_field(item, "client_id")),
                }
            )
            item = item.get("act") if isinstance(item, Mapping) else None
    return chain


_IDENTITY_MEMO: dict[int, tuple[Any, dict[str, Any]]] = {}
_IDENTITY_MEMO_LIMIT = 1024


def identity_fields(identity: Any) -> dict[str, Any]:
    """The ``identity`` object of a record (memoized for immutable ``Principal`` objects).

    A verifier returns the same ``Principal`` for every call made with one token, so the fields
    are built once per principal; the memo holds the principal itself and checks identity, so
    a recycled ``id()`` can never return another caller's fields. Treat the result as read-only.
    """
    from securemcp.context import Principal

    if type(identity) is Principal:
        key = id(identity)
        cached = _IDENTITY_MEMO.get(key)
        if cached is not None and cached[0] is identity:
            return cached[1]
        fields = _identity_fields(identity)
        if len(_IDENTITY_MEMO) >= _IDENTITY_MEMO_LIMIT:
            _IDENTITY_MEMO.clear()
        _IDENTITY_MEMO[key] = (identity, fields)
        return fields
    return _identity_fields(identity)


def _identity_fields(identity: Any) -> dict[str, Any]:
    """The ``identity`` object of a record, from a principal-like object or mapping.

    Reads only ``issuer``/``iss``, ``subject``/``sub``, ``client_id``, ``tenant``,
    ``act``/``actor``, ``authenticated_by`` and ``verified``; never claims or credentials.
    ``None`` gives the unknown identity (all ``null``, ``verified: false``).
    """
    if identity is None:
        return {**_NO_IDENTITY, "actor": []}
    get = _getter(identity)
    act = get("act")
    return {
        "issuer": _text(_first(get("issuer"), get("iss"))),
        "subject": _text(_first(get("subject"), get("sub"))),
        "client_id": _text(get("client_id")),
        "tenant": _text(get("tenant")),
        "actor": _actor_chain(act if act is not None else get("actor"))
        if act or get("actor")
        else [],
        "authenticated_by": _text(get("authenticated_by")),
        "verified": bool(get("verified")),
    }


_MAX_SAFE: Final = jcs.MAX_SAFE_INTEGER
_sha256: Final = hashlib.sha256


#: Names already judged by :func:`_names_a_secret`, per set of key fragments (bounded).
_secret_names: dict[tuple[str, ...], dict[str, bool]] = {}


@functools.lru_cache(maxsize=64)
def _fragments(keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(k.lower().replace("-", "_") for k in keys))


_DEFAULT_FRAGMENTS: Final = _fragments(tuple(DEFAULT_SENSITIVE_KEYS))
_DEFAULT_KNOWN: Final[dict[str, bool]] = {}


def _names_a_secret(name: Any, fragments: tuple[str, ...], known: dict[str, bool]) -> bool:
    if type(name) is not str:
        return sensitive_key(str(name), fragments)
    found = known.get(name)
    if found is None:
        found = sensitive_key(name, fragments)
        if len(known) < 4096:
            known[name] = found
    return found


def _holds_secret_name(value: Any, fragments: tuple[str, ...], known: dict[str, bool]) -> bool:
    """Whether a key naming a secret occurs anywhere in ``value`` (with a value under it)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            if item is not None and _names_a_secret(name, fragments, known):
                return True
            if isinstance(item, Mapping | list | tuple) and _holds_secret_name(
                item, fragments, known
            ):
                return True
    elif isinstance(value, list | tuple):
        return any(
            isinstance(item, Mapping | list | tuple) and _holds_secret_name(item, fragments, known)
            for item in value
        )
    return False


def _secrets_masked(value: Any, fragments: tuple[str, ...], known: dict[str, bool]) -> Any:
    """``value`` with every value under a key naming a secret replaced by ``[REDACTED]``."""
    if isinstance(value, Mapping):
        return {
            name: REDACTED
            if item is not None and _names_a_secret(name, fragments, known)
            else _secrets_masked(item, fragments, known)
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_secrets_masked(item, fragments, known) for item in value]
    return value


def args_sha256(arguments: Mapping[str, Any] | None, secret_keys: Iterable[str] = ()) -> str | None:
    """Hex SHA-256 of the RFC 8785 canonical JSON of ``arguments`` (``None`` when absent).

    Every value under a key naming a secret (the secrets guard's fragments, ``password``,
    ``token``, ``secret``, ..., plus ``secret_keys``; at any depth; ``None`` kept) is hashed as
    ``"[REDACTED]"``. The digest lets a reviewer holding the arguments prove what was called;
    without the masking, anyone reading the log could recover a low-entropy secret (a PIN, a
    one-time code, a short password) by hashing candidates. Arguments that are not I-JSON
    (integers beyond ±2**53-1, non-JSON objects) are hashed over a sorted, compact
    ``json.dumps`` instead, so an odd argument never blocks a call.
    """
    if arguments is None:
        return None
    if not secret_keys or secret_keys is DEFAULT_SENSITIVE_KEYS:
        fragments, known = _DEFAULT_FRAGMENTS, _DEFAULT_KNOWN  # no tuple hashed per call
    else:
        fragments = _fragments((*DEFAULT_SENSITIVE_KEYS, *secret_keys))
        found = _secret_names.get(fragments)
        if found is None:
            if len(_secret_names) >= 16:
                _secret_names.clear()
            found = _secret_names[fragments] = {}
        known = found
    # The common case first, a dict of plain values with no secret names: what jcs.dumps does,
    # minus its walk (the loop is jcs.is_plain for a dict, with the usual members inline).
    if type(arguments) is dict and _C_ENCODER is not None:
        for name, item in arguments.items():
            if type(name) is not str or not name.isascii():
                break
            secret = known.get(name)
            if secret is None:
                secret = _names_a_secret(name, fragments, known)
            if secret and item is not None:
                break
            kind = type(item)
            if kind is int:
                if not -_MAX_SAFE <= item <= _MAX_SAFE:
                    break
            elif not (
                kind is str
                or item is None
                or kind is bool
                or (jcs.is_plain(item) and not _holds_secret_name(item, fragments, known))
            ):
                break
        else:
            try:
                return _sha256("".join(_C_ENCODER(arguments, 0)).encode()).hexdigest()
            except UnicodeEncodeError:
                pass  # a lone surrogate: not I-JSON, hashed below like any other
    if _holds_secret_name(arguments, fragments, known):
        arguments = _secrets_masked(arguments, fragments, known)
    try:
        data = jcs.dumps(arguments)
    except (TypeError, ValueError):
        data = json.dumps(
            arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
        ).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _duration(duration_ms: float) -> int | float:
    if not math.isfinite(duration_ms) or duration_ms < 0:
        raise ValueError("duration_ms must be a finite, non-negative number")
    value = round(float(duration_ms), 3)
    return int(value) if value.is_integer() else value


def _decision_fields(result: Any, reason: str, rule: Any, policy_version: Any) -> dict[str, Any]:
    constraints: Any = None
    if not isinstance(result, str) and result is not None:  # a securemcp.policy.Decision
        decision = result
        effect = getattr(decision, "effect", decision)
        result = getattr(effect, "value", effect)
        reason = reason or getattr(decision, "reason", "") or ""
        rule = rule if rule is not None else getattr(decision, "rule", None)
        if policy_version is None:
            policy_version = getattr(decision, "policy_version", None)
        found = getattr(decision, "constraints", None)
        if found:
            constraints = found.to_dict() if hasattr(found, "to_dict") else dict(found)
    out: dict[str, Any] = {
        "result": _text(result),
        "reason": reason,
        "rule": _text(rule),
        "policy_version": _text(policy_version),
    }
    if constraints:
        out["constraints"] = constraints
    return out


def decision_record(
    *,
    call_id: str,
    method: str,
    target: str | None,
    result: Any,
    identity: Any = None,
    arguments: Mapping[str, Any] | None = None,
    reason: str = "",
    rule: str | None = None,
    policy_version: str | None = None,
    trace_id: str | None = None,
    server: str | None = None,
    record_arguments: bool = False,
    redact_keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS,
    component_version: str | None = None,
    version_resolved: bool = True,
    requested_version: str | None = None,
) -> dict[str, Any]:
    """A ``decision`` record. ``result`` is a string or a ``securemcp.policy.Decision``.

    ``component_version`` is the version of the component decided on (FastMCP component
    versioning), recorded only when there is one: an unversioned component's record is what it
    always was. ``version_resolved=False`` says versioning applies but which version runs is
    not known here (the component forwards the call, and the version asked for, to a versioned
    component elsewhere, which picks): the record then has ``component_version: null`` and
    ``requested_version``, the caller's text (``"2"``, ``">=1,<3"``; ``null`` when it asked
    for none). ``requested_version`` is recorded only then.
    """
    record: dict[str, Any] = {
        "type": "decision",
        "call_id": call_id,
        "server": server,
        "identity": identity_fields(identity),
        "method": method,
        "target": target,
        "args_sha256": args_sha256(arguments, redact_keys),
        "decision": _decision_fields(result, reason, rule, policy_version),
        "trace_id": trace_id,
    }
    if not version_resolved:
        record["component_version"] = None
        record["requested_version"] = requested_version
    elif component_version is not None:
        record["component_version"] = component_version
    if record_arguments and arguments is not None:
        record["args"] = redact(arguments, (*DEFAULT_SENSITIVE_KEYS, *redact_keys))
    return record


def outcome_record(
    *,
    call_id: str,
    method: str,
    target: str | None,
    outcome: str,
    duration_ms: float,
    identity: Any = None,
    error: str | None = None,
    trace_id: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """An ``outcome`` record (``outcome`` is one of :data:`OUTCOMES`)."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    return {
        "type": "outcome",
        "call_id": call_id,
        "server": server,
        "identity": identity_fields(identity),
        "method": method,
        "target": target,
        "outcome": outcome,
        "duration_ms": _duration(duration_ms),
        "error": error,
        "trace_id": trace_id,
    }


def auth_failure_record(
    *,
    reason: str,
    method: str | None = None,
    target: str | None = None,
    call_id: str | None = None,
    identity: Any = None,
    credential_sha256: str | None = None,
    transport: str | None = None,
    trace_id: str | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """An ``auth_failure`` record: a credential was missing or rejected; no tool ran.

    ``credential_sha256`` (hex SHA-256 of the presented token) lets an investigator correlate
    attempts without the log ever holding the token.
    """
    return {
        "type": "auth_failure",
        "call_id": call_id,
        "server": server,
        "identity": identity_fields(identity),
        "method": method,
        "target": target,
        "reason": reason,
        "credential_sha256": credential_sha256,
        "transport": transport,
        "trace_id": trace_id,
    }


def config_change_record(
    *,
    what: str,
    details: Mapping[str, Any] | None = None,
    config_version: str | None = None,
    identity: Any = None,
    server: str | None = None,
) -> dict[str, Any]:
    """A ``config_change`` record (``details`` must hold no secrets: the guard refuses them)."""
    return {
        "type": "config_change",
        "server": server,
        "identity": identity_fields(identity),
        "what": what,
        "config_version": config_version,
        "details": dict(details) if details is not None else {},
    }


def policy_change_record(
    *,
    policy_version: str,
    previous_version: str | None = None,
    source: str | None = None,
    identity: Any = None,
    server: str | None = None,
) -> dict[str, Any]:
    """A ``policy_change`` record: the policy now in force and the one it replaced."""
    return {
        "type": "policy_change",
        "server": server,
        "identity": identity_fields(identity),
        "policy_version": policy_version,
        "previous_version": previous_version,
        "source": source,
    }


def key_rotation_record(*, old_key: str, new_key: str, reason: str = "") -> dict[str, Any]:
    """A ``key_rotation`` record: checkpoints are signed by ``new_key`` from here on.

    Keys are signed-note verifier keys (public). The next checkpoint is signed by both keys.
    """
    return {"type": "key_rotation", "old_key": old_key, "new_key": new_key, "reason": reason}


def log_open_record(
    *,
    key: str,
    writer: Mapping[str, Any],
    segment: str,
    recovered: Mapping[str, Any] | None = None,
    server: str | None = None,
) -> dict[str, Any]:
    """A ``log_open`` record: a writer started (``recovered`` describes a quarantined torn tail)."""
    return {
        "type": "log_open",
        "server": server,
        "key": key,
        "writer": dict(writer),
        "segment": segment,
        "recovered": dict(recovered) if recovered is not None else None,
    }


def log_close_record(*, reason: str = "close", server: str | None = None) -> dict[str, Any]:
    """A ``log_close`` record: a clean shutdown (the final checkpoint follows it)."""
    return {"type": "log_close", "server": server, "reason": reason}
