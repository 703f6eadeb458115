"""Component versions as a policy sees them (FastMCP component versioning).

FastMCP serves several versions of one tool, prompt, resource or resource template
(``@mcp.tool(version="2")``). A call may ask for a version (``_meta.fastmcp.version``: an exact
version or a ``gte``/``lt`` range) or for none, and FastMCP then runs the highest version (in
range). A policy decides on the version that *runs*, which the pipeline resolves before it decides
(:attr:`~securemcp.policy.request.CallRequest.version`); the text the caller sent is only
:attr:`~securemcp.policy.request.CallRequest.requested_version`.

Versions compare as FastMCP compares them when it resolves a call (``fastmcp.utilities.versions``:
PEP 440 where the text parses, a leading ``v`` ignored, else as plain strings, PEP 440 versions
first), so ``"2.0"`` and ``"v2"`` are version ``"2"``. This is the policy package's one use of
FastMCP's version ordering.

A :class:`VersionRange` is written like a rules file's ``versions`` entries and like
:func:`securemcp.pipeline.version_text` writes a requested range::

    "2"          exactly version 2
    ">=2"        2 or later
    "<3"         earlier than 3
    ">=1,<3"     from 1 up to, not including, 3
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from fastmcp.utilities.versions import VersionKey, parse_version_key

__all__ = ["VersionRange", "parse_range", "requested_range"]

_OPERATOR_START: Final = ("=", "<", ">", "!", "~")


@lru_cache(maxsize=1024)
def _key(version: str) -> VersionKey:
    """FastMCP's sort key of a version (parsed once: versions come from a bounded set)."""
    return parse_version_key(version)


@dataclass(frozen=True, slots=True)
class VersionRange:
    """An exact version (``eq``) or a half-open range ``[gte, lt)`` (see the module docstring)."""

    text: str
    eq: str | None = None
    gte: str | None = None
    lt: str | None = None

    def admits(self, version: str) -> bool:
        """Whether ``version`` (a component's registered version) is in the range, as
        FastMCP's ``VersionSpec.matches`` would say."""
        key = _key(version)
        if self.eq is not None:
            return key == _key(self.eq)
        if self.gte is not None and key < _key(self.gte):
            return False
        return self.lt is None or key < _key(self.lt)

    def overlaps(self, other: VersionRange | None) -> bool:
        """Whether some version could be in both ranges (``other=None``: any version).

        Errs towards ``True`` (a range between two strings that sort next to each other counts
        as overlapping): callers use it to stay strict when they cannot tell.
        """
        if other is None:
            return True
        if self.eq is not None:
            return other.admits(self.eq)
        if other.eq is not None:
            return self.admits(other.eq)
        low = _bound(self.gte, other.gte, higher=True)
        high = _bound(self.lt, other.lt, higher=False)
        return low is None or high is None or _key(low) < _key(high)


def _bound(a: str | None, b: str | None, *, higher: bool) -> str | None:
    """The tighter of two bounds (``None``: unbounded)."""
    if a is None or b is None:
        return b if a is None else a
    a_first = _key(b) < _key(a) if higher else _key(a) < _key(b)
    return a if a_first else b


def parse_range(text: str) -> VersionRange:
    """Read ``"2"``, ``">=2"``, ``"<3"`` or ``">=1,<3"``.

    Raises:
        ValueError: empty, an operator other than ``>=`` and ``<``, a bound given twice, or an
            exact version that starts like an operator (``"==2"``, ``"<=2"``).
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("a version must be a non-empty string")
    text = text.strip()
    if "," not in text and not text.startswith(_OPERATOR_START):
        return VersionRange(text, eq=text)
    gte: str | None = None
    lt: str | None = None
    for part in (p.strip() for p in text.split(",")):
        if part.startswith(">=") and gte is None and part[2:].strip():
            gte = part[2:].strip()
        elif part.startswith("<") and not part.startswith("<=") and lt is None and part[1:].strip():
            lt = part[1:].strip()
        else:
            raise ValueError(f'{text!r} is not a version ("2") or a range (">=1", "<3", ">=1,<3")')
    return VersionRange(text, gte=gte, lt=lt)


@lru_cache(maxsize=256)
def requested_range(text: str | None) -> VersionRange | None:
    """The versions a call asks for (:attr:`CallRequest.requested_version`), ``None`` for any.

    Lenient (it reads what a caller sent): text that is not a range is an exact version.
    """
    if text is None:
        return None
    try:
        return parse_range(text)
    except ValueError:
        return VersionRange(text, eq=text)
