"""Bounded, SSRF-guarded HTTP for discovery, JWKS and introspection (RFC 8414, RFC 7662).

Every outbound request the auth layer makes goes through this module, so URL and address policy
live in one place (MCP security best practices "Server-Side Request Forgery", RFC 9728 §7.7):

* :func:`check_fetch_url` (at configuration time and before every request): ``https`` only, no
  credentials in the URL, no ``file:``/``data:`` (CVE-2026-48522); plain ``http`` only to a
  loopback host and only with ``allow_insecure_loopback`` (development), never in production; a
  literal IP address must pass the address policy.
* :class:`FetchPolicy.check_address` (at connect time): private, loopback, link-local, shared,
  reserved and multicast addresses, and the cloud metadata endpoints (``169.254.169.254``,
  ``fd00:ec2::254``), are refused unless listed in ``allowed_networks`` (loopback also with
  ``allow_insecure_loopback``). The host name is resolved once, **every** address is checked and
  the connection goes to a checked address (DNS pinning: no rebinding between check and connect;
  TLS still verifies the certificate for the host name).
* Responses are capped in size and time, redirects are never followed, environment proxies are
  ignored, and bodies are parsed with the same strict JSON parser as tokens.

A caller-supplied ``httpx.AsyncClient`` (tests, custom transports) is used as given: the URL
policy still applies, the connect-time address check is that client's responsibility.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

import httpcore
import httpx

from securemcp.auth._compact import loads_strict
from securemcp.auth._env import is_production

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "FetchError",
    "FetchPolicy",
    "check_fetch_url",
    "fetch_json",
    "guarded_client",
    "post_form_json",
]

#: Largest metadata, JWKS or introspection document accepted.
DEFAULT_MAX_BYTES: Final = 256 * 1024
#: Total time allowed for one request, in seconds.
DEFAULT_TIMEOUT: Final = 5.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Cloud instance metadata endpoints: refused unless an allowed network names them.
METADATA_ADDRESSES: Final = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, ...
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
_LOOPBACK_NAMES: Final = frozenset({"localhost", "localhost.", "ip6-localhost"})


class FetchError(Exception):
    """A discovery, JWKS or introspection request failed (internal, never client-facing)."""


def _parse_networks(networks: Iterable[str]) -> tuple[IPNetwork, ...]:
    parsed: list[IPNetwork] = []
    for value in networks:
        try:
            parsed.append(ipaddress.ip_network(value, strict=False))
        except (TypeError, ValueError):
            raise ValueError(
                f"allowed_networks entry {value!r} is not an IP address or CIDR block, "
                "e.g. '10.20.0.0/16'"
            ) from None
    return tuple(parsed)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
    return address


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """Where the auth layer may send requests.

    Args:
        allow_insecure_loopback: allow ``http://`` to loopback hosts and connections to loopback
            addresses (local development and tests only; refused in production).
        allowed_networks: IP networks that may be reached although they are not public
            (e.g. an IdP on a private network: ``("10.20.0.0/16",)``).
    """

    allow_insecure_loopback: bool = False
    allowed_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def build(
        cls, *, allow_insecure_loopback: bool = False, allowed_networks: Iterable[str] = ()
    ) -> FetchPolicy:
        """A policy from configuration values (raises ``ValueError`` on a bad network)."""
        if isinstance(allowed_networks, str):
            allowed_networks = (allowed_networks,)
        return cls(bool(allow_insecure_loopback), _parse_networks(allowed_networks))

    def _explicitly_allowed(self, address: IPAddress) -> bool:
        return any(
            address.version == net.version and address in net for net in self.allowed_networks
        )

    def check_address(self, address: IPAddress) -> None:
        """Raise ``ValueError`` unless a request may be sent to ``address``."""
        if self._explicitly_allowed(address):
            return
        plain = _unmapped(address)
        if plain in METADATA_ADDRESSES or address in METADATA_ADDRESSES:
            raise ValueError(f"{address} is a cloud metadata address")
        if plain.is_loopback:
            if self.allow_insecure_loopback:
                return
            raise ValueError(
                f"{address} is a loopback address (allow_insecure_loopback=True allows it "
                "for local development)"
            )
        if not plain.is_global or plain.is_multicast or plain.is_reserved:
            raise ValueError(
                f"{address} is not a public address (private, link-local, shared or reserved); "
                "list its network in allowed_networks= if the server must reach it"
            )

    def is_loopback_host(self, host: str) -> bool:
        """Whether ``host`` names the loopback interface (by name or literal address)."""
        if host.lower() in _LOOPBACK_NAMES:
            return True
        try:
            return _unmapped(ipaddress.ip_address(host)).is_loopback
        except ValueError:
            return False


DEFAULT_POLICY: Final = FetchPolicy()


def check_fetch_url(url: str, policy: FetchPolicy = DEFAULT_POLICY) -> str:
    """Return ``url`` if the auth layer may fetch it, else raise ``ValueError`` saying why."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError for a bad port)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{url!r} is not a valid URL") from exc
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"{url!r} must be an https:// URL")
    if not host:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} must not contain credentials")
    if parts.fragment:
        raise ValueError(f"{url!r} must not have a fragment")
    if parts.scheme == "http":
        if is_production():
            raise ValueError(f"{url!r} is plain http, which SECUREMCP_ENV=production refuses")
        if not (policy.allow_insecure_loopback and policy.is_loopback_host(host)):
            raise ValueError(
                f"{url!r} must be an https:// URL (plain http is only allowed to a loopback "
                "host with allow_insecure_loopback=True, for local development)"
            )
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        return url
    policy.check_address(literal)
    return url


