"""Policy, approvals, rate limits and constraints enforced by the server's pipeline.

Every refusal is checked at the client with a counter proving the tool body never ran.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from fastmcp.exceptions import ToolError
from fastmcp.tools import Tool
from fastmcp.tools.base import ToolResult

from securemcp import FastMCP
from securemcp.context import Principal
from securemcp.policy import (
    ApprovalGate,
    Decision,
    RateLimit,
    RateLimiter,
    first_match,
    open_store,
    risk_defaults,
)
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def build(idp: FakeIdentityProvider, **kwargs: Any) -> tuple[FastMCP, dict[str, int]]:
    runs: dict[str, int] = {"read": 0, "transfer": 0, "wipe": 0, "slow": 0, "big": 0}
    mcp = FastMCP("policy", auth=idp.verifier(audience=AUDIENCE), **kwargs)

    @mcp.tool(annotations={"readOnlyHint": True})
    def read() -> str:
        runs["read"] += 1
        return "ok"

    @mcp.tool(tags={"payments"})
    def transfer(amount: float, memo: str = "") -> str:
        runs["transfer"] += 1
        return f"sent {amount}"

    @mcp.tool(annotations={"destructiveHint": True})
    def wipe(table: str) -> str:
        runs["wipe"] += 1
        return f"wiped {table}"

    @mcp.tool
    async def slow() -> str:
        runs["slow"] += 1
        await asyncio.sleep(2)
        return "finally"

    @mcp.tool
    def big() -> str:
        runs["big"] += 1
        return "x" * 10_000

    return mcp, runs


async def _call(client: Any, tool: str, args: dict[str, Any] | None = None) -> tuple[bool, str]:
    result = await client.call_tool(tool, args or {}, raise_on_error=False)
    return (not result.is_error), result.content[0].text


async def test_policy_hook_denies_and_never_leaks_its_reason(idp: FakeIdentityProvider) -> None:
    def no_bob(request: Any) -> Decision:
        if request.principal.subject == "bob":
            return Decision.deny("bob is on the naughty list (internal)")
        return Decision.allow()

    mcp, runs = build(idp, policy=no_bob)
    async with connect(mcp, idp.token("bob")) as client:
        ok, text = await _call(client, "read")
    assert not ok
    assert text.startswith("policy_denied:")
    assert "naughty" not in text
    assert runs["read"] == 0
    async with connect(mcp, idp.token("alice")) as client:
        assert await _call(client, "read") == (True, "ok")


async def test_a_raising_policy_fails_closed(idp: FakeIdentityProvider) -> None:
    def broken(request: Any) -> Decision:
        raise RuntimeError("database connection string leaked here")

    mcp, runs = build(idp, policy=broken)
    async with connect(mcp, idp.token("alice")) as client:
        ok, text = await _call(client, "read")
    assert not ok
    assert text.startswith("policy_error:")
    assert "database" not in text
    assert runs["read"] == 0


async def test_rules_file_with_hot_reload(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    rules = tmp_path / "policy.toml"
    rules.write_text(
        'default = "deny"\n[[rule]]\nname = "reads"\neffect = "allow"\nrisk = ["read"]\n'
    )
    mcp, runs = build(idp, policy=str(rules))
    async with connect(mcp, idp.token("alice")) as client:
        assert (await _call(client, "read"))[0]
        assert not (await _call(client, "transfer", {"amount": 5}))[0]
        assert runs["transfer"] == 0
        rules.write_text(
            'default = "deny"\n[[rule]]\nname = "all"\neffect = "allow"\ntools = ["*"]\n'
        )
        await asyncio.sleep(1.1)  # the file is re-checked at most once a second
        assert (await _call(client, "transfer", {"amount": 5}))[0]
    assert runs["transfer"] == 1


async def test_argument_constraints(idp: FakeIdentityProvider) -> None:
    def small_transfers(request: Any) -> Decision:
        return Decision.constrain(arguments={"amount": {"max": 100}, "memo": {"max_length": 5}})

    mcp, runs = build(idp, policy=small_transfers)
    async with connect(mcp, idp.token("alice")) as client:
        assert (await _call(client, "transfer", {"amount": 50}))[0]
        ok, text = await _call(client, "transfer", {"amount": 5000})
        assert not ok
        assert text.startswith("policy_denied:")
        assert not (await _call(client, "transfer", {"amount": 1, "memo": "way too long"}))[0]
    assert runs["transfer"] == 1


async def test_timeout_and_result_size_constraints(idp: FakeIdentityProvider) -> None:
    def limits(request: Any) -> Decision:
        return Decision.constrain(timeout_seconds=0.2, max_result_bytes=1000)

    mcp, runs = build(idp, policy=limits)
    async with connect(mcp, idp.token("alice")) as client:
        ok, text = await _call(client, "slow")
        assert not ok
        assert text.startswith("timeout:")
        ok, text = await _call(client, "big")
        assert not ok
        assert text.startswith("result_too_large:")
        assert "xxxx" not in text
        assert (await _call(client, "read"))[0]
    assert runs["slow"] == 1  # started, then cancelled


async def test_destructive_tools_need_an_approval_bound_to_the_call(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, runs = build(idp, policy=first_match(risk_defaults), approvals=ApprovalGate(store))
    alice = idp.token("alice")
    async with connect(mcp, alice) as client:
        ok, text = await _call(client, "wipe", {"table": "users"})
        assert not ok
        assert text.startswith("approval_required:")
        approval_id = text.split("approval id ")[1].split(")")[0]
        assert runs["wipe"] == 0

        # the requester cannot approve their own call
        requester = Principal(subject="alice", issuer=idp.issuer, scopes=["securemcp:approve"])
        with pytest.raises(Exception, match="may not approve its own request"):
            await store.approve(approval_id, requester)

        await store.approve(approval_id, APPROVER)
        assert await _call(client, "wipe", {"table": "users"}) == (True, "wiped users")
        # single use: the same call needs a new approval
        ok, text = await _call(client, "wipe", {"table": "users"})
        assert not ok
        assert text.startswith("approval_required:")
        # other arguments are a different call
        assert not (await _call(client, "wipe", {"table": "orders"}))[0]
    async with connect(mcp, idp.token("mallory")) as client:
        # another caller cannot ride on alice's approval
        assert not (await _call(client, "wipe", {"table": "users"}))[0]
    assert runs["wipe"] == 1


async def test_an_approval_is_bound_to_the_kind_of_call_it_was_granted_for(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """An approval granted for the prompt ``wipe`` cannot be spent on the tool ``wipe`` with the
    same arguments (nor the other way round): each kind of call needs its own approval."""
    store = open_store(tmp_path / "approvals.sqlite3")

    def everything_needs_approval(request: Any) -> Decision:
        return Decision.require_approval("needs a human")

    mcp, runs = build(idp, policy=everything_needs_approval, approvals=ApprovalGate(store))

    @mcp.prompt(name="wipe")
    def explain_wipe(table: str) -> str:
        runs["explain"] = runs.get("explain", 0) + 1
        return f"what wiping {table} would do"

    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="approval_required") as refused:
            await client.get_prompt("wipe", {"table": "users"})
        prompt_approval = str(refused.value).split("approval id ")[1].split(")")[0]
        granted = await store.approve(prompt_approval, APPROVER)
        assert granted.tool == "prompts/get wipe"
        # the tool of the same name, same arguments: not covered by the prompt's approval
        ok, text = await _call(client, "wipe", {"table": "users"})
        assert not ok and text.startswith("approval_required:")
        assert prompt_approval not in text  # a request of its own
        assert runs["wipe"] == 0
        # the prompt's approval still serves the prompt it was granted for
        rendered = await client.get_prompt("wipe", {"table": "users"})
        assert "what wiping users would do" in rendered.messages[0].content.text
    assert runs["explain"] == 1


async def test_exactly_the_limit_runs_under_100_concurrent_calls(
    idp: FakeIdentityProvider,
) -> None:
    limiter = RateLimiter([RateLimit("per-user", "10/minute")])
    mcp, runs = build(idp, rate_limits=limiter)
    async with connect(mcp, idp.token("alice")) as client:
        outcomes = await asyncio.gather(*(_call(client, "read") for _ in range(100)))
    assert sum(ok for ok, _ in outcomes) == 10
    assert runs["read"] == 10
    refused = [text for ok, text in outcomes if not ok]
    assert all(text.startswith("rate_limited:") for text in refused)
    assert "retry after" in refused[0]
    # another user is not affected
    async with connect(mcp, idp.token("bob")) as client:
        assert (await _call(client, "read"))[0]


async def test_rate_limits_from_rules_list(idp: FakeIdentityProvider) -> None:
    mcp, runs = build(idp, rate_limits=[RateLimit("per-user", "2/minute")])
    async with connect(mcp, idp.token("alice")) as client:
        results = [await _call(client, "read") for _ in range(3)]
    assert [ok for ok, _ in results] == [True, True, False]
    assert runs["read"] == 2


@pytest.mark.http
async def test_address_limit_answers_429_before_any_token_work(
    idp: FakeIdentityProvider,
) -> None:
    import httpx

    from securemcp.testing import serve_http

    limiter = RateLimiter([RateLimit("per-ip", "3/minute", per="address")])
    mcp, runs = build(idp, rate_limits=limiter)
    async with serve_http(mcp) as url, httpx.AsyncClient() as raw:
        statuses = []
        for _ in range(5):
            response = await raw.post(
                url,
                headers={"Authorization": "Bearer not-even-a-jwt"},
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
            )
            statuses.append(response.status_code)
        assert statuses == [401, 401, 401, 429, 429]
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["error"] == "rate_limited"
    assert runs["read"] == 0


async def test_policy_loads_reloads_and_broken_files_are_audited(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    from securemcp.audit import AuditLog, iter_records

    rules = tmp_path / "policy.toml"
    rules.write_text('default = "allow"\n')
    log = AuditLog(tmp_path / "audit")
    mcp, _ = build(idp, policy=str(rules), audit=log)
    async with connect(mcp, idp.token("alice")) as client:
        assert (await _call(client, "read"))[0]
        rules.write_text('default = "deny"\n')
        await asyncio.sleep(1.1)
        assert not (await _call(client, "read"))[0]  # the new version decides
        rules.write_text("this is not toml [")
        await asyncio.sleep(1.1)
        assert not (await _call(client, "read"))[0]  # the old (deny) policy stays in force
    log.close()
    records = list(iter_records(tmp_path / "audit"))
    changes = [r for r in records if r["type"] == "policy_change"]
    assert len(changes) == 2  # loaded at start-up, then reloaded
    assert changes[1]["previous_version"] == changes[0]["policy_version"]
    failed = [r for r in records if r["type"] == "config_change"]
    assert failed
    assert failed[0]["what"] == "policy_reload_failed"


async def test_rate_limit_storage_down_refuses_and_is_audited(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    import socket

    from securemcp.audit import AuditLog, iter_records

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limiter = RateLimiter(
        [RateLimit("per-user", "10/minute")],
        storage_uri=f"redis://:s3cret-password@127.0.0.1:{port}/0",
    )
    log = AuditLog(tmp_path / "audit")
    mcp, runs = build(idp, rate_limits=limiter, audit=log)
    async with connect(mcp, idp.token("alice")) as client:
        ok, text = await _call(client, "read")
    log.close()
    assert not ok
    assert text.startswith("rate_limited:")
    assert runs["read"] == 0
    records = list(iter_records(tmp_path / "audit"))
    failure = next(r for r in records if r["type"] == "config_change")
    assert failure["what"] == "rate_limit_storage_failure"
    assert "s3cret-password" not in str(failure)  # the storage URI's credentials stay out


async def test_rules_on_an_exact_argv_deny_it(idp: FakeIdentityProvider, tmp_path: Path) -> None:
    rules = tmp_path / "policy.toml"
    rules.write_text(
        """
