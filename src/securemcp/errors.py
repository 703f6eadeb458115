"""One exception tree for securemcp.

Every error carries a stable machine-readable ``code`` and a client-safe message. The message
that reaches an MCP client is always ``"<code>: <client message>"``; it never contains stack
traces, key ids, token contents or policy source. Internal detail (why a token was rejected,
which rule denied) lives on ``reason`` and is meant for the audit log and the server log only.

Errors a client can receive during a call subclass FastMCP's ``AuthorizationError`` (a
``FastMCPError``), so FastMCP turns them into an ``isError`` tool result or a JSON-RPC error
with the message intact, and code written against FastMCP's exceptions keeps working.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from fastmcp.exceptions import AuthorizationError, InsufficientScopeError, ToolError

from securemcp._redaction import redact_secrets

__all__ = [
    "CallRefused",
    "CallTimedOut",
    "ComponentChanged",
    "ConfigurationError",
    "ContextClosed",
    "ContextError",
    "DefinitionChanged",
    "InsufficientScope",
    "InvalidArguments",
    "InvalidCredential",
    "NoActiveCall",
    "PipelineBypassed",
    "PolicyDenied",
    "ResultTooLarge",
    "ScopeDeclarationError",
    "SecureMCPError",
    "Unauthenticated",
    "UpstreamError",
    "UpstreamOutputRejected",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class SecureMCPError(Exception):
    """Base of every securemcp error.

    Attributes:
        code: stable, machine-readable identifier (``snake_case``), part of the public contract.
        client_message: text safe to show to an MCP client.
        reason: internal detail for the audit and server logs; never sent to a client.
    """

    code: str = "securemcp_error"
    default_message: str = "The request could not be completed."
    #: Level FastMCP logs this error at when it reaches its error handling (FastMCPError API).
    log_level: int = logging.INFO

    def __init__(self, client_message: str | None = None, *, reason: str | None = None) -> None:
        self.client_message = client_message or self.default_message
        # Reasons go to the server and audit logs, and some are written by third parties (a
        # custom verifier quoting the token it refused): credentials are cut out here, once.
        self.reason = redact_secrets(reason) if reason else reason
        # Exception.__init__ directly: cooperative super() would reach FastMCP exception
        # constructors with other signatures through the multiple-inheritance MRO.
        Exception.__init__(self, f"{self.code}: {self.client_message}")


# --- configuration and registration (raised to the server author, at start-up) -------------


class ConfigurationError(SecureMCPError, ValueError):
    """The server is configured in a way securemcp refuses to run (raised at start-up)."""

    code = "configuration_error"


class ScopeDeclarationError(ConfigurationError, TypeError):
    """``scopes=`` on a decorator or ``add_*`` call is not a collection of scope strings."""

    code = "invalid_scopes"


# --- the per-call context ----------------------------------------------------------------------


class ContextError(SecureMCPError, RuntimeError):
    """The per-call ``SecurityContext`` was used where it does not exist."""

    code = "context_error"


class NoActiveCall(ContextError):
    """``securemcp.current()`` was called outside a tool, resource or prompt call."""

    code = "no_active_call"
    default_message = (
        "securemcp.current() is only available inside a tool, resource or prompt call "
        "served by a securemcp server."
    )


class ContextClosed(ContextError):
    """A ``SecurityContext`` was read after its call had ended (e.g. from a background task)."""

    code = "context_closed"
    default_message = (
        "This security context belongs to a call that has already ended; it can no longer be "
        "used to act as that caller."
    )


# --- refusals a client receives ----------------------------------------------------------------


class CallRefused(SecureMCPError, AuthorizationError):
    """Base of every refusal: the tool, resource or prompt body did not run.

    ``rule`` and ``policy_version`` name the policy decision that refused the call, when one
    did (set by the enforcement point, recorded in the audit log's ``deny`` record, never sent
    to the client).
    """

    code = "access_denied"
    default_message = "The call was refused."
    rule: str | None = None
    policy_version: str | None = None

    def decided_by(self, decision: Any) -> CallRefused:
        """Name ``decision`` (a ``securemcp.policy.Decision``) as what refused the call."""
        if self.rule is None:
            self.rule = decision.rule
        if self.policy_version is None:
            self.policy_version = decision.policy_version
        return self


class Unauthenticated(CallRefused):
    """No valid credential was presented for a server that requires one."""

    code = "invalid_token"
    default_message = "Authentication required: the access token is missing, invalid or expired."


class InvalidCredential(Unauthenticated):
    """A presented credential failed verification. ``reason`` says why (internal only)."""


class InsufficientScope(CallRefused, InsufficientScopeError):
    """The caller's token lacks scopes the component requires.

    ``required`` lists every scope the call needs (so a client can step up in one go, RFC 6750
    §3.1); ``missing`` lists those the caller does not hold.
    """

    code = "insufficient_scope"

    def __init__(self, required: Iterable[str], missing: Iterable[str]) -> None:
        self.required: tuple[str, ...] = tuple(sorted(set(required)))
        self.missing: tuple[str, ...] = tuple(sorted(set(missing)))
        self.required_scopes = list(self.required)  # FastMCP's InsufficientScopeError attribute
        message = (
            f"Missing scope(s): {' '.join(self.missing)}. "
            f"This call requires: {' '.join(self.required)}."
        )
        CallRefused.__init__(self, message)


class PolicyDenied(CallRefused):
    """The server's policy refused the call."""

    code = "policy_denied"
    default_message = "The server's policy does not allow this call."


