"""Shared pieces for the auth tests: a counted server, a fake RFC 7662 endpoint, raw requests."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securemcp import FastMCP
from securemcp.auth import ProtectedResource

AUDIENCE = "https://mcp.example.test/mcp"
ACCEPT = "application/json, text/event-stream"


class Counter:
    """Counts tool, resource and prompt bodies that actually ran."""

    def __init__(self) -> None:
        self.runs = 0


#: Defects FakeIdentityProvider.bad_token crafts, with the reason each must be refused for.
BAD_KIND_REASONS = {
    "expired": "expired",
    "not_yet_valid": "nbf_in_future",
    "future_iat": "iat_in_future",
    "wrong_audience": "audience_mismatch",
    "no_aud": "missing_claim:aud",
    "wrong_issuer": "issuer_mismatch",
    "substring_issuer": "issuer_mismatch",
    "no_exp": "missing_claim:exp",
    "no_iat": "missing_claim:iat",
    "no_sub": "missing_claim:sub",
    "string_exp": "invalid_claim:exp",
    "alg_none": "alg_none",
    "alg_none_case": "alg_none",
    "bad_signature": "bad_signature",
    "psychic_signature": "bad_signature",
    "signed_by_stranger": "bad_signature",
    "unknown_kid": "unknown_kid",
    "alg_key_mismatch": "key_alg_mismatch",
    "hs256_with_public_key": "alg_not_allowed",
    "wrong_typ": "typ_mismatch",
    "jku_header": "header_forbidden:jku",
    "embedded_jwk": "header_forbidden:jwk",
    "crit_header": "crit_unsupported",
    "b64_header": "header_forbidden:b64",
    "nested_jwt": "nested_jwt",
    "duplicate_claim": "duplicate_key",
    "nan_exp": "non_finite_number",
    "jwe_shaped": "jwe_not_supported",
    "padded_base64": "malformed",
    "oversized": "too_large",
    "garbage": "malformed",
}


def counted_server(auth: Any, counter: Counter, *, name: str = "hostile", **server: Any) -> FastMCP:
    """A server whose every component body increments ``counter`` (``server``: more keywords)."""
    mcp = FastMCP(name, auth=auth, **server)

    @mcp.tool(scopes=["notes:read"])
    def read_note() -> str:
        counter.runs += 1
        return "note"

    @mcp.tool(scopes=["notes:read", "notes:write"])
    def write_note(text: str) -> str:
        counter.runs += 1
        return text

    @mcp.tool
    def ping() -> str:
        counter.runs += 1
        return "pong"

    @mcp.resource("notes://secret", scopes=["notes:admin"])
    def secret() -> str:
        counter.runs += 1
        return "secret"

    @mcp.prompt(scopes=["prompts:use"])
    def summarize(text: str) -> str:
        counter.runs += 1
        return f"summarize {text}"

    return mcp


def text_of(result: Any) -> str:
    """The text of a call result's first content block."""
    from mcp.types import TextContent

    content = result.content[0]
    assert isinstance(content, TextContent)
    return content.text


def set_protected_resource(server: FastMCP, resource: ProtectedResource) -> None:
    """What ``FastMCP(..., protected_resource=...)`` stores (the keyword is wired in server.py)."""
    server._securemcp_protected_resource = resource  # type: ignore[attr-defined]


def call_body(method: str = "tools/call", target: str = "read_note", **extra: Any) -> bytes:
    key = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}[method]
    params: dict[str, Any] = {key: target}
    if method != "resources/read":
        params["arguments"] = extra or {}
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()


def request_headers(token: str | None = None, **extra: str) -> list[tuple[str, str]]:
    headers = [
        ("Accept", ACCEPT),
        ("Content-Type", "application/json"),
        ("MCP-Protocol-Version", "2025-11-25"),
    ]
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    headers.extend((k.replace("_", "-"), v) for k, v in extra.items())
    return headers


def challenge_params(value: str) -> dict[str, str]:
    """Parse ``Bearer a="b", c="d"`` (quoted values without embedded quotes)."""
    assert value.startswith("Bearer")
    params: dict[str, str] = {}
    for part in value[len("Bearer") :].split('",'):
        part = part.strip().rstrip('"')
        if not part:
            continue
        name, _, raw = part.partition("=")
        params[name.strip()] = raw.strip().strip('"')
    return params


class FakeIntrospection:
    """A small RFC 7662 endpoint: opaque tokens mapped to responses, Basic client auth.

    Attributes:
        calls: introspection requests answered (any status).
        mode: ``"ok"``, ``"down"`` (HTTP 500), ``"slow"`` (sleeps), ``"garbage"`` (not JSON),
            ``"array"`` (JSON array), ``"huge"`` (over 64 KiB).
    """

    def __init__(self, client_id: str = "rs-client", client_secret: str = "rs-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.tokens: dict[str, dict[str, Any]] = {}
        self.calls = 0
        self.mode = "ok"
        self.seen_forms: list[dict[str, str]] = []
        self.app = Starlette(routes=[Route("/introspect", self._endpoint, methods=["POST"])])

    def issue(
        self,
        token: str,
        *,
        subject: str = "alice",
        scopes: str = "notes:read",
        audience: Any = AUDIENCE,
        expires_in: float = 300,
        **extra: Any,
    ) -> str:
        now = time.time()
        response: dict[str, Any] = {
            "active": True,
            "sub": subject,
            "scope": scopes,
            "aud": audience,
            "iss": "https://as.example.test",
            "client_id": "client-app",
            "exp": int(now + expires_in),
            "iat": int(now),
            "token_type": "Bearer",
        }
        response.update(extra)
        self.tokens[token] = {k: v for k, v in response.items() if v is not None}
        return token

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url="https://as.example.test"
        )

    async def _endpoint(self, request: Request) -> Response:
        self.calls += 1
        expected = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        if request.headers.get("authorization") != f"Basic {expected}":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        form = dict(await request.form())
        self.seen_forms.append({k: str(v) for k, v in form.items()})
        if self.mode == "down":
            return JSONResponse({"error": "server_error"}, status_code=500)
        if self.mode == "slow":
            await asyncio.sleep(5)
        if self.mode == "garbage":
            return Response(b"<html>oops</html>", media_type="text/html")
        if self.mode == "array":
            return JSONResponse([{"active": True}])
        if self.mode == "huge":
            return JSONResponse({"active": False, "pad": "x" * 70_000})
        answer: Mapping[str, Any] = self.tokens.get(str(form.get("token")), {"active": False})
        return JSONResponse(dict(answer))
