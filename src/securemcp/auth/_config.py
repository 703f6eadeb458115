"""Configuration checks shared by securemcp's verifiers (each error says how to fix it).

Start-up validation for the issue's list: no audience, no issuer, out-of-range leeway, HMAC
mixed with public keys, plain-http endpoints in production (``SECUREMCP_ENV=production``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from securemcp.auth._env import is_production
from securemcp.auth._http import FetchPolicy
from securemcp.errors import ConfigurationError

__all__ = ["MAX_LEEWAY", "check_audience", "check_issuer_config", "check_policy", "check_scopes"]

#: Largest leeway (seconds) a verifier may be configured with (RFC 9068 §4: "a few minutes").
MAX_LEEWAY: Final = 300.0


def check_issuer_config(issuer: object) -> str:
    if not isinstance(issuer, str) or not issuer.strip():
        raise ConfigurationError(
            "JWTVerifier needs issuer=: the authorization server's issuer identifier exactly as "
            "it appears in the tokens' iss claim, e.g. issuer='https://login.example.com'."
        )
    return issuer


def check_audience(audience: object) -> tuple[str, ...]:
    values = (audience,) if isinstance(audience, str) else audience
    if (
        not isinstance(values, Sequence)
        or not values
        or not all(isinstance(a, str) and a.strip() for a in values)
    ):
        raise ConfigurationError(
            "The verifier needs audience=: this server's canonical resource URI (RFC 8707), "
            "e.g. audience='https://mcp.example.com/mcp'. Tokens are only accepted when their "
            "aud claim contains it, so a token minted for another service cannot be replayed here."
        )
    return tuple(dict.fromkeys(values))


def check_scopes(required_scopes: Sequence[str] | None) -> tuple[str, ...]:
    if required_scopes is None:
        return ()
    if isinstance(required_scopes, str) or not all(
        isinstance(s, str) and s and " " not in s for s in required_scopes
    ):
        raise ConfigurationError(
            "required_scopes= must be a list of scope strings, e.g. required_scopes=['mcp:use']."
        )
    return tuple(required_scopes)


def check_policy(allow_insecure_loopback: bool, allowed_networks: Sequence[str]) -> FetchPolicy:
    if allow_insecure_loopback and is_production():
        raise ConfigurationError(
            "allow_insecure_loopback=True is a development setting and SECUREMCP_ENV=production "
            "refuses it: serve the issuer's metadata and JWKS over https and remove the flag."
        )
    try:
        return FetchPolicy.build(
            allow_insecure_loopback=allow_insecure_loopback, allowed_networks=allowed_networks
        )
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
