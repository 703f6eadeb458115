"""Claim validation and the claims → :class:`~securemcp.context.Principal` mapping.

Implements the resource-server checks of RFC 9068 §4 and RFC 7519 §4.1 with the typing and
mutual-exclusion rules of RFC 8725 §3.10-§3.12: every claim used is type-checked, ``iss`` and
``aud`` are compared exactly (RFC 8707 resource indicators; CVE-2024-53861 was a substring
match), ``exp`` and ``iat`` are required, ``nbf`` is honoured, and scopes are exact,
case-sensitive RFC 6749 §3.3 scope tokens. The RFC 8693 ``act`` claim becomes the actor chain.

Two profiles:

* ``strict`` (and any token typed ``at+jwt`` in either profile): RFC 9068 §2.2, so ``client_id``
  and ``jti`` are required too.
* ``relaxed`` tokens typed ``JWT`` or untyped (Entra ID and others): to stay distinguishable from
  ID tokens (RFC 8725 §3.12) they must carry ``scope``/``scp``, must not carry ``nonce``, and their
  client must not be one of their audiences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn

from securemcp.context import Actor, Principal
from securemcp.errors import InvalidCredential

__all__ = [
    "ClaimRules",
    "actor_chain",
    "audiences_of",
    "build_principal",
    "check_issuer",
    "matched_audience",
    "number_claim",
    "scopes_of",
    "string_claim",
]

#: Longest RFC 8693 actor chain accepted.
MAX_ACT_DEPTH: Final = 8

#: Largest magnitude accepted for a NumericDate (``exp``, ``nbf``, ``iat``): 9999-12-31T23:59:59Z,
#: the last second a :class:`datetime.datetime` can represent. Anything larger cannot be a time.
MAX_NUMERIC_DATE: Final = 253_402_300_799

_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")  # RFC 6749 §3.3 scope-token


@dataclass(frozen=True, slots=True)
class ClaimRules:
    """What a verifier requires of a token's claims."""

    issuer: str
    audiences: tuple[str, ...]
    leeway: float
    profile: Literal["strict", "relaxed"] = "strict"
    tenant_claim: str | None = None
    required_scopes: frozenset[str] = frozenset()


def _refuse(reason: str) -> NoReturn:
    raise InvalidCredential(reason=reason)


def _string(claims: Mapping[str, Any], name: str, *, required: bool) -> str | None:
    if name not in claims:
        if required:
            _refuse(f"missing_claim:{name}")
        return None
    value = claims[name]
    if not isinstance(value, str) or not value:
        _refuse(f"invalid_claim:{name}")
    return value


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    """A NumericDate claim (RFC 7519 §2) as a float; ``None`` when absent.

    Refuses (``invalid_claim:<name>``) anything but a JSON number, and numbers that cannot be a
    time: non-finite or beyond :data:`MAX_NUMERIC_DATE` either way (a 400-digit integer would
    otherwise overflow ``float``). Compared before conversion, so no exception escapes.
    """
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        _refuse(f"invalid_claim:{name}")
    if not -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE:  # also False for NaN
        _refuse(f"invalid_claim:{name}")
    return float(value)


def _required_number(claims: Mapping[str, Any], name: str) -> float:
    value = _number(claims, name)
    if value is None:
        _refuse(f"missing_claim:{name}")
    return value


def _required_string(claims: Mapping[str, Any], name: str) -> str:
    value = _string(claims, name, required=True)
    if value is None:  # pragma: no cover - _string already refused
        _refuse(f"missing_claim:{name}")
    return value


def _audiences(claims: Mapping[str, Any]) -> list[str]:
    if "aud" not in claims:
        _refuse("missing_claim:aud")
    aud = claims["aud"]
    values = [aud] if isinstance(aud, str) else aud
    if (
        not isinstance(values, list)
        or not values
        or not all(isinstance(v, str) and v for v in values)
    ):
        _refuse("invalid_claim:aud")
    return values


def _scope_tokens(value: str, name: str) -> list[str]:
    tokens = [t for t in value.split(" ") if t]
    if not all(_SCOPE_TOKEN.fullmatch(t) for t in tokens):
        _refuse(f"invalid_claim:{name}")
    return tokens


