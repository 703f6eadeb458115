"""Identity for securemcp servers: verifiers that turn credentials into verified principals.

``JWTVerifier`` implements the RFC 9068 JWT access-token profile under the RFC 8725 rules and is
usable directly as a FastMCP ``auth=`` provider.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from securemcp.auth.base import IdentityVerifier

if TYPE_CHECKING:
    from securemcp.auth.jwt import JWTVerifier

__all__ = ["IdentityVerifier", "JWTVerifier"]


def __getattr__(name: str) -> Any:
    if name == "JWTVerifier":
        from securemcp.auth.jwt import JWTVerifier

        return JWTVerifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
