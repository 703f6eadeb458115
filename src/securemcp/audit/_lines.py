"""Canonical JSON fragments for the hot-path records (``decision`` and ``outcome``).

:meth:`AuditLog.decision <securemcp.audit.log.AuditLog.decision>` and
:meth:`~securemcp.audit.log.AuditLog.outcome` run twice per tool call, so they do not build a
record ``dict`` and canonicalize it: they fill a fixed template, in RFC 8785 member order, with
fragments made here. The result is byte-identical to ``jcs.dumps`` of the record the builders in
:mod:`securemcp.audit.records` make (a property test checks this), because

* RFC 8785 is compositional: an object's canonical form is its members' canonical forms, sorted
  by name, joined by ``,``; every member name here is ASCII, so code-unit order is plain
  ``str`` order, and the templates are written in that order;
* every caller-controlled string goes through ``json.encoder.encode_basestring`` (the C escaper
  that :func:`securemcp.audit.jcs.dumps` itself uses), so its escaping is RFC 8785's;
* anything unusual (non-``str`` values, constraints, recorded arguments, non-canonical numbers)
  makes the caller fall back to the generic path.

**The secrets guard.** :func:`~securemcp.audit.guard.check_encoded` only ever matches inside one
JSON string token (its patterns match neither ``"`` nor anything outside strings that a record
template contains), so checking the encoded caller-controlled tokens is exactly as strict as
checking the whole line. The fixed parts (member names, hex digests, digits, the timestamp) can
never match. A fragment that is cached (the identity of a ``Principal``, a decision) is checked
once when it is made; one that fails is not trusted and is checked with the call's own strings,
so the error is raised at the same point, in the same order, as on the generic path.
"""

from __future__ import annotations

from json.encoder import encode_basestring
from typing import Any, Final, NamedTuple

from securemcp.audit.errors import SecretInRecord
from securemcp.audit.guard import check_encoded
from securemcp.audit.jcs import _C_ENCODER, dumps_plain
from securemcp.audit.records import OUTCOMES, _decision_fields, _identity_fields
from securemcp.context import Principal
from securemcp.policy.decision import NO_CONSTRAINTS as _NO_CONSTRAINTS
from securemcp.policy.decision import Decision as _Decision
from securemcp.policy.decision import Effect as _Effect

__all__ = [
    "OUTCOME_JSON",
    "Site",
    "decision_json",
    "identity_json",
    "site_json",
    "version_json",
    "vetted",
]

#: Fragment caches are cleared when they reach this many entries.
_MEMO_LIMIT: Final = 1024

#: The ``outcome`` values, encoded.
OUTCOME_JSON: Final[dict[str, str]] = {name: encode_basestring(name) for name in OUTCOMES}

_NO_IDENTITY_JSON: Final = (
    '{"actor":[],"authenticated_by":null,"client_id":null,"issuer":null,"subject":null,'
    '"tenant":null,"verified":false}'
)


def vetted(fragment: str) -> bool:
    """``True`` when ``fragment`` encodes as UTF-8 and the secrets guard accepts it."""
    try:
        check_encoded(fragment.encode("utf-8"))
    except (UnicodeEncodeError, SecretInRecord):
        return False
    return True


def _encode_plain(value: Any) -> str:
    """Canonical text of a value whose members are only ASCII-named objects, lists, strings,
    ``None`` and booleans (``identity`` and ``decision``): the C encoder's output is RFC 8785."""
    if _C_ENCODER is None:  # pragma: no cover - CPython always has the C accelerator
        return dumps_plain(value).decode("utf-8")
    return "".join(_C_ENCODER(value, 0))


# id(principal) -> (principal, fragment, vetted). Holding the principal keeps its id from being
# reused while the entry exists, and the ``is`` check makes a stale entry harmless anyway.
_IDENTITY_JSON: dict[int, tuple[Any, str, bool]] = {}


def identity_json(identity: Any) -> tuple[str, bool]:
    """The canonical ``identity`` object of a record, and whether it is already vetted.

    Memoized for ``Principal`` objects (immutable, and reused for every call made with one
    token); a mapping is encoded on every call, since it may change.
    """
    if type(identity) is Principal:
        cached = _IDENTITY_JSON.get(id(identity))
        if cached is not None and cached[0] is identity:
            return cached[1], cached[2]
        text = _encode_plain(_identity_fields(identity))
        ok = vetted(text)
        if len(_IDENTITY_JSON) >= _MEMO_LIMIT:
            _IDENTITY_JSON.clear()
        _IDENTITY_JSON[id(identity)] = (identity, text, ok)
        return text, ok
    if identity is None:
        return _NO_IDENTITY_JSON, True
    return _encode_plain(_identity_fields(identity)), False


class Site(NamedTuple):
    """The parts of a ``decision`` / ``outcome`` line fixed by who calls what, encoded."""

    identity: str  # the canonical ``identity`` object
    method: str  # ``,"method":<method>``
    server_target: str  # ``,"server":<server>,"target":<target>,"trace_id":``
    vetted: bool  # all of the above pass the Unicode and secrets checks
    text: str  # every caller-controlled token above, for the check when not vetted


