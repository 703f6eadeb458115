"""Start-up validation: misconfiguration is refused with a message that says how to fix it."""

from __future__ import annotations

import logging
import traceback
from typing import Any

import pytest
from auth_support import AUDIENCE

from securemcp import FastMCP
from securemcp.auth import CustomVerifier, JWTVerifier, StdioIdentity, check_stdio_startup
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import FakeIdentityProvider

ISSUER = "https://as.example.test"


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        ({"audience": None}, ["audience=", "RFC 8707", "e.g."]),
        ({"issuer": ""}, ["issuer=", "e.g."]),
        ({"issuer": None}, ["issuer="]),
        ({"leeway": 301}, ["leeway", "0 to 300"]),
        ({"algorithms": ["RS256", "HS256"]}, ["HS256", "private key"]),
        (
            {"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}},
            ["symmetric", "HMAC", "Remove it"],
        ),
        ({"jwks_uri": "http://idp.example.test/jwks"}, ["jwks_uri", "https://"]),
    ],
)
def test_refused_with_a_fix(kwargs: dict[str, Any], fragments: list[str]) -> None:
    config: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        JWTVerifier(**config)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_hmac_with_public_keys_refused(idp: FakeIdentityProvider) -> None:
    mixed = {"keys": [*idp.jwks["keys"], {"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]}
    with pytest.raises(ConfigurationError, match="HMAC"):
        JWTVerifier(issuer=ISSUER, audience=AUDIENCE, jwks=mixed)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"jwks_uri": "http://127.0.0.1:8080/jwks", "allow_insecure_loopback": True},
        {"issuer": "http://127.0.0.1:8080", "allow_insecure_loopback": True},
        {"jwks_uri": "http://idp.example.test/jwks"},
    ],
)
def test_http_jwks_refused_in_production(production_mode: None, kwargs: dict[str, Any]) -> None:
    config: dict[str, Any] = {"issuer": ISSUER, "audience": AUDIENCE, **kwargs}
    with pytest.raises(ConfigurationError) as info:
        JWTVerifier(**config)
    assert "production" in str(info.value) or "https" in str(info.value)


def test_loopback_http_fine_in_development() -> None:
    verifier = JWTVerifier(
        issuer=ISSUER,
        audience=AUDIENCE,
        jwks_uri="http://127.0.0.1:8080/jwks",
        allow_insecure_loopback=True,
    )
    assert verifier.jwks_cache.jwks_uri == "http://127.0.0.1:8080/jwks"


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def stdio_server(idp: FakeIdentityProvider, token: str | None, **identity: Any) -> FastMCP:
    server = FastMCP("stdio-check", auth=idp.verifier())
    server._securemcp_stdio = StdioIdentity(**identity)
    if token is not None:
        server._securemcp_stdio._token = token
    return server


async def test_valid_environment_token(
    idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    token = idp.token("alice")
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        await check_stdio_startup(stdio_server(idp, token))
    assert "credential expires" in caplog.text
    assert token not in caplog.text


@pytest.mark.parametrize("kind", ["expired", "wrong_audience", "alg_none", "garbage"])
async def test_invalid_environment_token_refuses_to_start(
    idp: FakeIdentityProvider, kind: str
) -> None:
    token = idp.bad_token(kind)
    with pytest.raises(ConfigurationError) as info:
        await check_stdio_startup(stdio_server(idp, token))
    message = str(info.value)
    assert "SECUREMCP_ACCESS_TOKEN" in message and "refuses to start" in message
    assert token not in message


async def test_missing_token_warns_in_development(
    idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="securemcp.auth"):
        await check_stdio_startup(stdio_server(idp, None))
    assert "Every call will be refused" in caplog.text


async def test_missing_token_refused_in_production(
    idp: FakeIdentityProvider, production_mode: None
) -> None:
    with pytest.raises(ConfigurationError, match="SECUREMCP_ENV=production"):
        await check_stdio_startup(stdio_server(idp, None))


async def test_meta_tokens_from_a_trusted_host(
    idp: FakeIdentityProvider, production_mode: None
) -> None:
    await check_stdio_startup(stdio_server(idp, None, allow_meta_tokens=True))


async def test_nothing_to_check_without_a_verifier() -> None:
    await check_stdio_startup(FastMCP("dev"))


# --- a custom verifier at stdio start-up: never the credential in the error (guarantee 5) -----

OPAQUE_KEY = "sk-live-0123456789abcdefSECRET"  # an opaque API key, as a CustomVerifier would take


class _StartupVerifier(CustomVerifier):
    """Refuses by quoting the key, fails with a plain exception quoting it, or accepts it."""

    def __init__(self, mode: str, expires_at: float | None = None) -> None:
        super().__init__(audience=AUDIENCE, issuer=ISSUER)
        self.mode = mode
        self.expires_at = expires_at

    async def authenticate(self, token: str) -> Principal:
        if self.mode == "reason":
            raise InvalidCredential(reason=f"key {token} is not on the allow list")
        if self.mode == "exception":
            raise ValueError(f"could not parse {token!r}")
        return Principal(subject="alice", issuer=ISSUER, client_id=None, expires_at=self.expires_at)


def custom_stdio_server(verifier: _StartupVerifier) -> FastMCP:
    server = FastMCP("stdio-check", auth=verifier, audit=False)
    server._securemcp_stdio = StdioIdentity()
    server._securemcp_stdio._token = OPAQUE_KEY
    return server


@pytest.mark.parametrize(
    ("mode", "reason"),
    [("reason", "key [REDACTED] is not on the allow list"), ("exception", "verifier_error")],
)
async def test_custom_verifier_refusal_never_quotes_the_credential(
    caplog: pytest.LogCaptureFixture, mode: str, reason: str
) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(ConfigurationError) as info:
        await check_stdio_startup(custom_stdio_server(_StartupVerifier(mode)))
    message = str(info.value)
    assert "refuses to start" in message and reason in message
    assert OPAQUE_KEY not in message
    assert OPAQUE_KEY not in caplog.text
    # Nothing chained that a traceback would print.
    assert info.value.__cause__ is None and info.value.__context__ is None
    assert OPAQUE_KEY not in "".join(traceback.format_exception(info.value))


@pytest.mark.parametrize("expires_at", [1e20, 2.0**64])
async def test_unrepresentable_expiry_does_not_crash_start_up(
    caplog: pytest.LogCaptureFixture, expires_at: float
) -> None:
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        await check_stdio_startup(custom_stdio_server(_StartupVerifier("ok", expires_at)))
    assert "not a representable time" in caplog.text


@pytest.mark.parametrize("expires_at", [float("inf"), float("nan")])
async def test_an_expiry_that_is_no_time_refuses_start_up(expires_at: float) -> None:
    """A principal cannot carry a NaN or infinite expiry (NaN would never expire): the
    verifier that builds one has failed, and the server does not start."""
    with pytest.raises(ConfigurationError, match="verifier_error"):
        await check_stdio_startup(custom_stdio_server(_StartupVerifier("ok", expires_at)))
