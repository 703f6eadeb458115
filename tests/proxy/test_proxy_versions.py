"""A caller's component version reaches the upstream, and the policy judges that version.

FastMCP serves several versions of one tool or prompt; a client picks one with
``call_tool(..., version="1")`` (``_meta.fastmcp.version``). Through the proxy the choice used to
be dropped: the upstream always ran its highest version, while the caller believed it ran the
one it named. Now an exact version is forwarded (the only caller ``_meta`` the proxy passes on),
the policy and approvals judge exactly that version, and a call asking for none is judged as one
whose version securemcp cannot resolve (the upstream picks it), as for a mounted FastMCP proxy.
The upstreams are real FastMCP servers running in this process, served on loopback HTTP.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Context
from fastmcp import FastMCP as PlainFastMCP
from proxy_support import audited_proxy, config, locked, records

from securemcp.context import Principal
from securemcp.policy import ApprovalGate, RulesPolicy, open_store
from securemcp.policy.hooks import all_of
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http

pytestmark = pytest.mark.http

APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])

DENY_V2 = """
default = "allow"
[[rule]]
name = "no-purge-v2"
effect = "deny"
tools = ["purge"]
versions = ["2"]
"""

APPROVE_PURGE = """
default = "allow"
[[rule]]
name = "purge-needs-approval"
effect = "require_approval"
tools = ["purge"]
"""


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider()


def versioned_upstream(ran: list[str], seen_meta: list[dict[str, Any]]) -> PlainFastMCP:
    """Versions 1 and 2 of tool ``purge`` and prompt ``brief``, plus an unversioned ``status``;
    each records the version that ran and the request ``_meta`` it received."""
    server = PlainFastMCP("vendor")
    for version in ("1", "2"):

        def purge(repo: str, ctx: Context, _version: str = version) -> str:
            ran.append(f"purge v{_version}")
            seen_meta.append(dict(ctx.request_context.meta or {}))  # type: ignore[union-attr]
            return f"purged {repo} by v{_version}"

        def brief(topic: str, _version: str = version) -> str:
            ran.append(f"brief v{_version}")
            return f"brief on {topic} by v{_version}"

        server.tool(purge, name="purge", version=version)
        server.prompt(brief, name="brief", version=version)

    @server.tool
    def status() -> str:
        ran.append("status")
        return "ok"

    return server


async def _proxy(
    url: str, idp: FakeIdentityProvider, tmp_path: Path, **kwargs: Any
) -> tuple[Any, Path]:
    tools = {"purge": {}, "status": {}}
    cfg = await locked(
        config(tmp_path, {"vendor": {"url": url, "tools": tools, "prompts": {"brief": {}}}})
    )
    return audited_proxy(cfg, idp, tmp_path, **kwargs)


async def _purge(client: Any, version: str | None = None) -> tuple[bool, str]:
    result = await client.call_tool(
        "purge", {"repo": "prod"}, version=version, raise_on_error=False
    )
    return (not result.is_error), result.content[0].text


def _rules(text: str) -> RulesPolicy:
    return RulesPolicy.from_string(textwrap.dedent(text))


async def test_the_version_a_caller_names_is_the_one_that_runs_upstream(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """Before: every call ran the upstream's highest version (v2), whatever the caller named."""
    ran: list[str] = []
    async with serve_http(versioned_upstream(ran, [])) as url:
        proxy, audit_dir = await _proxy(url, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            assert await _purge(client, "1") == (True, "purged prod by v1")
            assert await _purge(client, "2") == (True, "purged prod by v2")
            assert await _purge(client) == (True, "purged prod by v2")  # the upstream's choice
            prompt = await client.get_prompt("brief", {"topic": "q3"}, version="1")
            assert prompt.messages[0].content.text == "brief on q3 by v1"
    assert ran == ["purge v1", "purge v2", "purge v2", "brief v1"]
    decided = [r.get("component_version") for r in records(audit_dir) if r["type"] == "decision"]
    assert decided == ["1", "2", None, "1"]


async def test_the_policy_judges_the_version_the_upstream_runs(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """A deny rule on version 2: naming 1 runs v1; naming 2 (any spelling) is denied; naming
    none is denied too, since the upstream picks the version then (its highest may be 2).
    Before: the proxied tool was unversioned, so the rule never applied and every call ran v2."""
    ran: list[str] = []
    seen: list[tuple[str | None, str | None, bool]] = []

    def record(request: Any) -> bool:
        seen.append((request.version, request.requested_version, request.version_resolved))
        return True

    async with serve_http(versioned_upstream(ran, [])) as url:
        proxy, _ = await _proxy(url, idp, tmp_path, policy=all_of(record, _rules(DENY_V2)))
        async with connect(proxy, idp.token("mallory")) as client:
            for asked in (None, "2", "2.0", "v2"):
                ok, text = await _purge(client, asked)
                assert not ok and text.startswith("policy_denied"), (asked, text)
            assert await _purge(client, "1") == (True, "purged prod by v1")
    assert ran == ["purge v1"]
    assert ("1", "1", True) in seen  # judged exactly as version 1


async def test_an_approval_for_version_1_is_never_spent_on_version_2(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """An approval granted for a call naming v1 is bound to v1: a call naming v2, or naming no
    version (the upstream then runs v2), needs its own. Before: all three were the same
    unversioned target, and the v1 approval ran v2 upstream."""
    ran: list[str] = []
    store = open_store(tmp_path / "approvals.sqlite3")
    async with serve_http(versioned_upstream(ran, [])) as url:
        proxy, _ = await _proxy(
            url, idp, tmp_path, policy=_rules(APPROVE_PURGE), approvals=ApprovalGate(store)
        )
        async with connect(proxy, idp.token("alice")) as client:
            ok, text = await _purge(client, "1")
            assert not ok and "approval_required" in text
            approval = text.split("approval id ")[1].split(")")[0]
            granted = await store.approve(approval, APPROVER, reusable_for=3600)
            assert granted.tool == "tools/call@1 purge"
            for asked in ("2", None):
                ok, text = await _purge(client, asked)
                assert not ok and "approval_required" in text and approval not in text, asked
            assert await _purge(client, "1") == (True, "purged prod by v1")
    assert ran == ["purge v1"]
    pending = sorted(a.tool for a in await store.list())
    assert pending == ["tools/call@2 purge", "tools/call@? purge"]


async def test_a_version_the_upstream_does_not_list_is_never_sent(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """The policy judged the version named; an upstream that does not list it would run
    something else (FastMCP runs an unversioned tool for any version asked): refused, unsent."""
    ran: list[str] = []
    async with serve_http(versioned_upstream(ran, [])) as url:
        proxy, _ = await _proxy(url, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            for name, version in (("status", "1"), ("purge", "3")):
                result = await client.call_tool(
                    name,
                    {"repo": "prod"} if name == "purge" else {},
                    version=version,
                    raise_on_error=False,
                )
                assert result.is_error and result.content[0].text.startswith("upstream_error")
    assert ran == []


async def test_only_the_version_of_the_callers_meta_is_forwarded(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """Allow-list: the exact version goes upstream; any other key the caller puts in ``_meta``
    (a spoofed ``client_id``, an application key, other ``fastmcp`` keys) does not. Trace
    context is not copied from the caller's ``_meta`` either: the proxy's client injects the
    proxy's current W3C context (OpenTelemetry propagation). Before: nothing was forwarded, and
    the upstream ran v2."""
    seen_meta: list[dict[str, Any]] = []
    caller_trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    meta = {
        "client_id": "spoofed-admin",
        "traceparent": caller_trace,
        "x-secret": "s3cr3t-value",
        "fastmcp": {"version": "1", "tags": ["admin"]},
    }
    async with serve_http(versioned_upstream([], seen_meta)) as url:
        proxy, _ = await _proxy(url, idp, tmp_path)
        async with connect(proxy, idp.token("alice")) as client:
            result = await client.call_tool("purge", {"repo": "prod"}, meta=meta)
            assert result.content[0].text == "purged prod by v1"
    (received,) = seen_meta
    assert received.get("fastmcp") == {"version": "1"}
    # the proxy's own request keys (its progress token) and its propagated trace context only
    assert set(received) <= {"fastmcp", "traceparent", "tracestate", "progressToken"}
    assert "spoofed" not in str(received) and "s3cr3t" not in str(received)
