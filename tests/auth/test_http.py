"""The HTTP layer: RFC 9728 metadata, RFC 6750 challenges, header checks, Origin, step-up 403."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from auth_support import (
    AUDIENCE,
    Counter,
    call_body,
    challenge_params,
    counted_server,
    request_headers,
    set_protected_resource,
)

from securemcp import FastMCP
from securemcp.auth import ProtectedResource
from securemcp.auth.http import (
    HTTPGuard,
    _buffer,
    _call_target,
    _has_query_token,
    challenge,
    get_route_path,
)
from securemcp.errors import ConfigurationError
from securemcp.testing import FakeIdentityProvider, connect_http, serve_http

pytestmark = pytest.mark.http

METADATA_URL = "https://mcp.example.test/.well-known/oauth-protected-resource/mcp"


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


@asynccontextmanager
async def served(
    idp: FakeIdentityProvider, resource: ProtectedResource | None = None, **verifier: Any
) -> AsyncIterator[tuple[str, httpx.AsyncClient, Counter]]:
    counter = Counter()
    server = counted_server(idp.verifier(**verifier), counter)
    if resource is not None:
        set_protected_resource(server, resource)
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        yield url, client, counter


def base_of(url: str) -> str:
    return url.rsplit("/mcp", 1)[0]


# --- RFC 9728 metadata -------------------------------------------------------------------------


async def test_metadata_document(idp: FakeIdentityProvider) -> None:
    async with served(idp) as (url, client, _):
        response = await client.get(f"{base_of(url)}/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "resource": AUDIENCE,
        "authorization_servers": [idp.issuer],
        "scopes_supported": ["notes:admin", "notes:read", "notes:write", "prompts:use"],
        "bearer_methods_supported": ["header"],
        "resource_name": "hostile",
    }


async def test_metadata_root_form_and_head(idp: FakeIdentityProvider) -> None:
    async with served(idp) as (url, client, _):
        root = await client.get(f"{base_of(url)}/.well-known/oauth-protected-resource")
        head = await client.head(f"{base_of(url)}/.well-known/oauth-protected-resource/mcp")
        post = await client.post(f"{base_of(url)}/.well-known/oauth-protected-resource/mcp")
        other = await client.get(f"{base_of(url)}/.well-known/oauth-protected-resource/elsewhere")
    assert root.json()["resource"] == AUDIENCE
    assert head.status_code == 200 and head.content == b""
    assert post.status_code == 405
    assert other.status_code == 404


async def test_metadata_never_lists_offline_access(idp: FakeIdentityProvider) -> None:
    counter = Counter()
    server = counted_server(idp.verifier(), counter)

    @server.tool(scopes=["offline_access", "x:y"])
    def long_lived() -> str:
        return ""

    async with serve_http(server) as url, httpx.AsyncClient() as client:
        document = (await client.get(f"{base_of(url)}/.well-known/oauth-protected-resource")).json()
    assert "offline_access" not in document["scopes_supported"]
    assert "x:y" in document["scopes_supported"]


async def test_configured_metadata(idp: FakeIdentityProvider) -> None:
    resource = ProtectedResource(
        "https://api.example.test/tools/mcp",
        authorization_servers=["https://login.example.test"],
        scopes_supported=["a", "offline_access"],
        resource_name="Tools",
        resource_documentation="https://docs.example.test/tools",
    )
    async with served(idp, resource) as (url, client, _):
        by_resource_path = await client.get(
            f"{base_of(url)}/.well-known/oauth-protected-resource/tools/mcp"
        )
        by_served_path = await client.get(
            f"{base_of(url)}/.well-known/oauth-protected-resource/mcp"
        )
        refused = await client.post(url, headers=request_headers(), content=call_body())
    assert (
        by_resource_path.json()
        == by_served_path.json()
        == {
            "resource": "https://api.example.test/tools/mcp",
            "authorization_servers": ["https://login.example.test"],
            "scopes_supported": ["a"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Tools",
            "resource_documentation": "https://docs.example.test/tools",
        }
    )
    assert challenge_params(refused.headers["www-authenticate"]) == {
        "resource_metadata": "https://api.example.test/.well-known/oauth-protected-resource/tools/mcp"
    }


@pytest.mark.parametrize(
    "spoof",
    [
        {"Host": "evil.example"},
        {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
        {"Forwarded": "host=evil.example;proto=http"},
    ],
)
async def test_spoofed_host_never_changes_advertised_urls(
    idp: FakeIdentityProvider, spoof: dict[str, str]
) -> None:
    async with served(idp) as (url, client, _):
        document = await client.get(
            f"{base_of(url)}/.well-known/oauth-protected-resource/mcp", headers=spoof
        )
        refused = await client.post(url, headers={**spoof}, content=call_body())
    assert document.json()["resource"] == AUDIENCE
    assert challenge_params(refused.headers["www-authenticate"])["resource_metadata"] == (
        METADATA_URL
    )


async def test_trusted_proxy_selects_among_configured_resources(
    idp: FakeIdentityProvider,
) -> None:
    second = "https://mcp.example.org/mcp"
    resource = ProtectedResource(
        [AUDIENCE, second],
        authorization_servers=[idp.issuer],
        trusted_proxies=["127.0.0.1/32"],
    )
    async with served(idp, resource, audience=[AUDIENCE, second]) as (url, client, _):
        metadata = f"{base_of(url)}/.well-known/oauth-protected-resource/mcp"
        chosen = await client.get(metadata, headers={"X-Forwarded-Host": "mcp.example.org"})
        unknown = await client.get(metadata, headers={"X-Forwarded-Host": "evil.example"})
        challenged = await client.post(
            url, headers={"X-Forwarded-Host": "mcp.example.org"}, content=call_body()
        )
    assert chosen.json()["resource"] == second
    assert unknown.json()["resource"] == AUDIENCE  # never an unconfigured URL
    assert challenge_params(challenged.headers["www-authenticate"])["resource_metadata"] == (
        "https://mcp.example.org/.well-known/oauth-protected-resource/mcp"
    )


async def test_untrusted_client_cannot_select_resource(idp: FakeIdentityProvider) -> None:
    second = "https://mcp.example.org/mcp"
    resource = ProtectedResource(
        [AUDIENCE, second], authorization_servers=[idp.issuer], trusted_proxies=["10.0.0.0/8"]
    )
    async with served(idp, resource, audience=[AUDIENCE, second]) as (url, client, _):
        response = await client.get(
            f"{base_of(url)}/.well-known/oauth-protected-resource/mcp",
            headers={"X-Forwarded-Host": "mcp.example.org"},
        )
    assert response.json()["resource"] == AUDIENCE


# --- challenges ----------------------------------------------------------------------------------


async def test_missing_credential_challenge_has_no_error(idp: FakeIdentityProvider) -> None:
    async with served(idp) as (url, client, counter):
        response = await client.post(url, headers=request_headers(), content=call_body())
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == f'Bearer resource_metadata="{METADATA_URL}"'
    assert counter.runs == 0


async def test_required_scopes_in_the_401_challenge(idp: FakeIdentityProvider) -> None:
    async with served(idp, required_scopes=["mcp:use"]) as (url, client, _):
        response = await client.post(url, headers=request_headers(), content=call_body())
    assert challenge_params(response.headers["www-authenticate"]) == {
        "scope": "mcp:use",
        "resource_metadata": METADATA_URL,
    }


async def test_invalid_token_challenge_is_generic(idp: FakeIdentityProvider) -> None:
    async with served(idp) as (url, client, _):
        expired = await client.post(
            url, headers=request_headers(idp.bad_token("expired")), content=call_body()
        )
        audience = await client.post(
            url, headers=request_headers(idp.bad_token("wrong_audience")), content=call_body()
        )
    assert expired.status_code == audience.status_code == 401
    assert expired.headers["www-authenticate"] == audience.headers["www-authenticate"]
    assert expired.content == audience.content  # the client never learns which check failed
    assert challenge_params(expired.headers["www-authenticate"]) == {
        "error": "invalid_token",
        "error_description": "The access token is missing, invalid or expired.",
        "resource_metadata": METADATA_URL,
    }


async def test_reason_is_logged(
    idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    token = idp.bad_token("wrong_audience")
    with caplog.at_level(logging.INFO, logger="securemcp.auth"):
        async with served(idp) as (url, client, _):
            await client.post(url, headers=request_headers(token), content=call_body())
    messages = [r.getMessage() for r in caplog.records if r.name == "securemcp.auth"]
    assert any(m.endswith(": audience_mismatch") for m in messages)
    assert token not in caplog.text


async def test_lowercase_bearer_scheme_is_accepted(idp: FakeIdentityProvider) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    async with served(idp) as (url, client, counter):
        headers = [(k, v) for k, v in request_headers() if k != "Authorization"]
        response = await client.post(
            url, headers=[*headers, ("Authorization", f"bearer {token}")], content=call_body()
        )
    assert response.status_code == 200
    assert counter.runs == 1


# --- step-up: 403 before FastMCP runs ------------------------------------------------------------


async def test_insufficient_scope_names_every_needed_scope(idp: FakeIdentityProvider) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    async with served(idp) as (url, client, counter):
        response = await client.post(
            url, headers=request_headers(token), content=call_body(target="write_note", text="x")
        )
    assert response.status_code == 403
    assert challenge_params(response.headers["www-authenticate"]) == {
        "error": "insufficient_scope",
        "error_description": "The access token lacks scopes this call requires.",
        "scope": "notes:read notes:write",
        "resource_metadata": METADATA_URL,
    }
    body = response.json()
    assert body["id"] == 1
    assert body["error"]["data"] == {
        "securemcp_error": "insufficient_scope",
        "required_scopes": ["notes:read", "notes:write"],
        "missing_scopes": ["notes:write"],
    }
    assert counter.runs == 0


@pytest.mark.parametrize(
    ("method", "target", "scope"),
    [
        ("resources/read", "notes://secret", "notes:admin"),
        ("prompts/get", "summarize", "prompts:use"),
    ],
)
async def test_insufficient_scope_for_resources_and_prompts(
    idp: FakeIdentityProvider, method: str, target: str, scope: str
) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    async with served(idp) as (url, client, counter):
        response = await client.post(
            url, headers=request_headers(token), content=call_body(method, target)
        )
    assert response.status_code == 403
    assert challenge_params(response.headers["www-authenticate"])["scope"] == scope
    assert counter.runs == 0


async def test_a_step_up_refusal_of_a_template_read_records_its_values_as_a_hash(
    idp: FakeIdentityProvider, tmp_path: Any
) -> None:
    """The 403 decided at the HTTP layer is recorded like the pipeline's refusal: a template
    read is named by its URI template, its parameter values hashed (never in the log)."""
    from securemcp.audit import AuditLog, iter_records
    from securemcp.audit.records import args_sha256

    counter = Counter()
    server = counted_server(idp.verifier(), counter, audit=AuditLog(tmp_path))

    @server.resource("vault://{name}", scopes=["notes:admin"])
    def vault(name: str) -> str:
        counter.runs += 1
        return "sealed"

    token = idp.token("alice", scopes=["notes:read"])
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        for uri in ("vault://launch-codes", "notes://secret"):
            response = await client.post(
                url, headers=request_headers(token), content=call_body("resources/read", uri)
            )
            assert response.status_code == 403
    assert counter.runs == 0
    refusals = [r for r in iter_records(tmp_path) if r["type"] == "decision"]
    assert [(r["target"], r["args_sha256"]) for r in refusals] == [
        ("vault://{name}", args_sha256({"name": "launch-codes"})),
        ("notes://secret", args_sha256({})),
    ]
    assert all(r["decision"]["reason"] == "insufficient_scope" for r in refusals)
    raw = b"".join(path.read_bytes() for path in tmp_path.glob("audit-*.jsonl"))
    assert b"launch-codes" not in raw


async def test_mcp_client_sees_the_refusal_message(idp: FakeIdentityProvider) -> None:
    counter = Counter()
    server = counted_server(idp.verifier(), counter)
    token = idp.token("bob", scopes=["notes:read"])
    async with serve_http(server) as url, connect_http(url, token) as client:
        with pytest.raises(Exception, match="insufficient_scope: Missing scope"):
            await client.call_tool("write_note", {"text": "x"})
        assert (await client.call_tool("read_note", {})).data == "note"
    assert counter.runs == 1


async def test_odd_bodies_pass_through_to_the_pipeline(idp: FakeIdentityProvider) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    batch = json.dumps([json.loads(call_body(target="write_note", text="x"))]).encode()
    async with served(idp) as (url, client, counter):
        for body in (batch, b"not json", b'{"jsonrpc":"2.0","id":1,"method":"tools/call"}'):
            response = await client.post(url, headers=request_headers(token), content=body)
            assert response.status_code != 403  # not decided here; FastMCP/pipeline answers
    assert counter.runs == 0
    # and a well-formed, authorized call does run
    async with served(idp) as (url, client, counter):
        response = await client.post(url, headers=request_headers(token), content=call_body())
    assert response.status_code == 200
    assert counter.runs == 1


async def test_disclosure_off_means_no_early_403(idp: FakeIdentityProvider) -> None:
    counter = Counter()
    server = FastMCP("quiet", auth=idp.verifier(), disclose_required_scopes=False)

    @server.tool(scopes=["secret:x"])
    def hidden() -> str:
        counter.runs += 1
        return ""

    token = idp.token("alice", scopes=[])
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        response = await client.post(
            url, headers=request_headers(token), content=call_body(target="hidden")
        )
    assert response.status_code != 403
    assert "secret:x" not in response.text
    assert counter.runs == 0


# --- FastMCP's own challenges gain resource_metadata ---------------------------------------------


async def test_fastmcp_challenges_gain_resource_metadata() -> None:
    messages: list[dict[str, Any]] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b'Bearer error="invalid_token"')],
            }
        )

    async def send(message: Any) -> None:
        messages.append(message)

    from securemcp.auth.http import _with_resource_metadata

    await inner({}, None, _with_resource_metadata(send, METADATA_URL))
    assert dict(messages[0]["headers"])[b"www-authenticate"] == (
        f'Bearer error="invalid_token", resource_metadata="{METADATA_URL}"'.encode()
    )


def test_challenge_quoting() -> None:
    assert challenge() == b"Bearer"
    assert (
        challenge(resource_metadata='https://x/"a') == b'Bearer resource_metadata="https://x/\\"a"'
    )


# --- body handling -------------------------------------------------------------------------


async def test_buffer_replays_small_bodies_and_streams_large_ones() -> None:
    chunks = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]

    async def receive() -> Any:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    replay, body = await _buffer(receive, 10)
    assert body == b"abcd"
    assert await replay() == {"type": "http.request", "body": b"abcd", "more_body": False}
    assert (await replay())["type"] == "http.disconnect"

    chunks[:] = [
        {"type": "http.request", "body": b"x" * 8, "more_body": True},
        {"type": "http.request", "body": b"y" * 8, "more_body": True},
        {"type": "http.request", "body": b"z", "more_body": False},
    ]
    replay, body = await _buffer(receive, 10)
    assert body is None
    got = [await replay() for _ in range(3)]
    assert b"".join(m["body"] for m in got) == b"x" * 8 + b"y" * 8 + b"z"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (call_body(), ("tools/call", "read_note", 1, None)),
        (
            call_body("resources/read", "notes://secret"),
            ("resources/read", "notes://secret", 1, None),
        ),
        (
            b'{"id":3,"method":"tools/call","params":{"name":"t","_meta":'
            b'{"fastmcp":{"version":"1"}}}}',
            ("tools/call", "t", 3, "1"),
        ),
        (  # FastMCP serves a client only a version named by a string: the highest otherwise
            b'{"id":4,"method":"tools/call","params":{"name":"t","_meta":'
            b'{"fastmcp":{"version":{"eq":"1"}}}}}',
            ("tools/call", "t", 4, None),
        ),
        (
            b'{"id":5,"method":"tools/call","params":{"name":"t","_meta":[]}}',
            ("tools/call", "t", 5, None),
        ),
        (b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}', None),
        (b"[]", None),
        (b'{"method":"tools/call","params":{"name":5}}', None),
        (b'{"method":"tools/call","params":[]}', None),
        (b"[" * 100_000, None),
    ],
)
def test_call_target(body: bytes, expected: Any) -> None:
    assert _call_target(body) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"access_token=x", True),
        (b"a=1&access_token", True),
        (b"access%5Ftoken=x", True),
        (b"%61%63%63%65%73%73%5f%74%6f%6b%65%6e=x", True),
        (b"a=1;access_token=x", True),
        (b"q=access_token", False),  # a value, not the parameter name
        (b"access_tokens=x", False),
        (b"access%5Ftokens=x", False),
        (b"access+token=x", False),
        (b"a=%25", False),
    ],
)
def test_query_token_names(query: bytes, expected: bool) -> None:
    assert _has_query_token(query) is expected


async def test_large_bodies_skip_the_early_check(idp: FakeIdentityProvider) -> None:
    resource = ProtectedResource(max_body_bytes=1024)
    token = idp.token("alice", scopes=["notes:read"])
    async with served(idp, resource) as (url, client, counter):
        response = await client.post(
            url,
            headers=request_headers(token),
            content=call_body(target="write_note", text="x" * 4096),
        )
    assert response.status_code != 403
    assert counter.runs == 0  # the in-process pipeline still refused it


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resource": "ftp://x/mcp"}, "https://"),
        ({"resource": "http://mcp.example.com/mcp"}, "https://"),
        ({"resource": "https://x/mcp#frag"}, "fragment"),
        ({"authorization_servers": []}, "at least one"),
        ({"trusted_proxies": ["not-an-ip"]}, "trusted_proxies"),
        ({"allowed_origins": ["*"]}, "origin"),
        ({"allowed_origins": ["https://app.example.com/path"]}, "origin"),
        ({"max_body_bytes": 10}, "max_body_bytes"),
    ],
)
def test_protected_resource_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ProtectedResource(**kwargs)


def test_loopback_http_resource_allowed_in_development() -> None:
    assert ProtectedResource("http://127.0.0.1:8000/mcp").resource == ("http://127.0.0.1:8000/mcp",)


def test_http_resource_refused_in_production(production_mode: None) -> None:
    with pytest.raises(ConfigurationError, match="https"):
        ProtectedResource("http://127.0.0.1:8000/mcp")


def test_no_authorization_server_known_is_a_startup_error() -> None:
    from securemcp.auth import IntrospectionVerifier

    verifier = IntrospectionVerifier(
        "https://as.example.test/introspect", "rs", "secret", audience=AUDIENCE
    )
    server = FastMCP("x", auth=verifier)
    with pytest.raises(ConfigurationError, match="authorization_servers"):
        server.http_app()
    set_protected_resource(server, ProtectedResource(authorization_servers=["https://as.test"]))
    assert server.http_app() is not None


def test_guard_is_outermost_and_app_keeps_its_lifespan(idp: FakeIdentityProvider) -> None:
    server = FastMCP("x", auth=idp.verifier())
    app = server.http_app()
    assert app.user_middleware[0].cls is HTTPGuard
    assert app.state.path == "/mcp"


async def test_development_mode_needs_no_token_but_still_checks_origin() -> None:
    server = FastMCP("dev")

    @server.tool
    def hello() -> str:
        return "hi"

    async with serve_http(server) as url, httpx.AsyncClient() as client:
        hostile = await client.post(
            url, headers=request_headers(Origin="https://evil.example"), content=call_body()
        )
        assert hostile.status_code == 403
        async with connect_http(url) as mcp_client:
            assert (await mcp_client.call_tool("hello", {})).data == "hi"


async def test_forged_token_flood_does_not_flood_the_audit_log(
    idp: FakeIdentityProvider, tmp_path: Any
) -> None:
    """Forged tokens cost an attacker nothing; the audit log records each burst, not each hit."""
    from securemcp.audit import AuditLog, iter_records

    log = AuditLog(tmp_path / "audit")
    server = FastMCP("flooded", auth=idp.verifier(), audit=log)

    @server.tool
    def echo(text: str) -> str:
        return text

    forged = idp.bad_token("signed_by_stranger")
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        for _ in range(200):
            response = await client.post(url, headers=request_headers(forged), content=call_body())
            assert response.status_code == 401  # every request is still refused
    failures = [r for r in iter_records(log.directory) if r["type"] == "auth_failure"]
    assert 1 <= len(failures) <= 10  # one per second per address and reason, not 200
    # The burst's size is on record: the records plus what they report leaving out.
    counted = len(failures) + sum(
        int(r["reason"].split("(+")[1].split(" ")[0]) for r in failures if "(+" in r["reason"]
    )
    assert counted <= 200 and (len(failures) == 1 or counted > len(failures))


# --- mounted under a prefix (Starlette/FastAPI Mount, uvicorn --root-path) ----------------------


def mounted_app(server: FastMCP, how: str) -> Any:
    """``server``'s HTTP app as it runs under the prefix ``/api``.

    ``mount``: a Starlette ``Mount("/api", app)`` (FastAPI's ``app.mount`` is the same), with
    FastMCP's lifespan run by the outer app (FastMCP needs it to start its session manager).
    ``root_path``: what uvicorn ``--root-path /api`` does behind a proxy that strips the prefix
    (``root_path`` set and prepended to ``path``).
    """
    from starlette.applications import Starlette
    from starlette.routing import Mount

    inner = server.http_app(path="/mcp", stateless_http=True)
    if how == "mount":

        @asynccontextmanager
        async def lifespan(app: Any) -> AsyncIterator[None]:
            async with inner.lifespan(app):
                yield

        return Starlette(routes=[Mount("/api", app=inner)], lifespan=lifespan)

    async def root_path_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "root_path": "/api", "path": "/api" + scope["path"]}
        await inner(scope, receive, send)

    return root_path_app


@asynccontextmanager
async def served_mounted(
    auth: Any, how: str
) -> AsyncIterator[tuple[str, str, httpx.AsyncClient, Counter]]:
    """Yield ``(mcp url, app base url, client, counter)`` for a server mounted under /api."""
    from securemcp.testing.http import serve_asgi

    counter = Counter()
    app = mounted_app(counted_server(auth, counter), how)
    async with serve_asgi(app) as base, httpx.AsyncClient() as client:
        prefix = f"{base}/api" if how == "mount" else base  # the proxy strips /api itself
        yield f"{prefix}/mcp", prefix, client, counter


MOUNTS = ["mount", "root_path"]


@pytest.mark.parametrize(
    ("path", "root_path"),
    [
        ("/mcp", ""),
        ("/api/mcp", "/api"),
        ("/api", "/api"),
        ("/apimcp", "/api"),
        ("/mcp", "/api"),
        ("/api/v1/mcp", "/api/v1"),
        ("/api//mcp", "/api/"),
    ],
)
def test_route_path_is_starlettes(path: str, root_path: str) -> None:
    from starlette.routing import get_route_path as starlettes  # type: ignore[attr-defined]

    scope = {"type": "http", "path": path, "root_path": root_path}
    assert get_route_path(scope) == starlettes(scope)


@pytest.mark.parametrize("how", MOUNTS)
async def test_mounted_development_mode_still_checks_origin(how: str) -> None:
    async with served_mounted(None, how) as (url, _, client, counter):
        hostile = await client.post(
            url, headers=request_headers(Origin="http://evil.example"), content=call_body()
        )
        assert hostile.status_code == 403
        assert counter.runs == 0
        plain = await client.post(url, headers=request_headers(), content=call_body())
        assert plain.status_code == 200 and counter.runs == 1


@pytest.mark.parametrize("how", MOUNTS)
async def test_mounted_guard_refuses_and_challenges(idp: FakeIdentityProvider, how: str) -> None:
    token = idp.token("alice", scopes=["notes:read"])
    async with served_mounted(idp.verifier(), how) as (url, _, client, counter):
        query = await client.post(
            f"{url}?access_token={token}", headers=request_headers(token), content=call_body()
        )
        assert query.status_code == 400
        missing = await client.post(url, headers=request_headers(), content=call_body())
        assert missing.status_code == 401
        # The advertised URL is the configured one (derived from the resource), never the Host.
        assert challenge_params(missing.headers["www-authenticate"]) == {
            "resource_metadata": METADATA_URL
        }
        step_up = await client.post(
            url, headers=request_headers(token), content=call_body(target="write_note", text="x")
        )
        assert step_up.status_code == 403
        assert challenge_params(step_up.headers["www-authenticate"])["error"] == (
            "insufficient_scope"
        )
        assert counter.runs == 0
        ok = await client.post(url, headers=request_headers(token), content=call_body())
        assert ok.status_code == 200 and counter.runs == 1


@pytest.mark.parametrize("how", MOUNTS)
async def test_mounted_app_serves_metadata_under_its_prefix(
    idp: FakeIdentityProvider, how: str
) -> None:
    async with served_mounted(idp.verifier(), how) as (_, prefix, client, _counter):
        response = await client.get(f"{prefix}/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    assert response.json()["resource"] == AUDIENCE


async def test_root_metadata_routed_to_a_mounted_app() -> None:
    """The documented recipe: the resource is the public URL (with the prefix) and the outer app
    routes its advertised metadata URL, at the host root, to the mounted app."""
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from securemcp.testing.http import serve_asgi

    public = "https://mcp.example.test/api/mcp"
    idp = FakeIdentityProvider(audience=public)
    inner = counted_server(idp.verifier(), Counter()).http_app(path="/mcp", stateless_http=True)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with inner.lifespan(app):
            yield

    outer = Starlette(
        routes=[
            Route("/.well-known/oauth-protected-resource/api/mcp", endpoint=inner),
            Mount("/api", app=inner),
        ],
        lifespan=lifespan,
    )
    metadata_url = "https://mcp.example.test/.well-known/oauth-protected-resource/api/mcp"
    async with serve_asgi(outer) as base, httpx.AsyncClient() as client:
        missing = await client.post(
            f"{base}/api/mcp", headers=request_headers(), content=call_body()
        )
        response = await client.get(f"{base}/.well-known/oauth-protected-resource/api/mcp")
    assert challenge_params(missing.headers["www-authenticate"]) == {
        "resource_metadata": metadata_url
    }
    assert response.status_code == 200
    assert response.json()["resource"] == public
