"""A declarative rules file as a policy: :class:`RulesPolicy`, with hot reload and ``explain``.

``RulesPolicy.from_file("policy.toml")`` is a synchronous policy (``evaluate(request)``) usable
wherever a policy hook is accepted. The file format is in ``docs/policy.md`` and
:mod:`securemcp.policy.rules_compile`.

Hot reload (reload without restart, as ToolHive and agentgateway do for their config): on the call
path, at most once per ``check_interval`` (1 s), the file's ``stat`` signature
(mtime, size, inode) is compared; when it changed, the file is read, hashed (SHA-256: the
``policy_version``) and, if the content changed, compiled. The new rule set replaces the old one
with a single reference assignment, so every call is decided by exactly one complete version —
never by a half-loaded one, never by none.

A file that fails to parse or validate (or disappears) **keeps the previous policy in force**
and is reported loudly: ``logging.error`` on ``securemcp.policy`` and a :class:`PolicyChange`
event (``kind="reload_failed"``) to ``on_policy_change``, which the server connects to the audit
log. The same broken content is reported once, not on every check. Successful loads report
``kind="loaded"`` / ``"reloaded"`` with the old and new versions.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from securemcp.policy.decision import Decision
from securemcp.policy.request import CallRequest
from securemcp.policy.rules_compile import Rule, RuleSet, RulesFileError, compile_rules

__all__ = ["Explanation", "PolicyChange", "RuleTrace", "RulesFileError", "RulesPolicy"]

logger = logging.getLogger("securemcp.policy")


@dataclass(frozen=True, slots=True)
class PolicyChange:
    """A policy load, reload or failed reload (for the audit log).

    Attributes:
        kind: ``loaded``, ``reloaded`` or ``reload_failed``.
        source: the rules file.
        policy_version: the version now in force.
        previous_version: the version before (``None`` on first load).
        errors: for ``reload_failed``, every problem found (``file:line: message``).
        at: POSIX time of the event.
    """

    kind: Literal["loaded", "reloaded", "reload_failed"]
    source: str
    policy_version: str | None
    previous_version: str | None = None
    errors: tuple[str, ...] = ()
    at: float = field(default_factory=time.time)


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


PolicyChangeCallback = Callable[[PolicyChange], object]
_Signature = tuple[int, int, int]


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


class RulesPolicy:
    """A policy decided by a rules file; optionally hot-reloaded. See the module docstring."""

    def __init__(
        self,
        ruleset: RuleSet,
        *,
        path: str | os.PathLike[str] | None = None,
        reload: bool = False,
        check_interval: float = 1.0,
        on_policy_change: PolicyChangeCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ruleset = ruleset
        self._path = Path(path) if path is not None else None
        self._reload = reload and self._path is not None
        self._interval = check_interval
        self._on_change = on_policy_change
        self._clock = clock
        self._next_check = clock() + check_interval
        self._signature: _Signature | None = self._stat()
        self._failed_version: str | None = None
        self._lock = threading.Lock()

    @property
    def source(self) -> str:
        """The rules file (``"<string>"`` for a policy built from text)."""
        return str(self._path) if self._path is not None else "<string>"

    def subscribe(self, callback: PolicyChangeCallback) -> None:
        """Also send every later :class:`PolicyChange` to ``callback`` (e.g. the audit log)."""
        previous = self._on_change

        def both(event: PolicyChange) -> None:
            if previous is not None:
                previous(event)
            callback(event)

        self._on_change = both

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
        ruleset = compile_rules(file.read_bytes(), source=str(file))
        policy = cls(
            ruleset,
            path=file,
            reload=reload,
            check_interval=check_interval,
            on_policy_change=on_policy_change,
        )
        policy._emit(PolicyChange("loaded", str(file), ruleset.version))
        return policy

    @classmethod
    def from_string(cls, text: str, *, source: str = "<string>") -> RulesPolicy:
        """A fixed (never reloaded) policy from TOML text.

        Raises:
            RulesFileError: the text does not parse or validate.
        """
        return cls(compile_rules(text, source=source))

    @property
    def name(self) -> str:
        """The rules file's ``name`` (or its path)."""
        return self._ruleset.name

    @property
    def version(self) -> str:
        """``sha256:<hex>`` of the rules file in force."""
        return self._ruleset.version

    @property
    def ruleset(self) -> RuleSet:
        """The compiled rules in force."""
        return self._ruleset

    @property
    def rules(self) -> tuple[Rule, ...]:
        """The rules in force, in order."""
        return self._ruleset.rules

    def evaluate(self, request: CallRequest) -> Decision | None:
        """Decide ``request`` (``None`` only with ``default = "abstain"``)."""
        if self._reload and self._clock() >= self._next_check:
            self._check_file()
        return self._ruleset.decide(request)

    __call__ = evaluate

    def explain(self, request: CallRequest) -> Explanation:
        """Which rule decides ``request`` and why earlier rules did not match."""
        return explain_ruleset(self._ruleset, request)

    def reload(self) -> bool:
        """Check the file now. ``True`` when a new version was installed."""
        with self._lock:
            return self._reload_locked(force=True)

    # --- reloading --------------------------------------------------------------------------

    def _stat(self) -> _Signature | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _check_file(self) -> None:
        if not self._lock.acquire(blocking=False):
            return  # another thread is checking; this call uses the version in force
        try:
            self._next_check = self._clock() + self._interval
            self._reload_locked(force=False)
        finally:
            self._lock.release()

    def _reload_locked(self, *, force: bool) -> bool:
        if self._path is None:
            return False
        signature = self._stat()
        if signature == self._signature and not force:
            return False
        self._signature = signature
        source = str(self._path)
        previous = self._ruleset.version
        try:
            data = self._path.read_bytes()
        except OSError as exc:
            self._report_failure(source, previous, "missing", [f"{source}: cannot read: {exc}"])
            return False
        try:
            ruleset = compile_rules(data, source=source)
        except RulesFileError as exc:
            version = "sha256:" + hashlib.sha256(data).hexdigest()
            errors = [issue.format(source) for issue in exc.issues]
            self._report_failure(source, previous, version, errors)
            return False
        self._failed_version = None
        if ruleset.version == previous:
            return False
        self._ruleset = ruleset
        logger.warning(
            "securemcp policy %s reloaded: %s -> %s", source, previous[:19], ruleset.version[:19]
        )
        self._emit(PolicyChange("reloaded", source, ruleset.version, previous))
        return True

    def _report_failure(self, source: str, previous: str, failed: str, errors: list[str]) -> None:
        if failed == self._failed_version:
            return  # this exact content was already reported
        self._failed_version = failed
        logger.error(
            "securemcp policy %s failed to reload; the previous policy %s stays in force:\n%s",
            source,
            previous[:19],
            "\n".join(errors),
        )
        self._emit(PolicyChange("reload_failed", source, previous, previous, tuple(errors)))

    def _emit(self, event: PolicyChange) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(event)
        except Exception:
            logger.exception("securemcp on_policy_change callback failed for %s", event.kind)
