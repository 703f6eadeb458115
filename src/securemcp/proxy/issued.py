"""Finding the tokens a token exchange issued in an upstream's answer, however they are encoded.

The proxy may hold thousands of exchanged tokens (one per caller, RFC 8693). Searching for each
one in every encoding, as is done for a configured secret, would cost one search per token per
answer. Instead every issued JWT (RFC 7519 compact serialization, RFC 7515 §7.1
``header.payload.signature``) is indexed by the first :data:`SIGNATURE_SLICE` characters of its
signature segment: 96 bits of a signature, distinct for every token.

An answer is then searched once, whatever the number of tokens:

* **verbatim** (also glued to other characters, ``xx<jwt>yy``): every ``.`` followed by
  :data:`SIGNATURE_SLICE` base64url characters is where a signature may start; those slices are
  looked up in the index, and a hit is confirmed by comparing the whole token at the position it
  implies;
* **encoded** (base64 / base64url at any alignment, with any whitespace inside, hex in either
  case, base64 inside base64): the same lookup in the decodings of the answer's text
  (:mod:`securemcp.proxy.encodings`), which the caller computes once for every credential.

The cost is linear in the size of the answer, independent of how many tokens were issued. An
upstream knows the signatures of the tokens it receives and could spray an answer with their
slices, each costing a Python-level confirmation: after :data:`MAX_NEAR_MISSES` failed
confirmations in one answer the answer is treated as holding a token (withheld, fail closed),
so the work stays bounded. Tokens the index cannot hold (not a JWT, or a signature shorter than
the slice) are listed by :meth:`IssuedTokens.unindexed`, to be searched for one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from itertools import chain
from typing import Final

from securemcp.proxy.encodings import decodings

__all__ = ["MAX_NEAR_MISSES", "SIGNATURE_SLICE", "IssuedTokens"]

#: Characters of a JWT's signature segment that index it (6 bits each).
SIGNATURE_SLICE: Final = 16
#: Signature slices of held tokens not followed by their token tolerated in one answer (over all
#: its views); one more and the answer counts as holding a token. A slice is 96 bits of a live
#: token's signature: text holding one without the token only comes from the upstream that was
#: sent the token.
MAX_NEAR_MISSES: Final = 64

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_SIGNATURE_START: Final = re.compile(rf"\.([A-Za-z0-9_-]{{{SIGNATURE_SLICE}}})")


class IssuedTokens:
    """The tokens a token exchange issued and still holds, indexed for leak searches.

    A token may be added more than once (the authorization server may return one token for two
    cache entries); it stays until it has been discarded as many times.
    """

    def __init__(self) -> None:
        self._count: dict[str, int] = {}
        #: Signature slice -> the indexed tokens with that slice, and where their signature starts.
        self._by_slice: dict[str, dict[str, int]] = {}
        self._unindexed: set[str] = set()

    def __len__(self) -> int:
        return len(self._count)

    def __contains__(self, token: object) -> bool:
        return token in self._count

    def add(self, token: str) -> None:
        count = self._count.get(token, 0)
        self._count[token] = count + 1
        if count:
            return
        if _JWT.fullmatch(token) and len(token) - token.rindex(".") > SIGNATURE_SLICE:
            at = token.rindex(".") + 1
            self._by_slice.setdefault(token[at : at + SIGNATURE_SLICE], {})[token] = at
        else:
            self._unindexed.add(token)

    def discard(self, token: str) -> None:
        count = self._count.get(token, 0)
        if count > 1:
            self._count[token] = count - 1
            return
        if not count:
            return
        del self._count[token]
        self._unindexed.discard(token)
        at = token.rindex(".") + 1 if "." in token else 0
        key = token[at : at + SIGNATURE_SLICE]
        tokens = self._by_slice.get(key)
        if tokens is not None:
            tokens.pop(token, None)
            if not tokens:
                del self._by_slice[key]

    def indexed(self, token: str) -> bool:
        """Whether ``token`` is held in the index (found by :meth:`found_in`)."""
        return token in self._count and token not in self._unindexed

    def unindexed(self) -> tuple[str, ...]:
        """The held tokens :meth:`found_in` does not look for (to be searched one by one)."""
        return tuple(self._unindexed)

    def found_in(self, views: Iterable[str], decoded: Iterable[str] | None = None) -> bool:
        """Whether an indexed token appears in any of ``views``, verbatim or encoded (or the
        views hold more than :data:`MAX_NEAR_MISSES` slices of one without it).

        ``decoded`` are the views' decodings (:func:`securemcp.proxy.encodings.decodings`),
        when the caller has them; else they are made here (and too many to make is a find:
        fail closed).
        """
        if not self._by_slice:
            return False
        views = list(views)
        if decoded is None:
            decoded = decodings(views)
            if decoded is None:
                return True
        near_misses = [0]
        return any(self._found_verbatim(text, near_misses) for text in chain(views, decoded))

    def _found_verbatim(self, text: str, near_misses: list[int]) -> bool:
        by_slice = self._by_slice
        hits = by_slice.keys() & set(_SIGNATURE_START.findall(text))
        for key in hits:
            tokens = by_slice[key]
            needle = "." + key
            position = text.find(needle)
            while position != -1:
                if self._confirm(text, position + 1, tokens):
                    return True
                near_misses[0] += 1
                if near_misses[0] > MAX_NEAR_MISSES:
                    return True  # fail closed: bounded work, whatever the upstream sends
                position = text.find(needle, position + 1)
        return False

    @staticmethod
    def _confirm(text: str, signature_at: int, tokens: dict[str, int]) -> bool:
        """Whether one of ``tokens`` (by where its signature starts) has its signature at
        ``signature_at`` in ``text``."""
        for token, at in tokens.items():
            start = signature_at - at
            if start >= 0 and text.startswith(token, start):
                return True
        return False
