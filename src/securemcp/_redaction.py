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
AUTH_VALUE_BYTES: Final = re.compile(_SCHEME.encode())


def redact_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with JWT-shaped strings, ``Bearer``/``DPoP`` credentials and ``secrets`` cut out.

    ``secrets`` are exact values known to be secret (the credential being verified, say), cut
    out wherever they appear, shaped like a JWT or not; values shorter than 8 characters are
    ignored (they would cut out ordinary words).
    """
    for secret in secrets:
        if len(secret) >= 8 and secret in text:
            text = text.replace(secret, REDACTED)
    if "eyJ" in text:
        text = JWT.sub(REDACTED, text)
    return AUTH_VALUE.sub(REDACTED, text)


def redacted_exception(exc: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """The exception's traceback and message as text, with credentials cut out."""
    return redact_secrets("".join(traceback.format_exception(exc)).rstrip(), secrets)
