"""``ProtectedResource``: what a securemcp HTTP server advertises about itself (RFC 9728, RFC 6750).

The MCP authorization spec makes the server an OAuth protected resource: it serves RFC 9728
metadata at ``/.well-known/oauth-protected-resource{path}`` whose ``resource`` is **exactly** its
canonical URI (RFC 8707 §2; RFC 9728 §3.3), names at least one authorization server, and points
clients at that document from every ``WWW-Authenticate`` challenge (RFC 9728 §5.1).

Everything advertised comes from configuration, never from the request: ``Host``,
``X-Forwarded-Host`` and ``Forwarded`` cannot change a URL (RFC 9728 §7.3 impersonation). A
request from a configured trusted proxy may only *select* among the configured resource URIs (a
server reachable under several canonical names) by its ``X-Forwarded-Host``/``X-Forwarded-Proto``
or, with ``forwarded_headers="forwarded"``, by the ``host``/``proto`` of RFC 7239 ``Forwarded``.

Defaults: the canonical resource is the verifier's first audience, the authorization servers are
the verifier's issuers, ``scopes_supported`` is every scope declared on the server's components
(never ``offline_access``, MCP "Refresh Tokens"). Configure it with
``securemcp.FastMCP(..., protected_resource=ProtectedResource(...))``.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from securemcp.auth._env import is_production
from securemcp.auth._forwarded import FORWARDED_HEADER_MODES
from securemcp.errors import ConfigurationError

__all__ = ["WELL_KNOWN_PREFIX", "ProtectedResource", "ResolvedResource", "normalize_origin"]

#: RFC 9728 §3: the well-known suffix inserted between the host and the path of the resource.
WELL_KNOWN_PREFIX: Final = "/.well-known/oauth-protected-resource"
#: Default cap on a request body read to find the scopes a call needs.
DEFAULT_MAX_BODY_BYTES: Final = 1024 * 1024

_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


def normalize_origin(value: str) -> str | None:
    """``scheme://host[:port]`` in canonical form (lower case, default port dropped), or None."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_url(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{what} must be an absolute https:// URL, got {value!r}.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except ValueError:
        raise ConfigurationError(f"{what} {value!r} is not a valid URL.") from None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError(f"{what} {value!r} must be an absolute https:// URL.")
    if parts.fragment or parts.username or parts.password:
        raise ConfigurationError(f"{what} {value!r} must not have a fragment or credentials.")
    if parts.scheme == "http" and (is_production() or not _is_loopback(parts.hostname)):
        raise ConfigurationError(
            f"{what} {value!r} must be https:// (plain http is only accepted for a loopback host "
            "outside SECUREMCP_ENV=production)."
        )
    return value


