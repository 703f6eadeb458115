"""Two users of different tenants never share a session, even with the same issuer, client and
subject (multi-tenant issuers, ``tenant_claim=``: ``sub`` may be unique only within a tenant).

The MCP SDK binds a streamable HTTP (and SSE) session to ``principal_components(AccessToken)`` =
(client_id, issuer, subject), and FastMCP keys its per-user state (``UserSession``, the
2026-07-28 era's session scope, ``requestState`` binding) on the same triple. securemcp puts the
tenant into FastMCP's ``AccessToken.client_id`` (the OAuth client id stays in
``original_client_id``, ``subject`` and ``claims`` are unchanged), so every one of them tells the
tenants apart. Over real loopback HTTP, with tokens from the FakeIdentityProvider.
"""

from __future__ import annotations

import json

import httpx
import pytest
from auth_support import AUDIENCE, request_headers
from fastmcp import Context
from fastmcp.server.sessions import UserSession
from mcp.server.auth.provider import principal_components

from securemcp import FastMCP
from securemcp.auth._fastmcp import access_token_for
from securemcp.context import Principal
from securemcp.testing import FakeIdentityProvider, connect, connect_http, serve_http


def tenant_server(idp: FakeIdentityProvider) -> FastMCP:
    mcp = FastMCP("tenants", auth=idp.verifier(tenant_claim="tid"), audit=False)

    @mcp.tool
    async def remember(note: str, ctx: Context, session: UserSession) -> str:
        await ctx.set_state("note", note)  # this MCP session's state (handshake era)
        await session.set("note", note)  # this user's state (any era)
        return "noted"

    @mcp.tool
    async def recall(ctx: Context) -> str:
        return str(await ctx.get_state("note"))

    @mcp.tool
    async def recall_mine(session: UserSession) -> str:
        return str(await session.get("note"))

    @mcp.tool
    def who() -> dict[str, str | None]:
        from fastmcp.server.dependencies import get_access_token

        token = get_access_token()
        assert token is not None
        return {
            "subject": token.subject,
            "client_id": token.original_client_id,
            "sub_claim": token.claims.get("sub"),
        }

    return mcp


def test_the_tenant_is_part_of_fastmcps_principal_but_not_of_its_subject() -> None:
    acme = Principal("user-1", "https://idp.test", client_id="app", tenant="acme")
    evil = Principal("user-1", "https://idp.test", client_id="app", tenant="evil")
    plain = Principal("user-1", "https://idp.test", client_id="app")
    views = [access_token_for(p, "t", (AUDIENCE,)) for p in (acme, evil, plain)]
    triples = {principal_components(view) for view in views}
    assert len(triples) == 3
    for view in views:
        assert view.subject == "user-1"
        assert principal_components(view)[1:] == (None, "user-1")  # no iss claim here
    assert views[0].original_client_id == "app" and views[1].original_client_id == "app"
    assert views[2].client_id == "app" and views[2].original_client_id is None  # unchanged
    assert json.loads(views[0].client_id) == ["app", "acme"]
    # no client id: the subject stands in for it, as before
    bare = access_token_for(Principal("svc", "https://idp.test", tenant="t1"), "t", ())
    assert json.loads(bare.client_id) == ["svc", "t1"] and bare.original_client_id == "svc"


@pytest.mark.http
async def test_another_tenants_user_with_the_same_subject_cannot_use_the_session() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    alice = idp.token("user-1", tid="acme")
    mallory = idp.token("user-1", tid="evil")  # same issuer, client_id and sub
    recall = json.dumps(
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "recall"}}
    )
    async with (
        serve_http(tenant_server(idp)) as url,
        connect_http(url, alice, mode="legacy") as client,
    ):
        assert (await client.call_tool("remember", {"note": "acme plans"})).data == "noted"
        session_id = client.transport.get_session_id()
        assert session_id
        async with httpx.AsyncClient() as raw:

            async def in_session(token: str) -> httpx.Response:
                headers = request_headers(token, Mcp_Session_Id=session_id)
                return await raw.post(url, headers=headers, content=recall)

            stolen = await in_session(mallory)
            assert stolen.status_code == 404, stolen.text
            assert "acme plans" not in stolen.text
            # the owner, with a token issued later (a refresh), still uses it
            renewed = await in_session(idp.token("user-1", tid="acme"))
            assert renewed.status_code == 200 and "acme plans" in renewed.text
        # what the tool sees is unchanged: subject, sub claim and the OAuth client id
        assert (await client.call_tool("who", {})).data == {
            "subject": "user-1",
            "client_id": idp.default_client_id,
            "sub_claim": "user-1",
        }


@pytest.mark.http
async def test_per_user_state_is_not_shared_across_tenants() -> None:
    """The 2026-07-28 era has no MCP session: FastMCP keys ``UserSession`` on the principal."""
    idp = FakeIdentityProvider(audience=AUDIENCE)
    async with serve_http(tenant_server(idp)) as url:
        async with connect_http(url, idp.token("user-1", tid="acme")) as alice:
            assert (await alice.call_tool("remember", {"note": "acme plans"})).data == "noted"
        async with connect_http(url, idp.token("user-1", tid="evil")) as mallory:
            assert (await mallory.call_tool("recall_mine", {})).data == "None"
        async with connect_http(url, idp.token("user-1", tid="acme")) as again:
            assert (await again.call_tool("recall_mine", {})).data == "acme plans"


async def test_per_user_state_is_not_shared_across_tenants_in_memory() -> None:
    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = tenant_server(idp)
    async with connect(server, token=idp.token("user-1", tid="acme")) as alice:
        assert (await alice.call_tool("remember", {"note": "acme plans"})).data == "noted"
    async with connect(server, token=idp.token("user-1", tid="evil")) as mallory:
        assert (await mallory.call_tool("recall_mine", {})).data == "None"
