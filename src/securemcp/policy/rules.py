"""A declarative rules file as a policy: :class:`RulesPolicy`, with hot reload and ``explain``.

``RulesPolicy.from_file("policy.toml")`` is a synchronous policy (``evaluate(request)``) usable
wherever a policy hook is accepted. The file format is in ``docs/policy.md`` and
:mod:`securemcp.policy.rules_compile`.

Hot reload (:mod:`securemcp.policy._hot_reload`): with ``reload=True`` the file is checked at
most once per ``check_interval`` (1 s) on the call path and recompiled when its content changes;
every call is decided by exactly one complete version, and a file that fails to parse or
validate keeps the previous policy in force, reported to the log and to ``on_policy_change``
(a :class:`PolicyChange`, which the server records in the audit log).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from securemcp.policy._hot_reload import (
    CompileFailed,
    HotReloadedPolicy,
    PolicyChange,
    PolicyChangeCallback,
    read_policy_file,
)
from securemcp.policy.decision import Decision
from securemcp.policy.request import CallRequest
from securemcp.policy.rules_compile import Rule, RuleSet, RulesFileError, compile_rules

__all__ = ["Explanation", "PolicyChange", "RuleTrace", "RulesFileError", "RulesPolicy"]


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """How one rule fared against a request in :meth:`RulesPolicy.explain`."""

    rule: str
    line: int | None
    matched: bool
    why_not: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    """Which rule decided a request, and why the rules before it did not match.

    Attributes:
        decision: the decision (``None`` when the policy abstains).
        rule: the deciding rule's name, or ``"default"`` / ``None``.
        line: the deciding rule's line in the file.
        trace: every rule examined, in order, up to and including the deciding one.
        policy_version: the version that decided.
    """

    decision: Decision | None
    rule: str | None
    line: int | None
    trace: tuple[RuleTrace, ...]
    policy_version: str

    def __str__(self) -> str:
        lines = []
        for step in self.trace:
            where = f" (line {step.line})" if step.line else ""
            status = "MATCH" if step.matched else f"no match: {step.why_not}"
            lines.append(f"  rule {step.rule!r}{where}: {status}")
        if self.decision is None:
            lines.append("decision: abstain (no rule matched; default = abstain)")
        else:
            where = f" at line {self.line}" if self.line else ""
            lines.append(
                f"decision: {self.decision.effect.value} by {self.rule!r}{where}"
                f" ({self.decision.reason})"
            )
            if self.decision.constraints:
                lines.append(f"constraints: {self.decision.constraints.to_dict()}")
        lines.append(f"policy version: {self.policy_version}")
        return "\n".join(lines)


def explain_ruleset(ruleset: RuleSet, request: CallRequest) -> Explanation:
    """Explain how ``ruleset`` decides ``request``."""
    trace: list[RuleTrace] = []
    for rule in ruleset.rules:
        why_not = rule.why_not(request)
        trace.append(RuleTrace(rule.name, rule.line, why_not is None, why_not))
        if why_not is None:
            decided = rule.decision_for(request)
            return Explanation(decided, rule.name, rule.line, tuple(trace), ruleset.version)
    decision = ruleset.default_decision(request)
    rule_name = decision.rule if decision is not None else None
    return Explanation(decision, rule_name, None, tuple(trace), ruleset.version)


class RulesPolicy(HotReloadedPolicy[RuleSet]):
    """A policy decided by a rules file; optionally hot-reloaded. See the module docstring.

    Built from a compiled :class:`RuleSet` (see :class:`HotReloadedPolicy` for ``path``,
    ``reload``, ``check_interval``, ``on_policy_change``), or with :meth:`from_file` /
    :meth:`from_string`.
    """

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike[str],
        *,
        reload: bool = True,
        check_interval: float = 1.0,
        on_policy_change: PolicyChangeCallback | None = None,
    ) -> RulesPolicy:
        """Load a rules file (reloaded on change unless ``reload=False``).

        Raises:
            RulesFileError: the file does not parse or validate (at start-up, nothing to keep).
            OSError: the file cannot be read.
        """
        file = Path(path)
        before = file.stat()  # before reading: a change while we read is reloaded later
        ruleset = compile_rules(read_policy_file(file), source=str(file))
        policy = cls(
            ruleset,
            path=file,
            reload=reload,
            check_interval=check_interval,
            on_policy_change=on_policy_change,
        )
        policy._signature = (before.st_mtime_ns, before.st_size, before.st_ino)
        policy._emit(PolicyChange("loaded", str(file), ruleset.version))
        return policy

    @classmethod
    def from_string(cls, text: str, *, source: str = "<string>") -> RulesPolicy:
        """A fixed (never reloaded) policy from TOML text.

        Raises:
            RulesFileError: the text does not parse or validate.
        """
        return cls(compile_rules(text, source=source))

    def _compile(self, data: bytes, source: str) -> RuleSet:
        try:
            return compile_rules(data, source=source)
        except RulesFileError as exc:
            raise CompileFailed([issue.format(source) for issue in exc.issues]) from None

    def _version_of(self, compiled: RuleSet) -> str:
        return compiled.version

    @property
    def name(self) -> str:
        """The rules file's ``name`` (or its path)."""
        return self._compiled.name

    @property
    def ruleset(self) -> RuleSet:
        """The compiled rules in force."""
        return self._compiled

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, in order."""
        return self._compiled.rules

    def evaluate(self, request: CallRequest) -> Decision | None:
        """Decide ``request`` (``None`` only with ``default = "abstain"``)."""
        return self._current().decide(request)

    __call__ = evaluate

    def explain(self, request: CallRequest) -> Explanation:
        """Which rule decides ``request`` and why earlier rules did not match."""
        return explain_ruleset(self._compiled, request)
