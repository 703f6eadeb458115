"""The decoded forms of an answer's text where an encoded credential would show, found cheaply.

An upstream that echoes a credential the proxy gave it may encode it first. The proxy searches
an answer's views (:mod:`securemcp.proxy.upstream`) verbatim, and also these decodings of them:

* **base64 / base64url** (RFC 4648 §4, §5) inside text, whatever interrupts it (line breaks as
  RFC 2045 §6.8 wraps it, spaces, tabs, JSON's ``\\/``): every character outside the base64
  alphabet is deleted and what is left is decoded at each of the four character offsets. Text
  encoded from position ``p`` of what is left is decoded where its encoder started by the
  offset ``p mod 4``, so four decodings cover every encoded text whatever its alignment (what
  sits between two texts decodes to noise);
* **hex** (RFC 4648 §8, base16), upper or lower case, also with whitespace or colons between
  bytes: every character that is not a hex digit deleted, the rest decoded at both offsets;
* **base64 inside base64** (double encoding): every run of at least :data:`MIN_RUN` base64
  characters (and whitespace) in those decodings, decoded once more the same way.

Everything is done with ``bytes.translate``, ``bytes.find`` and ``binascii`` (C loops); the
Python-level work is a few steps per answer and one per run found inside a decoding (rare:
decoded noise seldom holds 12 base64 characters in a row). The decodings are at most about six
times the size of the text (four for the first level, the second in practice less than two),
and :func:`decodings` gives up (``None``: the caller withholds the answer) beyond a budget,
:data:`MAX_DECODED`.

**Compressed** encodings (gzip, deflate, brotli, zip) are not decoded: text that holds a
credential may be compressed into anything, and decompressing what an upstream sends is
unbounded work; it is a documented limit (docs/proxy.md).
"""

from __future__ import annotations

import binascii
from collections.abc import Iterable
from typing import Final

__all__ = ["MAX_DECODED", "MIN_RUN", "decodings"]

#: Shortest run (characters, whitespace included) of a decoding decoded again: a credential
#: searched for is at least 8 characters long, 11 in base64.
MIN_RUN: Final = 12
#: Most characters of decoded text produced for one answer.
MAX_DECODED: Final = 64 * 1024 * 1024

_WHITESPACE: Final = b" \t\n\r\x0b\x0c"
_BASE64: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_"
_HEX: Final = b"0123456789ABCDEFabcdef"
_NOT_BASE64: Final = bytes(i for i in range(256) if i not in _BASE64)
_NOT_HEX: Final = bytes(i for i in range(256) if i not in _HEX)
#: Maps each base64 character and whitespace to ``a``, every other byte to a space.
_BASE64_RUNS: Final = bytes(
    ord("a") if i in _BASE64 + _WHITESPACE else ord(" ") for i in range(256)
)
_RUN_START: Final = b"a" * MIN_RUN
_TO_STANDARD_ALPHABET: Final = bytes.maketrans(b"-_", b"+/")


def _runs(data: bytes) -> list[bytes]:
    """Every run of at least :data:`MIN_RUN` base64 characters and whitespace in ``data``."""
    mapped = data.translate(_BASE64_RUNS)
    found = []
    start = mapped.find(_RUN_START)
    while start != -1:
        end = mapped.find(b" ", start + MIN_RUN)
        if end == -1:
            end = len(mapped)
        found.append(data[start:end])
        start = mapped.find(_RUN_START, end)
    return found


def _base64_decodings(data: bytes) -> list[bytes]:
    """``data``'s base64 characters decoded at each of the four offsets (the last quantum filled
    with ``A``, zero bits, as ``=`` padding would)."""
    kept = data.translate(_TO_STANDARD_ALPHABET, _NOT_BASE64)
    out = []
    for offset in range(min(4, len(kept))):
        part = kept[offset:]
        if len(part) % 4 == 1:  # not a whole byte: the last character is noise
            part = part[:-1]
        out.append(binascii.a2b_base64(part + b"A" * (-len(part) % 4)))
    return out


def _hex_decodings(data: bytes) -> list[bytes]:
    """``data``'s hex digits decoded at both offsets."""
    kept = data.translate(None, _NOT_HEX)
    return [
        binascii.unhexlify(kept[offset : offset + (len(kept) - offset) // 2 * 2])
        for offset in range(min(2, len(kept)))
    ]


def decodings(views: Iterable[str], budget: int | None = None) -> list[str] | None:
    """The base64, hex and double-base64 decodings of ``views`` as one latin-1 text (one
    character per byte), the decodings joined by NUL, which no credential holds (a secret with
    a control character is refused, RFC 6750 ``b64token`` and JWTs have none), so a match never
    spans two; ``None`` when they would exceed ``budget`` characters (default
    :data:`MAX_DECODED`)."""
    if budget is None:
        budget = MAX_DECODED
    # Views often repeat (text without %-escapes, say): each distinct one once. A non-ASCII
    # character becomes one byte outside every alphabet, deleted like any other.
    data = "\n".join(dict.fromkeys(views)).encode("ascii", "replace")
    first = _base64_decodings(data) + _hex_decodings(data)
    size = sum(len(d) for d in first)
    if size > budget:
        return None
    second = _base64_decodings(b"\n".join(run for d in first for run in _runs(d)))
    size += sum(len(d) for d in second)
    if size > budget:
        return None
    return [b"\0".join((*first, *second)).decode("latin-1")]
