"""The per-call pipeline: verified identity, scope refusals, hidden tools, fail-closed paths."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastmcp import Client
from fastmcp.exceptions import ToolError

from securemcp import FastMCP, current
from securemcp.errors import InsufficientScope, Unauthenticated
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"


def build(idp: FakeIdentityProvider | None, **kwargs: Any) -> tuple[FastMCP, dict[str, int]]:
    runs = {"read": 0, "write": 0, "admin": 0, "open": 0, "res": 0, "prompt": 0}
    auth = idp.verifier(audience=AUDIENCE) if idp else None
    mcp = FastMCP("pipeline", auth=auth, **kwargs)

    @mcp.tool(scopes=["notes:read"])
    def read() -> str:
        runs["read"] += 1
        return "read"

    @mcp.tool(scopes=["notes:write", "notes:read"])
    async def write() -> str:
        runs["write"] += 1
        return "written"

    @mcp.tool(scopes=["notes:admin"])
    def admin() -> str:
        runs["admin"] += 1
        return "admin"

    @mcp.tool
    def whoami() -> str:
        runs["open"] += 1
        return current().principal.subject

    @mcp.resource("notes://{note_id}", scopes=["notes:read"])
    def note(note_id: str) -> str:
        runs["res"] += 1
        return f"note {note_id}"

    @mcp.prompt(scopes=["notes:admin"])
    def audit_prompt() -> str:
        runs["prompt"] += 1
        return "audit everything"

    return mcp, runs


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


async def test_allowed_call_runs_as_the_verified_subject(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.token("alice", scopes=["notes:read"])) as client:
        assert (await client.call_tool("read", {})).data == "read"
        assert (await client.call_tool("whoami", {})).data == "alice"
    assert runs["read"] == 1


async def test_missing_scope_is_refused_naming_every_needed_scope(
    idp: FakeIdentityProvider,
) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.token("bob", scopes=["notes:read"])) as client:
        result = await client.call_tool("write", {}, raise_on_error=False)
    assert result.is_error
    text = result.content[0].text
    assert text.startswith("insufficient_scope:")
    assert "Missing scope(s): notes:write." in text
    assert "This call requires: notes:read notes:write." in text
    assert runs["write"] == 0


async def test_missing_scope_direct_call_raises_typed_error(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.token("bob", scopes=[])):
        with pytest.raises(InsufficientScope) as excinfo:
            await mcp.call_tool("read", {})
    assert excinfo.value.missing == ("notes:read",)
    assert isinstance(excinfo.value, ToolError.__mro__[1])  # a FastMCPError
    assert runs["read"] == 0


async def test_hidden_tools_resources_and_prompts(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.token("bob", scopes=["notes:read"])) as client:
        tools = sorted(t.name for t in await client.list_tools())
        templates = [t.uri_template for t in await client.list_resource_templates()]
        prompts = [p.name for p in await client.list_prompts()]
        hidden = await client.call_tool("admin", {}, raise_on_error=False)
    assert tools == ["read", "whoami"]
    assert templates == ["notes://{note_id}"]
    assert prompts == []
    assert hidden.is_error and "Missing scope(s): notes:admin" in hidden.content[0].text
    assert runs["admin"] == 0


async def test_listing_can_be_left_unfiltered(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp, hide_unauthorized=False)
    async with connect(mcp, idp.token("bob", scopes=[])) as client:
        tools = sorted(t.name for t in await client.list_tools())
        refused = await client.call_tool("admin", {}, raise_on_error=False)
    assert tools == ["admin", "read", "whoami", "write"]
    assert refused.is_error and runs["admin"] == 0


async def test_non_disclosing_mode_answers_unknown_tool(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp, disclose_required_scopes=False)
    async with connect(mcp, idp.token("bob", scopes=[])) as client:
        hidden = await client.call_tool("admin", {}, raise_on_error=False)
        unknown = await client.call_tool("no_such_tool", {}, raise_on_error=False)
    assert hidden.content[0].text == "Unknown tool: 'admin'"
    assert hidden.content[0].text.replace("admin", "x") == unknown.content[0].text.replace(
        "no_such_tool", "x"
    )
    assert runs["admin"] == 0


async def test_resources_and_prompts_are_guarded(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.token("bob", scopes=[])) as client:
        with pytest.raises(Exception, match="insufficient_scope"):
            await client.read_resource("notes://1")
        with pytest.raises(Exception, match="insufficient_scope"):
            await client.get_prompt("audit_prompt")
    async with connect(mcp, idp.token("root", scopes=["notes:read", "notes:admin"])) as client:
        content = await client.read_resource("notes://7")
        assert content[0].text == "note 7"
        prompt = await client.get_prompt("audit_prompt")
        assert "audit everything" in prompt.messages[0].content.text
    assert runs == {**runs, "res": 1, "prompt": 1}


@pytest.mark.parametrize(
    "kind",
    [
        "expired",
        "wrong_audience",
        "wrong_issuer",
        "alg_none",
        "bad_signature",
        "signed_by_stranger",
        "garbage",
    ],
)
async def test_bad_tokens_are_refused_before_anything_runs(
    idp: FakeIdentityProvider, kind: str
) -> None:
    mcp, runs = build(idp)
    async with connect(mcp, idp.bad_token(kind, scopes=["notes:read"])) as client:
        result = await client.call_tool("whoami", {}, raise_on_error=False)
        with pytest.raises(Exception, match="invalid_token"):
            await client.list_tools()
    assert result.is_error
    # every bad token gets the same generic text: the client never learns which check failed
    assert result.content[0].text == str(Unauthenticated())
    assert runs["open"] == 0


async def test_no_credential_is_refused_when_a_verifier_is_configured(
    idp: FakeIdentityProvider,
) -> None:
    mcp, runs = build(idp)
    async with Client(mcp) as client:
        result = await client.call_tool("whoami", {}, raise_on_error=False)
    assert result.is_error and result.content[0].text.startswith("invalid_token:")
    assert runs["open"] == 0


async def test_asserted_identity_in_meta_or_arguments_is_ignored(
    idp: FakeIdentityProvider,
) -> None:
    mcp, _ = build(idp)
    async with connect(mcp, idp.token("bob", scopes=[])) as client:
        result = await client.call_tool("whoami", {}, meta={"client_id": "alice", "sub": "alice"})
    assert result.data == "bob"


async def test_an_unverified_token_placed_in_context_vars_is_reverified(
    idp: FakeIdentityProvider,
) -> None:
    """In memory, ContextVars flow from client to server: a pre-built AccessToken claiming
    scopes must not be trusted; only its raw token counts, and it must verify."""
    from fastmcp.server.auth import AccessToken
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    mcp, runs = build(idp)
    forged = AccessToken(token="not-a-jwt", client_id="alice", scopes=["notes:admin"])
    reset = auth_context_var.set(AuthenticatedUser(forged))
    try:
        async with Client(mcp) as client:
            result = await client.call_tool("admin", {}, raise_on_error=False)
    finally:
        auth_context_var.reset(reset)
    assert result.is_error and result.content[0].text.startswith("invalid_token:")
    assert runs["admin"] == 0


async def test_development_identity_is_marked_unverified_and_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    mcp, _ = build(None)

    @mcp.tool
    def me() -> dict[str, Any]:
        p = current().principal
        return {"verified": p.verified, "by": p.authenticated_by, "sub": p.subject}

    with caplog.at_level(logging.WARNING, logger="securemcp"):
        async with Client(mcp) as client:
            assert (await client.call_tool("me", {})).data == {
                "verified": False,
                "by": "development",
                "sub": "local-developer",
            }
    assert "DEVELOPMENT IDENTITY" in caplog.text
    assert "UNVERIFIED" in caplog.text


async def test_development_scopes_can_be_restricted() -> None:
    mcp, runs = build(None, development_scopes=["notes:read"])
    async with Client(mcp) as client:
        assert (await client.call_tool("read", {})).data == "read"
        refused = await client.call_tool("admin", {}, raise_on_error=False)
    assert refused.is_error and runs["admin"] == 0


async def test_production_refuses_development_identity_at_startup(
    production_mode: None,
) -> None:
    mcp, runs = build(None)
    # the in-memory client wraps start-up failures in RuntimeError; the reason is kept
    with pytest.raises(Exception, match=r"configuration_error: .*SECUREMCP_ENV=production"):
        async with Client(mcp):
            pass
    # and a call that skips start-up (direct API) is refused too
    with pytest.raises(Exception, match="invalid_token"):
        await mcp.call_tool("whoami", {})
    assert runs["open"] == 0


async def test_production_with_a_verifier_starts(
    production_mode: None, idp: FakeIdentityProvider
) -> None:
    mcp, _ = build(idp)
    async with connect(mcp, idp.token("alice")) as client:
        assert (await client.call_tool("whoami", {})).data == "alice"


async def test_mounted_securemcp_child_gets_the_parents_verified_caller(
    idp: FakeIdentityProvider,
) -> None:
    parent = FastMCP("parent", auth=idp.verifier(audience=AUDIENCE))
    child = FastMCP("child", auth=idp.verifier(audience="https://other.example/mcp"))
    seen: dict[str, Any] = {}

    @child.tool(scopes=["child:use"])
    def inner() -> str:
        sec = current()
        seen["parent_call_id"] = sec.parent_call_id
        seen["server"] = sec.server_name
        return sec.principal.subject

    parent.mount(child, namespace="c")
    async with connect(parent, idp.token("alice", scopes=["child:use"])) as client:
        assert "c_inner" in [t.name for t in await client.list_tools()]
        assert (await client.call_tool("c_inner", {})).data == "alice"
    assert seen["server"] == "child" and seen["parent_call_id"]
    async with connect(parent, idp.token("bob", scopes=[])) as client:
        assert "c_inner" not in [t.name for t in await client.list_tools()]
        refused = await client.call_tool("c_inner", {}, raise_on_error=False)
    assert refused.is_error and "child:use" in refused.content[0].text


async def test_requirements_cache_cannot_widen_access(idp: FakeIdentityProvider) -> None:
    """A tool replaced behind the server's back with stricter scopes is still enforced."""
    mcp = FastMCP("swap", auth=idp.verifier(audience=AUDIENCE))
    runs = {"n": 0}

    @mcp.tool
    def op() -> str:
        runs["n"] += 1
        return "ok"

    token = idp.token("bob", scopes=[])
    async with connect(mcp, token) as client:
        assert (await client.call_tool("op", {})).data == "ok"  # caches "no scopes needed"
        mcp.local_provider.remove_tool("op")  # bypasses securemcp's registration hooks
        from fastmcp.tools import Tool

        def op2() -> str:
            runs["n"] += 100
            return "admin op"

        mcp.local_provider.add_tool(
            Tool.from_function(op2, name="op", meta={"securemcp.dev/scopes": ["admin"]})
        )
        refused = await client.call_tool("op", {}, raise_on_error=False)
    assert refused.is_error and "admin" in refused.content[0].text
    assert runs["n"] == 1
