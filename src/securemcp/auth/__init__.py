"""Identity for securemcp servers: verifiers that turn credentials into verified principals.

* :class:`JWTVerifier`: JWT access tokens under the RFC 9068 profile and RFC 8725 rules;
* :class:`IntrospectionVerifier`: opaque tokens through RFC 7662 token introspection;
* :class:`MultiIssuerVerifier`: several issuers at once, each with its own rules;
* :class:`CustomVerifier`: the base for your own verifier (implement ``authenticate``);
* :class:`ProtectedResource`: RFC 9728 metadata and RFC 6750 challenges over HTTP;
* :class:`StdioIdentity` and :func:`check_stdio_startup`: identity on stdio.

Every verifier is usable directly as a FastMCP ``auth=`` provider. Names are imported lazily so
``import securemcp`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from securemcp.auth.base import IdentityVerifier

if TYPE_CHECKING:
    from securemcp.auth.custom import CustomVerifier
    from securemcp.auth.introspection import IntrospectionVerifier
    from securemcp.auth.jwt import JWTVerifier
    from securemcp.auth.multi import MultiIssuerVerifier
    from securemcp.auth.resource import ProtectedResource
    from securemcp.auth.stdio import StdioIdentity, check_stdio_startup

__all__ = [
    "CustomVerifier",
    "IdentityVerifier",
    "IntrospectionVerifier",
    "JWTVerifier",
    "MultiIssuerVerifier",
    "ProtectedResource",
    "StdioIdentity",
    "check_stdio_startup",
]

_LAZY = {
    "CustomVerifier": "securemcp.auth.custom",
    "IntrospectionVerifier": "securemcp.auth.introspection",
    "JWTVerifier": "securemcp.auth.jwt",
    "MultiIssuerVerifier": "securemcp.auth.multi",
    "ProtectedResource": "securemcp.auth.resource",
    "StdioIdentity": "securemcp.auth.stdio",
    "check_stdio_startup": "securemcp.auth.stdio",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(module), name)
