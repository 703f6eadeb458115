"""Policies, approvals and audit records decide on the component version that *runs*.

FastMCP runs the highest version of a component for a call that asks for none, and the highest
version in range for a call that asks for a range. A rules-file ``versions`` rule, an approval
and the audit record must all be about that version, not about the text the caller sent: a
deny rule on version 2 is not dodged by asking for nothing, and an approval granted while v1
was the highest is never spent on v2.
"""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastmcp import FastMCP as BareFastMCP
from fastmcp.server import create_proxy

from securemcp import FastMCP
from securemcp.audit import AuditLog, JsonLinesSink, iter_records
from securemcp.context import Principal
from securemcp.policy import ApprovalGate, RulesPolicy, open_store
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])

DENY_V2 = """
default = "allow"
[[rule]]
name = "no-purge-v2"
effect = "deny"
tools = ["purge"]
versions = ["2"]
"""


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def _purge_versions(mcp: Any, ran: list[str], versions: tuple[str, ...] = ("1", "2")) -> None:
    for version in versions:

        def purge(repo: str, _version: str = version) -> str:
            ran.append(f"v{_version}")
            return f"purged by v{_version}"

        mcp.tool(purge, name="purge", version=version)


async def _purge(client: Any, version: Any = None) -> tuple[bool, str]:
    result = await client.call_tool(
        "purge", {"repo": "prod"}, version=version, raise_on_error=False
    )
    return (not result.is_error), result.content[0].text


def _rules(text: str) -> RulesPolicy:
    return RulesPolicy.from_string(textwrap.dedent(text))


# --- 1. a versions rule judges the version that runs ----------------------------------------


async def test_a_versions_deny_rule_holds_when_the_call_asks_for_no_version(
    idp: FakeIdentityProvider,
) -> None:
    """Asking for no version (FastMCP runs the highest, v2), a range that admits v2, or another
    spelling of 2 never dodges a deny rule on version 2; v1 stays allowed."""
    ran: list[str] = []
    mcp = FastMCP("versions", auth=idp.verifier(audience=AUDIENCE), policy=_rules(DENY_V2))
    _purge_versions(mcp, ran)
    async with connect(mcp, idp.token("mallory")) as client:
        for asked in (None, "2", "2.0", "v2"):
            ok, text = await _purge(client, asked)
            assert not ok and text.startswith("policy_denied"), (asked, text)
        ok, text = await _purge(client, "1")
        assert ok and text == "purged by v1"
    assert ran == ["v1"]


async def test_a_range_asked_for_is_judged_on_the_version_it_resolves_to(
    idp: FakeIdentityProvider,
) -> None:
    from fastmcp.utilities.versions import VersionSpec

    from securemcp.errors import PolicyDenied

    ran: list[str] = []
    mcp = FastMCP("versions", policy=_rules(DENY_V2))
    _purge_versions(mcp, ran)
    with pytest.raises(PolicyDenied):
        await mcp.call_tool("purge", {"repo": "prod"}, version=VersionSpec(gte="1"))
    result = await mcp.call_tool("purge", {"repo": "prod"}, version=VersionSpec(lt="2"))
    assert result.structured_content == {"result": "purged by v1"}
    assert ran == ["v1"]


async def test_a_range_in_a_rule_matches_the_version_that_runs() -> None:
    from fastmcp.utilities.versions import VersionSpec

    from securemcp.errors import PolicyDenied

    ran: list[str] = []
    rules = _rules(
        """
        default = "allow"
        [[rule]]
        name = "not-2-to-9"
        effect = "deny"
        tools = ["purge"]
        versions = [">=2,<10"]
        """
    )
    mcp = FastMCP("versions", policy=rules)
    _purge_versions(mcp, ran, ("1", "2", "10"))
    allowed = (None, VersionSpec(gte="2"), VersionSpec(eq="1"))  # v10, v10, v1
    for version in allowed:
        await mcp.call_tool("purge", {"repo": "prod"}, version=version)
    for version in (VersionSpec(eq="2"), VersionSpec(lt="10")):  # both run v2
        with pytest.raises(PolicyDenied):
            await mcp.call_tool("purge", {"repo": "prod"}, version=version)
    assert ran == ["v10", "v10", "v1"]


