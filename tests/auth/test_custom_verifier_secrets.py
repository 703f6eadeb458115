"""A custom verifier that quotes the token in its errors must not leak it anywhere.

securemcp accepts any object with ``authenticate(token)`` as the identity verifier. A careless one
puts the credential into its exception (``InvalidCredential(reason=f"bad {token}")`` or a plain
``ValueError(f"... {token}")``). Guarantee 5 says tokens never appear in audit records, logs or
error messages, whoever wrote the verifier: reasons and exception text are redacted where they
leave the verifier, and the call still fails closed with ``invalid_token``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx
import pytest
from auth_support import AUDIENCE, call_body, request_headers
from fastmcp.exceptions import ToolError

from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.auth._fastmcp import VerifierBase
from securemcp.context import Principal
from securemcp.errors import InvalidCredential
from securemcp.testing import FakeIdentityProvider, connect, serve_http

pytestmark = pytest.mark.http


class QuotingVerifier(VerifierBase):
    """Rejects every token, quoting it in a refusal reason or in an unexpected exception."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.audiences = (AUDIENCE,)
        self.issuers = ("https://idp.securemcp.test",)

    async def authenticate(self, token: str) -> Principal:
        if self.mode == "reason":
            raise InvalidCredential(reason=f"token {token} is not on the allow list")
        raise ValueError(f"could not parse {token!r}")


def _server(tmp_path: Path, mode: str) -> tuple[FastMCP, Path]:
    audit_dir = tmp_path / "audit"
    server = FastMCP("quoting", auth=QuotingVerifier(mode), audit=AuditLog(audit_dir))
    ran: list[str] = []

    @server.tool
    def echo() -> str:
        ran.append("ran")
        return "ran"

    server._test_ran = ran  # type: ignore[attr-defined]
    return server, audit_dir


def _assert_nowhere(secret: str, caplog: pytest.LogCaptureFixture, audit_dir: Path) -> None:
    logged = "\n".join(
        r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
        for r in caplog.records
    )
    assert secret not in logged
    assert secret not in json.dumps(list(iter_records(audit_dir)))
    # the refusal itself was audited, with the token cut out
    assert any(r["type"] == "auth_failure" for r in iter_records(audit_dir))


#: An opaque token (RFC 7662 style): not recognisable by its shape, only by its value.
OPAQUE = "opaque-0f9e8d7c6b5a4f3e2d1c"
#: A short API key: too short to cut out wherever its letters occur, still a credential.
SHORT = "k3y9"


def _token(kind: str) -> str:
    if kind == "jwt":
        return FakeIdentityProvider().token("alice")
    return OPAQUE if kind == "opaque" else SHORT


@pytest.mark.parametrize("mode", ["reason", "exception"])
@pytest.mark.parametrize("kind", ["jwt", "opaque", "short"])
async def test_in_memory_refusal_never_quotes_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server, audit_dir = _server(tmp_path, mode)
    token = _token(kind)
    async with connect(server, token) as client:
        with pytest.raises(ToolError, match="invalid_token") as refused:
            await client.call_tool("echo", {})
    assert token not in str(refused.value)
    assert server._test_ran == []  # type: ignore[attr-defined]
    _assert_nowhere(token, caplog, audit_dir)


@pytest.mark.parametrize("mode", ["reason", "exception"])
@pytest.mark.parametrize("kind", ["jwt", "opaque", "short"])
async def test_http_refusal_never_quotes_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str, kind: str
) -> None:
    caplog.set_level(logging.DEBUG)
    server, audit_dir = _server(tmp_path, mode)
    token = _token(kind)
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url, headers=request_headers(token), content=call_body(target="echo")
        )
    assert response.status_code == 401
    assert token not in response.text
    assert token not in json.dumps(dict(response.headers))
    assert server._test_ran == []  # type: ignore[attr-defined]
    _assert_nowhere(token, caplog, audit_dir)


class ForgingVerifier(QuotingVerifier):
    """Refuses every token with a reason that holds a line break and a forged log line."""

    async def authenticate(self, token: str) -> Principal:
        raise InvalidCredential(reason="no\nINFO securemcp.auth: bearer token accepted: admin")


async def test_a_refusal_reason_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """FastMCP's ``verify_token`` hook logs a refusal's reason escaped: a verifier's reason
    (third-party code, possibly quoting what the caller sent) holding a line break must not
    start a line of its own in the server log."""
    caplog.set_level(logging.DEBUG, logger="securemcp.auth")
    assert await ForgingVerifier("reason").verify_token("opaque-token-value") is None
    refused = [r.getMessage() for r in caplog.records if "bearer token refused" in r.getMessage()]
    assert refused, "the refusal was not logged"
    assert all("\n" not in message for message in refused)
