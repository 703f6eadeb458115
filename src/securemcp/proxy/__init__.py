"""securemcp's secure proxy: third-party MCP servers behind securemcp's guarantees.

Teams run MCP servers they cannot modify: vendor servers over HTTP, ``npx`` packages over stdio.
``securemcp.proxy`` puts them behind the same per-call pipeline as a securemcp server (verified
identity, scopes, policy, approvals, rate limits, signed audit records, telemetry) with no change
to the upstream::

    from securemcp.proxy import create_proxy

    proxy = create_proxy("proxy.toml")          # upstreams, per-tool scopes/risk/policy
    proxy.run(transport="http")

or ``securemcp proxy lock proxy.toml`` then ``securemcp proxy serve proxy.toml``.

What it guarantees, beyond the securemcp pipeline:

* **No token passthrough**: the caller's token never reaches an upstream. Upstream credentials
  come from configuration (a secret from the environment or a file) or from RFC 8693 token
  exchange (:mod:`securemcp.proxy.credentials`).
* **Per-identity upstream sessions** (:mod:`securemcp.proxy.sessions`): upstream state never
  crosses users.
* **Deny by default**: upstream components the configuration does not list are hidden and
  refused (:mod:`securemcp.proxy.config`).
* **Tool pinning** (:mod:`securemcp.proxy.pinning`): clients see the definitions an operator
  reviewed and locked; a definition that changes upstream is blocked until re-locked, and
  definitions with hidden instructions are flagged (:mod:`securemcp.proxy.poisoning`).
* **Clear failures** (:mod:`securemcp.proxy.upstream`): down, slow and malformed upstreams give
  stable errors and are audited; the proxy keeps serving its other upstreams.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from securemcp.proxy.config import ProxyConfig, UpstreamConfig, load_config
    from securemcp.proxy.locking import lock_upstreams
    from securemcp.proxy.server import create_proxy

__all__ = ["ProxyConfig", "UpstreamConfig", "create_proxy", "load_config", "lock_upstreams"]

_EXPORTS = {
    "ProxyConfig": "securemcp.proxy.config",
    "UpstreamConfig": "securemcp.proxy.config",
    "load_config": "securemcp.proxy.config",
    "lock_upstreams": "securemcp.proxy.locking",
    "create_proxy": "securemcp.proxy.server",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'securemcp.proxy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