# (id(principal), method, target, server) -> (principal, site); as for _IDENTITY_JSON, holding
# the principal keeps its id from being reused while the entry exists.
_SITE_JSON: dict[tuple[int, Any, Any, Any], tuple[Any, Site]] = {}


def site_json(identity: Any, method: Any, target: Any, server: Any) -> Site:
    """The encoded identity, method, target and server of a record (see :class:`Site`).

    Memoized for ``Principal`` identities, like :func:`identity_json`.

    Raises:
        TypeError: ``method``, ``target`` or ``server`` is neither a ``str`` nor ``None`` (the
            caller takes the generic path).
    """
    principal = type(identity) is Principal
    if principal:
        key = (id(identity), method, target, server)
        cached = _SITE_JSON.get(key)
        if cached is not None and cached[0] is identity:
            return cached[1]
    verb = _json(method)
    tool = _json(target)
    name = _json(server)
    who, who_vetted = identity_json(identity)
    names = f"{verb}{tool}{name}"
    site = Site(
        who,
        f',"method":{verb}',
        f',"server":{name},"target":{tool},"trace_id":',
        who_vetted and vetted(names),
        names if who_vetted else names + who,
    )
    if principal:
        if len(_SITE_JSON) >= _MEMO_LIMIT:
            _SITE_JSON.clear()
        _SITE_JSON[key] = (identity, site)
    return site


# (result, reason, rule, policy_version) -> (fragment, vetted)
_DECISION_JSON: dict[tuple[str | None, str, str | None, str | None], tuple[str, bool]] = {}
# id(decision object) -> (object, fragment, vetted), for frozen policy decisions
_DECISION_OBJECT_JSON: dict[int, tuple[Any, str, bool]] = {}


def _str_or_none(value: Any) -> bool:
    return value is None or type(value) is str


def _decision_text(
    result: str | None, reason: str, rule: str | None, policy_version: str | None
) -> tuple[str, bool]:
    key = (result, reason, rule, policy_version)
    cached = _DECISION_JSON.get(key)
    if cached is not None:
        return cached
    # Members in RFC 8785 order: policy_version, reason, result, rule.
    text = (
        f'{{"policy_version":{_json(policy_version)},"reason":{encode_basestring(reason)},'
        f'"result":{_json(result)},"rule":{_json(rule)}}}'
    )
    entry = (text, vetted(text))
    if len(_DECISION_JSON) >= _MEMO_LIMIT:
        _DECISION_JSON.clear()
    _DECISION_JSON[key] = entry
    return entry


def _json(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def version_json(component_version: str) -> str:
    """The ``,"component_version":<version>`` member of a decision line (it sorts between
    ``call_id`` and ``decision``), for a versioned component; unversioned lines have none.

    Raises:
        TypeError: ``component_version`` is not a ``str`` (the caller takes the generic path).
    """
    return ',"component_version":' + encode_basestring(component_version)


def decision_json(
    result: Any, reason: Any, rule: Any, policy_version: Any
) -> tuple[str, bool] | None:
    """The canonical ``decision`` object of a record and whether it is vetted, or ``None`` when
    the generic path must build it (constraints, values that are not strings)."""
    if type(result) is str or result is None:
        if (
            type(reason) is str
            and (rule is None or type(rule) is str)
            and (policy_version is None or type(policy_version) is str)
        ):
            return _decision_text(result, reason, rule, policy_version)
        return None
    if type(result) is _Decision and reason == "" and rule is None and policy_version is None:
        # A policy's Decision, usually a new object per call: by value, what _decision_fields
        # reads from it, when it has no constraints.
        effect = result.effect
        value = effect._value_ if type(effect) is _Effect else effect
        why, named, version = result.reason, result.rule, result.policy_version
        if (
            result.constraints is _NO_CONSTRAINTS
            and type(value) is str
            and type(why) is str
            and (named is None or type(named) is str)
            and (version is None or type(version) is str)
        ):
            return _decision_text(value, why, named, version)
    plain_object = reason == "" and rule is None and policy_version is None
    if plain_object:
        cached = _DECISION_OBJECT_JSON.get(id(result))
        if cached is not None and cached[0] is result:
            return cached[1], cached[2]
    fields = _decision_fields(result, reason, rule, policy_version)
    if "constraints" in fields:
        return None
    effect, why = fields["result"], fields["reason"]
    named, version = fields["rule"], fields["policy_version"]
    if type(why) is not str or not (
        _str_or_none(effect) and _str_or_none(named) and _str_or_none(version)
    ):
        return None
    entry = _decision_text(effect, why, named, version)
    params = getattr(type(result), "__dataclass_params__", None)
    if plain_object and params is not None and params.frozen:
        if len(_DECISION_OBJECT_JSON) >= _MEMO_LIMIT:
            _DECISION_OBJECT_JSON.clear()
        _DECISION_OBJECT_JSON[id(result)] = (result, *entry)
    return entry
