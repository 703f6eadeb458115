"""Identity on stdio: a credential from the environment (or, opt-in, from a trusted host).

FastMCP skips every authorization check on stdio ("STDIO trusts the local execution
environment"). securemcp does not: a stdio server with a verifier requires a credential, verified
by the same rules as over HTTP. It comes from an environment variable set by whoever launches the
server (``SECUREMCP_ACCESS_TOKEN`` by default) or, only when explicitly enabled for a trusted
host, per request from ``_meta`` (``securemcp.dev/access_token``).

MCP authorization (all revisions): stdio servers "SHOULD NOT follow this specification, and
instead retrieve credentials from the environment". The environment token is verified once at
start-up by :func:`check_stdio_startup` (a server with an invalid token refuses to start, with a
message saying how to fix it) and again, with its expiry, on every call by the pipeline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from securemcp.auth._env import is_production
from securemcp.errors import ConfigurationError
from securemcp.identity import failed_verification

__all__ = ["DEFAULT_ENV_VAR", "META_TOKEN_KEY", "StdioIdentity", "check_stdio_startup"]

logger = logging.getLogger("securemcp.auth")

DEFAULT_ENV_VAR: Final = "SECUREMCP_ACCESS_TOKEN"
META_TOKEN_KEY: Final = "securemcp.dev/access_token"  # noqa: S105 (a key name)


class StdioIdentity:
    """Where a stdio server finds its caller's credential.

    Args:
        env_var: environment variable holding the bearer token (read once, at construction).
        allow_meta_tokens: accept a per-request token in ``_meta[META_TOKEN_KEY]``. Off by default:
            enable it only when the process that speaks stdio to this server is a trusted host that
            authenticates its own users.
    """

    def __init__(self, env_var: str = DEFAULT_ENV_VAR, *, allow_meta_tokens: bool = False) -> None:
        self.env_var = env_var
        self.allow_meta_tokens = allow_meta_tokens
        self._token = os.environ.get(env_var) or None

    @property
    def has_environment_token(self) -> bool:
        """``True`` when a token was found in the environment."""
        return self._token is not None

    def withdraw_from_environment(self) -> bool:
        """Remove the credential from this process's environment; keep it here.

        Called when the server starts serving on stdio, so that processes its tools launch
        (``subprocess``, ``os.system``: they inherit ``os.environ``) never receive the caller's
        credential (guarantee 2: it is never forwarded to anything downstream). The variable is
        removed only while it still holds the value read at construction. Returns whether it
        was removed.
        """
        if self._token is None or os.environ.get(self.env_var) != self._token:
            return False
        del os.environ[self.env_var]
        return True

    def credential(self, meta: Mapping[str, Any] | None) -> str | None:
        """The raw credential for one stdio request (never trusted until verified)."""
        if self.allow_meta_tokens and meta:
            token = meta.get(META_TOKEN_KEY)
            if isinstance(token, str) and token:
                return token
        return self._token


def _when(timestamp: float | None) -> str:
    """``timestamp`` as an ISO 8601 UTC time for a log line; never raises."""
    if timestamp is None:
        return "never"
    try:
        return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):  # beyond what datetime can represent, or NaN
        return f"at {timestamp!r} (not a representable time)"


async def check_stdio_startup(server: Any) -> None:
    """Verify a stdio server's environment credential before it serves anything.

    Call it at start-up of a stdio server (e.g. in the server lifespan when the transport is
    ``"stdio"``); ``securemcp.FastMCP`` calls it before serving stdio. It first removes the
    credential from the process environment (:meth:`StdioIdentity.withdraw_from_environment`),
    so the processes tools launch do not inherit it. With no verifier configured it does nothing
    more (development mode is handled by the server's own start-up check).

    Raises:
        ConfigurationError: the environment token is refused by the verifier (expired, wrong
            audience, ..., or the verifier itself failed: ``verifier_error``), named by its
            reason with the credential cut out and no chained exception; or there is no
            credential at all and ``SECUREMCP_ENV=production`` (unless per-request ``_meta``
            tokens from a trusted host are enabled).
    """
    identity: StdioIdentity = server._securemcp_stdio
    identity.withdraw_from_environment()
    verifier = server._securemcp_pipeline.verifier()
    if verifier is None:
        return
    name = getattr(server, "name", "?")
    token = identity.credential(None)
    if token is None:
        if identity.allow_meta_tokens:
            logger.info(
                "stdio server %r: no %s; each request must carry a token in _meta[%r]",
                name,
                identity.env_var,
                META_TOKEN_KEY,
            )
            return
        message = (
            f"securemcp stdio server {name!r} has a verifier but no credential: set "
            f"{identity.env_var} to an access token issued for this server (audience "
            f"{list(getattr(verifier, 'audiences', ()))!r}) in the environment that launches it."
        )
        if is_production():
            raise ConfigurationError(message + " SECUREMCP_ENV=production refuses to start.")
        logger.warning("%s Every call will be refused until it is set.", message)
        return
    reason: str | None = None
    try:
        principal = await verifier.authenticate(token)
    except Exception as exc:  # a refusal, or a verifier fault: either way, do not start
        # The credential is cut out of the reason (a custom verifier may quote what it refused);
        # another exception is logged with its traceback, credential cut out, as verifier_error.
        reason = failed_verification(exc, token).reason or "invalid_token"
    if reason is not None:  # raised outside the handler: the original exception is not chained
        raise ConfigurationError(
            f"securemcp stdio server {name!r} refuses to start: the access token in "
            f"{identity.env_var} was rejected ({reason}). Obtain a new token from the "
            f"authorization server for this server's audience "
            f"{list(getattr(verifier, 'audiences', ()))!r} and set {identity.env_var} to it."
        )
    expires = _when(principal.expires_at)
    logger.info(
        "stdio server %r runs as %s (issuer %s); credential expires %s",
        name,
        principal.pseudonym,
        principal.issuer,
        expires,
    )
