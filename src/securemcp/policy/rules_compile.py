"""Parse, validate and compile a declarative rules file (TOML) into a :class:`RuleSet`.

The format is documented in ``docs/policy.md``. In short: an ordered list of ``[[rule]]`` tables,
each with an ``effect`` and optional matchers; the **first** rule whose matchers all hold decides
(firewall / ToolHive-Cedar "first applicable" order, easy to explain); when none matches, the
file's ``default`` applies (``deny`` unless configured: DESIGN.md guarantee 3).

Validation is strict (unknown keys are errors, so a typo cannot silently widen access) and every
error carries the line it was found on. Compiled rules are immutable; matching does no
allocation beyond what the conditions need, and rules are pre-filtered per target name.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from securemcp.policy.decision import Constraints, Decision, Effect
from securemcp.policy.hooks import RISK_DEFAULTS
from securemcp.policy.predicates import MISSING, Predicate, compile_predicate
from securemcp.policy.request import CallRequest, RiskClass
from securemcp.policy.versions import VersionRange, parse_range, requested_range

__all__ = ["Rule", "RuleIssue", "RuleSet", "RulesFileError", "compile_rules"]

FORMAT_VERSION: Final = 1
DEFAULTS: Final = ("deny", "allow", "risk", "abstain")
_TOP_KEYS: Final = frozenset({"version", "name", "default", "default_reason", "rule"})
_LIST_KEYS: Final = (
    "tools",
    "methods",
    "tags",
    "all_tags",
    "risk",
    "subjects",
    "issuers",
    "client_ids",
    "scopes",
    "any_scopes",
    "tenants",
    "transports",
    "versions",
)
_RULE_KEYS: Final = frozenset(
    {"name", "effect", "reason", "verified", "claims", "arguments", "constraints", *_LIST_KEYS}
)
_CANDIDATE_CACHE_LIMIT: Final = 4096
_EFFECTS: Final = frozenset(e.value for e in Effect)


@dataclass(frozen=True, slots=True)
class RuleIssue:
    """One problem in a rules file."""

    line: int | None
    message: str

    def format(self, source: str) -> str:
        """``source:line: message`` (the compiler-error convention editors understand)."""
        return f"{source}:{self.line}: {self.message}" if self.line else f"{source}: {self.message}"


class RulesFileError(ValueError):
    """A rules file failed to parse or validate. ``issues`` lists every problem found."""

    def __init__(self, source: str, issues: Iterable[RuleIssue]) -> None:
        self.source = source
        self.issues = tuple(issues)
        super().__init__("\n".join(issue.format(source) for issue in self.issues))


_Check = Callable[[CallRequest], bool]
_WhyNot = Callable[[CallRequest], str]


@dataclass(frozen=True, slots=True)
class _Matcher:
    label: str
    check: _Check
    why_not: _WhyNot


@dataclass(frozen=True, slots=True)
class Rule:
    """A compiled rule: matchers plus the decision it yields when they all hold.

    ``unresolved`` is the decision of a rule naming ``versions`` for a call whose version
    securemcp cannot resolve (:attr:`CallRequest.version_resolved` false) but could be one the
    rule names: a deny (the rule's own, for a deny rule), since the call may run any version it
    asked for, and the strictest of their decisions is a deny whenever one is denied.
    """

    name: str
    line: int | None
    decision: Decision
    tool_patterns: tuple[str, ...]
    matchers: tuple[_Matcher, ...]
    _tools: re.Pattern[str] | None
    unresolved: Decision | None = None

    def applies_to_target(self, target: str) -> bool:
        """Whether the rule's ``tools`` globs admit ``target`` (no globs: every target)."""
        return self._tools is None or self._tools.match(target) is not None

    def applies_to(self, request: CallRequest) -> bool:
        """Whether the rule's ``tools`` admit ``request``'s target: by glob, or, for a read of a
        template with typed values, as a URI the rule names written canonically
        (``grid://7/1.0`` is ``grid://7/1`` for ``a: float, b: float``, see
        ``CallRequest.canonical_spelling``)."""
        if self.applies_to_target(request.target):
            return True
        spelling = request.canonical_spelling
        return spelling is not None and request.target in self.respelled(spelling)

    def respelled(self, spelling: Callable[[str], str | None]) -> frozenset[str]:
        """The canonical spellings of the URIs the rule names literally (no ``*`` or ``[``;
        a glob matches text), each a fixed point of ``spelling``."""
        found = set()
        for pattern in self.tool_patterns:
            if "*" not in pattern and "[" not in pattern:
                canonical = spelling(pattern)
                # only a fixed point names the pattern's value (a validator that changes its
                # own output would make it name another read)
                if canonical is not None and spelling(canonical) == canonical:
                    found.add(canonical)
        return frozenset(found)

    def decision_for(self, request: CallRequest) -> Decision:
        """The decision of this rule for a ``request`` it matches."""
        if self.unresolved is None or request.version_resolved:
            return self.decision
        return self.unresolved

    def matches(self, request: CallRequest) -> bool:
        """Whether every matcher holds (the target glob is checked by the caller)."""
        for matcher in self.matchers:  # noqa: SIM110 - hot path, no generator
            if not matcher.check(request):
                return False
        return True

    def why_not(self, request: CallRequest) -> str | None:
        """Why the rule does not match ``request`` (``None`` when it does)."""
        if not self.applies_to(request):
            spelling = request.canonical_spelling
            respelled = (
                sorted(self.respelled(spelling) - set(self.tool_patterns)) if spelling else []
            )
            also = f" (written canonically: {respelled})" if respelled else ""
            return f"tool {request.target!r} matches none of {list(self.tool_patterns)}{also}"
        for matcher in self.matchers:
            if not matcher.check(request):
                return matcher.why_not(request)
        return None


class RuleSet:
    """An immutable, compiled rules file. Decide with :meth:`decide`."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        *,
        version: str,
        default: str,
        default_reason: str,
        name: str,
        source: str,
    ) -> None:
        self.rules = rules
        self.version = version
        self.default = default
        self.name = name
        self.source = source
        self._candidates: dict[str, tuple[Rule, ...]] = {}
        self._respelled: dict[tuple[Any, str], tuple[Rule, ...]] = {}
        self._patterns: dict[Any, tuple[frozenset[str], ...]] = {}
        self._default_decision: Decision | None = None
        if default == "deny":
            self._default_decision = Decision.deny(
                default_reason or "no rule matched (default deny)",
                rule="default",
                policy_version=version,
            )
        elif default == "allow":
            self._default_decision = Decision.allow(
                default_reason or "no rule matched (default allow)",
                rule="default",
                policy_version=version,
            )
        self._risk_decisions = {
            risk: decision.with_source(policy_version=version)
            for risk, decision in RISK_DEFAULTS.items()
        }

    def candidates(self, target: str) -> tuple[Rule, ...]:
        """The rules whose tool globs admit ``target``, in file order (cached per target)."""
        cached = self._candidates.get(target)
        if cached is None:
            cached = tuple(rule for rule in self.rules if rule.applies_to_target(target))
            if len(self._candidates) >= _CANDIDATE_CACHE_LIMIT:
                self._candidates.clear()
            self._candidates[target] = cached
        return cached

    def candidates_for(self, request: CallRequest) -> tuple[Rule, ...]:
        """The rules whose ``tools`` admit ``request`` (:meth:`Rule.applies_to`), in file order;
        cached per target, and per template for a read of a template with typed values."""
        spelling = request.canonical_spelling
        if spelling is None:
            return self.candidates(request.target)
        target = request.target
        key = (spelling, target)
        cached = self._respelled.get(key)
        if cached is None:
            # the rules' URIs written canonically: once per template (a validator in its
            # annotation runs on them then, not on every read)
            patterns = self._patterns.get(spelling)
            if patterns is None:
                patterns = tuple(rule.respelled(spelling) for rule in self.rules)
                if len(self._patterns) >= _CANDIDATE_CACHE_LIMIT:
                    self._patterns.clear()
                self._patterns[spelling] = patterns
            cached = tuple(
                rule
                for rule, respelled in zip(self.rules, patterns, strict=True)
                if rule.applies_to_target(target) or target in respelled
            )
            if len(self._respelled) >= _CANDIDATE_CACHE_LIMIT:
                self._respelled.clear()
            self._respelled[key] = cached
        return cached

    def default_decision(self, request: CallRequest) -> Decision | None:
        """The decision when no rule matches (``None`` for ``default = "abstain"``)."""
        if self.default == "risk":
            return self._risk_decisions[request.risk]
        return self._default_decision

    def match(self, request: CallRequest) -> Rule | None:
        """The first rule that matches ``request``."""
        for rule in self.candidates_for(request):
            if rule.matches(request):
                return rule
        return None

    def decide(self, request: CallRequest) -> Decision | None:
        """The first matching rule's decision, else the default."""
        if request.canonical_spelling is None:  # every call but a typed template read
            rules = self.candidates(request.target)
        else:
            rules = self.candidates_for(request)
        for rule in rules:
            if rule.matches(request):
                if rule.unresolved is None or request.version_resolved:  # Rule.decision_for
                    return rule.decision
                return rule.unresolved
        return self.default_decision(request)


# --- line locations ----------------------------------------------------------------------------


class _Locator:
    """Maps (rule index, key path) to a line number by scanning the TOML text."""

    _HEADER = re.compile(r"^\s*\[\[\s*rule\s*\]\]")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.headers = [i for i, line in enumerate(self.lines) if self._HEADER.match(line)]

    def _region(self, index: int | None) -> range:
        if index is None:
            end = self.headers[0] if self.headers else len(self.lines)
            return range(0, end)
        if index >= len(self.headers):
            return range(0, 0)
        start = self.headers[index]
        end = self.headers[index + 1] if index + 1 < len(self.headers) else len(self.lines)
        return range(start, end)

    def line(self, index: int | None, *path: str) -> int | None:
        region = self._region(index)
        for depth in range(len(path), 0, -1):
            key = re.escape(path[depth - 1])
            dotted = r"\.".join(re.escape(p) for p in path[:depth])
            assignment = re.compile(rf"""^\s*(?:[\w.]+\.)?["']?{key}["']?\s*=""")
            table = re.compile(rf"^\s*\[\s*rule\.{dotted}\s*\]")
            for i in region:
                if table.match(self.lines[i]) or assignment.match(self.lines[i]):
                    return i + 1
        if index is not None and region:
            return region.start + 1
        return None


# --- compiling ---------------------------------------------------------------------------------


def _glob_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _claim(principal_claims: Mapping[str, Any], name: str) -> Any:
    value = principal_claims.get(name, MISSING)
    if value is MISSING and "." in name:
        value = principal_claims
        for part in name.split("."):
            if not isinstance(value, Mapping) or part not in value:
                return MISSING
            value = value[part]
    return value


def _set_matcher(
    label: str, allowed: frozenset[str], get: Callable[[CallRequest], Any]
) -> _Matcher:
    return _Matcher(
        label,
        lambda r: get(r) in allowed,
        lambda r: f"{label} {get(r)!r} is not one of {sorted(allowed)}",
    )


def _identity_matchers(spec: Mapping[str, tuple[str, ...]]) -> list[_Matcher]:
    getters: dict[str, tuple[str, Callable[[CallRequest], Any]]] = {
        "methods": ("method", lambda r: r.method),
        "risk": ("risk", lambda r: r.risk.value),
        "tenants": ("tenant", lambda r: r.tenant),
        "transports": ("transport", lambda r: r.transport),
        "subjects": ("subject", lambda r: r.principal.subject),
        "issuers": ("issuer", lambda r: r.principal.issuer),
        "client_ids": ("client_id", lambda r: r.principal.client_id),
    }
    matchers = []
    for key, (label, get) in getters.items():
        if key in spec:
            matchers.append(_set_matcher(label, frozenset(spec[key]), get))
    return matchers


def _tag_and_scope_matchers(spec: Mapping[str, tuple[str, ...]]) -> list[_Matcher]:
    matchers: list[_Matcher] = []
    if "tags" in spec:
        tags = frozenset(spec["tags"])
        matchers.append(
            _Matcher(
                "tags",
                lambda r: not tags.isdisjoint(r.tags),
                lambda r: f"tags {sorted(r.tags)} include none of {sorted(tags)}",
            )
        )
    if "all_tags" in spec:
        all_tags = frozenset(spec["all_tags"])
        matchers.append(
            _Matcher(
                "all_tags",
                lambda r: all_tags <= r.tags,
                lambda r: f"tags lack {sorted(all_tags - r.tags)}",
            )
        )
    if "scopes" in spec:
        scopes = frozenset(spec["scopes"])
        matchers.append(
            _Matcher(
                "scopes",
                lambda r: scopes <= r.principal.scopes,
                lambda r: f"principal lacks scope(s) {sorted(scopes - r.principal.scopes)}",
            )
        )
    if "any_scopes" in spec:
        any_scopes = frozenset(spec["any_scopes"])
        matchers.append(
            _Matcher(
                "any_scopes",
                lambda r: not any_scopes.isdisjoint(r.principal.scopes),
                lambda r: f"principal holds none of the scopes {sorted(any_scopes)}",
            )
        )
    return matchers


def _versions_matcher(ranges: tuple[VersionRange, ...]) -> _Matcher:
    """The version that runs is in one of ``ranges``; for a version securemcp cannot resolve,
    one of them could hold a version the call asks for (any, when it asks for none)."""
    texts = [r.text for r in ranges]

    def check(r: CallRequest) -> bool:
        if r.version_resolved:
            version = r.version
            if version is None:
                return False  # an unversioned component
            for entry in ranges:  # noqa: SIM110 - hot path, no generator
                if entry.admits(version):
                    return True
            return False
        asked = requested_range(r.requested_version)
        return any(entry.overlaps(asked) for entry in ranges)

    def why_not(r: CallRequest) -> str:
        if not r.version_resolved:
            return f"the version asked for ({r.requested_version!r}) is in none of {texts}"
        if r.version is None:
            return f"the component is unversioned (rule names versions {texts})"
        return f"version {r.version!r} is in none of {texts}"

    return _Matcher("versions", check, why_not)


def _claim_matcher(name: str, predicate: Predicate) -> _Matcher:
    test = predicate.check

    def check(r: CallRequest) -> bool:
        return test(_claim(r.principal.claims, name))

    def why_not(r: CallRequest) -> str:
        value = _claim(r.principal.claims, name)
        if value is MISSING:
            return f"claim {name!r} is missing"
        return f"claim {name!r} fails {predicate.failure(value)}"

    return _Matcher(f"claims.{name}", check, why_not)


def _argument_matcher(name: str, predicate: Predicate) -> _Matcher:
    test = predicate.check

    def check(r: CallRequest) -> bool:
        respell = r.canonical_argument
        if respell is None:  # every call but a prompt with typed parameters
            return test(r.arguments.get(name, MISSING))
        return predicate.respelled(name, respell).check(r.arguments.get(name, MISSING))

    def why_not(r: CallRequest) -> str:
        value = r.arguments.get(name, MISSING)
        if value is MISSING:
            return f"argument {name!r} is missing"
        respell = r.canonical_argument
        judged = predicate if respell is None else predicate.respelled(name, respell)
        return f"argument {name!r} fails {judged.failure(value)}"

    return _Matcher(f"arguments.{name}", check, why_not)


class _RuleCompiler:
    def __init__(self, locator: _Locator, version: str) -> None:
        self.locator = locator
        self.version = version
        self.issues: list[RuleIssue] = []

    def problem(self, index: int | None, message: str, *path: str) -> None:
        self.issues.append(RuleIssue(self.locator.line(index, *path), message))

    def strings(self, index: int, rule: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        value = rule[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(index, f"'{key}' must be a string or a list of strings", key)
            return None
        if not value:
            self.problem(index, f"'{key}' is empty, so the rule could never match", key)
            return None
        return tuple(value)

    def conditions(
        self, index: int, rule: Mapping[str, Any], key: str, *, claim: bool
    ) -> list[tuple[str, Predicate]]:
        table = rule.get(key, {})
        if not isinstance(table, Mapping):
            self.problem(index, f"'{key}' must be a table of name = condition", key)
            return []
        out = []
        for name, spec in table.items():
            try:
                out.append((str(name), compile_predicate(spec, claim=claim)))
            except ValueError as exc:
                self.problem(index, f"{key}.{name}: {exc}", key, str(name))
        return out

    def compile(self, index: int, rule: Any, seen: dict[str, int]) -> Rule | None:
        if not isinstance(rule, Mapping):
            self.problem(index, "each [[rule]] must be a table")
            return None
        before = len(self.issues)
        for key in sorted(set(rule) - _RULE_KEYS):
            self.problem(index, f"unknown key '{key}' in rule", key)
        name = rule.get("name")
        if not isinstance(name, str) or not name:
            self.problem(index, "every rule needs a non-empty 'name'", "name")
            name = f"#{index + 1}"
        elif name in seen:
            self.problem(index, f"duplicate rule name '{name}' (first at rule #{seen[name] + 1})")
        else:
            seen[name] = index
        effect_name = rule.get("effect")
        effect = Effect(effect_name) if effect_name in _EFFECTS else None
        if effect is None:
            self.problem(
                index,
                f"'effect' must be one of {', '.join(e.value for e in Effect)}, "
                f"got {effect_name!r}",
                "effect",
            )
        reason = rule.get("reason", "")
        if not isinstance(reason, str):
            self.problem(index, "'reason' must be a string", "reason")
            reason = ""
        lists: dict[str, tuple[str, ...]] = {}
        for key in _LIST_KEYS:
            if key in rule:
                values = self.strings(index, rule, key)
                if values is not None:
                    lists[key] = values
        for risk in lists.get("risk", ()):
            if risk not in {r.value for r in RiskClass}:
                self.problem(index, f"unknown risk class '{risk}'", "risk")
        versions: list[VersionRange] = []
        for text in lists.get("versions", ()):
            try:
                versions.append(parse_range(text))
            except ValueError as exc:
                self.problem(index, f"versions: {exc}", "versions")
        verified = rule.get("verified")
        if verified is not None and not isinstance(verified, bool):
            self.problem(index, "'verified' must be true or false", "verified")
        claims = self.conditions(index, rule, "claims", claim=True)
        arguments = self.conditions(index, rule, "arguments", claim=False)
        constraints = self.constraints(index, rule, effect)
        if len(self.issues) > before or effect is None:
            return None
        matchers = _identity_matchers(lists) + _tag_and_scope_matchers(lists)
        if versions:
            matchers.append(_versions_matcher(tuple(versions)))
        if isinstance(verified, bool):
            matchers.append(
                _Matcher(
                    "verified",
                    lambda r: r.principal.verified is verified,
                    lambda r: f"principal verified is {r.principal.verified}",
                )
            )
        matchers += [_claim_matcher(n, p) for n, p in claims]
        matchers += [_argument_matcher(n, p) for n, p in arguments]
        tools = lists.get("tools")
        decision = Decision(
            effect,
            reason or f"rule '{name}'",
            rule=name,
            policy_version=self.version,
            constraints=constraints,
        )
        unresolved = None
        if versions:
            unresolved = decision
            if effect is not Effect.DENY:
                unresolved = Decision.deny(
                    f"version_unresolved: rule '{name}' names component versions and the "
                    "version this call runs cannot be resolved (fail closed)",
                    rule=name,
                    policy_version=self.version,
                )
        return Rule(
            name=name,
            line=self.locator.line(index),
            decision=decision,
            tool_patterns=tools or (),
            matchers=tuple(matchers),
            _tools=_glob_regex(tools) if tools else None,
            unresolved=unresolved,
        )

    def constraints(
        self, index: int, rule: Mapping[str, Any], effect: Effect | None
    ) -> Constraints:
        spec = rule.get("constraints")
        if spec is None:
            if effect is Effect.CONSTRAIN:
                self.problem(index, "effect 'constrain' needs a [rule.constraints] table", "effect")
            return Constraints()
        if effect not in (Effect.CONSTRAIN, Effect.REQUIRE_APPROVAL):
            self.problem(
                index,
                "'constraints' only apply to effect constrain or require_approval",
                "constraints",
            )
            return Constraints()
        if not isinstance(spec, Mapping):
            self.problem(index, "'constraints' must be a table", "constraints")
            return Constraints()
        try:
            return Constraints.from_mapping(spec)
        except ValueError as exc:
            self.problem(index, f"constraints: {exc}", "constraints")
            return Constraints()


def _toml_issue(exc: tomllib.TOMLDecodeError) -> RuleIssue:
    message = str(exc)
    found = re.search(r"\(at line (\d+), column (\d+)\)$", message)
    if found:
        text = message[: found.start()].strip()
        return RuleIssue(int(found.group(1)), f"{text} (column {found.group(2)})")
    return RuleIssue(None, message)


def compile_rules(data: bytes | str, *, source: str = "<string>") -> RuleSet:
    """Parse, validate and compile a rules file.

    Raises:
        RulesFileError: with every problem found, each with its line.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    version = "sha256:" + hashlib.sha256(raw).hexdigest()
    try:
        text = raw.decode("utf-8")
        document = tomllib.loads(text)
    except UnicodeDecodeError as exc:
        raise RulesFileError(source, [RuleIssue(None, f"not UTF-8: {exc}")]) from None
    except tomllib.TOMLDecodeError as exc:
        raise RulesFileError(source, [_toml_issue(exc)]) from None
    if not text.strip():
        # Almost always a file caught mid-write (truncate, then write): refuse it, so a reload
        # keeps the policy in force. An intentionally empty policy is `default = "deny"`.
        raise RulesFileError(source, [RuleIssue(None, "the rules file is empty")])
    locator = _Locator(text)
    compiler = _RuleCompiler(locator, version)
    for key in sorted(set(document) - _TOP_KEYS):
        compiler.problem(None, f"unknown top-level key '{key}'", key)
    if document.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        compiler.problem(None, f"unsupported format version (expected {FORMAT_VERSION})", "version")
    default = document.get("default", "deny")
    if default not in DEFAULTS:
        compiler.problem(None, f"'default' must be one of {', '.join(DEFAULTS)}", "default")
    default_reason = document.get("default_reason", "")
    name = document.get("name", source)
    for key, value in (("default_reason", default_reason), ("name", name)):
        if not isinstance(value, str):
            compiler.problem(None, f"'{key}' must be a string", key)
    raw_rules = document.get("rule", [])
    if not isinstance(raw_rules, list):
        compiler.problem(None, "'rule' must be an array of tables: write [[rule]]", "rule")
        raw_rules = []
    seen: dict[str, int] = {}
    rules = [compiler.compile(i, rule, seen) for i, rule in enumerate(raw_rules)]
    if compiler.issues:
        raise RulesFileError(source, compiler.issues)
    return RuleSet(
        tuple(rule for rule in rules if rule is not None),
        version=version,
        default=str(default),
        default_reason=str(default_reason),
        name=str(name),
        source=source,
    )
