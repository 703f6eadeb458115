"""Refusals raised by the policy layer: rate limits, approvals and policy failures.

Each subclasses :class:`securemcp.errors.CallRefused`, so the pipeline turns it into a client
error of the form ``"<code>: <client message>"`` and the tool body never runs (guarantee 3 of
DESIGN.md). The ``code`` values are part of the public contract:

* ``rate_limited`` — carries ``retry_after`` (seconds, RFC 9110 §10.2.3 ``Retry-After``
  semantics) and the name of the limit; ``data`` is the JSON-RPC ``error.data`` shape suggested
  in standards.md §7.3 (``{"retryAfter": ..., "policy": ...}``);
* ``approval_required`` — carries the ``approval_id`` an approver must approve;
* ``approval_invalid`` — an approval exists but may not be used (``why`` says which check
  failed: expired, used, other arguments, another caller, self-approval, ...);
* ``policy_error`` — the policy could not be evaluated (a raising hook, an unreadable rules file);
  the call is refused (fail closed).

Internal detail stays on ``reason`` (audit and server log only), never in the client message.
"""

from __future__ import annotations

import math
from typing import Any, Final

from securemcp.errors import CallRefused

__all__ = [
    "ApprovalInvalid",
    "ApprovalRequired",
    "PolicyError",
    "RateLimited",
]


class RateLimited(CallRefused):
    """A rate limit or quota refused the call.

    Attributes:
        retry_after: seconds after which the same call may succeed (never negative).
        limit: the name of the limit that refused the call.
    """

    code = "rate_limited"
    default_message = "Rate limit exceeded."

    def __init__(self, retry_after: float, limit: str | None = None, *, reason: str | None = None):
        self.retry_after = max(0.0, float(retry_after))
        self.limit = limit
        seconds = self.retry_after_header
        CallRefused.__init__(
            self, f"Rate limit exceeded; retry after {seconds} s.", reason=reason or limit
        )

    @property
    def retry_after_header(self) -> int:
        """``retry_after`` rounded up to whole seconds, for an HTTP ``Retry-After`` header."""
        return max(1, math.ceil(self.retry_after)) if self.retry_after > 0 else 0

    @property
    def data(self) -> dict[str, Any]:
        """Machine-readable detail for JSON-RPC ``error.data`` (standards.md §7.3)."""
        return {"retryAfter": round(self.retry_after, 3), "policy": self.limit, "remaining": 0}


class ApprovalRequired(CallRefused):
    """The call needs a human approver's approval before it may run.

    The client receives the approval id; an approver (never the calling principal) approves it
    with ``securemcp approvals approve ID`` or the Python API, after which the *same* call (same
    caller, tool and arguments, under the same policy) succeeds.
    """

    code = "approval_required"
    default_message = "This call requires approval."

    def __init__(self, approval_id: str, *, reason: str | None = None) -> None:
        self.approval_id = approval_id
        CallRefused.__init__(
            self,
            f"This call requires approval by an authorised approver (approval id {approval_id}). "
            "Retry the same call with the same arguments once it has been approved.",
            reason=reason,
        )

    @property
    def data(self) -> dict[str, Any]:
        """Machine-readable detail for JSON-RPC ``error.data``."""
        return {"approvalId": self.approval_id}


#: Client-safe explanations for each :attr:`ApprovalInvalid.why`.
APPROVAL_INVALID_MESSAGES: Final[dict[str, str]] = {
    "unknown": "no such approval",
    "pending": "the approval has not been granted yet",
    "denied": "the approval was denied",
    "expired": "the approval has expired",
    "used": "the approval has already been used",
    "other_principal": "the approval was granted to another caller",
    "other_tool": "the approval was granted for another tool",
    "other_arguments": "the approval was granted for different arguments",
    "policy_changed": "the policy changed since the approval was granted",
    "self_approval": "a caller may not approve its own request",
    "not_an_approver": "the approver does not hold an approver role or scope",
    "already_decided": "the approval request has already been decided",
}


class ApprovalInvalid(CallRefused):
    """An approval cannot be used (or granted).

    Attributes:
        why: a stable key from :data:`APPROVAL_INVALID_MESSAGES`.
        approval_id: the approval concerned, if known.
    """

    code = "approval_invalid"
    default_message = "The approval is not valid for this call."

    def __init__(self, why: str, approval_id: str | None = None, *, reason: str | None = None):
        self.why = why
        self.approval_id = approval_id
        explanation = APPROVAL_INVALID_MESSAGES.get(why, "the approval is not valid")
        CallRefused.__init__(
            self, f"Approval refused: {explanation}.", reason=reason or f"{why} ({approval_id})"
        )


class PolicyError(CallRefused):
    """The policy could not be evaluated; the call is refused (fail closed)."""

    code = "policy_error"
    default_message = "The server's policy could not be evaluated; the call was refused."
