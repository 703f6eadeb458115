"""RFC 8785 JSON Canonicalization Scheme (JCS) for the JSON that audit records use.

Every audit record is stored as the JCS form of its JSON object, so a record has exactly one byte
representation and its hash is reproducible by any RFC 8785 implementation:

* object members sorted by the UTF-16 code units of their names (RFC 8785 §3.2.3);
* no insignificant whitespace;
* strings with the minimal escaping of ECMAScript ``JSON.stringify`` (RFC 8785 §3.2.2.2):
  ``\\"``, ``\\\\``, ``\\b \\f \\n \\r \\t`` and ``\\u00xx`` (lower-case hex) for the other
  control characters, everything else as raw UTF-8;
* numbers as ECMAScript ``Number.prototype.toString`` formats them (RFC 8785 §3.2.2.3), with the
  I-JSON limits of RFC 7493: integers within ±(2**53 - 1), no NaN or infinity;
* input must be I-JSON: no duplicate member names, no lone surrogates.

:func:`dumps` is the complete canonicalizer. For speed, :func:`dumps_plain` uses the C encoder of
the standard library when the value is known to be *plain* (only strings, in-range integers,
booleans, null, lists and objects with ASCII member names), where its output is byte-identical to
JCS. :class:`CanonicalParser` parses a stored line and checks that it is canonical.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any, Final

__all__ = [
    "MAX_SAFE_INTEGER",
    "CanonicalParser",
    "NotCanonical",
    "dumps",
    "dumps_plain",
    "format_number",
    "is_plain",
    "loads",
    "plain_float",
]

#: Largest integer that I-JSON (RFC 7493 §2.2) and therefore JCS can represent exactly.
MAX_SAFE_INTEGER: Final = 2**53 - 1


class NotCanonical(ValueError):
    """A JSON text is valid but not in its RFC 8785 canonical form."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid I-JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member name {key!r}")
        out[key] = value
    return out


def _parse_int(token: str) -> int | float:
    # JSON numbers are IEEE-754 doubles in JCS: an integer token beyond ±(2**53-1) stands for
    # the nearest double (re-encoding then shows whether the token was canonical).
    value = int(token)
    if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return value
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"number {token[:20]}... is too large for I-JSON") from None


_STRICT_DECODER: Final = json.JSONDecoder(
    object_pairs_hook=_no_duplicates, parse_constant=_reject_constant, parse_int=_parse_int
)


def loads(text: str | bytes) -> Any:
    """Parse I-JSON strictly: duplicate member names and NaN/Infinity are errors."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    return _STRICT_DECODER.decode(text)


def format_number(value: float | int) -> str:
    """Serialize a number as ECMAScript ``Number.prototype.toString`` does (RFC 8785 §3.2.2.3)."""
    if isinstance(value, int):
        if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
            return str(value)
        raise ValueError(f"integer {value} is outside the I-JSON range (±2**53-1)")
    if not math.isfinite(value):
        raise ValueError(f"{value!r} is not valid I-JSON")
    if value == 0:
        return "0"
    if value < 0:
        return "-" + format_number(-value)
    # repr() yields the shortest digits that round-trip, as ECMAScript requires; only the layout
    # (where the decimal point goes, when to switch to exponent form) differs.
    mantissa, _, exponent = repr(value).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = (whole + fraction).lstrip("0")
    point = len(whole) if whole != "0" else -(len(fraction) - len(fraction.lstrip("0")))
    point += int(exponent or 0)
    digits = digits.rstrip("0")
    k, n = len(digits), point
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    head = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{head}e{sign}{abs(e)}"


def plain_float(value: float) -> bool:
    """``True`` when the C encoder writes ``value`` exactly as JCS does.

    That holds for finite, non-integral numbers that ``repr`` writes without an exponent (about
    1e-4 <= |x| < 1e16): there Python and ECMAScript both print the shortest round-trip digits
    in plain decimal notation. Durations and measurements are nearly always such numbers.
    """
    text = repr(value)
    return "e" not in text and not text.endswith(".0") and "n" not in text  # nan, inf


def repr_is_canonical(text: str, value: float) -> bool:
    """``True`` when ``text`` is both Python's ``repr`` of ``value`` and its JCS form."""
    return repr(value) == text and plain_float(value)


def _utf16_key(name: str) -> bytes:
    return name.encode("utf-16-be", "surrogatepass")