def _strings(value: str | Iterable[str] | None, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = (value,) if isinstance(value, str) else tuple(value)
    if not all(isinstance(v, str) and v for v in items):
        raise ConfigurationError(f"{what} must be a list of non-empty strings.")
    return tuple(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class _Resource:
    """One canonical resource URI and the URLs derived from it."""

    uri: str
    origin: str
    path: str
    metadata_path: str
    metadata_url: str

    @classmethod
    def of(cls, uri: str) -> _Resource:
        parts = urlsplit(uri)
        origin = normalize_origin(uri)
        assert origin is not None  # checked by _check_url
        path = parts.path.rstrip("/")
        metadata_path = WELL_KNOWN_PREFIX + path
        query = f"?{parts.query}" if parts.query else ""
        return cls(uri, origin, path, metadata_path, f"{origin}{metadata_path}{query}")


class ProtectedResource:
    """This server as an OAuth protected resource: what it advertises and whom it trusts.

    Args:
        resource: the canonical resource URI(s) (RFC 8707), advertised exactly. Default: the
            verifier's audiences (the first is the canonical one).
        authorization_servers: issuer URLs clients may get tokens from. Default: the verifier's
            issuer(s). RFC 9728/MCP require at least one.
        scopes_supported: scopes advertised in the metadata. Default: every scope declared on the
            server's tools, resources and prompts, plus the verifier's required scopes.
        resource_name: human-readable name (default: the server's name).
        resource_documentation: URL of human-readable documentation.
        trusted_proxies: IP addresses or CIDR blocks of reverse proxies whose
            ``X-Forwarded-Host``/``X-Forwarded-Proto`` may select among the configured resource
            URIs, and whose ``X-Forwarded-For`` names the client for the per-address rate
            limit and refusal records (the rightmost address that is not a trusted proxy).
            Requests from anywhere else never influence an advertised URL or their address.
        forwarded_headers: which headers the trusted proxies write: ``"x-forwarded"``
            (``X-Forwarded-For``/``-Host``/``-Proto``, the default) or ``"forwarded"`` (RFC 7239
            ``Forwarded``: ``for=``, ``host=``, ``proto=``). Only that kind is read: a proxy
            passes the other through as the client sent it.
        allowed_origins: browser origins (``https://app.example.com``) allowed to call the MCP
            endpoint besides the resource's own origin; requests with any other ``Origin`` are
            refused with 403 (MCP transports: DNS rebinding). Requests without ``Origin`` (not
            from a browser) are unaffected.
        max_body_bytes: largest request body read to check a call's scopes before dispatch
            (larger bodies skip the early check; the in-process pipeline still enforces scopes).
        refusal_records_per_second: most ``auth_failure`` audit records that requests refused
            before any token was trusted (missing, forged, expired tokens) may add per second,
            across all clients. Within it, each client address (IPv6: each ``/64``) gets at
            most one record per reason per second; every record counts the refusals it stands
            for, so a flood shows in the log with its size without filling the disk.
    """

    def __init__(
        self,
        resource: str | Sequence[str] | None = None,
        *,
        authorization_servers: Sequence[str] | None = None,
        scopes_supported: Sequence[str] | None = None,
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        trusted_proxies: Sequence[str] = (),
        forwarded_headers: Literal["x-forwarded", "forwarded"] = "x-forwarded",
        allowed_origins: Sequence[str] = (),
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        refusal_records_per_second: int = 100,
    ) -> None:
        resources = _strings(resource, "resource")
        self.resource = tuple(_check_url(r, "resource") for r in resources or ()) or None
        servers = _strings(authorization_servers, "authorization_servers")
        self.authorization_servers = (
            tuple(_check_url(s, "authorization_servers entry") for s in servers)
            if servers is not None
            else None
        )
        if self.authorization_servers == ():
            raise ConfigurationError(
                "authorization_servers= must name at least one authorization server (RFC 9728 "
                "§2; MCP requires it), e.g. ['https://login.example.com']."
            )
        self.scopes_supported = _strings(scopes_supported, "scopes_supported")
        self.resource_name = resource_name
        self.resource_documentation = (
            _check_url(resource_documentation, "resource_documentation")
            if resource_documentation is not None
            else None
        )
        proxies = _strings(trusted_proxies, "trusted_proxies") or ()
        try:
            self.trusted_proxies = tuple(ipaddress.ip_network(p, strict=False) for p in proxies)
        except ValueError:
            raise ConfigurationError(
                f"trusted_proxies must be IP addresses or CIDR blocks, got {list(proxies)!r}."
            ) from None
        if forwarded_headers not in FORWARDED_HEADER_MODES:
            raise ConfigurationError(
                f"forwarded_headers must be 'x-forwarded' (X-Forwarded-For/-Host/-Proto) or "
                f"'forwarded' (RFC 7239 Forwarded), whichever your trusted proxies write; got "
                f"{forwarded_headers!r}. Only one is read: a proxy passes the other through as "
                "the client sent it."
            )
        self.forwarded_headers: Literal["x-forwarded", "forwarded"] = forwarded_headers
        origins: list[str] = []
        for value in _strings(allowed_origins, "allowed_origins") or ():
            origin = normalize_origin(value)
            extra = urlsplit(value)
            if origin is None or extra.path not in ("", "/") or extra.query or extra.fragment:
                raise ConfigurationError(
                    f"allowed_origins entry {value!r} is not an origin: use "
                    "'scheme://host[:port]', e.g. 'https://app.example.com' (no '*', no path)."
                )
            origins.append(origin)
        self.allowed_origins = tuple(origins)
        if not isinstance(max_body_bytes, int) or not 1024 <= max_body_bytes <= 64 * 1024 * 1024:
            raise ConfigurationError("max_body_bytes must be between 1024 and 67108864.")
        self.max_body_bytes = max_body_bytes
        if (
            not isinstance(refusal_records_per_second, int)
            or isinstance(refusal_records_per_second, bool)
            or not 1 <= refusal_records_per_second <= 100_000
        ):
            raise ConfigurationError("refusal_records_per_second must be between 1 and 100000.")
        self.refusal_records_per_second = refusal_records_per_second

    def __repr__(self) -> str:
        return (
            f"ProtectedResource(resource={self.resource!r}, "
            f"authorization_servers={self.authorization_servers!r})"
        )

    def resolve(
        self, verifier: Any, *, server_name: str | None, mcp_path: str | None
    ) -> ResolvedResource | None:
        """This configuration completed from ``verifier``; ``None`` if no resource is known.

        Raises:
            ConfigurationError: a resource is known but no authorization server is.
        """
        resources = self.resource
        if resources is None:
            audiences = getattr(verifier, "audiences", None)
            if not audiences:
                return None
            resources = tuple(_check_url(a, "the verifier's audience") for a in audiences)
        servers = self.authorization_servers
        if servers is None:
            issuers = tuple(getattr(verifier, "issuers", ()) or ())
            if not issuers:
                raise ConfigurationError(
                    "Cannot advertise RFC 9728 protected resource metadata: the verifier names no "
                    "issuer. Pass protected_resource=ProtectedResource(authorization_servers="
                    "['https://login.example.com']) (or issuer= on the verifier)."
                )
            servers = issuers
        required = tuple(getattr(verifier, "required_scopes", None) or ())
        return ResolvedResource(
            resources=tuple(_Resource.of(r) for r in resources),
            authorization_servers=servers,
            scopes_supported=self.scopes_supported,
            required_scopes=required,
            resource_name=self.resource_name or server_name,
            resource_documentation=self.resource_documentation,
            mcp_path=(mcp_path or "").rstrip("/") or None,
        )


@dataclass(frozen=True, slots=True)
class ResolvedResource:
    """A :class:`ProtectedResource` completed from the server's verifier (see ``resolve``)."""

    resources: tuple[_Resource, ...]
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] | None
    required_scopes: tuple[str, ...]
    resource_name: str | None
    resource_documentation: str | None
    mcp_path: str | None

    @property
    def canonical(self) -> _Resource:
        """The canonical resource (the first configured)."""
        return self.resources[0]

    @property
    def origins(self) -> frozenset[str]:
        """Origins of every configured resource URI."""
        return frozenset(r.origin for r in self.resources)

    def metadata_paths(self) -> frozenset[str]:
        """Paths this server answers with RFC 9728 metadata (path-inserted forms and the root)."""
        paths = {r.metadata_path for r in self.resources} | {WELL_KNOWN_PREFIX}
        if self.mcp_path:
            paths.add(WELL_KNOWN_PREFIX + self.mcp_path)
        return frozenset(paths)

    def select(self, forwarded_origin: str | None, metadata_path: str | None = None) -> _Resource:
        """The resource to advertise: by metadata path, then by a trusted forwarded origin."""
        candidates = self.resources
        if metadata_path is not None:
            by_path = tuple(r for r in candidates if r.metadata_path == metadata_path)
            candidates = by_path or candidates
        if forwarded_origin is not None:
            for resource in candidates:
                if resource.origin == forwarded_origin:
                    return resource
        return candidates[0]

    def document(self, resource: _Resource, declared_scopes: Iterable[str]) -> bytes:
        """The RFC 9728 §2 metadata document for ``resource``."""
        if self.scopes_supported is not None:
            scopes = set(self.scopes_supported)
        else:
            scopes = set(declared_scopes) | set(self.required_scopes)
        scopes.discard("offline_access")
        document: dict[str, Any] = {
            "resource": resource.uri,
            "authorization_servers": list(self.authorization_servers),
            "scopes_supported": sorted(scopes),
            "bearer_methods_supported": ["header"],
        }
        if self.resource_name:
            document["resource_name"] = self.resource_name
        if self.resource_documentation:
            document["resource_documentation"] = self.resource_documentation
        return json.dumps(document, separators=(",", ":")).encode()
