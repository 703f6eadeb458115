"""Session visibility rules behave exactly as in FastMCP, without a store read per lookup.

``securemcp._session_state`` answers FastMCP's per-lookup read of a session's visibility rules
without the state store while no rule can exist. These tests run the same session-visibility
scenario on bare FastMCP and on securemcp and compare what each client sees; prove the store is
no longer read on the call path; and attack the shortcut: a rule written through the server, a
rule written by another replica into a shared store, a rule written by an operation the front
does not know.
"""

from __future__ import annotations

from typing import Any

import fastmcp
import pytest
from fastmcp import Client, Context
from key_value.aio.stores.memory import MemoryStore

import securemcp
from securemcp._session_state import VISIBILITY_RULES_SUFFIX, SessionStateFront

pytestmark = pytest.mark.anyio


def build(cls: Any, **kwargs: Any) -> Any:
    if cls is securemcp.FastMCP:
        kwargs.setdefault("audit", False)
    mcp = cls("visibility", **kwargs)

    @mcp.tool
    async def hide(name: str, ctx: Context) -> str:
        await ctx.disable_components(names={name})
        return "hidden"

    @mcp.tool
    async def show(name: str, ctx: Context) -> str:
        await ctx.enable_components(names={name})
        return "shown"

    @mcp.tool
    async def remember(value: str, ctx: Context) -> str:
        await ctx.set_state("note", value)
        return str(await ctx.get_state("note"))

    @mcp.tool
    def secret() -> str:
        return "the secret"

    return mcp


async def visible(client: Client[Any]) -> list[str]:
    return sorted(tool.name for tool in await client.list_tools())


async def outcome(client: Client[Any], name: str, args: dict[str, Any] | None = None) -> str:
    result = await client.call_tool(name, args or {}, raise_on_error=False)
    text = result.content[0].text if result.content else ""
    return f"{'error' if result.is_error else 'ok'}: {text}"


async def scenario(server: Any) -> list[Any]:
    """What a client observes while one session hides, then shows, a tool."""
    seen: list[Any] = []
    async with Client(server) as client:
        seen.append(await visible(client))
        seen.append(await outcome(client, "secret"))
        seen.append(await outcome(client, "remember", {"value": "kept"}))
        seen.append(await outcome(client, "hide", {"name": "secret"}))
        seen.append(await visible(client))
        seen.append(await outcome(client, "secret"))
    async with Client(server) as client:  # rules are scoped beyond one connection in memory
        seen.append(await visible(client))
        seen.append(await outcome(client, "show", {"name": "secret"}))
        seen.append(await visible(client))
        seen.append(await outcome(client, "secret"))
    return seen


async def test_session_rules_give_fastmcps_answers() -> None:
    bare = await scenario(build(fastmcp.FastMCP))
    secure = await scenario(build(securemcp.FastMCP))
    assert secure == bare
    # and the scenario really exercised the rules: hidden, refused, then back
    assert "secret" in bare[0] and "secret" not in bare[4]
    assert bare[5].startswith("error") and bare[9] == "ok: the secret"


