"""Identity on stdio: a credential from the environment (or, opt-in, from a trusted host).

FastMCP skips every authorization check on stdio ("STDIO trusts the local execution
environment"). securemcp does not: a stdio server with a verifier requires a credential, verified
by the same rules as over HTTP. It comes from an environment variable set by whoever launches the
server (``SECUREMCP_ACCESS_TOKEN`` by default) or, only when explicitly enabled for a trusted
host, per request from ``_meta`` (``securemcp.dev/access_token``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DEFAULT_ENV_VAR", "META_TOKEN_KEY", "StdioIdentity"]

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

    def credential(self, meta: Mapping[str, Any] | None) -> str | None:
        """The raw credential for one stdio request (never trusted until verified)."""
        if self.allow_meta_tokens and meta:
            token = meta.get(META_TOKEN_KEY)
            if isinstance(token, str) and token:
                return token
        return self._token
