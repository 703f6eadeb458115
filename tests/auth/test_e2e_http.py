"""End to end over real loopback HTTP: the FakeIdentityProvider and the MCP server both on sockets.

Discovery (OIDC, RFC 8414) and JWKS fetch, key rotation (the new key works after one refresh, a
retired key is refused), an IdP outage survived on cached keys, and the step-up flow (403 naming
the needed scopes, then success with a new token).
"""

from __future__ import annotations

import time

import httpx
import pytest
from auth_support import (
    AUDIENCE,
    Counter,
    call_body,
    challenge_params,
    counted_server,
    request_headers,
)

from securemcp.testing import FakeIdentityProvider, connect_http, serve_http

pytestmark = pytest.mark.http


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_discovery_rotation_outage_and_step_up() -> None:
    idp = FakeIdentityProvider(issuer=None, audience=AUDIENCE)  # issuer = its loopback URL
    clock = Clock()
    counter = Counter()
    async with idp.serve_http() as idp_url:
        verifier = idp.verifier(over_http=True, clock=clock, jwks_cache_ttl=60)
        server = counted_server(verifier, counter)
        async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as raw:

            async def call(token: str, tool: str = "read_note") -> httpx.Response:
                arguments = {"text": "t"} if tool == "write_note" else {}
                body = call_body(target=tool, **arguments)
                return await raw.post(url, headers=request_headers(token), content=body)

            # discovery + JWKS fetch, once
            first = idp.token("alice", scopes=["notes:read"])
            assert (await call(first)).status_code == 200
            assert idp.metadata_fetch_count == 1
            assert idp.jwks_fetch_count == 1
            assert verifier.jwks_cache.jwks_uri == f"{idp_url}/jwks"
            document = (
                await raw.get(url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp"))
            ).json()
            assert document["authorization_servers"] == [idp_url]

            # rotation: the new key works after exactly one refresh
            old_kid = idp.current_kid
            idp.rotate_key()
            rotated = idp.token("alice", scopes=["notes:read"])
            assert (await call(rotated)).status_code == 200
            assert idp.jwks_fetch_count == 2
            assert (await call(rotated)).status_code == 200
            assert idp.jwks_fetch_count == 2

            # retirement: once the key set is refreshed, the retired key is refused
            idp.retire_key(old_kid)
            clock.now += 61
            fresh = idp.token("dave", scopes=["notes:read"])
            assert (await call(fresh)).status_code == 200  # refreshes the stale key set
            assert idp.jwks_fetch_count == 3
            retired = idp.sign(
                {"alg": "RS256", "typ": "at+jwt", "kid": old_kid},
                idp.claims("mallory", scopes=["notes:read"]),
                key_id=old_kid,
            )
            assert (await call(retired)).status_code == 401
            assert (await call(first)).status_code == 401  # cached, but its key left the JWKS

            # outage: cached keys keep working; unknown keys are refused (401, not accepted)
            idp.jwks_outage = True
            clock.now += 61
            assert (await call(idp.token("bob", scopes=["notes:read"]))).status_code == 200
            assert (
                await call(idp.bad_token("unknown_kid", scopes=["notes:read"]))
            ).status_code == 401
            idp.jwks_outage = False

            # step-up: 403 naming every scope the call needs, then success with a new token
            refused = await call(idp.token("carol", scopes=["notes:read"]), "write_note")
            assert refused.status_code == 403
            needed = challenge_params(refused.headers["www-authenticate"])["scope"]
            assert needed == "notes:read notes:write"
            upgraded = idp.token("carol", scopes=needed.split())
            async with connect_http(url, upgraded) as client:
                assert (await client.call_tool("write_note", {"text": "ok"})).data == "ok"
    assert counter.runs == 6


async def test_outage_with_no_cached_keys_is_503() -> None:
    idp = FakeIdentityProvider(issuer=None, audience=AUDIENCE)
    counter = Counter()
    async with idp.serve_http():
        idp.jwks_outage = True
        server = counted_server(idp.verifier(over_http=True), counter)
        async with serve_http(server, stateless_http=True) as url, httpx.AsyncClient() as raw:
            response = await raw.post(
                url,
                headers=request_headers(idp.token("alice", scopes=["notes:read"])),
                content=call_body(),
            )
    assert response.status_code == 503
    assert response.json()["error"] == "temporarily_unavailable"
    assert counter.runs == 0


async def test_idp_unreachable_over_the_network() -> None:
    """A verifier pointed at a closed port refuses (never accepts) and does not hang."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    from securemcp.auth import JWTVerifier
    from securemcp.errors import InvalidCredential

    verifier = JWTVerifier(
        issuer=idp.issuer,
        audience=AUDIENCE,
        jwks_uri="http://127.0.0.1:9/jwks",
        allow_insecure_loopback=True,
    )
    started = time.monotonic()
    with pytest.raises(InvalidCredential) as info:
        await verifier.authenticate(idp.token("alice"))
    assert info.value.reason == "jwks_unavailable"
    assert time.monotonic() - started < 6