default = "deny"
[[rule]]
name = "block-dangerous-argv"
effect = "deny"
tools = ["run"]
arguments = { argv = { in = [["rm", "-rf", "/"], ["shutdown", "now"]] } }
[[rule]]
name = "anything-but-dd"
effect = "allow"
tools = ["run"]
arguments = { argv = { ne = ["dd", "if=/dev/zero"] }, options = { ne = { force = 1 } } }
"""
    )
    mcp = FastMCP("argv", auth=idp.verifier(audience=AUDIENCE), policy=rules)
    ran: list[list[str]] = []

    @mcp.tool
    def run(argv: list[str], options: dict[str, Any] | None = None) -> str:
        ran.append(argv)
        return "executed"

    async with connect(mcp, idp.token("mallory")) as client:
        for argv in (["rm", "-rf", "/"], ["dd", "if=/dev/zero"]):
            ok, text = await _call(client, "run", {"argv": argv, "options": {}})
            assert not ok and text.startswith("policy_denied:")
        # {force = 1} is not {force = true}: the `ne` holds and the call is allowed.
        ok, _ = await _call(client, "run", {"argv": ["ls"], "options": {"force": True}})
        assert ok
        ok, _ = await _call(client, "run", {"argv": ["ls"], "options": {"force": 1}})
        assert not ok
    assert ran == [["ls"]]


def _swapped_constraints() -> Decision:
    """A ``constrain`` decision whose constraints were swapped after it was built (a frozen
    dataclass still yields to ``object.__setattr__``) for something that limits nothing."""

    class NoLimits:
        arguments: Any = {}
        timeout_seconds = None
        max_result_bytes = None

        def __bool__(self) -> bool:
            return False

    decision = Decision.constrain("cap the answer", max_result_bytes=10)
    object.__setattr__(decision, "constraints", NoLimits())
    return decision


@pytest.mark.parametrize(
    "hook",
    [
        pytest.param(lambda r: Decision("deny", "no"), id="str-deny"),  # type: ignore[arg-type]
        pytest.param(lambda r: Decision(effect="require_approval"), id="str-approval"),  # type: ignore[arg-type]
        pytest.param(lambda r: Decision("denied", "typo"), id="invalid-effect"),  # type: ignore[arg-type]
        pytest.param(
            lambda r: Decision("allow", constraints={"max_result_bytes": 10}),  # type: ignore[arg-type]
            id="constraints-dict",
        ),
        pytest.param(lambda r: Decision("allow", constraints=None), id="constraints-none"),  # type: ignore[arg-type]
        pytest.param(lambda r: _swapped_constraints(), id="constraints-swapped-after"),
    ],
)
async def test_a_malformed_or_string_decision_refuses_and_is_audited(
    idp: FakeIdentityProvider, tmp_path: Path, hook: Any
) -> None:
    from securemcp.audit import AuditLog, iter_records

    log = AuditLog(tmp_path / "audit")
    mcp, runs = build(idp, policy=hook, audit=log, approvals=str(tmp_path / "a.sqlite3"))
    async with connect(mcp, idp.token("mallory")) as client:
        ok, text = await _call(client, "wipe", {"table": "users"})
    log.close()
    assert not ok
    assert text.split(":")[0] in ("policy_denied", "approval_required", "policy_error")
    assert "Traceback" not in text and "Constraints" not in text
    assert runs["wipe"] == 0
    records = [r for r in iter_records(tmp_path / "audit") if r["type"] == "decision"]
    assert [r["decision"]["result"] for r in records] == ["deny"]
    assert records[0]["decision"]["reason"] == text.split(":")[0]


async def test_an_approval_is_bound_to_the_version_that_runs(
    idp: FakeIdentityProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An approval granted for ``purge`` version 1 is never spent on version 2, nor on a call
    that asks for no version (FastMCP runs v2, so that call needs v2's approval); hooks see the
    version that runs."""
    store = open_store(tmp_path / "approvals.sqlite3")
    seen: list[tuple[str | None, str | None]] = []

    def record_version(request: Any) -> None:
        seen.append((request.version, request.requested_version))

    mcp = FastMCP(
        "versions",
        auth=idp.verifier(audience=AUDIENCE),
        policy=first_match(record_version, risk_defaults),
        approvals=ApprovalGate(store),
    )
    ran: list[str] = []

    @mcp.tool(name="purge", version="1", annotations={"destructiveHint": True})
    def purge_v1(repo: str) -> str:
        ran.append("v1")
        return "moved to trash"

    @mcp.tool(name="purge", version="2", annotations={"destructiveHint": True})
    def purge_v2(repo: str) -> str:
        ran.append("v2")
        return "gone forever"

    async with connect(mcp, idp.token("alice")) as client:
        first = await client.call_tool("purge", {"repo": "prod"}, version="1", raise_on_error=False)
        assert first.is_error and "approval_required" in first.content[0].text
        v1_approval = first.content[0].text.split("approval id ")[1].split(")")[0]
        granted = await store.approve(v1_approval, APPROVER)
        assert granted.tool == "tools/call@1 purge"
        second = await client.call_tool(
            "purge", {"repo": "prod"}, version="2", raise_on_error=False
        )
        assert second.is_error and "approval_required" in second.content[0].text
        assert v1_approval not in second.content[0].text
        v2_approval = second.content[0].text.split("approval id ")[1].split(")")[0]
        # nor on a call that asks for no version: FastMCP runs the highest, v2, whose
        # (pending) approval that call needs
        third = await client.call_tool("purge", {"repo": "prod"}, raise_on_error=False)
        assert third.is_error and v1_approval not in third.content[0].text
        assert v2_approval in third.content[0].text
        assert [a.tool for a in await store.list()] == ["tools/call@2 purge"]
        assert ran == []
        # the v1 approval still serves the v1 call it was granted for
        ok = await client.call_tool("purge", {"repo": "prod"}, version="1", raise_on_error=False)
        assert not ok.is_error and ran == ["v1"]
    assert seen == [("1", "1"), ("2", "2"), ("2", None), ("1", "1")]

    from securemcp.cli import main

    listed = ["approvals", "list", "--all", "--store", str(tmp_path / "approvals.sqlite3")]
    assert await asyncio.to_thread(main, listed) == 0
    listing = capsys.readouterr().out
    assert "'purge' version 1" in listing and "'purge' version 2" in listing


