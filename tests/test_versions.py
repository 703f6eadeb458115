"""Component versions: the pipeline authorizes the version a call asks for, not the highest one.

FastMCP serves several versions of one tool, prompt, resource or resource template, each with its
own ``scopes=``. A caller names a version (``version="1"`` on the client, ``_meta.fastmcp.version``
on the wire); the pipeline must decide on that version, and the core's resolution is re-checked
against what was authorized, so neither a stale cache nor a mismatch can serve a version the
caller may not use.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from securemcp import FastMCP
from securemcp.audit import AuditLog, iter_records
from securemcp.testing import FakeIdentityProvider, connect, serve_http

AUDIENCE = "https://mcp.securemcp.test/mcp"
ACCEPT = "application/json, text/event-stream"

Call = Callable[[Any, str | None], Awaitable[str]]


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def versioned_server(
    idp: FakeIdentityProvider, runs: list[str], *, admin_version: str = "1", audit: Any = None
) -> FastMCP:
    """Every kind of component in two versions; ``admin_version`` needs ``admin``."""
    mcp = FastMCP("versions", auth=idp.verifier(), audit=audit)
    public_version = "2" if admin_version == "1" else "1"
    for version in ("1", "2"):
        scopes = ["admin"] if version == admin_version else None
        label = f"{'admin' if version == admin_version else 'public'} v{version}"

        body, template_body = _bodies(label, runs)
        mcp.tool(body, name="t", version=version, scopes=scopes)
        mcp.prompt(body, name="p", version=version, scopes=scopes)
        mcp.resource("data://r", name=f"r{version}", version=version, scopes=scopes)(body)
        mcp.resource("tmpl://{name}", name=f"m{version}", version=version, scopes=scopes)(
            template_body
        )
    assert public_version != admin_version
    return mcp


def _bodies(label: str, runs: list[str]) -> tuple[Callable[[], str], Callable[[str], str]]:
    def body() -> str:
        runs.append(label)
        return label

    def template_body(name: str) -> str:
        runs.append(label)
        return f"{label} {name}"

    return body, template_body


async def _tool(client: Any, version: str | None) -> str:
    result = await client.call_tool("t", {}, version=version, raise_on_error=False)
    return str(result.content[0].text)


async def _prompt(client: Any, version: str | None) -> str:
    try:
        result = await client.get_prompt("p", version=version)
    except Exception as exc:
        return str(exc)
    return str(result.messages[0].content.text)


async def _resource(client: Any, version: str | None) -> str:
    try:
        contents = await client.read_resource("data://r", version=version)
    except Exception as exc:
        return str(exc)
    return str(contents[0].text)


async def _template(client: Any, version: str | None) -> str:
    try:
        contents = await client.read_resource("tmpl://x", version=version)
    except Exception as exc:
        return str(exc)
    return str(contents[0].text)


KINDS: dict[str, tuple[Call, str, str]] = {
    "tool": (_tool, "tools/call", "t"),
    "prompt": (_prompt, "prompts/get", "p"),
    "resource": (_resource, "resources/read", "data://r"),
    "template": (_template, "resources/read", "tmpl://x"),
}

#: The target audit records name (a template read by its URI template: docs/audit.md).
RECORDED = {"tmpl://x": "tmpl://{name}"}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_an_older_version_keeps_its_own_scopes(
    idp: FakeIdentityProvider, tmp_path: Path, kind: str
) -> None:
    call, method, target = KINDS[kind]
    runs: list[str] = []
    log = AuditLog(tmp_path / "audit")
    mcp = versioned_server(idp, runs, audit=log)
    async with connect(mcp, idp.token("mallory", scopes=["user"])) as client:
        default = await call(client, None)
        refused = await call(client, "1")
    async with connect(mcp, idp.token("ada", scopes=["admin"])) as client:
        granted = await call(client, "1")
    log.close()
    assert default.startswith("public v2")
    assert refused.startswith("insufficient_scope: Missing scope(s): admin")
    assert granted.startswith("admin v1")
    assert runs == ["public v2", "admin v1"]  # the refused body never ran
    decisions = [
        (r["decision"]["result"], r["decision"].get("reason"))
        for r in iter_records(tmp_path / "audit")
        if r["type"] == "decision"
        and r["method"] == method
        and r["target"] == RECORDED.get(target, target)
    ]
    # decided on the version asked for: a deny record, not an allow the core then overturned
    assert decisions == [("allow", ""), ("deny", "insufficient_scope"), ("allow", "")]


@pytest.mark.parametrize("kind", list(KINDS))
async def test_the_core_rechecks_the_version_it_resolves(
    idp: FakeIdentityProvider, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Should the pipeline authorize another version than the core then serves (here: made to
    ignore the requested version), the core's re-check still refuses: the tripwire alone."""
    import securemcp.pipeline

    monkeypatch.setattr(securemcp.pipeline, "requested_version", lambda context: None)
    call = KINDS[kind][0]
    runs: list[str] = []
    mcp = versioned_server(idp, runs)
    async with connect(mcp, idp.token("mallory", scopes=["user"])) as client:
        refused = await call(client, "1")
    assert "insufficient_scope" in refused
    assert runs == []