def _scopes(claims: Mapping[str, Any]) -> frozenset[str] | None:
    """Scopes from ``scope`` (space-separated string) or else ``scp`` (list, or string)."""
    if "scope" in claims:
        scope = claims["scope"]
        if not isinstance(scope, str):
            _refuse("invalid_claim:scope")
        return frozenset(_scope_tokens(scope, "scope"))
    if "scp" in claims:
        scp = claims["scp"]
        if isinstance(scp, str):
            return frozenset(_scope_tokens(scp, "scp"))
        if not isinstance(scp, list) or not all(
            isinstance(s, str) and _SCOPE_TOKEN.fullmatch(s) for s in scp
        ):
            _refuse("invalid_claim:scp")
        return frozenset(scp)
    return None


def _actor_chain(claims: Mapping[str, Any]) -> tuple[Actor, ...]:
    """RFC 8693 §4.1: ``act`` names the current actor; a nested ``act`` the one before it."""
    chain: list[Actor] = []
    node = claims.get("act")
    while node is not None:
        if len(chain) >= MAX_ACT_DEPTH or not isinstance(node, dict):
            _refuse("invalid_claim:act")
        subject = node.get("sub")
        issuer = node.get("iss")
        client_id = node.get("client_id")
        if not isinstance(subject, str) or not subject:
            _refuse("invalid_claim:act")
        if not (issuer is None or isinstance(issuer, str)) or not (
            client_id is None or isinstance(client_id, str)
        ):
            _refuse("invalid_claim:act")
        chain.append(Actor(subject=subject, issuer=issuer, client_id=client_id))
        node = node.get("act")
    return tuple(chain)


# Public names for the other verifiers (RFC 7662 introspection responses use the same claims).
string_claim = _string
number_claim = _number
audiences_of = _audiences
scopes_of = _scopes
actor_chain = _actor_chain


def check_issuer(claims: Mapping[str, Any], issuer: str) -> None:
    """``iss`` must be a string exactly equal to ``issuer`` (RFC 9068 §4, RFC 8725 §3.8).

    Checked on the *unverified* payload before any key lookup, so a token naming another
    issuer costs no network I/O; the signature check that follows proves it.
    """
    if _required_string(claims, "iss") != issuer:
        _refuse("issuer_mismatch")


def matched_audience(claims: Mapping[str, Any], audiences: Sequence[str]) -> str | None:
    """The first configured audience the token's ``aud`` contains (its RFC 8707 resource)."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud
    if not isinstance(values, list | tuple):
        return None
    return next((a for a in audiences if a in values), None)


def build_principal(
    claims: dict[str, Any], rules: ClaimRules, *, now: float, typed: bool
) -> Principal:
    """Validate the (signature-verified) claims and build the principal they prove.

    Args:
        claims: the verified payload.
        rules: the verifier's requirements.
        now: current POSIX time.
        typed: whether the header ``typ`` was ``at+jwt`` (else a relaxed-profile token).

    Raises:
        InvalidCredential: with the reason of the first failed check.
    """
    exp = _required_number(claims, "exp")
    iat = _required_number(claims, "iat")
    nbf = _number(claims, "nbf")
    if exp <= now - rules.leeway:
        _refuse("expired")
    if iat > now + rules.leeway:
        _refuse("iat_in_future")
    if nbf is not None and nbf > now + rules.leeway:
        _refuse("nbf_in_future")

    issuer = _required_string(claims, "iss")
    if issuer != rules.issuer:
        _refuse("issuer_mismatch")
    audiences = _audiences(claims)
    if not any(a in audiences for a in rules.audiences):
        _refuse("audience_mismatch")
    subject = _required_string(claims, "sub")

    strict = typed or rules.profile == "strict"
    client_id = _string(claims, "client_id", required=strict)
    azp = _string(claims, "azp", required=False)
    if strict:
        _string(claims, "jti", required=True)
    else:
        client_id = client_id or azp
    scopes = _scopes(claims)
    if not strict:
        if scopes is None:
            _refuse("missing_claim:scope")
        if "nonce" in claims:
            _refuse("nonce_present")
        if client_id is not None and client_id in audiences:
            _refuse("audience_is_client")
    granted = scopes or frozenset()
    if not rules.required_scopes <= granted:
        _refuse("missing_required_scope")

    tenant = None
    if rules.tenant_claim is not None:
        tenant = _required_string(claims, rules.tenant_claim)

    return Principal(
        subject=subject,
        issuer=issuer,
        client_id=client_id,
        scopes=granted,
        tenant=tenant,
        claims=claims,
        act=_actor_chain(claims),
        verified=True,
        authenticated_by="jwt",
        expires_at=exp,
    )
