"""Cedar policies as a securemcp policy: :class:`CedarPolicy` (``pip install securemcp[cedar]``).

Implements authorization with the `Cedar <https://www.cedarpolicy.com/>`_ policy language
through ``cedarpy`` (the Cedar engine's Python binding), in the entity model ToolHive uses for
MCP servers, so a ToolHive ``cedarv1`` policy set runs unchanged:

* **principal** ``Client::"<sub>"`` (the type is ``principal_type``), with the verified token's
  claims as ``claim_<name>`` attributes, plus ``scopes`` (a set), ``issuer``, ``client_id``,
  ``tenant``, ``verified`` and ``authenticated_by``;
* **action** ``Action::"call_tool"``, ``Action::"read_resource"`` or ``Action::"get_prompt"``;
* **resource** ``Tool::"<name>"``, ``Resource::"<uri>"`` or ``Prompt::"<name>"``, with the
  call's arguments as ``arg_<name>`` attributes, plus ``tags`` (a set), ``risk``, and
  ``version`` / ``template`` when they apply;
* **context** ``arguments`` (a record), the same ``arg_<name>`` and ``claim_<name>`` values,
  ``transport``, ``tenant``, ``requested_version`` and ``version_resolved``.

Static entities (groups a principal belongs to, a tool's owner) are given as Cedar JSON
entities; an entity with the same uid as the call's principal or resource lends it its
``parents`` and its attributes, and its attributes win over the call's (an argument can never
override what the operator wrote).

**Fail closed where Cedar alone would not.** Cedar skips a policy whose condition cannot be
evaluated (a missing attribute, a type error) and decides without it. For a ``permit`` that is
safe (it grants nothing), but a skipped ``forbid`` lets the call through: a rule
``forbid ... when { context.arguments.amount > 100 }`` would be dodged by sending
``"amount": "5000"`` or ``5000.5``. :class:`CedarPolicy` therefore denies with
``policy_error`` whenever a ``forbid`` policy could not be evaluated. A value Cedar cannot hold
exactly (``None``, an integer beyond 64 bits, a fraction finer than Cedar's four decimal places)
is never left out, which would let a ``has`` guard skip the ``forbid``: it is given as the record
``{"unrepresentable": "<kind>"}``, which a ``has`` guard sees and which no comparison with a
number accepts (an evaluation error, so the ``forbid`` denies). A member named by Cedar's
reserved ``__entity`` / ``__extn`` / ``__expr`` keys, which would let a caller forge an entity
reference, is left out of its record. Arguments beyond ``max_argument_values`` values or
``max_argument_bytes`` bytes of text are refused (``policy_error``): Cedar parses them on the
event loop.

**Decisions.** Allow when a ``permit`` applies and no ``forbid`` does; when every applying
``permit`` is annotated ``@approval("required")``, the call needs a human approval instead
(:meth:`Decision.require_approval`). Otherwise deny: by the applying ``forbid`` policies (their
``@reason("...")`` annotation, when given, is the decision's internal reason, in the server
log), or by default when nothing permits. The decision's ``rule`` names the deciding policies
by their ``@id`` annotation (or Cedar's ``policy0``, ``policy1``...), and ``policy_version`` is
``sha256:`` of the policy text (with the entities and schema, when given). A ``schema``
validates the policies when they load.

Hot reload, as for rules files: :meth:`CedarPolicy.from_file` re-reads the policy file when it
changes (:mod:`securemcp.policy._hot_reload`); a file that does not parse or validate keeps the
previous policies in force and is reported to the log and the audit log.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

from securemcp.policy._hot_reload import (
    CompileFailed,
    HotReloadedPolicy,
    PolicyChange,
    PolicyChangeCallback,
    read_policy_file,
)
from securemcp.policy.decision import Decision, Effect
from securemcp.policy.request import CallRequest

try:
    import cedarpy
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "securemcp.policy.cedar needs the Cedar engine: pip install 'securemcp[cedar]'"
    ) from exc

__all__ = ["ACTIONS", "RESOURCE_TYPES", "CedarPolicy", "CedarPolicyError"]

#: The Cedar action of each MCP method (ToolHive's names).
ACTIONS: Final = {
    "tools/call": "call_tool",
    "resources/read": "read_resource",
    "prompts/get": "get_prompt",
}

#: The Cedar entity type of each MCP method's target.
RESOURCE_TYPES: Final = {
    "tools/call": "Tool",
    "resources/read": "Resource",
    "prompts/get": "Prompt",
}

#: Keys Cedar's JSON format reads as an entity reference or an extension value, not as data.
_RESERVED_KEYS: Final = frozenset({"__entity", "__extn", "__expr"})

_LONG_MIN: Final = -(2**63)
_LONG_MAX: Final = 2**63 - 1
#: Cedar ``decimal``: four fractional digits, within a signed 64-bit integer of ten-thousandths.
_FOUR_PLACES: Final = Decimal("0.0001")
_DECIMAL_MAX: Final = Decimal("922337203685477.5807")
#: Longer spellings are left out rather than converted (``7.000...0`` with thousands of zeros).
_MAX_DIGITS: Final = 64
_MAX_DEPTH: Final = 32

#: Static-entity sets kept without a call's principal / resource (see ``_Compiled.entities``).
_CACHED_ENTITY_SETS: Final = 64

_EVALUATION_ERROR: Final = re.compile(r"policy `([^`]+)`")


class CedarPolicyError(ValueError):
    """Cedar policies, entities or a schema that cannot be used (at start-up)."""


#: Kinds of values Cedar cannot hold exactly, each given to Cedar as ``{"unrepresentable": kind}``.
NULL: Final = "null"
NUMBER: Final = "number"
NESTING: Final = "nesting"
OTHER: Final = "value"


def unrepresentable(kind: str) -> dict[str, str]:
    """The stand-in for a value Cedar cannot hold exactly.

    It is never left out: a ``has`` guard still sees the attribute, so a ``forbid`` that reads
    it is evaluated, and comparing the record with a number or a string (``>``, ``.lessThan``,
    ``like``) is an evaluation error, which makes such a ``forbid`` deny (fail closed). It equals
    no number or string, as the value the tool receives equals none.
    """
    return {"unrepresentable": kind}


def _decimal_value(number: Decimal) -> Any:
    """A whole number as ``Long``, a fraction of at most four places as Cedar ``decimal``.

    Works on the digits, never through an unbounded ``int()`` (``Decimal("1e300000")`` must not
    cost seconds).
    """
    if not number.is_finite() or len(number.as_tuple().digits) > _MAX_DIGITS:
        return unrepresentable(NUMBER)
    if number == number.to_integral_value():
        if number.adjusted() > 18:
            return unrepresentable(NUMBER)  # beyond a signed 64-bit integer
        integral = int(number)  # at most 19 digits
        return integral if _LONG_MIN <= integral <= _LONG_MAX else unrepresentable(NUMBER)
    if abs(number) > _DECIMAL_MAX:
        return unrepresentable(NUMBER)
    quantized = number.quantize(_FOUR_PLACES)
    if quantized != number:
        # finer than Cedar's decimal: rounding could move it past a bound
        return unrepresentable(NUMBER)
    return {"__extn": {"fn": "decimal", "arg": str(quantized)}}


class ArgumentsTooLarge(ValueError):
    """A call's arguments exceed what a Cedar decision reads (``max_argument_values`` /
    ``max_argument_bytes``)."""


class _Budget:
    """How many values and how many bytes of text one call's arguments may still bring."""

    __slots__ = ("bytes", "values")

    def __init__(self, values: int, text_bytes: int) -> None:
        self.values = values
        self.bytes = text_bytes

    def spend(self, text: str | None = None) -> None:
        self.values -= 1
        if text is not None:
            self.bytes -= len(text)
        if self.values < 0 or self.bytes < 0:
            raise ArgumentsTooLarge