# --- connect-time guard: resolve once, check every address, connect to a checked one ----------


async def _resolve(host: str, port: int) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that only connects to addresses the policy allows."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            addresses = await _resolve(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host!r} did not resolve")
        for address in addresses:  # every address must pass, not just the first
            try:
                self._policy.check_address(address)
            except ValueError as exc:
                raise httpcore.ConnectError(f"refusing to connect to {host!r}: {exc}") from None
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(address), port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not used by the auth layer")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            network_backend=_GuardedBackend(policy),
        )


def guarded_client(policy: FetchPolicy, *, timeout: float = DEFAULT_TIMEOUT) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` that connects only where ``policy`` allows (no env proxies)."""
    return httpx.AsyncClient(
        transport=_GuardedTransport(policy),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )


# --- requests -----------------------------------------------------------------------------------


async def _read_capped(response: httpx.Response, url: str, max_bytes: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise FetchError(f"{url} response larger than {max_bytes} bytes")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > max_bytes:
            raise FetchError(f"{url} response larger than {max_bytes} bytes")
    return bytes(body)


async def _send(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    max_bytes: int,
    *,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None = None,
) -> bytes:
    request = client.build_request(method, url, headers=dict(headers), data=data)
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        if response.status_code != 200:
            raise FetchError(f"{method} {url} returned HTTP {response.status_code}")
        return await _read_capped(response, url, max_bytes)
    finally:
        await response.aclose()


async def _request_json(
    client: httpx.AsyncClient | None,
    method: str,
    url: str,
    *,
    policy: FetchPolicy,
    max_bytes: int,
    time_limit: float,
    headers: Mapping[str, str],
    data: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    try:
        check_fetch_url(url, policy)
    except ValueError as exc:
        raise FetchError(str(exc)) from exc
    try:
        async with asyncio.timeout(time_limit):
            if client is None:
                async with guarded_client(policy, timeout=time_limit) as own:
                    body = await _send(own, method, url, max_bytes, headers=headers, data=data)
            else:
                body = await _send(client, method, url, max_bytes, headers=headers, data=data)
    except TimeoutError as exc:
        raise FetchError(f"{method} {url} timed out after {time_limit} s") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"{method} {url} failed: {type(exc).__name__}: {exc}") from exc
    try:
        document = loads_strict(body)
    except ValueError as exc:
        raise FetchError(f"{method} {url} did not return strict JSON") from exc
    if not isinstance(document, dict):
        raise FetchError(f"{method} {url} did not return a JSON object")
    return document


async def fetch_json(
    client: httpx.AsyncClient | None,
    url: str,
    *,
    policy: FetchPolicy = DEFAULT_POLICY,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_limit: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """GET ``url`` and return its body as a JSON object, or raise :class:`FetchError`."""
    return await _request_json(
        client,
        "GET",
        url,
        policy=policy,
        max_bytes=max_bytes,
        time_limit=time_limit,
        headers={"Accept": "application/json"},
    )


async def post_form_json(
    client: httpx.AsyncClient | None,
    url: str,
    form: Mapping[str, str],
    *,
    headers: Mapping[str, str],
    policy: FetchPolicy = DEFAULT_POLICY,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_limit: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """POST ``form`` (``application/x-www-form-urlencoded``) and return the JSON object reply."""
    return await _request_json(
        client,
        "POST",
        url,
        policy=policy,
        max_bytes=max_bytes,
        time_limit=time_limit,
        headers={"Accept": "application/json", **headers},
        data=form,
    )
