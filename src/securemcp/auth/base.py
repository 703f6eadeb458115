"""The identity interface every credential verifier implements.

securemcp's pipeline never trusts an identity it did not establish itself: whatever transport a
call arrives on, the raw credential is handed to an :class:`IdentityVerifier`, and only the
:class:`~securemcp.context.Principal` it returns is used (guarantee 2, "verified identity, never
asserted identity").
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from securemcp.context import Principal

__all__ = ["IdentityVerifier"]


@runtime_checkable
class IdentityVerifier(Protocol):
    """Turns a raw credential into a verified :class:`Principal`.

    Implementations must raise :class:`securemcp.errors.InvalidCredential` (with an internal
    ``reason``) for any credential they do not fully verify, and must never return a principal
    for an unverified credential. They should cache positive results by a hash of the credential
    until it expires, because the pipeline calls :meth:`authenticate` on every call.
    """

    async def authenticate(self, token: str) -> Principal:
        """Verify ``token`` and return the principal it proves."""
        ...