async def test_the_policy_judges_the_values_the_tool_receives(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """FastMCP's lax validation would turn "5000" into 5000 and "false" into False after the
    policy saw a string; with a policy configured, such arguments are refused (audited)."""
    from securemcp.audit import AuditLog, iter_records

    rules = tmp_path / "policy.toml"
    rules.write_text(
        """
default = "risk"
[[rule]]
name = "large-transfers"
effect = "require_approval"
tools = ["transfer"]
arguments = { amount = { ge = 1000 } }
[[rule]]
name = "no-wipe-without-dry-run"
effect = "deny"
tools = ["wipe"]
arguments = { dry_run = false }
"""
    )
    log = AuditLog(tmp_path / "audit")
    mcp = FastMCP(
        "coercion",
        auth=idp.verifier(audience=AUDIENCE),
        policy=rules,
        audit=log,
        approvals=str(tmp_path / "a.sqlite3"),
    )
    ran: list[Any] = []

    @mcp.tool
    def transfer(amount: int) -> str:
        ran.append(amount)
        return f"sent {amount}"

    @mcp.tool
    def wipe(dry_run: bool = True) -> str:
        ran.append(dry_run)
        return "wiped"

    async with connect(mcp, idp.token("alice")) as client:
        for tool, args in [
            ("transfer", {"amount": "5000"}),
            ("wipe", {"dry_run": "false"}),
            ("wipe", {"dry_run": 0}),
        ]:
            ok, text = await _call(client, tool, args)
            assert not ok and text.startswith("invalid_arguments:"), text
        ok, text = await _call(client, "transfer", {"amount": 5000})
        assert not ok and text.startswith("approval_required:")
        assert await _call(client, "transfer", {"amount": 50}) == (True, "sent 50")
        assert await _call(client, "wipe", {"dry_run": True}) == (True, "wiped")
    log.close()
    assert ran == [50, True]
    reasons = [
        r["decision"]["reason"] for r in iter_records(tmp_path / "audit") if r["type"] == "decision"
    ]
    assert reasons[:3] == ["invalid_arguments"] * 3


async def test_no_policy_no_argument_check(idp: FakeIdentityProvider) -> None:
    """Without a policy nothing reads the arguments: FastMCP's own validation is left as is."""
    mcp = FastMCP("bare-ish", auth=idp.verifier(audience=AUDIENCE))

    @mcp.tool
    def transfer(amount: int) -> str:
        return f"sent {amount!r}"

    async with connect(mcp, idp.token("alice")) as client:
        assert await _call(client, "transfer", {"amount": "5000"}) == (True, "sent 5000")


async def test_rules_name_resources_as_registered_and_repeats_do_not_dodge_them(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """A concrete resource is found by its exact URI, so a rule naming that URI (encoded, with
    a query) applies as written; a repeated query parameter, of which FastMCP reads the first
    value, does not dodge a rule on that value."""
    rules = tmp_path / "policy.toml"
    rules.write_text(
        """
default = "allow"
[[rule]]
name = "deny-exact"
effect = "deny"
tools = ["notes://team%20plan", "cfg://app?region=eu&env=prod", "data://rep?fmt=raw"]
"""
    )
    mcp = FastMCP("resources", auth=idp.verifier(audience=AUDIENCE), policy=rules)
    ran: list[str] = []

    @mcp.resource("notes://team%20plan")
    def plan() -> str:
        ran.append("plan")
        return "plan"

    @mcp.resource("cfg://app?region=eu&env=prod")
    def app_config() -> str:
        ran.append("cfg")
        return "cfg"

    @mcp.resource("data://rep{?fmt}")
    def report(fmt: str = "x") -> str:
        ran.append(fmt)
        return fmt

    async with connect(mcp, idp.token("alice")) as client:
        for uri in (
            "notes://team%20plan",
            "cfg://app?region=eu&env=prod",
            "data://rep?fmt=raw",
            "data://rep?fmt=raw&fmt=zz",
        ):
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource(uri)
        assert (await client.read_resource("data://rep?fmt=csv"))[0].text == "csv"
    assert ran == ["csv"]


async def test_resource_rules_and_limits_see_the_uri_fastmcp_reads(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """Percent-encoding, a fragment or an unread query parameter neither dodges a deny rule
    on a resource nor gets a fresh rate-limit bucket: FastMCP reads all those spellings as the
    same resource."""
    rules = tmp_path / "policy.toml"
    rules.write_text(
        """
default = "allow"
[[rule]]
name = "no-secret-files"
effect = "deny"
tools = ["files://secret*"]
"""
    )
    mcp = FastMCP(
        "resources",
        auth=idp.verifier(audience=AUDIENCE),
        policy=rules,
        rate_limits=[RateLimit("report", "2/minute", per="principal_tool", tools=["reports://*"])],
    )
    ran: list[str] = []

    @mcp.resource("files://{name}")
    def files(name: str) -> str:
        ran.append(name)
        return f"contents of {name}"

    @mcp.resource("reports://{name}")
    def report(name: str) -> str:
        ran.append(name)
        return f"report {name}"

    async with connect(mcp, idp.token("alice")) as client:
        assert (await client.read_resource("files://public"))[0].text == "contents of public"
        for uri in ("files://secret", "files://%73ecret", "files://%73%65cret#x"):
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource(uri)
        for uri in ("reports://%71%33", "reports://q%33?x=1"):
            await client.read_resource(uri)
        for uri in ("reports://q3#a", "reports://q3", "reports://%71%33?y=2"):
            with pytest.raises(Exception, match="rate_limited"):
                await client.read_resource(uri)
    assert ran == ["public", "q3", "q3"]


class _SchemaTool(Tool):
    """A tool whose input schema the test chooses (a custom Tool, or a proxied one)."""

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        return ToolResult(content="ran")


async def test_an_unusable_schema_or_a_callers_key_is_refused_audited_and_never_logged(
    idp: FakeIdentityProvider, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A schema the argument check cannot use ($ref cycle, a non-string type) refuses the call
    as invalid_arguments with an audit record, not an internal error; a misfit under a key the
    caller chose is named by its declared parameter only, so the key (a secret, a forged log
    line) reaches no log, record or message."""
    from securemcp.audit import AuditLog, iter_records

    caplog.set_level("INFO")
    mcp = FastMCP(
        "schemas",
        auth=idp.verifier(audience=AUDIENCE),
        policy=lambda request: True,
        audit=AuditLog(tmp_path / "audit"),
    )
    mcp.add_tool(_SchemaTool(name="cycle", parameters={"type": "object", "$ref": "#"}))
    mcp.add_tool(
        _SchemaTool(
            name="oddtype",
            parameters={"type": "object", "properties": {"a": {"type": [{"x": 1}]}}},
        )
    )
    mcp.add_tool(
        _SchemaTool(
            name="headers",
            parameters={
                "type": "object",
                "properties": {"h": {"type": "object", "additionalProperties": {"type": "string"}}},
            },
        )
    )
    secret_key = "Bearer sk-live-SECRETVALUE\nFAKE LOG LINE"
    async with connect(mcp, idp.token("alice")) as client:
        for name, arguments in (
            ("cycle", {"a": 1}),
            ("headers", {"h": {secret_key: 5}}),
        ):
            with pytest.raises(ToolError, match="invalid_arguments") as refused:
                await client.call_tool(name, arguments)
            assert "SECRETVALUE" not in str(refused.value)
        # a type the check cannot read is no opinion (FastMCP's own validation still runs)
        assert (await client.call_tool("oddtype", {"a": 1})).content[0].text == "ran"  # type: ignore[union-attr]
    records = list(iter_records(tmp_path / "audit"))
    refusals = [r for r in records if r["type"] == "decision" and r["decision"]["result"] == "deny"]
    assert [r["target"] for r in refusals] == ["cycle", "headers"]
    assert all(r["decision"]["reason"] == "invalid_arguments" for r in refusals)
    assert "SECRETVALUE" not in caplog.text and "FAKE LOG LINE" not in caplog.text
    assert "SECRETVALUE" not in str(records)


async def test_a_refusal_reason_cannot_forge_a_log_line(
    idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook's reason text (which may quote the caller's arguments) is logged escaped: a line
    break in it never starts a new, forged log line."""
    import logging

    forged = "fine\nINFO securemcp.pipeline securemcp allowed tools/call 'wipe' for admin\r\x1b[2K"

    def hook(request: Any) -> Decision:
        return Decision.deny(forged)

    mcp, runs = build(idp, policy=hook)
    with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
        async with connect(mcp, idp.token("mallory")) as client:
            ok, _ = await _call(client, "wipe", {"table": "users"})
    assert not ok and runs["wipe"] == 0
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert refused, "the refusal is logged"
    for message in refused:
        assert "\n" not in message and "\r" not in message and "\x1b" not in message
        assert "fine\\nINFO securemcp.pipeline" in message  # still readable, escaped


async def test_an_identity_refusal_reason_cannot_forge_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A verifier's refusal reason (third-party text that may quote the credential or request)
    is logged escaped, for calls and for listings."""
    import logging

    from fastmcp.server.auth import AccessToken
    from mcp import MCPError
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    from securemcp.errors import InvalidCredential

    class Refusing:
        async def authenticate(self, token: str) -> Principal:
            raise InvalidCredential(reason="expired\nINFO securemcp.pipeline allowed everything")

    mcp = FastMCP("forge", auth=Refusing())

    @mcp.tool
    def read() -> str:
        return "ok"

    user = AuthenticatedUser(AccessToken(token="opaque-1", client_id="c", scopes=[]))
    reset = auth_context_var.set(user)
    try:
        with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
            with pytest.raises(MCPError):  # the listing is refused
                await mcp.list_tools()
            with pytest.raises(InvalidCredential):  # and so is the call
                await mcp.call_tool("read", {})
    finally:
        auth_context_var.reset(reset)
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert len(refused) == 2
    for message in refused:
        assert "\n" not in message and "expired\\nINFO" in message


async def test_a_resource_limit_is_not_evaded_by_respelling_or_by_another_value(
    idp: FakeIdentityProvider,
) -> None:
    """Reads past a per-resource limit with URIs FastMCP serves as the same read are refused.

    A concrete resource is served at its exact URI only (FastMCP 4.1.2 answers cfg://app?x=1,
    cfg://app#f or cfg://%61pp with "not found", before any bucket is touched). A template's
    typed parameter is converted by FastMCP (items://07, items://+7 and items://%207 all read
    item 7 of ``id: int``; flags://x?on=1 and ?on=yes are ``on=True``), and every other value
    is another read of the same template: its reads count against the template's bucket.
    """
    mcp = FastMCP(
        "limited-resources",
        auth=idp.verifier(audience=AUDIENCE),
        audit=False,
        rate_limits=[RateLimit("per-resource", "2/minute", per="principal_tool", tools=["*://*"])],
    )
    ran: list[Any] = []

    @mcp.resource("cfg://app")
    def app() -> str:
        ran.append("app")
        return "app"

    @mcp.resource("items://{id}")
    def item(id: int) -> str:
        ran.append(id)
        return f"item {id}"

    @mcp.resource("flags://x{?on}")
    def flags(on: bool = False) -> str:
        ran.append(on)
        return f"on {on}"

    @mcp.resource("users://{email}/ssn")
    def ssn(email: str) -> str:
        ran.append(email)
        return "078-05-1120"

    async with connect(mcp, idp.token("alice")) as client:
        for uri in ("cfg://app", "cfg://app?x=1", "cfg://app#f", "cfg://%61pp", "cfg://app"):
            if uri == "cfg://app":
                await client.read_resource(uri)
            else:
                with pytest.raises(Exception, match="not found"):
                    await client.read_resource(uri)
        for uri in (
            "items://7",
            "items://07",
            "flags://x?on=true",
            "flags://x?on=1",
            "users://a@example.com/ssn",
            "users://b@example.com/ssn",
        ):
            await client.read_resource(uri)
        for uri in (
            "cfg://app",
            "items://+7",
            "items://%207",
            "items://8",
            "flags://x?on=yes",
            "users://c@example.com/ssn",
        ):
            with pytest.raises(Exception, match="rate_limited"):
                await client.read_resource(uri)
    assert ran == ["app", "app", 7, 7, True, True, "a@example.com", "b@example.com"]


async def test_a_refusal_record_names_the_rule_and_policy_version_that_refused(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """A reviewer reading a ``deny`` record can tell which rule of which policy text refused the
    call, as for an ``allow`` (issue 5: every decision records its rule and policy version)."""
    from securemcp.audit import AuditLog, iter_records
    from securemcp.policy import RulesPolicy

    policy = RulesPolicy.from_string(
        'default = "deny"\n'
        '[[rule]]\nname = "reads"\neffect = "allow"\nrisk = ["read"]\n'
        '[[rule]]\nname = "small-transfers"\neffect = "constrain"\ntools = ["transfer"]\n'
        "[rule.constraints]\narguments = { amount = { max = 100 } }\n"
        '[[rule]]\nname = "wipes-need-a-human"\neffect = "require_approval"\ntools = ["wipe"]\n'
    )
    audit_dir = tmp_path / "audit"
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, runs = build(idp, policy=policy, audit=AuditLog(audit_dir), approvals=ApprovalGate(store))
    async with connect(mcp, idp.token("alice")) as client:
        assert (await _call(client, "read"))[0]
        assert not (await _call(client, "transfer", {"amount": 5000}))[0]
        assert not (await _call(client, "wipe", {"table": "users"}))[0]
        assert not (await _call(client, "big"))[0]
    decisions = {
        r["target"]: r["decision"] for r in iter_records(audit_dir) if r["type"] == "decision"
    }
    assert decisions["read"]["rule"] == "reads"
    assert (decisions["transfer"]["reason"], decisions["transfer"]["rule"]) == (
        "policy_denied",
        "small-transfers",
    )
    assert (decisions["wipe"]["reason"], decisions["wipe"]["rule"]) == (
        "approval_required",
        "wipes-need-a-human",
    )
    assert (decisions["big"]["reason"], decisions["big"]["rule"]) == ("policy_denied", "default")
    assert {d["policy_version"] for d in decisions.values()} == {policy.version}
    assert runs["transfer"] == runs["wipe"] == runs["big"] == 0
