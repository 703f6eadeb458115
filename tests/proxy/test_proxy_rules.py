"""The proxy's configured rules are decided on what the upstream actually receives.

Rules are looked up through the component that serves a call (its upstream and pinned key),
never through the client's spelling of a name or URI; a read is judged on the URI sent
upstream, combining every rule that URI may fall under, strictest wins; a name two components
claim is blocked; the pinned schema is enforced; every kind honours its timeout.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import mcp.types
import pytest
from fastmcp import FastMCP as PlainFastMCP
from fastmcp.exceptions import ToolError
from fastmcp.tools import Tool, ToolResult
from proxy_support import audited_proxy, config, locked, records, text_of

from securemcp.audit.records import args_sha256
from securemcp.context import Principal
from securemcp.policy.approvals import ApprovalGate, open_store
from securemcp.proxy.config import ComponentRule, upstream_from
from securemcp.proxy.credentials import NoAuth
from securemcp.proxy.pinning import Lockfile, PinnedDefinition, UpstreamLock
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.server import create_proxy
from securemcp.proxy.upstream import Upstream
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http

pytestmark = pytest.mark.http

APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


def decisions(audit_dir: Path) -> list[tuple[str, str, str | None]]:
    return [
        (r["target"], r["decision"]["result"], r["decision"].get("reason"))
        for r in records(audit_dir)
        if r["type"] == "decision"
    ]


def notes_upstream(served: list[str]) -> PlainFastMCP:
    server = PlainFastMCP("notes")

    @server.resource("notes://payroll")
    def payroll() -> str:
        served.append("payroll")
        return "CONFIDENTIAL payroll"

    @server.resource("notes://budget")
    def budget() -> str:
        served.append("budget")
        return "budget " + "x" * 200

    @server.resource("notes://unlisted")
    def unlisted() -> str:
        served.append("unlisted")
        return "never reviewed for clients"

    @server.resource("notes://{topic}")
    def note(topic: str) -> str:
        served.append(f"note:{topic}")
        return f"note about {topic}"

    return server


async def test_a_denied_or_hidden_resource_is_refused_however_a_template_spells_it(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """A read through a template is judged on the URI the upstream receives: a resource the
    configuration denies or hides, or guards with approval, a size limit or scopes, keeps its
    rule when the client spells its URI so that only a template matches (percent-encoding, a
    fragment). Before: the rule matched the client's exact URI, the template decoded and
    re-expanded it, and the denied resource was served."""
    served: list[str] = []
    async with serve_http(notes_upstream(served)) as url:
        cfg = await locked(
            config(
                tmp_path,
                {
                    "notes": {
                        "url": url,
                        "resources": {
                            "notes://payroll": {"deny": True},
                            "notes://budget": {"max_result_bytes": 10, "scopes": ["finance"]},
                        },
                        "templates": {"notes://{topic}": {}},
                    }
                },
            )
        )
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice", scopes=["finance"])) as client:
            assert (await client.read_resource("notes://deploys"))[0].text == "note about deploys"
            for uri in (
                "notes://payroll",
                "notes://%70ayroll",
                "notes://payroll#x",
                "notes://%2570ayroll",
                "notes://%75nlisted",  # pinned, not listed in the configuration: hidden
            ):
                with pytest.raises(Exception, match="policy_denied"):
                    await client.read_resource(uri)
            with pytest.raises(Exception, match="result_too_large"):
                await client.read_resource("notes://%62udget")
        async with connect(proxy, idp.token("bob")) as client:  # no 'finance' scope
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource("notes://%62udget")
    assert "payroll" not in served and "unlisted" not in served
    assert served.count("budget") == 1  # alice's read, withheld for its size
    # the template read is recorded by its URI template, the value it read hashed (docs/audit.md)
    payroll = args_sha256({"topic": "payroll"})
    assert any(
        r["type"] == "decision"
        and r["decision"]["result"] == "deny"
        and (r["target"], r["args_sha256"]) == ("notes://{topic}", payroll)
        for r in records(audit_dir)
    )


async def test_expose_unlisted_does_not_open_a_denied_resource_through_a_template(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    served: list[str] = []
    async with serve_http(notes_upstream(served)) as url:
        cfg = await locked(
            config(
                tmp_path,
                {
                    "notes": {
                        "url": url,
                        "expose_unlisted": "read-only",
                        "resources": {"notes://payroll": {"deny": True}},
                    }
                },
            )
        )
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            assert (await client.read_resource("notes://x"))[0].text == "note about x"
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource("notes://%70ayroll")
    assert "payroll" not in served


async def test_resource_rules_apply_to_the_normalised_exposed_uri(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """``file:///srv/x`` under namespace ``docs`` is exposed as ``file://docs/srv/x``; its rule
    applies (before: it was keyed by ``file://docs//srv/x`` and never matched)."""
    reads: list[str] = []
    server = PlainFastMCP("files")

    @server.resource("file:///srv/payroll.csv")
    def payroll() -> str:
        reads.append("payroll")
        return "name,salary\n" + "alice,100000\n" * 50

    async with serve_http(server) as url:
        rule = {"approval": True, "max_result_bytes": 10}
        cfg = await locked(
            config(
                tmp_path,
                {
                    "docs": {
                        "url": url,
                        "namespace": "docs",
                        "resources": {"file:///srv/payroll.csv": rule},
                    }
                },
            )
        )
        proxy, _ = audited_proxy(cfg, idp, tmp_path, approvals=str(tmp_path / "approvals.db"))
        async with connect(proxy, idp.token("alice")) as client:
            uris = [str(r.uri) for r in await client.list_resources()]
            assert uris == ["file://docs/srv/payroll.csv"]
            with pytest.raises(Exception, match="approval_required"):
                await client.read_resource(uris[0])
    assert reads == []


async def test_approval_keeps_the_configured_bounds_and_result_limit(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """``approval = true`` with ``arguments`` bounds and ``max_result_bytes``: a call outside
    the bounds is refused outright (no approver is asked), and an approved call still runs
    within the result limit. Before: approval dropped both."""
    calls: list[float] = []
    server = PlainFastMCP("bank")

    @server.tool
    def transfer(amount: float) -> str:
        calls.append(amount)
        return f"transferred {amount} " + "x" * 500

    async with serve_http(server) as url:
        rule = {"approval": True, "max_result_bytes": 50, "arguments": {"amount": {"max": 100}}}
        cfg = await locked(config(tmp_path, {"bank": {"url": url, "tools": {"transfer": rule}}}))
        store = open_store(tmp_path / "approvals.sqlite3")
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path, approvals=ApprovalGate(store))
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="policy_denied"):
                await client.call_tool("transfer", {"amount": 1_000_000})
            with pytest.raises(ToolError, match="approval_required") as pending:
                await client.call_tool("transfer", {"amount": 50})
            approval_id = str(pending.value).split("approval id ")[1].split(")")[0]
            await store.approve(approval_id, APPROVER)
            with pytest.raises(ToolError, match="result_too_large"):
                await client.call_tool("transfer", {"amount": 50})
    assert calls == [50]  # ran once, approved, and its oversized result was withheld
    approved = [r for r in records(audit_dir) if r["type"] == "decision"][-1]
    assert approved["decision"]["result"] == "require_approval"
    assert approved["decision"]["constraints"]["max_result_bytes"] == 50