async def test_an_allow_rule_on_a_version_does_not_allow_another_that_runs(
    idp: FakeIdentityProvider,
) -> None:
    """``allow`` on version 1 then default deny: a call asking for nothing runs v2 and is denied;
    an unversioned tool never matches a versions rule, whatever version is asked for."""
    ran: list[str] = []
    rules = _rules(
        """
        default = "deny"
        [[rule]]
        name = "v1-only"
        effect = "allow"
        versions = ["1"]
        """
    )
    mcp = FastMCP("versions", auth=idp.verifier(audience=AUDIENCE), policy=rules)
    _purge_versions(mcp, ran)

    @mcp.tool
    def plain() -> str:
        ran.append("plain")
        return "plain"

    async with connect(mcp, idp.token("mallory")) as client:
        assert not (await _purge(client))[0]
        assert (await _purge(client, "1"))[0]
        # asking for version 1 of an unversioned tool runs that tool: no versions rule matches
        result = await client.call_tool("plain", {}, version="1", raise_on_error=False)
        assert result.is_error and "policy_denied" in result.content[0].text
    assert ran == ["v1"]


def _proxied(ran: list[str], policy: Any, **kwargs: Any) -> FastMCP:
    """A securemcp server that mounts a FastMCP proxy of a versioned server: its forwarding
    component is unversioned and passes the caller's version request on, so securemcp cannot
    tell which version runs."""
    backend = BareFastMCP("backend")
    _purge_versions(backend, ran)
    front = FastMCP("front", policy=policy, **kwargs)
    front.mount(create_proxy(backend))
    return front


@pytest.mark.parametrize(
    ("effect", "extra"),
    [
        ("deny", ""),
        ("allow", ""),
        ("require_approval", ""),
        ("constrain", "[rule.constraints]\ntimeout_seconds = 30\n"),
    ],
)
async def test_an_unresolved_version_never_gets_a_more_permissive_decision(
    tmp_path: Path, effect: str, extra: str
) -> None:
    """Behind a proxy the version that runs is the upstream's choice: a rule naming versions
    that could include it refuses (whatever its effect), so the call is decided no more
    permissively than the version it may run (v2 here: denied)."""
    ran: list[str] = []
    rules = _rules(
        f"""
        default = "allow"
        [[rule]]
        name = "about-v2"
        effect = "{effect}"
        tools = ["purge"]
        versions = ["2"]
        {extra}
        [[rule]]
        name = "v2-denied"
        effect = "deny"
        tools = ["purge"]
        versions = ["2"]
        """
    )
    front = _proxied(ran, rules, approvals=str(tmp_path / "a.sqlite3"))
    async with connect(front, None) as client:
        for asked in (None, "2", "2.0"):
            ok, text = await _purge(client, asked)
            assert not ok and text.split(":")[0] == "policy_denied", (effect, asked, text)
        ok, _ = await _purge(client, "1")  # exactly version 1 asked: no rule names it
        assert ok
    assert ran == ["v1"]


async def test_hooks_see_the_version_that_runs_and_the_one_asked_for() -> None:
    seen: list[tuple[str | None, str | None, bool]] = []

    def record(request: Any) -> bool:
        seen.append((request.version, request.requested_version, request.version_resolved))
        return True

    ran: list[str] = []
    mcp = FastMCP("versions", policy=record)
    _purge_versions(mcp, ran)
    async with connect(mcp, None) as client:
        await _purge(client)
        await _purge(client, "1.0")
    front = _proxied([], record)
    async with connect(front, None) as client:
        await _purge(client, "1")
        await _purge(client)
    assert seen == [
        ("2", None, True),
        ("1", "1.0", True),
        (None, "1", False),
        (None, None, False),
    ]


# --- 2. approvals are bound to the version that runs ------------------------------------------


APPROVE_PURGE = """
default = "allow"
[[rule]]
name = "purge-needs-approval"
effect = "require_approval"
tools = ["purge"]
"""


