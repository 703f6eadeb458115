"""``securemcp.auth.CustomVerifier``: your own verifier, served over real HTTP like securemcp's."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from auth_support import AUDIENCE, call_body, request_headers
from fastmcp.exceptions import ToolError

import securemcp
from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.auth import CustomVerifier
from securemcp.context import Principal
from securemcp.errors import ConfigurationError, InvalidCredential
from securemcp.testing import connect, connect_http, serve_http

ISSUER = "https://keys.example.test"

#: api key -> (owner, the resource it was issued for, scopes)
KEYS = {
    "key-alice-0123456789": ("alice", AUDIENCE, frozenset({"notes:read"})),
    "key-bob-for-elsewhere": ("bob", "https://other.example.test/mcp", frozenset({"notes:read"})),
}


class ApiKeyVerifier(CustomVerifier):
    async def authenticate(self, token: str) -> Principal:
        record = KEYS.get(token)
        if record is None:
            raise InvalidCredential(reason="unknown_key")
        owner, resource, scopes = record
        if resource not in self.audiences:
            raise InvalidCredential(reason="audience_mismatch")
        return Principal(
            subject=owner, issuer=self.issuers[0], scopes=scopes, authenticated_by="api_key"
        )


def build(tmp_path: Path) -> tuple[FastMCP, Path]:
    audit_dir = tmp_path / "audit"
    server = FastMCP(
        "notes",
        auth=ApiKeyVerifier(audience=AUDIENCE, issuer=ISSUER),
        audit=AuditLog(audit_dir),
    )

    @server.tool(scopes=["notes:read"])
    def whoami() -> str:
        context = securemcp.current()
        return f"{context.principal.subject} via {context.principal.authenticated_by}"

    return server, audit_dir


@pytest.mark.http
async def test_custom_verifier_serves_http_and_refuses_other_resources(tmp_path: Path) -> None:
    server, audit_dir = build(tmp_path)
    async with serve_http(server) as url:
        async with connect_http(url, "key-alice-0123456789") as client:
            result = await client.call_tool("whoami", {})
        assert result.data == "alice via api_key"
        async with httpx.AsyncClient() as raw:
            for token in ("key-bob-for-elsewhere", "key-nobody"):
                response = await raw.post(url, headers=request_headers(token), content=call_body())
                assert response.status_code == 401
                challenge = response.headers["www-authenticate"]
                assert 'error="invalid_token"' in challenge
                metadata_url = re.search(r'resource_metadata="([^"]+)"', challenge)
                assert metadata_url is not None
            # advertised under the canonical resource's host; served here on loopback
            path = httpx.URL(metadata_url.group(1)).path
            metadata = (await raw.get(str(httpx.URL(url).copy_with(path=path)))).json()
    assert metadata["resource"] == AUDIENCE
    assert metadata["authorization_servers"] == [ISSUER]
    records = list(iter_records(audit_dir))
    outcomes = [r for r in records if r["type"] == "outcome"]
    assert [r["identity"]["subject"] for r in outcomes] == ["alice"]
    reasons = {r["reason"].split(" ")[1] for r in records if r["type"] == "auth_failure"}
    assert reasons == {"audience_mismatch", "unknown_key"}


async def test_custom_verifier_in_memory(tmp_path: Path) -> None:
    server, _ = build(tmp_path)
    async with connect(server, "key-alice-0123456789") as client:
        assert (await client.call_tool("whoami", {})).data == "alice via api_key"
    async with connect(server, "key-bob-for-elsewhere") as client:
        with pytest.raises(ToolError, match="invalid_token"):
            await client.call_tool("whoami", {})


@pytest.mark.parametrize(
    ("audience", "issuer"),
    [
        ((), ISSUER),
        (AUDIENCE, ()),
        ("http://mcp.example.test/mcp", ISSUER),  # plain http off localhost
        (AUDIENCE, "keys.example.test"),
    ],
)
def test_audience_and_issuer_are_required_urls(audience: object, issuer: object) -> None:
    with pytest.raises(ConfigurationError):
        ApiKeyVerifier(audience=audience, issuer=issuer)  # type: ignore[arg-type]


def test_localhost_http_is_allowed_for_development() -> None:
    verifier = ApiKeyVerifier(audience="http://127.0.0.1:8000/mcp", issuer="http://localhost:9000")
    assert verifier.audiences == ("http://127.0.0.1:8000/mcp",)


class ExpiringKeyVerifier(CustomVerifier):
    """Issues alice's principal with whatever expiry the test gives it."""

    def __init__(self, expires_at: object) -> None:
        super().__init__(audience=AUDIENCE, issuer=ISSUER)
        self.expires_at = expires_at

    async def authenticate(self, token: str) -> Principal:
        return Principal(
            subject="alice",
            issuer=self.issuers[0],
            scopes={"notes:read"},
            expires_at=self.expires_at,  # type: ignore[arg-type]
        )


@pytest.mark.http
@pytest.mark.parametrize("expires_at", [float("nan"), float("inf"), float("-inf"), "2030", True])
async def test_a_principal_with_an_impossible_expiry_is_refused(
    tmp_path: Path, expires_at: object
) -> None:
    """NaN never compares as past (the credential would never expire) and infinity cannot
    become FastMCP's integer expiry (the HTTP request crashed with a 500): both are refused as
    a verifier fault, in memory and over HTTP, and the tool never runs."""
    ran: list[str] = []
    server = FastMCP(
        "notes", auth=ExpiringKeyVerifier(expires_at), audit=AuditLog(tmp_path / "audit")
    )

    @server.tool(scopes=["notes:read"])
    def whoami() -> str:
        ran.append("ran")
        return "alice"

    async with connect(server, "key-alice-0123456789") as client:
        with pytest.raises(ToolError, match="invalid_token"):
            await client.call_tool("whoami", {})
    async with serve_http(server) as url, httpx.AsyncClient() as raw:
        response = await raw.post(
            url, headers=request_headers("key-alice-0123456789"), content=call_body()
        )
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert ran == []
    reasons = [r["reason"] for r in iter_records(tmp_path / "audit") if r["type"] == "auth_failure"]
    assert reasons and all("verifier_error" in r for r in reasons)


def test_a_finite_expiry_is_kept() -> None:
    assert Principal("alice", ISSUER, expires_at=1_900_000_000).expires_at == 1_900_000_000
    assert Principal("alice", ISSUER, expires_at=1.5e9).expires_at == 1.5e9
