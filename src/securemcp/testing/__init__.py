"""securemcp's testing kit: a fake identity provider and helpers to call a server as any user.

Everything here runs with no network by default, so CI needs no IdP, no secrets and no internet:

* :class:`FakeIdentityProvider` mints real signed tokens and serves JWKS / OIDC metadata
  in-process (or over loopback HTTP on request);
* :func:`connect` calls a server in memory as a token's principal;
* :func:`serve_http` / :func:`connect_http` do the same over real HTTP on loopback;
* the pytest plugin (registered automatically) provides fixtures built on these.

Never use any of it in production.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from securemcp.testing.client import connect as connect
    from securemcp.testing.http import connect_http as connect_http
    from securemcp.testing.http import serve_http as serve_http
    from securemcp.testing.idp import BAD_TOKEN_KINDS as BAD_TOKEN_KINDS
    from securemcp.testing.idp import FakeIdentityProvider as FakeIdentityProvider

_LAZY = {
    "FakeIdentityProvider": "securemcp.testing.idp",
    "BAD_TOKEN_KINDS": "securemcp.testing.idp",
    "connect": "securemcp.testing.client",
    "connect_http": "securemcp.testing.http",
    "serve_http": "securemcp.testing.http",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'securemcp.testing' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