class CountingStore:
    """Wraps FastMCP's state adapter and counts the reads of visibility-rule keys."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.rule_reads = 0

    async def get(self, key: str, **kwargs: Any) -> Any:
        if key.endswith(VISIBILITY_RULES_SUFFIX):
            self.rule_reads += 1
        return await self.store.get(key=key, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def test_calls_do_not_read_the_store_while_no_rule_exists() -> None:
    server = build(securemcp.FastMCP)
    front = server._state_store
    assert isinstance(front, SessionStateFront)
    counting = front._store = CountingStore(front._store)
    async with Client(server) as client:
        for _ in range(5):
            assert await outcome(client, "secret") == "ok: the secret"
        assert "secret" in await visible(client)
        assert await outcome(client, "remember", {"value": "x"}) == "ok: x"  # other state: fine
        assert counting.rule_reads == 0
        assert not front.rules_may_exist
        # the first rule ends the shortcut: from now on every lookup asks the store
        await outcome(client, "hide", {"name": "secret"})
        assert front.rules_may_exist
        assert await outcome(client, "secret") != "ok: the secret"
        assert counting.rule_reads >= 1


async def test_bare_fastmcp_reads_the_store_on_every_call() -> None:
    """The cost the front removes is real: FastMCP asks the store on each call in a session."""
    server = build(fastmcp.FastMCP)
    counting = CountingStore(server._state_store)
    server._FastMCP__state_store = counting
    async with Client(server) as client:
        for _ in range(3):
            await outcome(client, "secret")
    assert counting.rule_reads >= 3


async def test_a_shared_store_is_read_every_time() -> None:
    """A store passed in may be shared by replicas: a rule another one writes is honored."""
    shared = MemoryStore()
    writer = build(securemcp.FastMCP, session_state_store=shared)
    reader = build(securemcp.FastMCP, session_state_store=shared)
    assert not isinstance(reader._state_store, SessionStateFront)
    async with Client(reader) as client:
        assert await outcome(client, "secret") == "ok: the secret"
        async with Client(writer) as other:
            assert await outcome(other, "hide", {"name": "secret"}) == "ok: hidden"
        assert "secret" not in await visible(client)
        assert await outcome(client, "secret") != "ok: the secret"


async def test_unknown_store_operations_end_the_shortcut() -> None:
    server = build(securemcp.FastMCP)
    front = server._state_store
    assert isinstance(front, SessionStateFront)
    key = "process" + VISIBILITY_RULES_SUFFIX
    # a rule written behind FastMCP's back, by an operation the front does not know
    from fastmcp.server.server import StateValue

    await front.put_many(
        keys=[key], values=[StateValue(value=[{"enabled": False, "names": ["secret"]}])]
    )
    assert front.rules_may_exist
    assert (await front.get(key)) is not None
    async with Client(server) as client:
        assert "secret" not in await visible(client)


async def test_a_rule_key_write_of_any_kind_ends_the_shortcut() -> None:
    from fastmcp.server.server import StateValue

    store = CountingStore(fastmcp.FastMCP("plain")._state_store)  # FastMCP's own adapter
    front = SessionStateFront(store)
    rule_key = "s" + VISIBILITY_RULES_SUFFIX
    assert await front.get(rule_key, default="absent") == "absent"
    assert store.rule_reads == 0
    await front.put("s:other", StateValue(value=1))
    assert not front.rules_may_exist  # other keys do not matter
    assert (await front.get("s:other")).value == 1
    await front.put(rule_key, StateValue(value=[]))
    assert front.rules_may_exist
    assert (await front.get(rule_key)).value == []
    assert store.rule_reads == 1
    assert await front.delete(rule_key)
    assert await front.get(rule_key, default="absent") == "absent"
    assert store.rule_reads == 2


def test_attribute_probes_do_not_end_the_shortcut() -> None:
    import copy

    front = SessionStateFront(fastmcp.FastMCP("plain")._state_store)
    assert not hasattr(front, "__aenter__")
    copy.copy(front)  # a half-built copy must not recurse through __getattr__
    assert not front.rules_may_exist


@pytest.fixture
def scope_key_computations(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every computation of a session's rules key (FastMCP serializes the caller's identity)."""
    computed: list[str] = []
    original = Context._session_scope_key

    def counting(self: Context) -> str | None:
        key = original(self)
        computed.append(str(key))
        return key

    monkeypatch.setattr(Context, "_session_scope_key", counting)
    return computed


async def test_an_authenticated_callers_identity_is_not_serialized_per_lookup(
    scope_key_computations: list[str],
) -> None:
    from securemcp.testing import FakeIdentityProvider, connect

    audience = "https://visibility.securemcp.test/mcp"
    idp = FakeIdentityProvider(audience=audience)
    server = build(securemcp.FastMCP, auth=idp.verifier(audience=audience))
    async with connect(server, idp.token("alice")) as client:
        for _ in range(3):
            assert await outcome(client, "secret") == "ok: the secret"
        assert "secret" in await visible(client)
        assert scope_key_computations == []  # no rule can exist: key, read and transforms skipped
        assert await outcome(client, "hide", {"name": "secret"}) == "ok: hidden"
        scope_key_computations.clear()
        assert await outcome(client, "secret") != "ok: the secret"  # the rule is honoured
        assert "secret" not in await visible(client)
        assert scope_key_computations  # from the first rule on: FastMCP's own step
        assert all(key.startswith("user:") for key in scope_key_computations)


async def test_bare_fastmcp_computes_the_key_on_every_lookup(
    scope_key_computations: list[str],
) -> None:
    """The cost skipped is real, and bare FastMCP in the same process keeps its own step."""
    build(securemcp.FastMCP)  # a securemcp server in the process has installed its step
    bare = build(fastmcp.FastMCP)
    seen = await scenario(bare)
    assert "secret" in seen[0] and "secret" not in seen[4]  # bare's rules still apply
    assert len(scope_key_computations) >= 3


async def test_a_server_given_its_own_store_keeps_fastmcps_step(
    scope_key_computations: list[str],
) -> None:
    server = build(securemcp.FastMCP, session_state_store=MemoryStore())
    async with Client(server) as client:
        for _ in range(3):
            await outcome(client, "secret")
    assert len(scope_key_computations) >= 3