async def test_overlapping_templates_apply_the_strictest_rule(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """A URI two templates match gets both rules, strictest wins (approval carrying the merged
    bounds), whichever template FastMCP serves it with and whatever order the file lists them
    in. Before: the first configured matching template's rule alone applied, here the lenient
    one, and the approval was never asked for."""
    served: list[str] = []
    server = PlainFastMCP("files")

    @server.resource("files://{area}/{name}")
    def generic(area: str, name: str) -> str:
        served.append(f"{area}/{name}")
        return f"{area}/{name} " + "x" * 100

    @server.resource("files://hr/{name}")
    def hr(name: str) -> str:
        served.append(f"hr/{name}")
        return f"HR record {name} " + "x" * 100

    async with serve_http(server) as url:
        templates = {  # the lenient, narrower one first (and first in the catalog too)
            "files://hr/{name}": {"max_result_bytes": 20},
            "files://{area}/{name}": {"approval": True},
        }
        cfg = await locked(config(tmp_path, {"files": {"url": url, "templates": templates}}))
        store = open_store(tmp_path / "approvals.sqlite3")
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path, approvals=ApprovalGate(store))
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(Exception, match="approval_required") as pending:
                await client.read_resource("files://hr/alice")
            approval_id = str(pending.value).split("approval id ")[1].split(")")[0]
            await store.approve(approval_id, APPROVER)
            with pytest.raises(Exception, match="result_too_large"):  # the other rule's bound
                await client.read_resource("files://hr/alice")
    assert len(served) == 1  # only the approved read reached the upstream
    approved = [r for r in records(audit_dir) if r["type"] == "decision"][-1]
    assert approved["decision"]["result"] == "require_approval"
    assert approved["decision"]["constraints"]["max_result_bytes"] == 20


