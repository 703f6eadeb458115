"""RFC 7239 ``Forwarded``: what trusted reverse proxies say about a request, read from the right.

Each proxy on the way appends one *forwarded-element* (RFC 7239 §4), e.g.
``for=198.51.100.17;proto=https;host=mcp.example.com``, to whatever the request already carried;
several header fields are one comma-separated list, in order (RFC 9110 §5.3). Everything left of
the element a trusted proxy appended was written by someone the server does not trust, possibly
the client itself, so it is read exactly as ``X-Forwarded-For`` is
(:mod:`securemcp.auth._client_address`): from the right, only while each element was written by a
trusted proxy. Element *k* (counting from the right, 0 first) was written by the request's peer
for *k* = 0 and by the ``for`` address of element *k - 1* otherwise; the walk ends at the first
``for`` that is not a trusted proxy (the client), or at an element that names no address
(``unknown``, an obfuscated ``_name``, none) or is malformed, keeping the last address known for
certain. The last element the walk reached was written by the trusted proxy that received the
request from the client (or from the unknown sender): its ``host`` and ``proto`` (§5.3, §5.4) are
the origin the client used.

Parsing is strict RFC 7239 ABNF for each element (``token=value`` pairs with a token or quoted
string as the value, a name at most once per element, §4) and is done right to left, so an
element a client wrote, however malformed (an unterminated quoted string, say), cannot change how
the elements to its right are read. At most ``MAX_HOPS`` elements are examined; finding an
element's start costs a C-level ``rfind`` per quote or comma, so a huge header costs a bounded
walk.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Final

__all__ = ["FORWARDED_HEADER_MODES", "elements_from_right", "parse_element"]

#: What ``ProtectedResource(forwarded_headers=...)`` accepts: which headers trusted proxies write.
FORWARDED_HEADER_MODES: Final = ("x-forwarded", "forwarded")

_TCHARS: Final = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"  # RFC 9110 §5.6.2 token
# RFC 9110 §5.6.4 quoted-string: qdtext (HTAB, SP, VCHAR except '"' and '\', obs-text) and
# quoted-pair ('\' followed by HTAB, SP, VCHAR or obs-text); header bytes are read as latin-1.
_QUOTED: Final = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PAIR: Final = re.compile(rf"[ \t]*(?:({_TCHARS})=({_TCHARS}|{_QUOTED}))?[ \t]*(?:;|\Z)")
_QUOTED_PAIR: Final = re.compile(r"\\(.)", re.S)


def _opening_quote(text: str, closing: int) -> int:
    """Index of the ``"`` that opens the quoted string ending at ``closing`` (-1 if none).

    Scanning leftwards, a ``"`` preceded by an odd run of backslashes is an escaped one (a
    quoted-pair), part of the string.
    """
    position = closing
    while True:
        position = text.rfind('"', 0, position)
        if position < 0:
            return -1
        backslashes = 0
        before = position - 1
        while before >= 0 and text[before] == "\\":
            backslashes += 1
            before -= 1
        if backslashes % 2 == 0:
            return position


def elements_from_right(values: Sequence[bytes], limit: int) -> Iterator[str | None]:
    """The raw elements of the ``Forwarded`` field values ``values``, rightmost first.

    At most ``limit`` elements are yielded (empty list elements count towards it and are not
    yielded, RFC 9110 §5.6.1). ``None`` stands for an element whose quoting is broken; nothing
    is yielded after it.
    """
    text = ", ".join(value.decode("latin-1") for value in values)
    end = len(text)
    examined = 0
    while end >= 0 and examined < limit:
        examined += 1
        scan = end
        while True:
            comma = text.rfind(",", 0, scan)
            quote = text.rfind('"', 0, scan)
            if quote <= comma:
                break
            opening = _opening_quote(text, quote)  # skip a quoted string (it may hold commas)
            if opening < 0:
                yield None
                return
            scan = opening
        element = text[comma + 1 : end].strip(" \t")
        if element:
            yield element
        end = comma  # -1 once the leftmost element is done


def parse_element(element: str) -> dict[str, str] | None:
    """An element's parameters (names lower-cased, quoted values unescaped), or ``None`` if it is
    not RFC 7239 syntax or names a parameter twice (§4)."""
    parameters: dict[str, str] = {}
    position = 0
    while position < len(element):
        match = _PAIR.match(element, position)
        if match is None or match.end() == position:
            return None
        name, value = match.group(1), match.group(2)
        if name is not None:
            name = name.lower()
            if name in parameters:
                return None
            if value.startswith('"'):
                value = _QUOTED_PAIR.sub(r"\1", value[1:-1])
            parameters[name] = value
        position = match.end()
    return parameters
