"""Policy: decisions, the policy hook, a declarative rules file, approvals and rate limits.

Scopes say what a token may ask for; policy decides whether *this* caller may make *this* call,
with *these* arguments, *now*. The pipeline runs, per call::

    rate limit (RateLimiter.hit)  ->  scopes  ->  policy (evaluate)  ->  approval (ApprovalGate)

* :class:`Decision` — allow / deny / require_approval / constrain, with the rule and the policy
  version that produced it (:mod:`securemcp.policy.decision`).
* :class:`CallRequest` and :class:`RiskClass` — what a policy sees (:mod:`.request`).
* :func:`evaluate`, :func:`all_of`, :func:`any_of`, :func:`first_match`, :func:`risk_defaults` —
  the fail-closed policy hook and its combinators (:mod:`.hooks`).
* :class:`RulesPolicy` — a TOML rules file with hot reload and ``explain`` (:mod:`.rules`,
  format in ``docs/policy.md``).
* :class:`CedarPolicy` — Cedar policies in ToolHive's MCP entity model, failing closed where a
  ``forbid`` cannot be evaluated (:mod:`.cedar`; ``pip install securemcp[cedar]``).
* :class:`ApprovalGate`, :class:`ApprovalStore`, :func:`open_store` — human approvals bound to
  the exact call (:mod:`.approvals`).
* :class:`RateLimiter`, :class:`RateLimit` — per principal / tool / tenant / address limits in
  memory or Redis (:mod:`.ratelimit`).

Heavier modules (rules, Cedar, approvals, rate limits) are imported lazily on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from securemcp.policy.decision import ArgumentBound, Constraints, Decision, Effect
from securemcp.policy.errors import ApprovalInvalid, ApprovalRequired, PolicyError, RateLimited
from securemcp.policy.hooks import (
    RISK_DEFAULTS,
    Policy,
    PolicyLike,
    all_of,
    any_of,
    evaluate,
    first_match,
    refusal,
    risk_defaults,
)
from securemcp.policy.request import CallRequest, RiskClass, arguments_hash

if TYPE_CHECKING:
    from securemcp.policy.approvals import Approval as Approval
    from securemcp.policy.approvals import ApprovalGate as ApprovalGate
    from securemcp.policy.approvals import ApprovalStatus as ApprovalStatus
    from securemcp.policy.approvals import ApprovalStore as ApprovalStore
    from securemcp.policy.approvals import ApproverRequirement as ApproverRequirement
    from securemcp.policy.approvals import open_store as open_store
    from securemcp.policy.cedar import CedarPolicy as CedarPolicy
    from securemcp.policy.ratelimit import RateDecision as RateDecision
    from securemcp.policy.ratelimit import RateLimit as RateLimit
    from securemcp.policy.ratelimit import RateLimiter as RateLimiter
    from securemcp.policy.ratelimit import StorageFailure as StorageFailure
    from securemcp.policy.rules import Explanation as Explanation
    from securemcp.policy.rules import PolicyChange as PolicyChange
    from securemcp.policy.rules import RulesFileError as RulesFileError
    from securemcp.policy.rules import RulesPolicy as RulesPolicy

_LAZY: dict[str, str] = {
    "CedarPolicy": "securemcp.policy.cedar",
    "Approval": "securemcp.policy.approvals",
    "ApprovalGate": "securemcp.policy.approvals",
    "ApprovalStatus": "securemcp.policy.approvals",
    "ApprovalStore": "securemcp.policy.approvals",
    "ApproverRequirement": "securemcp.policy.approvals",
    "open_store": "securemcp.policy.approvals",
    "RateDecision": "securemcp.policy.ratelimit",
    "RateLimit": "securemcp.policy.ratelimit",
    "RateLimiter": "securemcp.policy.ratelimit",
    "StorageFailure": "securemcp.policy.ratelimit",
    "Explanation": "securemcp.policy.rules",
    "PolicyChange": "securemcp.policy.rules",
    "RulesFileError": "securemcp.policy.rules",
    "RulesPolicy": "securemcp.policy.rules",
}

__all__ = [
    "RISK_DEFAULTS",
    "ApprovalInvalid",
    "ApprovalRequired",
    "ArgumentBound",
    "CallRequest",
    "Constraints",
    "Decision",
    "Effect",
    "Policy",
    "PolicyError",
    "PolicyLike",
    "RateLimited",
    "RiskClass",
    "all_of",
    "any_of",
    "arguments_hash",
    "evaluate",
    "first_match",
    "refusal",
    "risk_defaults",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securemcp.policy' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
