"""Credential-shaped text, found and cut out of free text (DESIGN.md guarantee 5).

One definition of what a credential looks like in text, shared by the audit log's secrets guard
(which refuses records holding one) and by everything that writes free text a third party may
have shaped (a custom verifier's refusal reason, an exception message) to a log or a record:

* a JWT, JWS or JWE (base64url segments joined by dots, the first starting ``eyJ``, i.e. a JSON
  header; RFC 7519 / RFC 7515 compact serialization), which covers bearer JWTs and DPoP proofs;
* an ``Authorization``-style value, ``Bearer <token>`` / ``DPoP <token>`` (RFC 6750, RFC 9449),
  when what follows the scheme is token-like (16+ token characters including a digit), so prose
  such as "missing bearer token" is left alone.
"""

from __future__ import annotations

import re
import traceback
from typing import Final

__all__ = [
    "AUTH_VALUE",
    "AUTH_VALUE_BYTES",
    "JWT",
    "JWT_BYTES",
    "REDACTED",
    "redact_secrets",
    "redacted_exception",
]

#: What replaces a credential cut out of text.
REDACTED: Final = "[REDACTED]"

JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]*")
JWT_BYTES: Final = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_.-]*")
_SCHEME: Final = (
    r"(?i)(?<![a-z])(?:bearer|dpop)\s+(?=[A-Za-z0-9._~+/-]*[0-9])[A-Za-z0-9._~+/-]{16,}"
)
AUTH_VALUE: Final = re.compile(_SCHEME)

#: Below this length a known secret is cut out only where it stands alone (see redact_secrets).
_SHORT: Final = 8
#: Characters of a bearer token (RFC 6750 ``b64token``) and of a JWT.
_TOKEN_CHARS: Final = r"A-Za-z0-9._~+/=-"  # noqa: S105 (a character class)
#: The same credential inside JSON-encoded text, where the whitespace after the scheme may be
#: an escape (``Bearer\\t...`` is how a JSON encoder writes ``Bearer<TAB>...``; RFC 8259 §7).
AUTH_VALUE_BYTES: Final = re.compile(
    rb"(?i)(?<![a-z])(?:bearer|dpop)(?:\s|\\[tnrfb]|\\u00[0-9a-f]{2})+"
    rb"(?=[A-Za-z0-9._~+/-]*[0-9])[A-Za-z0-9._~+/-]{16,}"
)


def redact_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with JWT-shaped strings, ``Bearer``/``DPoP`` credentials and ``secrets`` cut out.

    ``secrets`` are exact values known to be secret (the credential being verified, say), cut
    out wherever they appear, shaped like a JWT or not. A value shorter than 8 characters is cut
    out where it stands as a token of its own (not inside a longer run of token characters), so
    a short credential is cut out of "unknown key k3y9" without cutting every word that
    contains its letters.
    """
    for secret in secrets:
        if not secret or secret not in text:
            continue
        if len(secret) >= _SHORT:
            text = text.replace(secret, REDACTED)
        else:
            text = re.sub(
                rf"(?<![{_TOKEN_CHARS}]){re.escape(secret)}(?![{_TOKEN_CHARS}])", REDACTED, text
            )
    if "eyJ" in text:
        text = JWT.sub(REDACTED, text)
    return AUTH_VALUE.sub(REDACTED, text)


def redacted_exception(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The exception's traceback and message as text, with credentials cut out."""
    return redact_secrets("".join(traceback.format_exception(exc)).rstrip(), secrets)
