"""RFC 7239 ``Forwarded`` from trusted proxies, as strictly as ``X-Forwarded-*``.

With ``ProtectedResource(forwarded_headers="forwarded")`` a trusted proxy's ``Forwarded`` names the
client (``for=``: per-address limit, refusal records) and selects among the configured resource
URIs (``host=``/``proto=``: RFC 9728 metadata and ``resource_metadata``). The unit tests attack
the parser and the walk with quoted strings, escapes, prepended, duplicated, malformed and
oversized elements; the HTTP tests run over real loopback sockets from a "proxy" address
(127.0.0.2: uvicorn itself never reads ``Forwarded`` and believes ``X-Forwarded-*`` only from
127.0.0.1, so any rewriting here is securemcp's). An attacker sending ``Forwarded`` directly, or
through a proxy that writes the other kind of header, gains nothing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from auth_support import AUDIENCE, call_body, challenge_params, request_headers
from test_client_address import NamedKeys

from securemcp import FastMCP
from securemcp.auth import ProtectedResource
from securemcp.auth._client_address import MAX_HOPS, client_address
from securemcp.auth._forwarded import elements_from_right, parse_element
from securemcp.errors import ConfigurationError
from securemcp.policy import RateLimit, RateLimiter
from securemcp.testing import serve_http

PROXIES = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8:ffff::/48"))
SECOND = "https://mcp.example.org/mcp"


def scope(peer: str | None, *forwarded: str, name: bytes = b"forwarded") -> dict[str, Any]:
    return {
        "client": (peer, 51000) if peer else None,
        "headers": [(name, value.encode("latin-1")) for value in forwarded],
    }


# --- the parser -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        (
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            {"for": "192.0.2.60", "proto": "http", "by": "203.0.113.43"},
        ),
        ('For="[2001:db8:cafe::17]:4711"', {"for": "[2001:db8:cafe::17]:4711"}),
        ('for="_gazonk"', {"for": "_gazonk"}),
        ('host="a;b,c";proto=https', {"host": "a;b,c", "proto": "https"}),
        (r'host="a\"b\\"', {"host": 'a"b\\'}),
        ("for=1.2.3.4 ; proto=https", {"for": "1.2.3.4", "proto": "https"}),
        ("for=1.2.3.4;", {"for": "1.2.3.4"}),
        (";", {}),
        ("for=1.2.3.4;for=5.6.7.8", None),  # a parameter twice in one element (RFC 7239 §4)
        ("for=1.2.3.4;FOR=5.6.7.8", None),
        ("for = 1.2.3.4", None),
        ("for=1.2.3.4 5.6.7.8", None),
        ("for", None),
        ('for="unterminated', None),
        ("for=[::1]", None),  # brackets are not token characters: IPv6 must be quoted
        ('for="a\x00b"', None),
    ],
)
def test_elements_are_parsed_by_the_rfc_7239_grammar(
    element: str, expected: dict[str, str] | None
) -> None:
    assert parse_element(element) == expected


def test_elements_are_split_from_the_right_outside_quoted_strings() -> None:
    values = [b'for=6.6.6.6, for="x, y;z"', b'for=10.0.0.1;host="h,1", , for=192.0.2.1']
    assert list(elements_from_right(values, 10)) == [
        "for=192.0.2.1",
        'for=10.0.0.1;host="h,1"',
        'for="x, y;z"',
        "for=6.6.6.6",
    ]
    assert list(elements_from_right(values, 2)) == ["for=192.0.2.1"]  # the empty one counts


def test_a_client_written_broken_quote_cannot_hide_the_proxys_element() -> None:
    """Read from the right, the proxy's element is parsed before the client's garbage."""
    values = [b'for="6.6.6.6, for=1.1.1.1', b"for=192.0.2.1"]
    assert list(elements_from_right(values, 10)) == ["for=192.0.2.1", "for=1.1.1.1", None]
    # the same bytes appended to the client's own field by the proxy
    values = [b'for="6.6.6.6, for=192.0.2.1']
    assert list(elements_from_right(values, 10)) == ["for=192.0.2.1", None]


# --- the client's address ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_scope", "proxies", "expected"),
    [
        (scope("203.0.113.9", "for=198.51.100.1"), (), "203.0.113.9"),  # no proxies configured
        (scope("203.0.113.9", "for=198.51.100.1"), PROXIES, "203.0.113.9"),  # spoof, direct
        (scope("10.1.2.3", "for=198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "for=6.6.6.6, for=198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "for=6.6.6.6", "for=198.51.100.1;proto=https"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "for=198.51.100.1, for=10.9.9.9"), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", 'for="198.51.100.1:4711"'), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", 'for="[2001:db8::7]:443"'), PROXIES, "2001:db8::7"),
        (scope("10.1.2.3", 'for="[::ffff:198.51.100.1]"'), PROXIES, "198.51.100.1"),
        (scope("10.1.2.3", "for=198.51.100.1, for=unknown"), PROXIES, "10.1.2.3"),
        (scope("10.1.2.3", "for=6.6.6.6, for=_hidden, for=10.0.0.9"), PROXIES, "10.0.0.9"),
        (scope("10.1.2.3", "for=6.6.6.6, proto=https"), PROXIES, "10.1.2.3"),  # no for=
        (scope("10.1.2.3", "for=6.6.6.6, for=1.1.1.1;for=10.0.0.9"), PROXIES, "10.1.2.3"),
        (scope("10.1.2.3", "for=6.6.6.6, for=198.51.100.1;by"), PROXIES, "10.1.2.3"),
        (scope("10.1.2.3"), PROXIES, "10.1.2.3"),  # a trusted proxy that sent nothing
        (scope("10.1.2.3", "for=10.4.4.4, for=10.5.5.5"), PROXIES, "10.4.4.4"),  # all internal
        (scope("2001:db8:ffff::1", "for=198.51.100.1"), PROXIES, "198.51.100.1"),
        (scope(None, "for=198.51.100.1"), PROXIES, None),
        # the other kind of header is never read in this mode
        (scope("10.1.2.3", "198.51.100.1", name=b"x-forwarded-for"), PROXIES, "10.1.2.3"),
    ],
)
def test_the_client_is_the_rightmost_untrusted_for(
    request_scope: dict[str, Any], proxies: Any, expected: str | None
) -> None:
    assert client_address(request_scope, proxies, "forwarded") == expected


def test_forwarded_is_never_read_in_the_default_mode() -> None:
    assert client_address(scope("10.1.2.3", "for=198.51.100.1"), PROXIES) == "10.1.2.3"


def test_a_huge_forwarded_header_costs_a_bounded_walk() -> None:
    wall = ", ".join(['for="10.0.0.1;x=,"'] * 50_000)
    assert client_address(scope("10.1.2.3", wall + ", for=198.51.100.1"), PROXIES, "forwarded") == (
        "198.51.100.1"
    )
    hops = [f"for=10.0.0.{i}" for i in range(1, 40)]
    found = client_address(
        scope("10.1.2.3", ", ".join(["for=6.6.6.6", *hops])), PROXIES, "forwarded"
    )
    assert found == f"10.0.0.{40 - MAX_HOPS}"


def test_the_mode_is_checked_at_configuration() -> None:
    with pytest.raises(ConfigurationError, match="forwarded_headers"):
        ProtectedResource(AUDIENCE, forwarded_headers="both")  # type: ignore[arg-type]


# --- over real loopback HTTP ------------------------------------------------------------------


def limited_server(trusted: list[str], mode: Any = "forwarded", *, limited: bool = True) -> FastMCP:
    limits = [RateLimit("per-ip", "2/minute", per="address")] if limited else []
    server = FastMCP(
        "behind-proxy",
        auth=NamedKeys(),
        audit=False,
        rate_limits=RateLimiter(limits),
        protected_resource=ProtectedResource(
            [AUDIENCE, SECOND],
            authorization_servers=["https://keys.example.com"],
            trusted_proxies=trusted,
            forwarded_headers=mode,
        ),
    )

    @server.tool
    def echo() -> str:  # pragma: no cover - only refused calls here
        return "ran"

    return server


@asynccontextmanager
async def through_proxy() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")  # the "proxy"
    async with httpx.AsyncClient(transport=transport) as proxy:
        yield proxy


async def statuses(url: str, count: int, **headers: str) -> list[int]:
    async with through_proxy() as proxy:
        found = []
        for _ in range(count):
            response = await proxy.post(
                url, headers=request_headers("forged", **headers), content=call_body()
            )
            found.append(response.status_code)
        return found


@pytest.mark.http
async def test_one_client_behind_a_forwarded_proxy_cannot_starve_the_others() -> None:
    async with serve_http(limited_server(["127.0.0.2/32"]), stateless_http=True) as url:
        assert await statuses(url, 4, Forwarded="for=198.51.100.1;proto=https") == [
            401,
            401,
            429,
            429,
        ]
        # another client through the same proxy has its own budget
        assert await statuses(url, 2, Forwarded='for="[2001:db8::7]:4711"') == [401, 401]
        # the flooding client cannot escape its budget by prepending, or by X-Forwarded-For
        assert await statuses(url, 1, Forwarded="for=198.51.100.9, for=198.51.100.1") == [429]
        assert await statuses(
            url, 1, Forwarded="for=198.51.100.1", X_Forwarded_For="198.51.100.3"
        ) == [429]


@pytest.mark.http
@pytest.mark.parametrize(
    ("trusted", "mode"),
    [([], "forwarded"), (["127.0.0.2/32"], "x-forwarded")],
    ids=["untrusted-peer", "proxy-writes-x-forwarded"],
)
async def test_forwarded_sent_by_the_client_buys_nothing(trusted: list[str], mode: str) -> None:
    """Directly, or through a proxy that writes only ``X-Forwarded-*`` (and so passes the
    client's ``Forwarded`` through): rotating ``for=`` gives no fresh budget."""
    async with serve_http(limited_server(trusted, mode), stateless_http=True) as url:
        assert await statuses(url, 2, Forwarded="for=198.51.100.1") == [401, 401]
        assert await statuses(url, 1, Forwarded="for=198.51.100.2") == [429]
        assert await statuses(url, 1, Forwarded='for="[2001:db8::9]"') == [429]


async def advertised(url: str, proxy: httpx.AsyncClient, **headers: str) -> tuple[str, str]:
    """(the metadata's ``resource``, the 401 challenge's ``resource_metadata``)."""
    metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    document = await proxy.get(metadata, headers=headers)
    refused = await proxy.post(url, headers=request_headers(**headers), content=call_body())
    assert refused.status_code == 401
    params = challenge_params(refused.headers["www-authenticate"])
    return document.json()["resource"], params["resource_metadata"]


SECOND_METADATA = "https://mcp.example.org/.well-known/oauth-protected-resource/mcp"
FIRST_METADATA = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"


@pytest.mark.http
async def test_a_trusted_forwarded_proxy_selects_among_configured_resources() -> None:
    async with (
        serve_http(limited_server(["127.0.0.2/32", "10.0.0.0/8"], limited=False)) as url,
        through_proxy() as proxy,
    ):
        chosen = await advertised(
            url, proxy, Forwarded='for=198.51.100.1;host="mcp.example.org:443";proto=https'
        )
        assert chosen == (SECOND, SECOND_METADATA)
        # the element of the proxy that received the request from the client, not one the
        # client wrote to its left
        assert await advertised(
            url, proxy, Forwarded="for=6.6.6.6;host=mcp.example.org, for=198.51.100.1"
        ) == (AUDIENCE, FIRST_METADATA)
        # two trusted proxies (an edge proxy on 10.1.1.1, then 127.0.0.2): the edge proxy's
        # element says what the client used, the inner one's what the edge proxy sent
        assert await advertised(
            url,
            proxy,
            Forwarded="for=198.51.100.1;host=mcp.example.org;proto=https, "
            "for=10.1.1.1;host=mcp.internal;proto=http",
        ) == (SECOND, SECOND_METADATA)
        assert await advertised(url, proxy, Forwarded="for=198.51.100.1;host=evil.example") == (
            AUDIENCE,
            FIRST_METADATA,
        )  # never an unconfigured URL
        assert await advertised(
            url, proxy, Forwarded="for=198.51.100.1;host=mcp.example.org;proto=http"
        ) == (AUDIENCE, FIRST_METADATA)  # another origin than the configured one
        # X-Forwarded-Host is not read when the proxies write Forwarded
        assert await advertised(url, proxy, X_Forwarded_Host="mcp.example.org") == (
            AUDIENCE,
            FIRST_METADATA,
        )


@pytest.mark.http
@pytest.mark.parametrize(
    ("trusted", "mode"),
    [([], "forwarded"), (["127.0.0.2/32"], "x-forwarded")],
    ids=["untrusted-peer", "proxy-writes-x-forwarded"],
)
async def test_a_client_cannot_select_a_resource_with_forwarded(
    trusted: list[str], mode: str
) -> None:
    async with (
        serve_http(limited_server(trusted, mode, limited=False)) as url,
        through_proxy() as proxy,
    ):
        assert await advertised(url, proxy, Forwarded="for=1.2.3.4;host=mcp.example.org") == (
            AUDIENCE,
            FIRST_METADATA,
        )
