"""securemcp.identity: reusing the HTTP guard's verification of a request's token.

The HTTP guard verifies the bearer token before FastMCP runs and leaves the result in the ASGI
scope, so the pipeline does not verify the same token again for the same request. The reuse
must never widen what a token can do: wrong verifier, other token, expired credential, or no
HTTP request all fall back to full verification.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from securemcp.context import Principal
from securemcp.identity import remember_verified, verified_principal


class _Verifier:
    async def authenticate(self, token: str) -> Principal:  # pragma: no cover - never called
        raise AssertionError("not used")


def _context(scope: dict[str, Any] | None) -> Any:
    request = SimpleNamespace(scope=scope) if scope is not None else None
    return SimpleNamespace(
        fastmcp_context=SimpleNamespace(request_context=SimpleNamespace(request=request))
    )


def _principal(expires_in: float | None = 300) -> Principal:
    expires_at = None if expires_in is None else time.time() + expires_in
    return Principal(
        subject="alice",
        issuer="https://idp.example.test",
        scopes=frozenset({"calc"}),
        expires_at=expires_at,
    )


def test_the_guards_verification_is_reused_for_the_same_token_and_verifier() -> None:
    verifier, scope, alice = _Verifier(), {}, _principal()
    remember_verified(scope, verifier, "token-a", alice)
    assert verified_principal(_context(scope), verifier, "token-a") is alice


def test_another_token_in_the_same_request_is_verified_afresh() -> None:
    verifier, scope = _Verifier(), {}
    remember_verified(scope, verifier, "token-a", _principal())
    assert verified_principal(_context(scope), verifier, "token-b") is None


def test_a_verification_by_another_verifier_is_not_trusted() -> None:
    scope: dict[str, Any] = {}
    remember_verified(scope, _Verifier(), "token-a", _principal())
    assert verified_principal(_context(scope), _Verifier(), "token-a") is None


def test_an_expired_credential_is_verified_afresh() -> None:
    verifier, scope = _Verifier(), {}
    remember_verified(scope, verifier, "token-a", _principal(expires_in=-1))
    assert verified_principal(_context(scope), verifier, "token-a") is None


def test_without_an_http_request_or_a_guard_result_nothing_is_reused() -> None:
    verifier = _Verifier()
    assert verified_principal(None, verifier, "token-a") is None
    assert verified_principal(_context(None), verifier, "token-a") is None
    assert verified_principal(_context({}), verifier, "token-a") is None


async def test_over_http_the_pipeline_uses_the_guards_verification() -> None:
    """One tools/call over HTTP: FastMCP's bearer backend and the guard verify the token; the
    pipeline (the call and the SDK's internal tools/list for Mcp-Param validation) reuses the
    guard's result, and still runs the call as the verified caller."""
    from securemcp import FastMCP, current
    from securemcp.testing import FakeIdentityProvider, connect_http, serve_http

    audience = "https://mcp.securemcp.test/mcp"
    idp = FakeIdentityProvider(audience=audience)
    verifier = idp.verifier(audience=audience)
    calls: list[str] = []
    real = verifier.authenticate

    async def counting(token: str) -> Principal:
        calls.append(token)
        return await real(token)

    verifier.authenticate = counting  # type: ignore[method-assign]
    mcp = FastMCP("reuse", auth=verifier, audit=False)

    @mcp.tool(scopes=["calc"])
    def whoami(n: int) -> str:
        return f"{current().principal.subject}:{n}"

    async with serve_http(mcp) as url, connect_http(url, idp.token("alice", scopes=["calc"])) as c:
        await c.call_tool("whoami", {"n": 1})
        calls.clear()
        result = await c.call_tool("whoami", {"n": 2})
    assert result.data == "alice:2"
    assert len(calls) == 2  # FastMCP's bearer backend and the guard; not the pipeline again
