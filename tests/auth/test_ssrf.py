"""The SSRF guard on every outbound auth request (MCP security best practices; RFC 9728 §7.7)."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpcore
import pytest

from securemcp.auth import JWTVerifier
from securemcp.auth import _http as http_module
from securemcp.auth._http import FetchError, FetchPolicy, check_fetch_url, fetch_json
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import FakeIdentityProvider

AUDIENCE = "https://mcp.example.test/mcp"

REFUSED_ADDRESSES = [
    "127.0.0.1",
    "127.10.0.1",
    "::1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.10.10",  # link-local
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "fe80::1",
    "fc00::1",
    "100.64.0.1",  # shared address space (CGNAT)
    "100.100.100.200",  # Alibaba metadata
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "::ffff:127.0.0.1",  # IPv4-mapped loopback
    "::ffff:169.254.169.254",
    "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
    "::",
]


@pytest.mark.parametrize("address", REFUSED_ADDRESSES)
def test_non_public_addresses_refused(address: str) -> None:
    with pytest.raises(ValueError):
        FetchPolicy().check_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:4700::1111", "8.8.8.8"])
def test_public_addresses_allowed(address: str) -> None:
    FetchPolicy().check_address(ipaddress.ip_address(address))


def test_loopback_allowance_is_loopback_only() -> None:
    policy = FetchPolicy.build(allow_insecure_loopback=True)
    policy.check_address(ipaddress.ip_address("127.0.0.1"))
    policy.check_address(ipaddress.ip_address("::1"))
    for address in ("10.0.0.1", "169.254.169.254", "192.168.0.1"):
        with pytest.raises(ValueError):
            policy.check_address(ipaddress.ip_address(address))


def test_explicitly_allowed_networks() -> None:
    policy = FetchPolicy.build(allowed_networks=["10.20.0.0/16", "169.254.169.254/32"])
    policy.check_address(ipaddress.ip_address("10.20.1.1"))
    policy.check_address(ipaddress.ip_address("169.254.169.254"))
    with pytest.raises(ValueError):
        policy.check_address(ipaddress.ip_address("10.21.0.1"))
    with pytest.raises(ValueError, match="CIDR"):
        FetchPolicy.build(allowed_networks=["ten-net"])


@pytest.mark.parametrize(
    ("url", "policy", "message"),
    [
        ("http://idp.example.com/jwks", FetchPolicy(), "https://"),
        (
            "http://idp.example.com/jwks",
            FetchPolicy.build(allow_insecure_loopback=True),
            "https://",
        ),
        ("http://127.0.0.1:8080/jwks", FetchPolicy(), "allow_insecure_loopback"),
        ("https://127.0.0.1/jwks", FetchPolicy(), "loopback"),
        ("https://169.254.169.254/latest/meta-data", FetchPolicy(), "metadata"),
        ("https://[fd00:ec2::254]/", FetchPolicy(), "metadata"),
        ("https://10.0.0.1/jwks", FetchPolicy(), "public"),
        ("file:///etc/passwd", FetchPolicy(), "https://"),
        ("data:application/json,{}", FetchPolicy(), "https://"),
        ("gopher://idp.example.com/", FetchPolicy(), "https://"),
        ("https://u:p@idp.example.com/", FetchPolicy(), "credentials"),
        ("https:///nohost", FetchPolicy(), "no host"),
        ("https://idp.example.com:99999/", FetchPolicy(), "not a valid URL"),
        ("https://idp.example.com/jwks#x", FetchPolicy(), "fragment"),
    ],
)
def test_url_policy(url: str, policy: FetchPolicy, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_fetch_url(url, policy)


def test_url_policy_accepts() -> None:
    assert check_fetch_url("https://idp.example.com/jwks") == "https://idp.example.com/jwks"
    loopback = FetchPolicy.build(allow_insecure_loopback=True)
    for url in ("http://127.0.0.1:9000/jwks", "http://localhost:9000/jwks", "http://[::1]:1/x"):
        assert check_fetch_url(url, loopback) == url


def test_http_refused_in_production(production_mode: None) -> None:
    with pytest.raises(ValueError, match="production"):
        check_fetch_url(
            "http://127.0.0.1:9000/jwks", FetchPolicy.build(allow_insecure_loopback=True)
        )


def fake_dns(monkeypatch: pytest.MonkeyPatch, *answers: str) -> list[str]:
    asked: list[str] = []

    async def resolve(host: str, port: int) -> list[Any]:
        asked.append(host)
        return [ipaddress.ip_address(a) for a in answers]

    monkeypatch.setattr(http_module, "_resolve", resolve)
    return asked


@pytest.mark.parametrize(
    "answers",
    [("10.0.0.7",), ("93.184.215.14", "169.254.169.254"), ("127.0.0.1",), ("fd00:ec2::254",)],
)
async def test_dns_answers_are_checked_at_connect_time(
    monkeypatch: pytest.MonkeyPatch, answers: tuple[str, ...]
) -> None:
    asked = fake_dns(monkeypatch, *answers)
    with pytest.raises(FetchError, match="refusing to connect"):
        await fetch_json(None, "https://idp.rebind.example/jwks", time_limit=2)
    assert asked == ["idp.rebind.example"]


async def test_connection_goes_to_the_checked_address(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, "93.184.215.14")
    dialed: list[str] = []

    async def connect_tcp(self: Any, host: str, port: int, *args: Any) -> Any:
        dialed.append(host)
        raise httpcore.ConnectError("test stops here")

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)
    with pytest.raises(FetchError):
        await fetch_json(None, "https://idp.pinned.example/jwks", time_limit=2)
    assert dialed == ["93.184.215.14"]  # the IP that was checked, not a second DNS lookup


async def test_verifier_refuses_private_jwks_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, "192.168.0.10")
    idp = FakeIdentityProvider(audience=AUDIENCE)
    verifier = JWTVerifier(
        issuer=idp.issuer, audience=AUDIENCE, jwks_uri="https://jwks.internal.example/keys"
    )
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(idp.token("alice"))
    assert info.value.reason == "jwks_unavailable"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"jwks_uri": "https://169.254.169.254/keys"}, "metadata"),
        ({"jwks_uri": "https://10.0.0.1/keys"}, "public"),
        ({"jwks_uri": "http://127.0.0.1:9/keys"}, "allow_insecure_loopback"),
        ({"issuer": "http://127.0.0.1:9"}, "allow_insecure_loopback"),
        ({"allowed_networks": ["bogus"]}, "CIDR"),
    ],
)
def test_verifier_configuration(kwargs: dict[str, Any], message: str) -> None:
    config: dict[str, Any] = {"issuer": "https://as.example.test", "audience": AUDIENCE, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        JWTVerifier(**config)


def test_verifier_accepts_explicit_allowances() -> None:
    JWTVerifier(
        issuer="https://as.example.test",
        audience=AUDIENCE,
        jwks_uri="https://10.0.0.1/keys",
        allowed_networks=["10.0.0.0/8"],
    )
    JWTVerifier(issuer="http://127.0.0.1:9", audience=AUDIENCE, allow_insecure_loopback=True)


async def test_metadata_pointing_at_private_jwks_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Discovery metadata is attacker-influenced input too: its jwks_uri passes the same guard."""
    import httpx

    idp = FakeIdentityProvider("https://as.example.test", audience=AUDIENCE)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("openid-configuration"):
            return httpx.Response(
                200, json={"issuer": idp.issuer, "jwks_uri": "https://169.254.169.254/keys"}
            )
        return httpx.Response(404)

    verifier = JWTVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(idp.token("alice"))
    assert info.value.reason == "jwks_unavailable"
