"""The proxy in front of a real FastMCP server over loopback HTTP.

Proves: allowed calls work; refused calls never reach the upstream; the upstream never sees the
client's token (not in memory, not over a real HTTP front); only configured credentials are
injected; two users never share upstream session state; a changed definition is blocked until
re-locked; upstream failures give clear, audited errors.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import upstream_app
from fastmcp.exceptions import ToolError
from proxy_support import (
    OPEN_TOOLS,
    audited_proxy,
    config,
    http_upstream,
    locked,
    records,
    text_of,
)

from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import connect_http, serve_http

pytestmark = pytest.mark.http


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


async def test_allowed_call_reaches_upstream_without_the_client_token(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        token = idp.token("alice")
        async with connect(proxy, token) as client:
            result = await client.call_tool("search", {"q": "shoes"})
            who = await client.call_tool("whoami", {})
        assert text_of(result) == "results for shoes"
        assert who.structured_content["authorization"] is None
        assert upstream_app.RECEIVED == [
            {"tool": "search", "authorization": None},
            {"tool": "whoami", "authorization": None},
        ]
        assert token not in json.dumps(upstream_app.RECEIVED)


async def test_real_http_front_never_forwards_the_bearer_token(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VENDOR_TOKEN", "vendor-service-credential-123")
    async with http_upstream() as (url, _):
        cfg = await locked(
            config(
                tmp_path,
                {
                    "vendor": {
                        "url": url,
                        "tools": OPEN_TOOLS,
                        "auth": {"type": "bearer", "secret_env": "VENDOR_TOKEN"},
                    }
                },
            )
        )
        upstream_app.RECEIVED.clear()
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        token = idp.token("alice")
        async with serve_http(proxy) as proxy_url, connect_http(proxy_url, token) as client:
            assert text_of(await client.call_tool("status", {})) == "ok"
            # An upstream answer echoing the injected credential is withheld from the client.
            with pytest.raises(ToolError, match="upstream_output_rejected") as refused:
                await client.call_tool("whoami", {})
            assert "vendor-service-credential" not in str(refused.value)
        # The upstream saw the configured credential, and only that.
        assert [r["tool"] for r in upstream_app.RECEIVED] == ["status", "whoami"]
        assert all(
            r["authorization"] == "Bearer vendor-service-credential-123"
            for r in upstream_app.RECEIVED
        )
        assert token not in json.dumps(upstream_app.RECEIVED)


async def test_refused_calls_never_reach_the_upstream(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        tools = {**OPEN_TOOLS, "search": {"scopes": ["vendor:read"]}}
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": tools}}))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("mallory", scopes=["other"])) as client:
            listed = {t.name for t in await client.list_tools()}
            with pytest.raises(ToolError, match="insufficient_scope"):
                await client.call_tool("search", {"q": "x"})
            # Not in the configuration: neither listed nor callable.
            assert "delete_record" not in listed
            assert "search" not in listed  # hidden: the caller lacks its scope
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("delete_record", {"record_id": 1})
        forged = idp.bad_token("signed_by_stranger", "alice")
        with pytest.raises(Exception, match="invalid_token"):
            async with connect(proxy, forged) as client:
                await client.call_tool("status", {})
        assert upstream_app.RECEIVED == []
        denials = [r for r in records(audit_dir) if r["type"] == "decision"]
        assert any(r["target"] == "search" and r["decision"]["result"] == "deny" for r in denials)


async def test_two_users_never_see_each_others_upstream_session(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        alice, bob = idp.token("alice"), idp.token("bob")

        async def as_user(token: str, value: str) -> list[str]:
            seen = []
            async with connect(proxy, token) as client:
                for i in range(5):
                    await client.call_tool("remember", {"value": f"{value}-{i}"})
                    await asyncio.sleep(0)
                    seen.append(text_of(await client.call_tool("recall", {})))
            return seen

        alice_seen, bob_seen = await asyncio.gather(as_user(alice, "alice"), as_user(bob, "bob"))
        assert alice_seen == [f"alice-{i}" for i in range(5)]
        assert bob_seen == [f"bob-{i}" for i in range(5)]
        # A third user starts with an empty upstream session.
        async with connect(proxy, idp.token("carol")) as client:
            assert text_of(await client.call_tool("recall", {})) == "<nothing>"
        sessions = proxy._securemcp_upstreams[0].sessions  # type: ignore[attr-defined]
        assert sessions.opened == 3  # one upstream session per identity
        assert len(sessions) == 0  # closed with the server's lifespan


async def test_changed_definition_is_blocked_until_relocked(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, upstream):
        upstreams = {"vendor": {"url": url, "tools": OPEN_TOOLS, "pin_check_seconds": 0.01}}
        cfg = await locked(config(tmp_path, upstreams))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        token = idp.token("alice")
        async with connect(proxy, token) as client:
            assert text_of(await client.call_tool("search", {"q": "a"})) == "results for a"
            # Rug pull: the upstream quietly rewrites the tool's description.
            tool = await upstream.get_tool("search")
            tool.description = "Search the catalogue, better."
            await asyncio.sleep(0.02)
            upstream_app.RECEIVED.clear()
            with pytest.raises(ToolError, match="tool_definition_changed"):
                await client.call_tool("search", {"q": "b"})
            assert upstream_app.RECEIVED == []
            # Clients still see the reviewed definition, never the new one.
            listed = {t.name: t for t in await client.list_tools()}
            assert listed["search"].description == upstream_app.DESCRIPTIONS["original"]
            # Another user is blocked too, even with a fresh session.
        async with connect(proxy, idp.token("bob")) as other:
            with pytest.raises(ToolError, match="tool_definition_changed"):
                await other.call_tool("search", {"q": "c"})
        events = [r for r in records(audit_dir) if r["type"] == "config_change"]
        assert any("pin_blocked" in json.dumps(r) for r in events)

        await locked(cfg)  # the operator reviews and re-locks
        await asyncio.sleep(1.1)  # the proxy re-reads a changed lockfile at most once a second
        async with connect(proxy, token) as client:
            assert text_of(await client.call_tool("search", {"q": "d"})) == "results for d"
            listed = {t.name: t for t in await client.list_tools()}
            assert listed["search"].description == "Search the catalogue, better."


async def test_poisoned_definition_is_flagged_and_not_pinned(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream("changed") as (url, _):
        cfg = config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}})
        from securemcp.proxy.locking import lock_upstreams

        lockfile, reports = await lock_upstreams(cfg)
        report = reports[0]
        assert [p.key for p in report.refused] == ["search"]
        assert any("FLAGGED tool 'search'" in line for line in report.lines())
        assert lockfile.upstream("vendor").get("tool", "search") is None  # type: ignore[union-attr]
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            assert "search" not in {t.name for t in await client.list_tools()}
            with pytest.raises(ToolError, match="Unknown tool"):
                await client.call_tool("search", {"q": "x"})
        # Accepting the findings after review pins it.
        lockfile, _ = await lock_upstreams(cfg, accept_findings=True)
        pin = lockfile.upstream("vendor").get("tool", "search")  # type: ignore[union-attr]
        assert pin is not None and "markup" in pin.findings


async def test_upstream_tool_error_passes_through_as_a_tool_error(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            result = await client.call_tool("fail", {}, raise_on_error=False)
        assert result.is_error
        outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
        assert outcomes[-1]["outcome"] == "tool_error"


async def test_slow_upstream_times_out_cleanly(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    async with http_upstream() as (url, _):
        tools = {**OPEN_TOOLS, "slow": {"timeout_seconds": 0.5}}
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": tools}}))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="upstream_timeout"):
                await client.call_tool("slow", {"seconds": 5})
            # The session survives a timed-out request.
            assert text_of(await client.call_tool("status", {})) == "ok"
        outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
        assert any(r["error"] == "upstream_timeout" for r in outcomes)


async def test_upstream_down_is_a_clear_audited_error_and_others_keep_serving(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        async with http_upstream() as (doomed_url, _):
            upstreams = {
                "good": {"url": url, "tools": OPEN_TOOLS},
                "doomed": {"url": doomed_url, "tools": OPEN_TOOLS, "connect_timeout_seconds": 2},
            }
            cfg = await locked(config(tmp_path, upstreams))
        # `doomed` is gone now: its port refuses connections.
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="upstream_unavailable") as refused:
                await client.call_tool("doomed_status", {})
            assert "127.0.0.1" not in str(refused.value)  # no internal detail
            assert text_of(await client.call_tool("good_status", {})) == "ok"
        outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
        assert any(
            r["target"] == "doomed_status" and r["error"] == "upstream_unavailable"
            for r in outcomes
        )


async def test_malformed_upstream_is_a_clear_error(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    async with http_upstream() as (url, _):
        cfg_real = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))

    async def garbage(request: Any) -> Response:
        return Response(b"{not json", media_type="application/json")

    from securemcp.testing.http import serve_asgi

    app = Starlette(routes=[Route("/mcp", garbage, methods=["GET", "POST", "DELETE"])])
    async with serve_asgi(app) as base:
        cfg = config(
            tmp_path,
            {"vendor": {"url": f"{base}/mcp", "tools": OPEN_TOOLS, "connect_timeout_seconds": 2}},
        )
        assert cfg_real.lockfile == cfg.lockfile
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match=r"upstream_(unavailable|error)"):
                await client.call_tool("status", {})


async def test_upstream_meta_cannot_grant_itself_scopes(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, upstream):

        @upstream.tool(meta={"securemcp.dev/scopes": [], "securemcp.dev/risk": "read"})
        def export_all() -> str:
            return "everything"

        tools = {**OPEN_TOOLS, "export_all": {"scopes": ["vendor:admin"], "risk": "admin"}}
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": tools}}))
        pin = (await _lock_entry(cfg, "export_all")).definition
        assert "_meta" not in pin and "meta" not in pin
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="insufficient_scope"):
                await client.call_tool("export_all", {})
        async with connect(proxy, idp.token("root", scopes=["vendor:admin"])) as client:
            assert text_of(await client.call_tool("export_all", {})) == "everything"


async def _lock_entry(cfg: Any, key: str) -> Any:
    from securemcp.proxy.pinning import Lockfile

    entry = Lockfile.load(cfg.lockfile).upstream("vendor").get("tool", key)  # type: ignore[union-attr]
    assert entry is not None
    return entry


async def test_approval_configured_per_tool_stops_the_call_before_the_upstream(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        tools = {**OPEN_TOOLS, "delete_record": {"risk": "destructive", "approval": True}}
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": tools}}))
        proxy, _ = audited_proxy(cfg, idp, tmp_path, approvals=str(tmp_path / "approvals.db"))
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="approval_required"):
                await client.call_tool("delete_record", {"record_id": 7})
        assert upstream_app.RECEIVED == []


async def test_resource_and_template_rules_are_enforced(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """``approval`` and ``max_result_bytes`` configured for a resource or a resource template
    apply to reads through the proxy, as they do to tools and prompts (a template's rule to
    every URI it matches); a read the configuration does not constrain is served."""
    async with http_upstream() as (url, _):
        cfg = await locked(
            config(
                tmp_path,
                {
                    "vendor": {
                        "url": url,
                        "tools": OPEN_TOOLS,
                        "resources": {"docs://readme": {"max_result_bytes": 1}},
                        "templates": {"notes://{topic}": {"approval": True}},
                    }
                },
            )
        )
        proxy, audit_dir = audited_proxy(
            cfg, idp, tmp_path, approvals=str(tmp_path / "approvals.db")
        )
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(Exception, match="result_too_large"):
                await client.read_resource("docs://readme")
            with pytest.raises(Exception, match="approval_required"):
                await client.read_resource("notes://deploys")
        decisions = {
            r["target"]: (r["decision"]["result"], r["decision"].get("reason"))
            for r in records(audit_dir)
            if r["type"] == "decision"
        }
    assert decisions["docs://readme"][0] == "constrain"
    # a template read is recorded by its URI template (its values hashed: docs/audit.md)
    assert decisions["notes://{topic}"] == ("deny", "approval_required")
    assert "notes" not in [r["tool"] for r in upstream_app.RECEIVED]  # never reached upstream


async def test_expose_unlisted_read_only_is_an_explicit_opt_in(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        hidden = await locked(config(tmp_path, {"vendor": {"url": url}}))
        proxy, _ = audited_proxy(hidden, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            assert await client.list_tools() == []
            assert await client.list_resources() == []
        opted = config(
            tmp_path,
            {
                "vendor": {
                    "url": url,
                    "expose_unlisted": "read-only",
                    "unlisted_scopes": ["vendor:read"],
                }
            },
        )
        proxy, _ = audited_proxy(opted, idp, tmp_path)
        async with connect(proxy, idp.token("alice", scopes=["vendor:read"])) as client:
            names = {t.name for t in await client.list_tools()}
            assert names == {"search", "status"}  # the read-only-annotated ones only
            assert text_of(await client.call_tool("status", {})) == "ok"
            readme = await client.read_resource("docs://readme")
            assert readme[0].text == "vendor readme"
            prompt = await client.get_prompt("summarize", {"text": "hi"})
            assert "Summarize: hi" in prompt.messages[0].content.text
        async with connect(proxy, idp.token("bob")) as client:
            with pytest.raises(ToolError, match="insufficient_scope"):
                await client.call_tool("status", {})


async def test_resources_templates_and_prompts_under_a_namespace(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        upstreams = {
            "vendor": {
                "url": url,
                "namespace": "v",
                "tools": {"status": {}},
                "resources": {"docs://readme": {"scopes": ["docs:read"]}},
                "templates": {"notes://{topic}": {}},
                "prompts": {"summarize": {}},
            }
        }
        cfg = await locked(config(tmp_path, upstreams))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice", scopes=["docs:read"])) as client:
            assert {t.name for t in await client.list_tools()} == {"v_status"}
            assert [str(r.uri) for r in await client.list_resources()] == ["docs://v/readme"]
            templates = await client.list_resource_templates()
            assert [t.uri_template for t in templates] == ["notes://v/{topic}"]
            readme = await client.read_resource("docs://v/readme")
            assert readme[0].text == "vendor readme"
            notes = await client.read_resource("notes://v/mcp")
            assert notes[0].text == "notes about mcp"
            prompt = await client.get_prompt("v_summarize", {"text": "hi"})
            assert "Summarize: hi" in prompt.messages[0].content.text
        async with connect(proxy, idp.token("bob")) as client:
            assert await client.list_resources() == []  # needs docs:read
            with pytest.raises(Exception, match="insufficient_scope"):
                await client.read_resource("docs://v/readme")
        decisions = [r for r in records(audit_dir) if r["type"] == "decision"]
        targets = {r["target"] for r in decisions}
        assert {"docs://v/readme", "notes://v/{topic}", "v_summarize"} <= targets


async def test_rate_limits_apply_to_proxied_tools(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        limits = [{"name": "status", "limit": "2/minute", "per": "principal", "tools": ["status"]}]
        proxy, _ = audited_proxy(cfg, idp, tmp_path, rate_limits=limits)
        upstream_app.RECEIVED.clear()
        async with connect(proxy, idp.token("alice")) as client:
            for _ in range(2):
                await client.call_tool("status", {})
            with pytest.raises(ToolError, match="rate_limited"):
                await client.call_tool("status", {})
        assert [r["tool"] for r in upstream_app.RECEIVED] == ["status", "status"]


async def test_upstream_output_goes_through_the_same_output_path(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    async with http_upstream() as (url, _):
        tools = {**OPEN_TOOLS, "search": {"max_result_bytes": 8}}
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": tools}}))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="result_too_large") as refused:
                await client.call_tool("search", {"q": "a long query"})
            assert "results for" not in str(refused.value)  # withheld, not truncated
        outcomes = [r for r in records(audit_dir) if r["type"] == "outcome"]
        assert outcomes[-1]["error"] == "result_too_large"


async def test_a_redirect_never_carries_the_injected_credential_elsewhere(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    from securemcp.testing.http import serve_asgi

    monkeypatch.setenv("VENDOR_TOKEN", "vendor-credential-never-elsewhere")
    seen: list[dict[str, str]] = []

    async def elsewhere(request: Request) -> Response:
        seen.append(dict(request.headers))
        return JSONResponse({})

    async with http_upstream() as (url, _):
        cfg_real = await locked(config(tmp_path, {"vendor": {"url": url, "tools": OPEN_TOOLS}}))
        other_app = Starlette(routes=[Route("/{p:path}", elsewhere, methods=["GET", "POST"])])
        async with serve_asgi(other_app) as other:

            async def redirect(request: Request) -> Response:
                return RedirectResponse(f"{other}/mcp", status_code=307)

            redirector = Starlette(routes=[Route("/mcp", redirect, methods=["GET", "POST"])])
            async with serve_asgi(redirector) as base:
                upstream = {
                    "url": f"{base}/mcp",
                    "tools": OPEN_TOOLS,
                    "connect_timeout_seconds": 2,
                    "auth": {"type": "bearer", "secret_env": "VENDOR_TOKEN"},
                }
                cfg = config(tmp_path, {"vendor": upstream})
                assert cfg.lockfile == cfg_real.lockfile
                proxy, _ = audited_proxy(cfg, idp, tmp_path)
                async with connect(proxy, idp.token("alice")) as client:
                    with pytest.raises(ToolError, match=r"upstream_(unavailable|error)"):
                        await client.call_tool("status", {})
    # Nothing reached the other origin (the proxy follows no redirect, and the MCP SDK refuses
    # cross-origin ones too): the injected credential went nowhere else.
    assert seen == []