async def test_server_side_calls_ask_for_versions_too(idp: FakeIdentityProvider) -> None:
    from fastmcp.utilities.versions import VersionSpec
    from mcp.server.auth.middleware.auth_context import auth_context_var
    from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser

    from securemcp.errors import InsufficientScope
    from securemcp.testing.client import _access_token_for

    runs: list[str] = []
    mcp = versioned_server(idp, runs)
    user = await _access_token_for(mcp, idp.token("mallory", scopes=["user"]))
    reset = auth_context_var.set(AuthenticatedUser(user))
    try:
        assert (await mcp.call_tool("t", {})).structured_content == {"result": "public v2"}
        for version in (VersionSpec(eq="1"), VersionSpec(lt="2"), VersionSpec(gte="0", lt="2")):
            with pytest.raises(InsufficientScope):
                await mcp.call_tool("t", {}, version=version)
            with pytest.raises(InsufficientScope):
                await mcp.read_resource("data://r", version=version)
    finally:
        auth_context_var.reset(reset)
    assert runs == ["public v2"]


def _wire_call(method: str, target: str, version: str) -> bytes:
    import json

    key = "uri" if method == "resources/read" else "name"
    params: dict[str, Any] = {key: target, "_meta": {"fastmcp": {"version": version}}}
    if method != "resources/read":
        params["arguments"] = {}
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": method, "params": params}).encode()


@pytest.mark.http
@pytest.mark.parametrize("kind", list(KINDS))
async def test_http_step_up_decides_on_the_version_asked_for(
    idp: FakeIdentityProvider, kind: str
) -> None:
    """Over real HTTP the 403 step-up challenge is for the version asked for: an older
    version needing ``admin`` is refused with 403, and a public older version is served even
    though the highest one needs ``admin``."""
    _, method, target = KINDS[kind]
    headers = {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "MCP-Protocol-Version": "2025-11-25",
        "Authorization": f"Bearer {idp.token('mallory', scopes=['user'])}",
    }
    runs: list[str] = []
    older_admin = versioned_server(idp, runs, admin_version="1")
    async with serve_http(older_admin, stateless_http=True) as url, httpx.AsyncClient() as http:
        refused = await http.post(url, headers=headers, content=_wire_call(method, target, "1"))
    newer_admin = versioned_server(idp, runs, admin_version="2")
    async with serve_http(newer_admin, stateless_http=True) as url, httpx.AsyncClient() as http:
        served = await http.post(url, headers=headers, content=_wire_call(method, target, "1"))
    assert refused.status_code == 403
    assert 'scope="admin"' in refused.headers["www-authenticate"]
    assert served.status_code == 200, served.text
    assert "public v1" in served.text
    assert runs == ["public v1"]