async def test_an_approval_given_while_v1_was_highest_is_never_spent_on_v2(
    idp: FakeIdentityProvider, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = open_store(tmp_path / "approvals.sqlite3")
    ran: list[str] = []
    mcp = FastMCP(
        "versions",
        auth=idp.verifier(audience=AUDIENCE),
        policy=_rules(APPROVE_PURGE),
        approvals=ApprovalGate(store),
    )
    _purge_versions(mcp, ran, ("1",))
    async with connect(mcp, idp.token("alice")) as client:
        ok, text = await _purge(client)  # asks for nothing; v1 is the highest
        assert not ok and "approval_required" in text
        approval = text.split("approval id ")[1].split(")")[0]
        granted = await store.approve(approval, APPROVER, reusable_for=3600)
        assert granted.tool == "tools/call@1 purge"
        # v2 is released: the same call (asking for nothing) now runs v2
        _purge_versions(mcp, ran, ("2",))
        ok, text = await _purge(client)
        assert not ok and "approval_required" in text and approval not in text
        # the approval still serves v1, asked for by any spelling
        assert (await _purge(client, "1"))[0]
        assert (await _purge(client, "1.0"))[0]
    assert ran == ["v1", "v1"]

    from securemcp.cli import main

    listed = ["approvals", "list", "--all", "--store", str(tmp_path / "approvals.sqlite3")]
    assert await asyncio.to_thread(main, listed) == 0
    listing = capsys.readouterr().out
    assert "'purge' version 1" in listing and "'purge' version 2" in listing


async def test_an_unresolved_version_gets_an_approval_of_its_own(tmp_path: Path) -> None:
    store = open_store(tmp_path / "approvals.sqlite3")
    front = _proxied([], _rules(APPROVE_PURGE), approvals=ApprovalGate(store))
    async with connect(front, None) as client:
        for asked in (None, "1"):
            ok, text = await _purge(client, asked)
            assert not ok and "approval_required" in text
    from securemcp.policy.approvals import describe_target

    tools = sorted(a.tool for a in await store.list())
    assert tools == ["tools/call@? purge", "tools/call@?1 purge"]
    assert [describe_target(t) for t in tools] == [
        "'purge' version unresolved",
        "'purge' version unresolved (asked for 1)",
    ]


# --- 3. the audit record names the version that ran -----------------------------------------


async def test_decision_records_name_the_component_version(tmp_path: Path) -> None:
    ran: list[str] = []
    log = AuditLog(tmp_path / "audit")
    mcp = FastMCP("versions", audit=log, policy=_rules(DENY_V2))
    _purge_versions(mcp, ran)

    @mcp.tool
    def plain() -> str:
        return "plain"

    async with connect(mcp, None) as client:
        await _purge(client, "1")
        await _purge(client)  # runs v2: denied
        await client.call_tool("plain", {})
    log.close()
    decisions = [r for r in iter_records(tmp_path / "audit") if r["type"] == "decision"]
    assert [(r["target"], r.get("component_version")) for r in decisions] == [
        ("purge", "1"),
        ("purge", "2"),
        ("plain", None),
    ]
    assert "component_version" not in decisions[2]  # unversioned: the record is unchanged
    assert [r["decision"]["result"] for r in decisions] == ["allow", "deny", "allow"]


@pytest.mark.parametrize("sinks", [False, True], ids=["fast-path", "generic-path"])
async def test_decision_records_say_when_the_version_is_unresolved(
    tmp_path: Path, sinks: bool
) -> None:
    """Behind a proxy securemcp cannot tell which version runs: the decision (allowed, or
    refused before the body runs) records ``component_version: null`` and the version the
    caller asked for; a local unversioned tool's record is unchanged."""
    import io

    ran: list[str] = []
    log = AuditLog(
        tmp_path / "audit",
        key_dir=tmp_path / "keys",
        sinks=[JsonLinesSink(io.StringIO())] if sinks else (),
    )
    front = _proxied(ran, _rules(DENY_V2), audit=log)

    @front.tool
    def plain() -> str:
        return "plain"

    async with connect(front, None) as client:
        assert (await _purge(client, "1"))[0]  # allowed: exactly v1 asked for
        assert not (await _purge(client))[0]  # refused: it may run v2
        await client.call_tool("plain", {})
    log.close()
    decisions = [r for r in iter_records(tmp_path / "audit") if r["type"] == "decision"]
    assert [
        (r["decision"]["result"], r.get("component_version", "-"), r.get("requested_version", "-"))
        for r in decisions
    ] == [("allow", None, "1"), ("deny", None, None), ("allow", "-", "-")]
    assert ran == ["v1"]