class InvalidArguments(CallRefused):
    """The arguments do not match what the component declares; the component never ran.

    Raised for a proxied component whose arguments its pinned definition does not allow, and,
    when a policy is configured, for a tool call whose argument JSON types are not the ones the
    tool's input schema declares, so that the values the policy decides on are the values the
    tool receives (FastMCP would otherwise coerce ``"5000"`` into 5000 after the policy saw a
    string; see :mod:`securemcp.policy.arguments`).
    """

    code = "invalid_arguments"
    default_message = (
        "The arguments do not match the definition of this tool or prompt; "
        "send the declared JSON types (no strings for numbers or booleans)."
    )


class PipelineBypassed(CallRefused):
    """A component was invoked without passing through the securemcp pipeline."""

    code = "pipeline_bypassed"
    default_message = (
        "This call did not pass through the securemcp security pipeline and was refused."
    )


class ComponentChanged(CallRefused):
    """The target changed while the call was being authorized; the same call may be retried."""

    code = "component_changed"
    default_message = "The target changed while the call was being authorized; retry the call."


class ResultTooLarge(CallRefused):
    """The result exceeded the size limit set by policy; it was withheld from the client."""

    code = "result_too_large"
    default_message = "The result exceeded the size limit set by policy and was withheld."


class CallTimedOut(SecureMCPError, ToolError):
    """The call exceeded the time limit set by policy and was cancelled."""

    code = "timeout"
    default_message = "The call exceeded the time limit set by policy and was cancelled."


# --- the proxy's upstreams (securemcp.proxy) ---------------------------------------------------


class DefinitionChanged(CallRefused):
    """An upstream component's definition no longer matches its pin: blocked until re-locked."""

    code = "tool_definition_changed"
    default_message = (
        "This upstream component changed since it was reviewed and is blocked until an "
        "operator re-approves it."
    )


class UpstreamError(SecureMCPError, ToolError):
    """The upstream server failed or answered with something the proxy will not pass on."""

    code = "upstream_error"
    default_message = "The upstream server returned an invalid response."
    log_level = logging.WARNING


class UpstreamUnavailable(UpstreamError):
    """The upstream server could not be reached, or its connection broke during the call."""

    code = "upstream_unavailable"
    default_message = "The upstream server is unavailable; try again later."


class UpstreamTimeout(UpstreamError):
    """The upstream server did not answer within the configured time."""

    code = "upstream_timeout"
    default_message = "The upstream server did not answer in time."


class UpstreamOutputRejected(UpstreamError):
    """The upstream's answer contained a credential the proxy injected; it was withheld."""

    code = "upstream_output_rejected"
    default_message = "The upstream server's response was withheld by the proxy."