def _encode(value: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append(encode_basestring(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif kind is int or kind is float:
        out.append(format_number(value))
    elif isinstance(value, Mapping):
        names = list(value)
        for name in names:
            if type(name) is not str:
                raise TypeError(f"object member names must be strings, not {type(name).__name__}")
        ascii_only = all(name.isascii() for name in names)
        names.sort(key=None if ascii_only else _utf16_key)
        out.append("{")
        for index, name in enumerate(names):
            if index:
                out.append(",")
            out.append(encode_basestring(name))
            out.append(":")
            _encode(value[name], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            if index:
                out.append(",")
            _encode(item, out)
        out.append("]")
    elif isinstance(value, str):  # str subclasses (StrEnum, ...) by their value
        out.append(encode_basestring(value))
    elif isinstance(value, int):  # int subclasses (IntEnum, ...) by their value
        out.append(format_number(int(value)))
    elif isinstance(value, float):
        out.append(format_number(float(value)))
    else:
        raise TypeError(f"{type(value).__name__} is not a JSON value")


def is_plain(value: Any) -> bool:
    """``True`` when :func:`dumps_plain` may encode ``value`` (see its docstring)."""
    kind = type(value)
    if kind is str or value is None or kind is bool:
        return True
    if kind is int:
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER  # type: ignore[no-any-return]
    if kind is float:
        return plain_float(value)
    if kind is dict:
        return all(type(k) is str and k.isascii() and is_plain(v) for k, v in value.items())
    if kind is list or kind is tuple:
        return all(is_plain(item) for item in value)
    return False


def dumps(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``value`` (raises ``ValueError``/``TypeError``)."""
    if is_plain(value):
        return dumps_plain(value)
    out: list[str] = []
    _encode(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from exc


def _not_json(value: object) -> Any:
    raise TypeError(f"{type(value).__name__} is not a JSON value")


_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)

#: The standard library's C encoder configured like JCS (sorted keys, no whitespace, raw UTF-8,
#: no circular-reference markers). Created once: building it per call costs more than encoding.
_C_ENCODER: Callable[[Any, int], Sequence[str]] | None = (
    _make_c_encoder(None, _not_json, encode_basestring, None, ":", ",", True, False, False)
    if _make_c_encoder is not None
    else None
)


def dumps_plain(value: Any) -> bytes:
    """Canonical bytes of a *plain* value, using the C encoder when available.

    Plain means: only ``str``, ``int`` within ±(2**53-1), ``float`` whose ``repr`` is its JCS
    form (:func:`repr_is_canonical`), ``bool``, ``None``, ``list``/``tuple`` and ``dict`` with
    ASCII string keys (see :func:`is_plain` and :func:`securemcp.audit.guard.screen`). For such
    values the standard library's sorted, compact, ``ensure_ascii=False`` output *is* RFC 8785.
    """
    if _C_ENCODER is None:  # pragma: no cover - CPython always has the C accelerator
        out: list[str] = []
        _encode(value, out)
        return "".join(out).encode("utf-8")
    try:
        return "".join(_C_ENCODER(value, 0)).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("strings must be valid Unicode (no lone surrogates)") from exc


class CanonicalParser:
    """Parses one stored line and checks it is the canonical JCS form of what it encodes.

    The common case (an ASCII line with no fractional numbers) is checked with the C parser and
    the C encoder; anything else falls back to the strict parser and :func:`dumps`. Not
    thread-safe: use one parser per thread.
    """

    __slots__ = ("_scan", "_slow")

    def __init__(self) -> None:
        self._slow = False
        decoder = json.JSONDecoder(
            parse_float=self._float, parse_int=self._int, parse_constant=_reject_constant
        )
        self._scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]

    def _float(self, token: str) -> float:
        value = float(token)
        if not repr_is_canonical(token, value):
            self._slow = True
        return value

    def _int(self, token: str) -> int:
        if len(token) > 15:
            self._slow = True
        return int(token)

    def parse(self, line: bytes) -> Any:
        """Parse ``line`` (without its LF).

        Raises:
            ValueError: not UTF-8 or not I-JSON (malformed).
            NotCanonical: valid I-JSON, but not byte-identical to its canonical form.
        """
        if not line.isascii() or _C_ENCODER is None:
            return self._parse_slow(line)
        self._slow = False
        text = line.decode("ascii")
        try:
            value, end = self._scan(text, 0)
        except (StopIteration, ValueError):
            return self._parse_slow(line)  # the strict parser names the problem
        if self._slow or end != len(text):
            return self._parse_slow(line)
        if "".join(_C_ENCODER(value, 0)) != text:
            raise NotCanonical("the line is not in RFC 8785 canonical form")
        return value

    @staticmethod
    def _parse_slow(line: bytes) -> Any:
        value = loads(line)
        if dumps(value) != line:
            raise NotCanonical("the line is not in RFC 8785 canonical form")
        return value