def _pin(kind: str, definition: dict[str, Any]) -> PinnedDefinition:
    return PinnedDefinition.of(kind, definition)  # type: ignore[arg-type]


async def test_a_name_two_pins_claim_after_a_reload_is_blocked(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """Every catalog rebuild re-checks names: a lockfile reload that makes two pins expose one
    name (here ``docs://h/a/../b`` and ``docs://h/b``, both ``docs://h/b`` once normalised)
    blocks it: not listed, refused by the policy (audited), its pins blocked. Before: only the
    start-up check existed, and one pin silently replaced the other."""
    lock_path = tmp_path / "proxy.lock.json"
    first = _pin("resource", {"uri": "docs://h/b", "name": "b"})
    second = _pin("resource", {"uri": "docs://h/a/../b", "name": "b2"})
    Lockfile.empty().with_upstream(UpstreamLock.create("vendor", [first])).save(lock_path)
    cfg = config(
        tmp_path,
        {
            "vendor": {
                "url": "http://127.0.0.1:9/mcp",
                "resources": {"docs://h/b": {}, "docs://h/a/../b": {"scopes": ["admin"]}},
            }
        },
    )
    proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
    async with connect(proxy, idp.token("alice")) as client:
        assert [str(r.uri) for r in await client.list_resources()] == ["docs://h/b"]
        Lockfile.empty().with_upstream(UpstreamLock.create("vendor", [first, second])).save(
            lock_path
        )
        await asyncio.sleep(1.2)  # the lockfile is re-read at most once a second
        assert await client.list_resources() == []
        with pytest.raises(Exception, match="policy_denied"):
            await client.read_resource("docs://h/b")
    events = [r for r in records(audit_dir) if r["type"] == "config_change"]
    blocked = [e for e in events if e.get("what") == "proxy.pin_blocked"]
    assert {e["details"]["key"] for e in blocked} == {"docs://h/b", "docs://h/a/../b"}
    assert ("docs://h/b", "deny", "policy_denied") in decisions(audit_dir)


def test_two_providers_claiming_one_name_are_blocked_not_shadowed(tmp_path: Path) -> None:
    """The catalog blocks a name two upstreams expose (reachable only when providers are built
    without a validated configuration: the file's namespace rules make it impossible)."""
    from securemcp.proxy.components import ProxyCatalog, UpstreamProvider

    tool = _pin("tool", {"name": "b_c", "inputSchema": {"type": "object"}})
    other = _pin("tool", {"name": "c", "inputSchema": {"type": "object"}})
    lock = Lockfile.empty()
    lock = lock.with_upstream(UpstreamLock.create("a", [tool]))
    lock = lock.with_upstream(UpstreamLock.create("a_b", [other]))
    lock.save(tmp_path / "lock.json")
    pins = PinState(tmp_path / "lock.json", quiet=True)
    registry = ProxyCatalog()
    providers = []
    for name, key, rule in (("a", "b_c", ComponentRule(approval=True)), ("a_b", "c", None)):
        rules = {("tool", key): rule or ComponentRule()}
        settings = upstream_from(name, url="http://127.0.0.1:9/mcp", rules=rules)
        upstream = Upstream(settings, NoAuth(), pins)
        providers.append(UpstreamProvider(upstream, name, registry=registry))
    found = registry.rules_for("tools/call", "a_b_c")
    assert found is not None and found.denied and found.approval
    assert registry.collisions()
    assert all(not asyncio.run(p._list_tools()) for p in providers)
    assert pins.blocked("a", "tool", "b_c") is not None
    assert pins.blocked("a_b", "tool", "c") is not None


def test_startup_refuses_a_name_two_pins_claim(tmp_path: Path) -> None:
    first = _pin("resource", {"uri": "docs://h/b", "name": "b"})
    second = _pin("resource", {"uri": "docs://h/a/../b", "name": "b2"})
    lock = Lockfile.empty().with_upstream(UpstreamLock.create("vendor", [first, second]))
    lock.save(tmp_path / "proxy.lock.json")
    cfg = config(
        tmp_path,
        {
            "vendor": {
                "url": "http://127.0.0.1:9/mcp",
                "resources": {"docs://h/b": {}, "docs://h/a/../b": {}},
            }
        },
    )
    with pytest.raises(Exception, match="docs://h/b"):
        create_proxy(cfg, audit=False)


RECEIVED: list[dict[str, Any]] = []


class _HiddenParamTool(Tool):
    """Advertises ``q`` only; would honour anything else it is sent."""

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        RECEIVED.append(dict(arguments))
        return ToolResult(content=[mcp.types.TextContent(type="text", text="ok")])


async def test_the_pinned_schema_and_prompt_arguments_are_enforced(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """Arguments the pinned (reviewed) definition does not allow never reach the upstream: they
    are refused with ``invalid_arguments``, audited. Before: forwarded verbatim."""
    RECEIVED.clear()
    prompts: list[dict[str, Any]] = []
    server = PlainFastMCP("vendor")
    schema = {
        "type": "object",
        "properties": {"q": {"type": "string"}},
        "required": ["q"],
        "additionalProperties": False,
    }
    server.add_tool(_HiddenParamTool(name="search", description="Search.", parameters=schema))

    @server.prompt
    def summarize(text: str, style: str = "short") -> str:
        prompts.append({"text": text, "style": style})
        return f"Summarize: {text}"

    async with serve_http(server) as url:
        cfg = await locked(
            config(
                tmp_path,
                {"vendor": {"url": url, "tools": {"search": {}}, "prompts": {"summarize": {}}}},
            )
        )
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            assert text_of(await client.call_tool("search", {"q": "shoes"})) == "ok"
            for bad in ({"q": "shoes", "scope": "all_tenants"}, {"q": 42}, {}):
                with pytest.raises(ToolError, match="invalid_arguments") as refused:
                    await client.call_tool("search", bad)
                assert "all_tenants" not in str(refused.value)
            await client.get_prompt("summarize", {"text": "hi"})
            with pytest.raises(Exception, match="invalid_arguments"):
                await client.get_prompt("summarize", {})
            with pytest.raises(Exception, match="invalid_arguments"):
                await client.get_prompt("summarize", {"text": "hi", "system": "obey"})
    assert RECEIVED == [{"q": "shoes"}]
    assert prompts == [{"text": "hi", "style": "short"}]
    # audited: refused by the pinned definition (an outcome record after the allow decision)
    # or, for a JSON type the schema does not declare, by the pipeline before the policy runs
    # (a deny decision; see securemcp.policy.arguments)
    audited = [
        r
        for r in records(audit_dir)
        if (r["type"] == "outcome" and r["error"] == "invalid_arguments")
        or (r["type"] == "decision" and r["decision"].get("reason") == "invalid_arguments")
    ]
    assert len(audited) == 5


async def test_timeouts_apply_to_resources_templates_and_prompts(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    server = PlainFastMCP("slow")

    @server.resource("res://slow")
    async def slow_resource() -> str:
        await asyncio.sleep(5)
        return "late"

    @server.resource("res://slow/{name}")
    async def slow_template(name: str) -> str:
        await asyncio.sleep(5)
        return "late"

    @server.prompt
    async def slow_prompt() -> str:
        await asyncio.sleep(5)
        return "late"

    async with serve_http(server) as url:
        limit = {"timeout_seconds": 0.3}
        cfg = await locked(
            config(
                tmp_path,
                {
                    "slow": {
                        "url": url,
                        "resources": {"res://slow": limit},
                        "templates": {"res://slow/{name}": limit},
                        "prompts": {"slow_prompt": limit},
                    }
                },
            )
        )
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            for call in (
                lambda: client.read_resource("res://slow"),
                lambda: client.read_resource("res://slow/x"),
                lambda: client.get_prompt("slow_prompt", {}),
            ):
                started = asyncio.get_running_loop().time()
                with pytest.raises(Exception, match="upstream_timeout"):
                    await call()
                assert asyncio.get_running_loop().time() - started < 3


@pytest.mark.parametrize(
    ("rule", "refusal"),
    [({"approval": True}, "approval_required"), ({"max_result_bytes": 10}, "result_too_large")],
)
async def test_an_encoded_slash_does_not_escape_a_template_rule(
    idp: FakeIdentityProvider, tmp_path: Path, rule: dict[str, Any], refusal: str
) -> None:
    """FastMCP matches ``notes://a%2Fb`` to ``notes://{topic}`` (topic ``a/b``) while the
    policy's decoded target ``notes://a/b`` matches no template: the template's rule must
    apply to both spellings. Before: the read was allowed and served unconstrained."""
    served: list[str] = []
    upstream = PlainFastMCP("notes")

    @upstream.resource("notes://{topic}")
    def note(topic: str) -> str:
        served.append(topic)
        return "x" * 500

    async with serve_http(upstream) as url:
        cfg = await locked(
            config(tmp_path, {"notes": {"url": url, "templates": {"notes://{topic}": rule}}})
        )
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            for uri in ("notes://plain", "notes://a%2Fb"):
                with pytest.raises(Exception, match=refusal):
                    await client.read_resource(uri)
    if refusal == "approval_required":
        assert served == []  # never sent upstream
    decisions = [r["decision"]["result"] for r in records(audit_dir) if r["type"] == "decision"]
    assert "allow" not in decisions


class _EchoTool(Tool):
    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(content=[mcp.types.TextContent(type="text", text="ok")])


async def test_a_schema_refusal_never_logs_the_callers_keys(
    idp: FakeIdentityProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Under ``additionalProperties`` the failing path is made of keys the caller chose: the
    reason names the place in the pinned schema instead, so no caller text (a secret, a forged
    log line) reaches the log or the audit record."""
    upstream = PlainFastMCP("vendor")
    schema = {
        "type": "object",
        "properties": {
            "m": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}}
        },
    }
    upstream.add_tool(_EchoTool(name="put", description="Put.", parameters=schema))
    caplog.set_level("INFO")
    secret_key = "sk_live_SECRETVALUE\nFAKE LOG LINE"
    async with serve_http(upstream) as url:
        cfg = await locked(config(tmp_path, {"vendor": {"url": url, "tools": {"put": {}}}}))
        proxy, audit_dir = audited_proxy(cfg, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            with pytest.raises(ToolError, match="invalid_arguments"):
                await client.call_tool("put", {"m": {secret_key: "too long"}})
    assert "SECRETVALUE" not in caplog.text and "FAKE LOG LINE" not in caplog.text
    assert "/properties/m/additionalProperties/maxLength" in caplog.text
    assert "SECRETVALUE" not in str(records(audit_dir))


async def test_a_read_is_judged_once_per_call_and_never_on_stale_pins(
    idp: FakeIdentityProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy and the component that serves a read both need its rules; they share one
    computation (each scanned every configured template before), and a block added since is
    still seen by the next read."""
    from securemcp.proxy import components

    served: list[str] = []
    async with serve_http(notes_upstream(served)) as url:
        upstream = {
            "url": url,
            "resources": {"notes://budget": {}},
            # A second, wider template: every read through the first is matched against it.
            "templates": {"notes://{topic}": {}, "notes://{topic*}": {"max_result_bytes": 500}},
        }
        cfg = await locked(config(tmp_path, {"notes": upstream}))
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        scans: list[str] = []
        real_match = components.match_uri_template

        def counted(uri: str, template: str) -> Any:
            scans.append(template)
            return real_match(uri, template)

        monkeypatch.setattr(components, "match_uri_template", counted)
        async with connect(proxy, idp.token("alice")) as client:
            assert (await client.read_resource("notes://deploys"))[0].text == "note about deploys"
            assert scans == ["notes://{topic*}"]  # once for the call, not once per stage
            assert (await client.read_resource("notes://%62udget"))[0].text.startswith("budget")
            pins = proxy._securemcp_upstreams[0].pins  # type: ignore[attr-defined]
            pins.block("notes", "resource", "notes://budget", "changed")
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource("notes://%62udget")
    assert served == ["note:deploys", "budget"]
