"""No raw bearer token outlives its request in a verifier (DESIGN.md: results are cached by token
*hash*; raw tokens are never stored).

FastMCP's ``AccessToken`` must carry the raw token for the request it belongs to, so
``verify_token`` hands each request its own copy; what the verifier keeps between requests (the
token-less view it copies from) must hold no token. Each test walks everything reachable from the
verifier after the calls and looks for the token's text, and would find it in a cached
``AccessToken`` if the verifier kept one.
"""

from __future__ import annotations

import asyncio
import gc
import types
from collections import deque
from typing import Any

import httpx
import pytest
from auth_support import AUDIENCE, Counter, FakeIntrospection, counted_server, request_headers
from fastmcp.server.auth import AccessToken

from securemcp.auth import CustomVerifier, IntrospectionVerifier, MultiIssuerVerifier
from securemcp.auth._fastmcp import access_token_for
from securemcp.context import Principal
from securemcp.errors import InvalidCredential
from securemcp.testing import FakeIdentityProvider, serve_http

#: Objects never walked into: code and module namespaces reach the whole interpreter (and the
#: test's own frames), and hold no per-request state of a verifier. The event loop (the JWKS
#: cache's lock remembers it) holds every pending task and timer with its contextvars, so
#: whatever a request is still doing, or asyncio's cancelled keep-alive timers until they are
#: purged: the requests' own state, not a verifier cache.
_OPAQUE = (
    asyncio.AbstractEventLoop,
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.CodeType,
    types.FrameType,
)


def strings_reachable_from(root: object, limit: int = 200_000) -> list[str]:
    """Every ``str`` reachable from ``root`` through object references (bounded walk)."""
    seen: set[int] = {id(root)}
    queue: deque[object] = deque([root])
    found: list[str] = []
    while queue:
        node = queue.popleft()
        if isinstance(node, str):
            found.append(node)
            continue
        if isinstance(node, bytes | int | float):
            continue
        for child in gc.get_referents(node):
            if id(child) in seen or isinstance(child, _OPAQUE):
                continue
            seen.add(id(child))
            queue.append(child)
            assert len(seen) < limit, "the walk is not bounded: exclude another kind of object"
    return found


def holding(root: object, token: str) -> list[str]:
    """The reachable strings that contain ``token`` (empty when nothing keeps it)."""
    gc.collect()
    return [s[:40] for s in strings_reachable_from(root) if token in s]


def test_the_walk_finds_a_token_a_cache_would_keep() -> None:
    """The probe itself: an ``AccessToken`` kept in a dict on an object is found."""
    token = "probe-" + "x" * 30

    class Holder:
        def __init__(self) -> None:
            self.cache = {1: (object(), AccessToken(token=token, client_id="c", scopes=[]))}

    assert holding(Holder(), token)


async def test_jwt_verifier_keeps_no_raw_token() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    verifier = idp.verifier()
    tokens = [idp.token(name, scopes=["notes:read"]) for name in ("alice", "bob")]
    for token in tokens * 3:  # misses, then cache hits
        access = await verifier.verify_token(token)
        assert access is not None and access.token == token  # FastMCP's view of this request
    del access
    for token in tokens:
        assert holding(verifier, token) == []


async def test_reused_view_is_a_fresh_copy_per_request() -> None:
    """Hits reuse the verified principal's view, but each request gets its own object carrying
    its own token, identical to a freshly built view."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    verifier = idp.verifier(tenant_claim="tid")
    token = idp.token("alice", scopes=["notes:read", "notes:write"], tid="acme")
    first = await verifier.verify_token(token)
    second = await verifier.verify_token(token)
    assert first is not None and second is not None
    assert first is not second
    principal = await verifier.authenticate(token)
    built = access_token_for(principal, token, verifier.audiences)
    assert first == second == built
    assert first.model_dump() == built.model_dump()
    assert first.model_fields_set == built.model_fields_set
    assert type(first) is AccessToken
    assert first.__pydantic_fields_set__ is not second.__pydantic_fields_set__


def test_fastmcp_access_token_has_no_private_or_extra_state() -> None:
    """What the per-request copy relies on (pinned against FastMCP/pydantic upgrades)."""
    assert AccessToken.__private_attributes__ == {}
    assert AccessToken.model_config.get("extra") in (None, "ignore")


async def test_introspection_verifier_keeps_no_raw_token() -> None:
    endpoint = FakeIntrospection()
    token = endpoint.issue("opaque-token-" + "q" * 24)
    verifier = IntrospectionVerifier(
        "https://as.example.test/introspect",
        endpoint.client_id,
        endpoint.client_secret,
        audience=AUDIENCE,
        http_client=endpoint.client(),
    )
    for _ in range(3):
        access = await verifier.verify_token(token)
        assert access is not None and access.token == token
    del access
    endpoint.seen_forms.clear()  # the fake authorization server's own records of the token
    endpoint.tokens.clear()
    assert holding(verifier, token) == []


async def test_multi_issuer_verifier_keeps_no_raw_token() -> None:
    first = FakeIdentityProvider(issuer="https://one.example.test", audience=AUDIENCE)
    second = FakeIdentityProvider(issuer="https://two.example.test", audience=AUDIENCE)
    verifier = MultiIssuerVerifier([first.verifier(), second.verifier()])
    tokens = [first.token("alice"), second.token("bob")]
    for token in tokens * 2:
        access = await verifier.verify_token(token)
        assert access is not None and access.token == token
    del access
    for token in tokens:
        assert holding(verifier, token) == []


class SharedPrincipal(CustomVerifier):
    """Returns one principal object for every key it accepts (an API-key table, say)."""

    def __init__(self) -> None:
        super().__init__(audience=AUDIENCE, issuer="https://keys.example.test")
        self.principal = Principal(subject="svc", issuer="https://keys.example.test")

    async def authenticate(self, token: str) -> Principal:
        if not token.startswith("key-"):
            raise InvalidCredential(reason="unknown_key")
        return self.principal


async def test_one_principal_for_many_tokens_gets_each_request_its_own_token() -> None:
    verifier = SharedPrincipal()
    one, two = "key-" + "1" * 32, "key-" + "2" * 32
    access_one = await verifier.verify_token(one)
    access_two = await verifier.verify_token(two)
    assert access_one is not None and access_one.token == one
    assert access_two is not None and access_two.token == two
    del access_one, access_two
    assert holding(verifier, one) == [] and holding(verifier, two) == []


@pytest.mark.http
async def test_no_raw_token_stays_with_the_verifier_after_http_requests() -> None:
    """Over real loopback HTTP (FastMCP's bearer middleware calls ``verify_token``)."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    verifier = idp.verifier()
    server = counted_server(verifier, Counter())
    token = idp.token("alice", scopes=["notes:read"])
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_note"}}'
    async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as client:
        for _ in range(3):
            response = await client.post(url, headers=request_headers(token), content=body)
            assert response.status_code == 200
    found: Any = holding(verifier, token)
    assert found == []
