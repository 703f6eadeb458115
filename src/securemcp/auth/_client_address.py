"""The client's address behind trusted reverse proxies, for per-address limits and refusal records.

Behind a reverse proxy (a load balancer, an ingress, a gateway) every request reaches the server
from the proxy's own address. Left at that, the pre-authentication limit per address
(``RateLimit(per="address")``) would throttle every client of the server together, one attacker
starving everyone else, and the throttled refusal records in the audit log would all name the
proxy. A proxy listed in ``ProtectedResource(trusted_proxies=...)`` is trusted to report the
address it received the request from, appending it to whatever the request already carried: in
``X-Forwarded-For`` (the de facto form, the default), or in RFC 7239 ``Forwarded: for=`` with
``ProtectedResource(forwarded_headers="forwarded")`` (:mod:`securemcp.auth._forwarded`). So the
client is the *rightmost* address in that list that is not itself a trusted proxy: everything to
its left was written by the client and is never believed. A request whose peer is not a trusted
proxy keeps its own address, whatever headers it sends.

An entry that is not an IP address (``unknown``, an obfuscated RFC 7239 identifier, garbage)
stops the walk at the last address known for certain. Only the configured header is read, never
both: a proxy that writes one passes the other through as the client sent it, so reading both
would let a client name itself.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from typing import Any

from securemcp.auth._forwarded import elements_from_right, parse_element

__all__ = ["client_address", "forwarded_walk", "trusted_peer"]

#: Hops examined from the right; more proxies than this in a chain is a misconfiguration.
MAX_HOPS = 16

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    """An address from an ``X-Forwarded-For`` entry (``1.2.3.4``, ``1.2.3.4:80``, ``[::1]:80``)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 address has several colons
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: IPAddress, proxies: Sequence[IPNetwork]) -> bool:
    return any(address.version == net.version and address in net for net in proxies)


@functools.lru_cache(maxsize=1024)
def _trusted_peer_address(peer: str, proxies: tuple[IPNetwork, ...]) -> IPAddress | None:
    address = _parse(peer)
    return address if address is not None and _trusted(address, proxies) else None


def trusted_peer(scope: Any, proxies: tuple[IPNetwork, ...]) -> IPAddress | None:
    """The request's peer address if it is one of ``proxies`` (``None`` otherwise).

    Checked per request by the address limit, so the answer is cached per peer address (a
    bounded cache: peers are the server's own connections, not header text).
    """
    peer = scope.get("client")
    if not peer or not proxies:
        return None
    return _trusted_peer_address(peer[0], proxies)


def client_address(
    scope: Any, proxies: tuple[IPNetwork, ...], headers: str = "x-forwarded"
) -> str | None:
    """The address to limit and record a request by (``None`` when the server knows none).

    ``headers`` names what the trusted proxies write: ``"x-forwarded"`` (``X-Forwarded-For``)
    or ``"forwarded"`` (RFC 7239 ``Forwarded: for=``); the other is never read.
    """
    peer = scope.get("client")
    if not peer:
        return None
    current = trusted_peer(scope, proxies)
    if current is None:
        return str(peer[0])
    if headers == "forwarded":
        return str(forwarded_walk(scope, current, proxies)[0])
    hops: list[bytes] = []
    for name, value in scope["headers"]:
        if name == b"x-forwarded-for":
            hops.extend(value.rsplit(b",", MAX_HOPS))  # several headers: one list, in order
    for hop in reversed(hops[-MAX_HOPS:]):
        forwarded = _parse(hop.decode("latin-1"))
        if forwarded is None:
            break  # not an address: keep the last one known for certain
        current = forwarded
        if not _trusted(current, proxies):
            break  # the client, as the nearest trusted proxy saw it
    return str(current)


def forwarded_walk(
    scope: Any, peer: IPAddress, proxies: tuple[IPNetwork, ...]
) -> tuple[IPAddress, dict[str, str] | None]:
    """Read RFC 7239 ``Forwarded`` from the right, from the trusted proxy ``peer`` on.

    Returns the client's address (the last one known for certain) and the parameters of the
    element the client-facing trusted proxy wrote (``None`` if there is none): see
    :mod:`securemcp.auth._forwarded`.
    """
    values = [value for name, value in scope["headers"] if name == b"forwarded"]
    current = peer
    facing: dict[str, str] | None = None
    if not values:
        return current, facing
    for element in elements_from_right(values, MAX_HOPS):
        parameters = parse_element(element) if element is not None else None
        if parameters is None:
            break  # malformed: keep what the elements to its right said
        facing = parameters  # written by ``current``, a trusted proxy
        forwarded = _parse(parameters.get("for", ""))
        if forwarded is None:
            break  # no address (unknown, obfuscated, absent): keep the last one known
        current = forwarded
        if not _trusted(current, proxies):
            break  # the client, as the nearest trusted proxy saw it
    return current, facing
