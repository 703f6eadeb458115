"""What an upstream credential obtained by token exchange depends on: the caller's grant.

An RFC 8693 token exchange issues a token derived from the ``subject_token``: its scopes are at
most the subject token's (RFC 8693 §2.1, ``scope``), its actor chain nests the subject token's
``act`` (§4.1), the authorization server decides by ``may_act`` (§4.4) and by whatever else the
token carries. Two tokens of one identity can therefore yield different upstream credentials:
a token down-scoped to ``files:read`` must never be served by a session (or a cached exchange)
that holds the credential exchanged for a ``files:read files:write`` token.

:func:`grant_key` keys the exchanged credential, and the upstream session that presents it, by
the identity (issuer, subject, tenant, client) **and** the grant the caller's token carries:

* the scope set (RFC 9068 §2.2.3, ``scope``; order and repetition do not matter);
* the audience (RFC 7519 §4.1.3, ``aud``; a single string and a one-element list are equal);
* the actor chain and delegation rights (RFC 8693 §4.1 ``act``, §4.4 ``may_act``);
* the proof-of-possession key (RFC 7800 ``cnf``, e.g. an RFC 9449 DPoP ``jkt``);
* the RFC 9068 §2.2.3.1 authorization attributes (``roles``, ``groups``, ``entitlements``) and
  RFC 9396 ``authorization_details``;
* the RFC 9068 §2.2.1 authentication information (``acr``, ``amr``, ``auth_time``), on which an
  authorization server may decide (RFC 9470 step-up authentication).

A claim that differs per issued token (``jti``, ``iat``, ``nbf``, ``exp``) is not part of the
grant: a refreshed token of the same grant maps to the same key, so it reuses the upstream
session (its newly exchanged credential replaces the session's previous one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

from securemcp.context import Principal

__all__ = ["GRANT_CLAIMS", "grant_key"]

#: The claims (besides identity and scopes) an exchanged credential depends on.
GRANT_CLAIMS: Final = (
    "aud",
    "act",
    "may_act",
    "cnf",
    "roles",
    "groups",
    "entitlements",
    "authorization_details",
    "acr",
    "amr",
    "auth_time",
)


def _plain(value: Any) -> Any:
    """Frozen claims (mapping proxies, tuples) as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _not_json(value: object) -> dict[str, str]:
    """A claim value a custom verifier set that is not JSON, told apart from any JSON value."""
    return {"\x00type": type(value).__qualname__, "\x00repr": repr(value)}


#: Keys of recently seen principals, by ``id`` (the verifier hands out one frozen, deeply
#: read-only principal per cached token): the principal is held with its key, so its ``id``
#: cannot be reused while the entry exists, and is compared by identity.
_RECENT: dict[int, tuple[Principal, str]] = {}
_RECENT_SIZE: Final = 1024


def grant_key(principal: Principal) -> str:
    """A stable key for one caller identity holding one grant (see the module docstring).

    Two principals get the same key only if they are the same identity and their tokens carry
    the same scope set and the same :data:`GRANT_CLAIMS`. Never built from the token itself.
    """
    hit = _RECENT.get(id(principal))
    if hit is not None and hit[0] is principal:
        return hit[1]
    key = _grant_key(principal)
    if len(_RECENT) >= _RECENT_SIZE:
        _RECENT.clear()  # one atomic step (event loops in several threads may share it)
    _RECENT[id(principal)] = (principal, key)
    return key


def _grant_key(principal: Principal) -> str:
    claims = principal.claims
    grant: dict[str, Any] = {}
    for name in GRANT_CLAIMS:
        if name in claims:
            grant[name] = _plain(claims[name])
    audience = grant.get("aud")
    if audience is not None:
        audiences = audience if isinstance(audience, list) else [audience]
        grant["aud"] = sorted({json.dumps(a, sort_keys=True) for a in audiences})
    described = [
        principal.issuer or "",
        principal.subject,
        principal.tenant or "",
        principal.client_id or "",
        "verified" if principal.verified else "unverified",
        sorted(principal.scopes),
        grant,
    ]
    encoded = json.dumps(described, sort_keys=True, separators=(",", ":"), default=_not_json)
    return hashlib.sha256(encoded.encode("utf-8", "surrogatepass")).hexdigest()