def cedar_value(value: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """``value`` as a Cedar JSON value.

    Numbers that are whole become ``Long`` (``7.0`` is ``7``, as FastMCP hands ``7`` to an
    ``int`` parameter); fractions with at most four decimal places become ``decimal``; lists
    become sets and mappings records. A value Cedar cannot hold exactly (``None``, an integer
    beyond 64 bits, a finer fraction, nesting deeper than 32, any other type) becomes
    :func:`unrepresentable`. A member named by one of Cedar's reserved keys (``__entity``,
    ``__extn``, ``__expr``), which would make Cedar read the record as an entity reference or an
    extension value, is left out of its record (the other members stay).

    Raises:
        ArgumentsTooLarge: ``budget`` was given and the value spends more than it has.
    """
    if budget is not None:
        budget.spend(value if isinstance(value, str) else None)
    if depth > _MAX_DEPTH:
        return unrepresentable(NESTING)
    if value is True or value is False:
        return value
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if _LONG_MIN <= value <= _LONG_MAX else unrepresentable(NUMBER)
    if isinstance(value, float):
        if not math.isfinite(value):
            return unrepresentable(NUMBER)
        return _decimal_value(Decimal(repr(value)))
    if isinstance(value, Decimal):
        return _decimal_value(value)
    if value is None:
        return unrepresentable(NULL)
    if isinstance(value, list | tuple | set | frozenset):
        return [cedar_value(item, depth + 1, budget) for item in value]
    if isinstance(value, Mapping):
        record = {}
        for key, item in value.items():
            if key in _RESERVED_KEYS:
                continue
            if budget is not None:
                budget.spend(str(key))
            record[str(key)] = cedar_value(item, depth + 1, budget)
        return record
    return unrepresentable(OTHER)


def _prefixed(prefix: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Each member of a converted ``record`` as ``prefix + name`` (ToolHive's attribute names)."""
    return {prefix + name: value for name, value in record.items()}


@dataclass(frozen=True, slots=True)
class _PolicyFacts:
    """What securemcp reads of one Cedar policy: its effect and annotations."""

    forbid: bool
    name: str
    approval: bool
    reason: str | None


class _Compiled:
    """A loaded policy set with its static entities: everything a decision needs."""

    def __init__(
        self,
        text: str,
        static: tuple[dict[str, Any], ...],
        version: str,
        policy_set: Any,
        facts: Mapping[str, _PolicyFacts],
    ) -> None:
        self.text = text
        self.static = static
        self.version = version
        self.policy_set = policy_set
        self.facts = facts
        self.static_uids = {_uid_key(entity["uid"]): entity for entity in static}
        self._without: OrderedDict[frozenset[tuple[str, str]], Any] = OrderedDict()
        self._lock = threading.Lock()
        self.base = cedarpy.Entities.from_json_str(json.dumps(list(static)))

    def entities(self, replaced: frozenset[tuple[str, str]]) -> Any:
        """The static entities without those in ``replaced`` (the call supplies them)."""
        if not replaced:
            return self.base
        with self._lock:
            cached = self._without.get(replaced)
            if cached is not None:
                self._without.move_to_end(replaced)
                return cached
        kept = [e for e in self.static if _uid_key(e["uid"]) not in replaced]
        handle = cedarpy.Entities.from_json_str(json.dumps(kept))
        with self._lock:
            self._without[replaced] = handle
            while len(self._without) > _CACHED_ENTITY_SETS:
                self._without.popitem(last=False)
        return handle


def _uid_key(uid: Mapping[str, Any]) -> tuple[str, str]:
    return (str(uid["type"]), str(uid["id"]))


def _policy_facts(text: str) -> dict[str, _PolicyFacts]:
    parsed = json.loads(cedarpy.policies_to_json_str(text))
    facts = {}
    for policy_id, policy in parsed.get("staticPolicies", {}).items():
        annotations = policy.get("annotations") or {}
        approval = annotations.get("approval")
        reason = annotations.get("reason")
        facts[policy_id] = _PolicyFacts(
            forbid=policy.get("effect") == "forbid",
            name=str(annotations.get("id") or policy_id),
            approval=approval == "required",
            reason=str(reason) if reason else None,
        )
    if parsed.get("templates"):
        raise ValueError("policy templates are not supported; link them before loading")
    return facts


def _static_entities(
    entities: str | Sequence[Mapping[str, Any]] | None,
) -> tuple[dict[str, Any], ...]:
    if entities is None:
        return ()
    loaded: Any = json.loads(entities) if isinstance(entities, str) else list(entities)
    if not isinstance(loaded, list):
        raise CedarPolicyError("Cedar entities must be a JSON list of entities")
    checked = []
    for entity in loaded:
        uid = entity.get("uid") if isinstance(entity, Mapping) else None
        if not isinstance(uid, Mapping) or not isinstance(uid.get("type"), str):
            raise CedarPolicyError(
                'each Cedar entity needs a "uid" of the form {"type": ..., "id": ...}'
            )
        checked.append(
            {
                "uid": {"type": uid["type"], "id": str(uid.get("id"))},
                "attrs": dict(entity.get("attrs") or {}),
                "parents": list(entity.get("parents") or []),
            }
        )
    return tuple(checked)


def _compile(
    text: str,
    static: tuple[dict[str, Any], ...],
    schema: str | Mapping[str, Any] | None,
    source: str,
) -> _Compiled:
    """Parse, validate and index a policy set, or raise :class:`CompileFailed`."""
    try:
        policy_set = cedarpy.PolicySet.from_str(text)
        facts = _policy_facts(text)
    except ValueError as exc:
        raise CompileFailed([f"{source}: {exc}"]) from None
    if schema is not None:
        result = cedarpy.validate_policies(
            text, dict(schema) if isinstance(schema, Mapping) else schema
        )
        if not result.validation_passed:
            raise CompileFailed([f"{source}: {error}" for error in result.errors])
    digest = hashlib.sha256(text.encode())
    if static or schema is not None:
        digest.update(b"\0" + json.dumps(list(static), sort_keys=True).encode())
        digest.update(b"\0" + json.dumps(schema, sort_keys=True).encode())
    try:
        return _Compiled(text, static, "sha256:" + digest.hexdigest(), policy_set, facts)
    except ValueError as exc:
        raise CompileFailed([f"{source}: entities: {exc}"]) from None


class CedarPolicy(HotReloadedPolicy[_Compiled]):
    """A policy decided by Cedar policies. See the module docstring for the entity model.

    Args:
        policies: the Cedar policy text.
        entities: static entities, in Cedar's JSON entity format (a list, or JSON text).
        schema: a Cedar schema (text or JSON) to validate the policies against when they load.
        principal_type: the Cedar entity type of callers (``Client``, as in ToolHive).
        max_argument_values: the most argument values (every list item, object member and
            scalar counts) a decision reads; a call with more is denied (``policy_error``), so
            one large call cannot hold the event loop while Cedar parses it.
        max_argument_bytes: the most bytes of argument text (strings and member names).
        path: the policy file, when the text came from one (see :meth:`from_file`).
        reload: re-read ``path`` when it changes.

    Raises:
        CedarPolicyError: the policies, entities or schema cannot be used.
    """

    def __init__(
        self,
        policies: str,
        *,
        entities: str | Sequence[Mapping[str, Any]] | None = None,
        schema: str | Mapping[str, Any] | None = None,
        principal_type: str = "Client",
        max_argument_values: int = 10_000,
        max_argument_bytes: int = 1024 * 1024,
        path: str | os.PathLike[str] | None = None,
        reload: bool = False,
        check_interval: float = 1.0,
        on_policy_change: PolicyChangeCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            static = _static_entities(entities)
            compiled = _compile(policies, static, schema, str(path or "<string>"))
        except CompileFailed as exc:
            raise CedarPolicyError("; ".join(exc.errors)) from None
        except (ValueError, TypeError) as exc:
            raise CedarPolicyError(f"Cedar entities: {exc}") from None
        self._static = static
        self._schema = schema
        self._principal_type = principal_type
        self._argument_limits = (max_argument_values, max_argument_bytes)
        super().__init__(
            compiled,
            path=path,
            reload=reload,
            check_interval=check_interval,
            on_policy_change=on_policy_change,
            clock=clock,
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        entities: str | Sequence[Mapping[str, Any]] | None = None,
        schema: str | Mapping[str, Any] | None = None,
        principal_type: str = "Client",
        max_argument_values: int = 10_000,
        max_argument_bytes: int = 1024 * 1024,
        reload: bool = True,
        check_interval: float = 1.0,
        on_policy_change: PolicyChangeCallback | None = None,
    ) -> CedarPolicy:
        """Load a Cedar policy file (re-read on change unless ``reload=False``).

        Raises:
            CedarPolicyError: the policies, entities or schema cannot be used.
            OSError: the file cannot be read.
        """
        file = Path(path)
        before = file.stat()  # before reading: a change while we read is reloaded later
        try:
            text = read_policy_file(file).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CedarPolicyError(f"{file}: not UTF-8: {exc}") from None
        policy = cls(
            text,
            entities=entities,
            schema=schema,
            principal_type=principal_type,
            max_argument_values=max_argument_values,
            max_argument_bytes=max_argument_bytes,
            path=file,
            reload=reload,
            check_interval=check_interval,
            on_policy_change=on_policy_change,
        )
        policy._signature = (before.st_mtime_ns, before.st_size, before.st_ino)
        policy._emit(PolicyChange("loaded", str(file), policy.version))
        return policy

    def _compile(self, data: bytes, source: str) -> _Compiled:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise CompileFailed([f"{source}: not UTF-8: {exc}"]) from None
        return _compile(text, self._static, self._schema, source)

    def _version_of(self, compiled: _Compiled) -> str:
        return compiled.version

    @property
    def name(self) -> str:
        """``cedar`` and the policy file, for the audit's ``rule`` field and logs."""
        return f"cedar:{self._path.name}" if self._path is not None else "cedar"

    def evaluate(self, request: CallRequest) -> Decision:
        """Decide ``request`` (never abstains: nothing permitting it is a deny)."""
        compiled = self._current()
        try:
            principal, resource, context = self._request_entities(request)
        except ArgumentsTooLarge:
            return self._denied_error(compiled, "the arguments are too large for a Cedar decision")
        replaced = frozenset(
            key
            for key in (_uid_key(principal["uid"]), _uid_key(resource["uid"]))
            if key in compiled.static_uids
        )
        for entity in (principal, resource):
            static = compiled.static_uids.get(_uid_key(entity["uid"]))
            if static is not None:
                entity["attrs"].update(static["attrs"])  # the operator's attributes win
                entity["parents"] = list(static["parents"])
        action = ACTIONS.get(request.method, request.method)
        cedar_request = {
            "principal": principal["uid"],
            "action": {"type": "Action", "id": action},
            "resource": resource["uid"],
            "context": context,
        }
        try:
            entities = compiled.entities(replaced).with_added_json_str(
                json.dumps([principal, resource])
            )
            result = cedarpy.is_authorized(cedar_request, compiled.policy_set, entities)
        except Exception as exc:  # the engine refused the request: fail closed
            return self._denied_error(
                compiled, f"Cedar could not evaluate the call ({type(exc).__name__})"
            )
        return self._decision(compiled, result)

    __call__ = evaluate

    # --- the request -------------------------------------------------------------------------

    def _request_entities(
        self, request: CallRequest
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        who = request.principal
        claims = _prefixed("claim_", cedar_value(who.claims))
        principal_attrs = dict(claims)
        principal_attrs["scopes"] = sorted(who.scopes)
        if who.issuer is not None:
            principal_attrs["issuer"] = who.issuer
        principal_attrs["verified"] = who.verified
        principal_attrs["authenticated_by"] = who.authenticated_by
        if who.client_id is not None:
            principal_attrs["client_id"] = who.client_id
        tenant = request.tenant
        if tenant is not None:
            principal_attrs["tenant"] = tenant
        record = cedar_value(request.arguments, budget=_Budget(*self._argument_limits))
        arguments = _prefixed("arg_", record)
        resource_attrs = dict(arguments)
        resource_attrs["tags"] = sorted(request.tags)
        resource_attrs["risk"] = request.risk.value
        if request.version is not None:
            resource_attrs["version"] = request.version
        if request.template is not None:
            resource_attrs["template"] = request.template
        context: dict[str, Any] = {}
        context["arguments"] = record
        context.update(arguments)
        context.update(claims)
        context["transport"] = request.transport
        context["version_resolved"] = request.version_resolved
        if tenant is not None:
            context["tenant"] = tenant
        if request.requested_version is not None:
            context["requested_version"] = request.requested_version
        principal = {
            "uid": {"type": self._principal_type, "id": who.subject},
            "attrs": principal_attrs,
            "parents": [],
        }
        resource = {
            "uid": {"type": RESOURCE_TYPES.get(request.method, "Resource"), "id": request.target},
            "attrs": resource_attrs,
            "parents": [],
        }
        return principal, resource, context

    # --- the decision ------------------------------------------------------------------------

    def _denied_error(self, compiled: _Compiled, detail: str, rule: str | None = None) -> Decision:
        return Decision(
            Effect.DENY,
            "policy_error",
            rule=rule or self.name,
            policy_version=compiled.version,
            detail=detail,
        )

    def _decision(self, compiled: _Compiled, result: Any) -> Decision:
        diagnostics = result.diagnostics
        for error in diagnostics.errors:
            match = _EVALUATION_ERROR.search(str(error))
            facts = compiled.facts.get(match.group(1)) if match else None
            if facts is None or facts.forbid:
                # A forbid Cedar could not evaluate would be skipped: deny instead (fail closed).
                name = facts.name if facts is not None else None
                return self._denied_error(
                    compiled,
                    f"cedar forbid policy {name or 'of this set'!r} could not be evaluated",
                    rule=name,
                )
        deciding = [compiled.facts[r] for r in diagnostics.reasons if r in compiled.facts]
        names = ",".join(sorted(f.name for f in deciding)) or None
        if result.allowed:
            if deciding and all(f.approval for f in deciding):
                return Decision.require_approval(
                    f"cedar policy {names} requires approval",
                    rule=names,
                    policy_version=compiled.version,
                )
            return Decision.allow(rule=names or self.name, policy_version=compiled.version)
        if not deciding:
            return Decision.deny(
                "no cedar policy permits the call (default deny)",
                rule="default",
                policy_version=compiled.version,
            )
        reasons = sorted({f.reason for f in deciding if f.reason})
        return Decision.deny(
            "; ".join(reasons) or f"forbidden by cedar policy {names}",
            rule=names,
            policy_version=compiled.version,
        )
