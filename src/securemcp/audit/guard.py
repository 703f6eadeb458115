"""The secrets guard: an audit record never holds a token, a proof, a header or a secret.

DESIGN.md guarantee 5. Before a record is written, :func:`screen` walks it and
:func:`check_encoded` scans its encoded bytes; either raises
:class:`~securemcp.audit.errors.SecretInRecord` when it finds

* a string shaped like a JWT, JWS or JWE (base64url segments joined by dots, the first starting
  ``eyJ``, i.e. a JSON header) — this covers bearer JWTs and DPoP proofs;
* an ``Authorization``-style value (``Bearer <token>`` / ``DPoP <token>``);
* a string value under a key that names a secret (``authorization``, ``token``, ``secret``,
  ``password``, ``cookie``, ``dpop``, ``api_key``, ``private_key``, ``credential``...), at any
  depth below it (``{"token": {"value": ...}}`` too), unless it is the redaction marker; keys
  ending in ``_sha256`` or ``_hash`` hold digests and are allowed.

:func:`redact` prepares caller data (tool arguments) for a record: it replaces such values with
:data:`REDACTED` instead of refusing them.

:func:`screen` also reports whether a record is *plain* JSON (see
:func:`securemcp.audit.jcs.dumps_plain`), since it visits every value anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from securemcp._redaction import AUTH_VALUE, AUTH_VALUE_BYTES, JWT, JWT_BYTES
from securemcp.audit.errors import SecretInRecord
from securemcp.audit.jcs import MAX_SAFE_INTEGER, plain_float

__all__ = [
    "DEFAULT_SENSITIVE_KEYS",
    "REDACTED",
    "check_encoded",
    "looks_like_secret",
    "redact",
    "screen",
    "sensitive_key",
]

#: What replaces a redacted value.
REDACTED: Final = "[REDACTED]"

#: Key fragments (case-insensitive, ``-`` read as ``_``) that name a secret.
DEFAULT_SENSITIVE_KEYS: Final = (
    "authorization",
    "token",
    "secret",
    "password",
    "passwd",
    "cookie",
    "dpop",
    "api_key",
    "apikey",
    "private_key",
    "credential",
)

_DIGEST_SUFFIXES: Final = ("_sha256", "_hash")
# What a credential looks like in text: one definition, shared with free-text redaction.
_JWT: Final = JWT
_JWT_BYTES: Final = JWT_BYTES
_AUTH_VALUE: Final = AUTH_VALUE
_AUTH_VALUE_BYTES: Final = AUTH_VALUE_BYTES

# Per member name: _SENSITIVE if it names a secret, _NOT_ASCII if it is not ASCII (the JCS
# fast path needs ASCII names). Records reuse a small set of names, so this stays small.
_SENSITIVE: Final = 1
_NOT_ASCII: Final = 2
_DIGEST: Final = 4  # names a digest (``*_sha256``, ``*_hash``): allowed at any depth
_name_flags: dict[str, int] = {}


def _normalise(key: str) -> str:
    return key.lower().replace("-", "_")


def sensitive_key(key: str, fragments: Iterable[str] = DEFAULT_SENSITIVE_KEYS) -> bool:
    """``True`` when ``key`` names a secret (see the module docstring)."""
    norm = _normalise(key)
    if norm.endswith(_DIGEST_SUFFIXES):
        return False
    return any(fragment in norm for fragment in fragments)


def _flags(name: Any) -> int:
    if type(name) is not str:
        raise TypeError("audit record member names must be strings")
    flags = (_SENSITIVE if sensitive_key(name) else 0) | (0 if name.isascii() else _NOT_ASCII)
    if _normalise(name).endswith(_DIGEST_SUFFIXES):
        flags |= _DIGEST
    if len(_name_flags) < 4096:
        _name_flags[name] = flags
    return flags


def looks_like_secret(value: str) -> bool:
    """``True`` for JWT-shaped strings and ``Bearer``/``DPoP`` credentials."""
    return bool(("eyJ" in value and _JWT.search(value)) or _AUTH_VALUE.search(value))


def screen(record: Mapping[str, Any]) -> bool:
    """Refuse a record with a secret under a sensitive key; report whether it is plain JSON.

    Raises:
        SecretInRecord: a string value sits under a key that names a secret.
        TypeError: a member name is not a string.
    """
    return _screen_object(record if type(record) is dict else dict(record))


def _screen_object(value: dict[Any, Any], inherited: int = 0) -> bool:
    """``inherited`` is ``_SENSITIVE`` below a key that names a secret: every string under it,
    at any depth and whatever its own key, is then refused."""
    plain = True
    known = _name_flags
    for name, item in value.items():
        flags = known.get(name)
        if flags is None:
            flags = _flags(name)
        if inherited and not flags & _DIGEST:
            flags |= inherited
        if flags & _NOT_ASCII:
            plain = False
        kind = type(item)
        if kind is str:
            if flags & _SENSITIVE and item and item != REDACTED:
                raise SecretInRecord(
                    f"refused an audit record: a value under {name!r} looks secret"
                )
        elif item is None or kind is bool:
            pass
        elif kind is dict:
            plain = _screen_object(item, flags & _SENSITIVE) and plain
        elif kind is list or kind is tuple:
            plain = _screen_items(item, name, flags) and plain
        else:
            plain = _screen_scalar(item, name, flags) and plain
    return plain


def _screen_items(items: Iterable[Any], name: str, flags: int) -> bool:
    plain = True
    for item in items:
        kind = type(item)
        if kind is str:
            if flags & _SENSITIVE and item and item != REDACTED:
                raise SecretInRecord(
                    f"refused an audit record: a value under {name!r} looks secret"
                )
        elif item is None or kind is bool:
            pass
        elif kind is dict:
            plain = _screen_object(item, flags & _SENSITIVE) and plain
        elif kind is list or kind is tuple:
            plain = _screen_items(item, name, flags) and plain
        else:
            plain = _screen_scalar(item, name, flags) and plain
    return plain


def _screen_scalar(item: Any, name: str, flags: int) -> bool:
    kind = type(item)
    if kind is int:
        return bool(-MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER)
    if kind is float:
        return plain_float(item)
    if isinstance(item, Mapping):
        _screen_object(dict(item), flags & _SENSITIVE)
    elif isinstance(item, str):
        _screen_items([str(item)], name, flags)
    elif isinstance(item, list | tuple):
        _screen_items(item, name, flags)
    return False  # subclasses, mappings...: encoded by the full canonicalizer


def check_encoded(line: bytes) -> None:
    """Refuse encoded record bytes that contain a JWT-shaped string or an auth header value.

    Raises:
        SecretInRecord: the record would leak a credential.
    """
    if b"eyJ" in line and _JWT_BYTES.search(line):
        raise SecretInRecord("refused an audit record: it contains a JWT-shaped string")
    # "<scheme> <token>" needs whitespace: a space, or an escape (canonical JSON escapes control
    # characters inside strings and has neither outside them), so most records skip the
    # regular expression.
    if b" " in line or b"\\" in line:
        lowered = line.lower()
        if (b"bearer" in lowered or b"dpop" in lowered) and _AUTH_VALUE_BYTES.search(line):
            raise SecretInRecord("refused an audit record: it contains an Authorization value")


def redact(value: Any, keys: Iterable[str] = DEFAULT_SENSITIVE_KEYS) -> Any:
    """A JSON-ready copy of ``value`` with secrets replaced by :data:`REDACTED`.

    Values under keys containing any of ``keys`` (case-insensitive) and strings that look like
    credentials are replaced; integers beyond I-JSON's ±(2**53-1) become strings; everything
    else is copied.
    """
    fragments = tuple(_normalise(k) for k in keys)
    return _redact(value, fragments)


def _redact(value: Any, fragments: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return REDACTED if looks_like_secret(value) else value
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for name, item in value.items():
            name = str(name)
            if item is not None and sensitive_key(name, fragments):
                out[name] = REDACTED
            else:
                out[name] = _redact(item, fragments)
        return out
    if isinstance(value, list | tuple):
        return [_redact(item, fragments) for item in value]
    if isinstance(value, int) and not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return str(value)  # beyond I-JSON: kept exactly, as text
    return value
