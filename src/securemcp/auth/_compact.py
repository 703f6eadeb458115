"""Strict parsing of JWS compact serialization (RFC 7515 §7.1, RFC 7519 §7.2, RFC 8725 §2.6/§3.7).

Everything here runs before any cryptography or network I/O, so it must be cheap and must refuse
anything ambiguous:

* the token is bounded in size, uses only the base64url alphabet plus ``.`` and has exactly three
  segments (five segments is a JWE, refused rather than misread: RFC 8725bis, CVE-2023-51774);
* each segment is *canonical* unpadded base64url (RFC 7515 §2): no padding, no ``+``/``/``, no
  non-zero trailing bits, so one token has exactly one encoding;
* header and payload are UTF-8 JSON objects parsed with duplicate member names refused
  (RFC 7515 §4, RFC 7519 §4), the non-standard literals ``NaN``/``Infinity`` refused, numbers that
  overflow to infinity refused, lone surrogates refused and nesting depth bounded.

Failures raise :class:`~securemcp.errors.InvalidCredential` with a short, stable ``reason``.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from securemcp.errors import InvalidCredential

__all__ = ["CompactJWS", "b64url_decode", "b64url_encode", "loads_strict", "parse_compact"]

#: Maximum nesting of JSON arrays/objects in a header, payload or JWKS document.
MAX_JSON_DEPTH: Final = 32

_TOKEN_CHARSET: Final = re.compile(r"[A-Za-z0-9_\-.]+")
_B64URL: Final = re.compile(r"[A-Za-z0-9_\-]*")


class _StrictJSONError(ValueError):
    """Internal: carries the refusal reason out of the JSON decoder hooks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _refuse(reason: str) -> NoReturn:
    raise InvalidCredential(reason=reason)


def b64url_encode(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 §2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(segment: str) -> bytes:
    """Decode canonical unpadded base64url, or raise ``ValueError``.

    Refuses padding, characters outside the URL-safe alphabet, impossible lengths and non-zero
    trailing bits (which would let several strings decode to the same bytes).
    """
    if _B64URL.fullmatch(segment) is None or len(segment) % 4 == 1:
        raise ValueError("not canonical base64url")
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not canonical base64url") from exc
    if b64url_encode(data) != segment:
        raise ValueError("not canonical base64url")
    return data


def _pairs_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _StrictJSONError("duplicate_key")
        result[key] = value
    return result


def _no_constants(literal: str) -> NoReturn:
    raise _StrictJSONError("non_finite_number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _StrictJSONError("non_finite_number")
    return value


def _check_tree(value: Any) -> None:
    """Bound nesting depth and refuse strings that are not valid Unicode (lone surrogates)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise _StrictJSONError("malformed") from None
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise _StrictJSONError("too_deep")
            if isinstance(item, dict):
                stack.extend((k, depth + 1) for k in item)
                stack.extend((v, depth + 1) for v in item.values())
            else:
                stack.extend((v, depth + 1) for v in item)


def loads_strict(data: bytes) -> Any:
    """Parse UTF-8 JSON strictly, raising ``ValueError`` subclasses with a ``reason`` attribute.

    The reason is one of ``malformed``, ``duplicate_key``, ``non_finite_number`` or ``too_deep``.
    """
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_pairs_without_duplicates,
            parse_constant=_no_constants,
            parse_float=_finite_float,
        )
    except _StrictJSONError:
        raise
    except RecursionError:
        raise _StrictJSONError("too_deep") from None
    except ValueError:  # UnicodeDecodeError, JSONDecodeError, int digit limits
        raise _StrictJSONError("malformed") from None
    _check_tree(value)
    return value


def _json_object(segment: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(segment)
    except ValueError:
        _refuse("malformed")
    try:
        value = loads_strict(raw)
    except _StrictJSONError as exc:
        _refuse(exc.reason)
    if not isinstance(value, dict):
        _refuse("malformed")
    return value


@dataclass(frozen=True, slots=True)
class CompactJWS:
    """A syntactically valid, *unverified* compact JWS."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


def parse_compact(token: str, *, max_bytes: int) -> CompactJWS:
    """Split and strictly decode a compact JWS. Nothing about it is trusted yet."""
    if len(token) > max_bytes:
        _refuse("too_large")
    if not token or _TOKEN_CHARSET.fullmatch(token) is None:
        _refuse("malformed")
    segments = token.split(".")
    if len(segments) == 5:
        _refuse("jwe_not_supported")
    if len(segments) != 3 or not segments[0] or not segments[1]:
        _refuse("malformed")  # an empty signature is decoded, and fails verification later
    header_b64, payload_b64, signature_b64 = segments
    header = _json_object(header_b64)
    payload = _json_object(payload_b64)
    try:
        signature = b64url_decode(signature_b64)
    except ValueError:
        _refuse("malformed")
    return CompactJWS(
        header=header,
        payload=payload,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
        signature=signature,
    )
