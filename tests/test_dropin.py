"""securemcp.FastMCP is a drop-in replacement for fastmcp.FastMCP.

With no verifier configured, a securemcp server runs every call as the development principal
(holding every scope), so a plain in-memory ``fastmcp.Client`` sees exactly what it would see
from the FastMCP server the code was written for. These tests build the same server under both
classes and compare real outputs; they never hard-code what securemcp should return.
"""

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import fastmcp
import pytest
from fastmcp import Client, Context
from fastmcp.exceptions import ToolError
from fastmcp.prompts import Message, Prompt
from fastmcp.resources import Resource, ResourceTemplate
from fastmcp.server.middleware import Middleware
from fastmcp.tools import Tool
from pydantic import BaseModel
from typing_extensions import TypedDict

import securemcp
from securemcp.errors import PipelineBypassed, ScopeDeclarationError
from securemcp.scopes import SCOPES_META_KEY

SERVER_CLASSES = [fastmcp.FastMCP, securemcp.FastMCP]


@pytest.fixture(autouse=True)
def _development_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # Development mode must be in force (not production) and the dev principal must hold
    # every scope, whatever the developer's shell exports.
    monkeypatch.delenv("SECUREMCP_ENV", raising=False)
    monkeypatch.delenv("SECUREMCP_DEV_SCOPES", raising=False)


# --------------------------------------------------------------------------------------------
# 1. drop-in equivalence
# --------------------------------------------------------------------------------------------


class Point(BaseModel):
    x: int
    y: int


class Pair(TypedDict):
    a: int
    b: str


def build(cls: type[fastmcp.FastMCP], **kwargs: Any) -> fastmcp.FastMCP:
    """The same server, written once against the FastMCP API, under either class."""
    mcp = cls("equiv", instructions="equivalence server", **kwargs)

    @mcp.tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @mcp.tool
    async def aecho(text: str, times: int = 1) -> str:
        """Async echo."""
        return text * times

    @mcp.tool
    def server_name(ctx: Context) -> str:
        return ctx.fastmcp.name

    @mcp.tool
    async def async_ctx(prefix: str, ctx: Context) -> str:
        return f"{prefix}:{ctx.fastmcp.name}"

    @mcp.tool
    def counts(words: list[str]) -> dict[str, int]:
        return {w: len(w) for w in words}

    @mcp.tool
    def point(x: int, y: int) -> Point:
        return Point(x=x, y=y)

    @mcp.tool
    def pair(a: int, b: str) -> Pair:
        return {"a": a, "b": b}

    @mcp.tool(output_schema=None)
    def unstructured(n: int) -> int:
        return n * 2

    @mcp.tool(annotations={"readOnlyHint": True}, tags={"math", "safe"})
    def read_only(n: int = 1) -> int:
        return n

    @mcp.tool(name="renamed", description="custom description", meta={"owner": "team"})
    def original_name(flag: bool = False) -> bool:
        return not flag

    @mcp.tool
    def boom() -> str:
        raise ToolError("boom")

    @mcp.tool
    def plain_error() -> str:
        raise ValueError("internal detail 42")

    @mcp.resource("data://config")
    def config() -> str:
        return '{"debug": false}'

    @mcp.resource("data://blob", mime_type="application/json", tags={"cfg"})
    def blob() -> dict[str, int]:
        return {"n": 1}

    @mcp.resource("data://users/{id}")
    def user(id: str) -> dict[str, str]:
        return {"id": id, "name": f"user-{id}"}

    @mcp.resource("data://orgs/{org}/repos/{repo}")
    async def repo(org: str, repo: str) -> str:
        return f"{org}/{repo}"

    @mcp.prompt
    def greet(who: str) -> str:
        """Say hello."""
        return f"Hello {who}"

    @mcp.prompt(name="conversation", tags={"chat"})
    def convo(topic: str, depth: int = 1) -> list[Message]:
        return [
            Message(f"Tell me about {topic} at depth {depth}"),
            Message("Certainly.", role="assistant"),
        ]

    child = cls("child")

    @child.tool
    def mul(a: int, b: int) -> int:
        return a * b

    @child.tool
    def child_name(ctx: Context) -> str:
        return ctx.fastmcp.name

    @child.resource("data://info")
    def info() -> str:
        return "child info"

    @child.resource("data://items/{id}")
    def item(id: str) -> str:
        return f"item {id}"

    @child.prompt
    def hi(name: str = "you") -> str:
        return f"hi {name}"

    mcp.mount(child, namespace="child")
    return mcp


TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("add", {"a": 1, "b": 2}),
    ("aecho", {"text": "ab", "times": 3}),
    ("server_name", {}),
    ("async_ctx", {"prefix": "p"}),
    ("counts", {"words": ["a", "bbb"]}),
    ("point", {"x": 1, "y": 2}),
    ("pair", {"a": 1, "b": "x"}),
    ("unstructured", {"n": 21}),
    ("read_only", {}),
    ("renamed", {"flag": True}),
    ("child_mul", {"a": 6, "b": 7}),
    ("child_child_name", {}),
    # errors
    ("no_such_tool", {}),
    ("add", {"a": "not-a-number", "b": 1}),  # wrong type
    ("add", {"a": 1}),  # missing required argument
    ("add", {"a": 1, "b": 2, "extra": 3}),  # unexpected argument
    ("boom", {}),  # ToolError
    ("plain_error", {}),  # plain exception: masked or not, the same either way
    ("child_no_such_tool", {}),
]

RESOURCE_READS = [
    "data://config",
    "data://blob",
    "data://users/7",
    "data://orgs/acme/repos/widgets",
    "data://child/info",
    "data://child/items/9",
    "data://no-such-resource",
    "other://config",
]

PROMPT_GETS: list[tuple[str, dict[str, Any]]] = [
    ("greet", {"who": "world"}),
    ("conversation", {"topic": "MCP"}),
    ("conversation", {"topic": "MCP", "depth": "2"}),
    ("child_hi", {}),
    ("child_hi", {"name": "bob"}),
    ("no_such_prompt", {}),
    ("greet", {}),  # missing required argument
]


def _error(exc: BaseException) -> dict[str, Any]:
    error = getattr(exc, "error", None)
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "code": getattr(error, "code", None),
    }


def _data(value: Any) -> Any:
    # Structured data is rebuilt by each client into generated classes, so compare by value.
    if isinstance(value, BaseModel):
        return value.model_dump()
    if hasattr(value, "__dataclass_fields__"):
        return {k: getattr(value, k) for k in value.__dataclass_fields__}
    return value


async def snapshot(server: fastmcp.FastMCP) -> dict[str, Any]:
    """Everything a client can observe of ``server``: listings, results and errors."""
    out: dict[str, Any] = {}
    async with Client(server) as client:
        out["tools"] = [t.model_dump() for t in await client.list_tools()]
        out["resources"] = [r.model_dump() for r in await client.list_resources()]
        out["templates"] = [t.model_dump() for t in await client.list_resource_templates()]
        out["prompts"] = [p.model_dump() for p in await client.list_prompts()]
        calls = []
        for name, args in TOOL_CALLS:
            result = await client.call_tool(name, args, raise_on_error=False)
            calls.append(
                {
                    "call": (name, args),
                    "is_error": result.is_error,
                    "data": _data(result.data),
                    "structured": result.structured_content,
                    "content": [c.model_dump() for c in result.content],
                    "meta": result.meta,
                }
            )
            try:
                await client.call_tool(name, args)
            except Exception as exc:
                calls[-1]["raised"] = _error(exc)
        out["calls"] = calls
        reads = []
        for uri in RESOURCE_READS:
            try:
                contents = await client.read_resource(uri)
                reads.append({"uri": uri, "contents": [c.model_dump() for c in contents]})
            except Exception as exc:
                reads.append({"uri": uri, "error": _error(exc)})
        out["reads"] = reads
        prompts = []
        for name, args in PROMPT_GETS:
            try:
                result = await client.get_prompt(name, args)
                prompts.append({"prompt": (name, args), "result": result.model_dump()})
            except Exception as exc:
                prompts.append({"prompt": (name, args), "error": _error(exc)})
        out["prompt_results"] = prompts
    return out


@pytest.fixture(params=[False, True], ids=["unmasked", "masked"])
def mask(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


_SNAPSHOTS: dict[bool, tuple[dict[str, Any], dict[str, Any]]] = {}


@pytest.fixture
async def snapshots(mask: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    # Snapshots are plain data: take them once per masking mode, compare them in many tests.
    if mask not in _SNAPSHOTS:
        _SNAPSHOTS[mask] = (
            await snapshot(build(fastmcp.FastMCP, mask_error_details=mask)),
            await snapshot(build(securemcp.FastMCP, mask_error_details=mask)),
        )
    return _SNAPSHOTS[mask]


def _by(items: list[dict[str, Any]], key: str) -> dict[str, dict[str, Any]]:
    return {item[key]: item for item in items}


async def test_baseline_snapshot_is_meaningful(
    snapshots: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    """Guards the comparisons below: the FastMCP baseline really succeeds and really fails."""
    base, _ = snapshots
    names = {t["name"] for t in base["tools"]}
    assert {"add", "renamed", "child_mul", "boom"} <= names
    successes = [c for c in base["calls"] if not c["is_error"]]
    failures = [c for c in base["calls"] if c["is_error"]]
    assert len(successes) == 12
    assert len(failures) == 7
    assert all("raised" in c for c in failures)
    assert sum("error" in r for r in base["reads"]) == 2
    assert sum("error" in p for p in base["prompt_results"]) == 2


async def test_list_tools_identical(snapshots: tuple[dict[str, Any], dict[str, Any]]) -> None:
    base, secure = snapshots
    assert [t["name"] for t in secure["tools"]] == [t["name"] for t in base["tools"]]
    base_tools, secure_tools = _by(base["tools"], "name"), _by(secure["tools"], "name")
    for name, tool in base_tools.items():
        for field in ("input_schema", "output_schema", "annotations", "meta", "description"):
            assert secure_tools[name][field] == tool[field], (name, field)
    assert secure["tools"] == base["tools"]
    # no scopes declared anywhere, so no securemcp metadata may appear
    assert all(SCOPES_META_KEY not in (t["meta"] or {}) for t in secure["tools"])


async def test_list_resources_templates_prompts_identical(
    snapshots: tuple[dict[str, Any], dict[str, Any]],
) -> None:
    base, secure = snapshots
    assert base["resources"]
    assert base["templates"]
    assert base["prompts"]
    assert secure["resources"] == base["resources"]
    assert secure["templates"] == base["templates"]
    assert secure["prompts"] == base["prompts"]


@pytest.mark.parametrize("index", range(len(TOOL_CALLS)), ids=[str(c) for c in TOOL_CALLS])
async def test_tool_call_results_identical(
    snapshots: tuple[dict[str, Any], dict[str, Any]], index: int
) -> None:
    base, secure = snapshots
    assert secure["calls"][index] == base["calls"][index]


@pytest.mark.parametrize("index", range(len(RESOURCE_READS)), ids=RESOURCE_READS)
async def test_resource_reads_identical(
    snapshots: tuple[dict[str, Any], dict[str, Any]], index: int
) -> None:
    base, secure = snapshots
    assert secure["reads"][index] == base["reads"][index]


@pytest.mark.parametrize("index", range(len(PROMPT_GETS)), ids=[str(p) for p in PROMPT_GETS])
async def test_prompt_results_identical(
    snapshots: tuple[dict[str, Any], dict[str, Any]], index: int
) -> None:
    base, secure = snapshots
    assert secure["prompt_results"][index] == base["prompt_results"][index]


async def test_masking_changes_plain_errors_the_same_way() -> None:
    """mask_error_details is honoured identically (and does change what the client sees)."""
    seen = {}
    for cls in SERVER_CLASSES:
        for mask in (False, True):
            async with Client(build(cls, mask_error_details=mask)) as client:
                result = await client.call_tool("plain_error", {}, raise_on_error=False)
            seen[cls, mask] = (result.is_error, result.content[0].text)
    assert seen[securemcp.FastMCP, False] == seen[fastmcp.FastMCP, False]
    assert seen[securemcp.FastMCP, True] == seen[fastmcp.FastMCP, True]
    assert seen[fastmcp.FastMCP, False] != seen[fastmcp.FastMCP, True]


async def test_direct_server_api_identical() -> None:
    """The server-side API (no client) returns the same components and results."""
    observed = []
    for cls in SERVER_CLASSES:
        server = build(cls)
        tools = [(t.name, t.parameters, t.output_schema) for t in await server.list_tools()]
        resources = [str(r.uri) for r in await server.list_resources()]
        templates = [t.uri_template for t in await server.list_resource_templates()]
        prompts = [p.name for p in await server.list_prompts()]
        called = await server.call_tool("add", {"a": 2, "b": 3})
        read = await server.read_resource("data://users/5")
        rendered = await server.render_prompt("greet", {"who": "x"})
        observed.append(
            (
                tools,
                resources,
                templates,
                prompts,
                called.structured_content,
                [c.model_dump() for c in called.content],
                repr(read),
                repr(rendered),
            )
        )
    assert observed[0] == observed[1]


def test_default_name_and_settings_like_fastmcp() -> None:
    base, secure = fastmcp.FastMCP(), securemcp.FastMCP()
    assert secure.name.rsplit("-", 1)[0] == base.name.rsplit("-", 1)[0]
    assert isinstance(secure, fastmcp.FastMCP)
    kwargs = {"instructions": "i", "version": "1.2", "website_url": "https://example.com"}
    b, s = fastmcp.FastMCP("n", **kwargs), securemcp.FastMCP("n", **kwargs)
    for attr in ("name", "instructions", "version", "website_url"):
        assert getattr(s, attr) == getattr(b, attr)


# --------------------------------------------------------------------------------------------
# 2. every decorator / registration form, with and without scopes=
# --------------------------------------------------------------------------------------------


async def _listed(server: fastmcp.FastMCP) -> dict[str, dict[str, Any]]:
    """kind:name -> meta for everything a client can list."""
    out: dict[str, dict[str, Any]] = {}
    async with Client(server) as client:
        for t in await client.list_tools():
            out[f"tool:{t.name}"] = t.meta or {}
        for r in await client.list_resources():
            out[f"resource:{r.uri}"] = r.meta or {}
        for t in await client.list_resource_templates():
            out[f"template:{t.uri_template}"] = t.meta or {}
        for p in await client.list_prompts():
            out[f"prompt:{p.name}"] = p.meta or {}
    return out


def _register_all(mcp: securemcp.FastMCP) -> dict[str, Callable[..., Any]]:
    """Register one component per form; return the decorator results by name."""
    returned: dict[str, Callable[..., Any]] = {}

    def bare() -> int:
        return 1

    returned["bare"] = mcp.tool(bare)

    @mcp.tool()
    def empty_call() -> int:
        return 2

    returned["empty_call"] = empty_call

    @mcp.tool("positional_name")
    def fn_positional() -> int:
        return 3

    returned["positional_name"] = fn_positional

    @mcp.tool(name="keyword_name")
    def fn_keyword() -> int:
        return 4

    returned["keyword_name"] = fn_keyword

    def direct() -> int:
        return 5

    returned["direct"] = mcp.tool(direct, name="direct")

    @mcp.tool(scopes=["s:call"])
    def scoped_call() -> int:
        return 6

    returned["scoped_call"] = scoped_call

    @mcp.tool("scoped_positional", scopes=["s:pos"])
    def fn_scoped_positional() -> int:
        return 7

    returned["scoped_positional"] = fn_scoped_positional

    @mcp.tool(name="scoped_keyword", scopes=["s:kw", "s:kw2"], meta={"team": "x"})
    def fn_scoped_keyword() -> int:
        return 8

    returned["scoped_keyword"] = fn_scoped_keyword

    def scoped_direct() -> int:
        return 9

    returned["scoped_direct"] = mcp.tool(scoped_direct, name="scoped_direct", scopes=["s:dir"])

    def scoped_direct_unnamed() -> int:
        return 10

    returned["scoped_direct_unnamed"] = mcp.tool(scoped_direct_unnamed, scopes=["s:dir2"])

    @mcp.resource("data://x", scopes=["s:res"])
    def res() -> str:
        return "x"

    returned["res"] = res

    @mcp.resource("data://plain")
    def plain_res() -> str:
        return "plain"

    returned["plain_res"] = plain_res

    @mcp.resource("data://users/{id}", scopes=["s:tpl"])
    def tpl(id: str) -> str:
        return f"user {id}"

    returned["tpl"] = tpl

    @mcp.prompt
    def bare_prompt() -> str:
        return "bare prompt"

    returned["bare_prompt"] = bare_prompt

    @mcp.prompt()
    def empty_prompt() -> str:
        return "empty prompt"

    returned["empty_prompt"] = empty_prompt

    @mcp.prompt("named_prompt")
    def fn_named_prompt() -> str:
        return "named prompt"

    returned["named_prompt"] = fn_named_prompt

    @mcp.prompt(scopes=["s:prompt"])
    def scoped_prompt() -> str:
        return "scoped prompt"

    returned["scoped_prompt"] = scoped_prompt

    @mcp.prompt(name="scoped_named_prompt", scopes=["s:prompt2"])
    def fn_scoped_named_prompt() -> str:
        return "scoped named prompt"

    returned["scoped_named_prompt"] = fn_scoped_named_prompt
    return returned


EXPECTED_SCOPES = {
    "tool:bare": None,
    "tool:empty_call": None,
    "tool:positional_name": None,
    "tool:keyword_name": None,
    "tool:direct": None,
    "tool:scoped_call": ["s:call"],
    "tool:scoped_positional": ["s:pos"],
    "tool:scoped_keyword": ["s:kw", "s:kw2"],
    "tool:scoped_direct": ["s:dir"],
    "tool:scoped_direct_unnamed": ["s:dir2"],
    "resource:data://x": ["s:res"],
    "resource:data://plain": None,
    "template:data://users/{id}": ["s:tpl"],
    "prompt:bare_prompt": None,
    "prompt:empty_prompt": None,
    "prompt:named_prompt": None,
    "prompt:scoped_prompt": ["s:prompt"],
    "prompt:scoped_named_prompt": ["s:prompt2"],
}


async def test_decorators_return_original_function_and_record_scopes() -> None:
    mcp = securemcp.FastMCP("forms")
    returned = _register_all(mcp)
    expected_values = {
        "bare": 1,
        "empty_call": 2,
        "positional_name": 3,
        "keyword_name": 4,
        "direct": 5,
        "scoped_call": 6,
        "scoped_positional": 7,
        "scoped_keyword": 8,
        "scoped_direct": 9,
        "scoped_direct_unnamed": 10,
    }
    for key, value in expected_values.items():
        fn = returned[key]
        assert type(fn).__name__ == "function", key
        assert fn() == value, key
    assert returned["tpl"]("3") == "user 3"
    assert returned["scoped_prompt"]() == "scoped prompt"

    listed = await _listed(mcp)
    assert set(listed) == set(EXPECTED_SCOPES)
    for key, scopes in EXPECTED_SCOPES.items():
        assert listed[key].get(SCOPES_META_KEY) == scopes, key
    assert listed["tool:scoped_keyword"]["team"] == "x"  # user meta kept alongside scopes


async def test_decorator_forms_match_fastmcp_without_scopes() -> None:
    """The scope-free forms register exactly what FastMCP registers."""

    def register(mcp: fastmcp.FastMCP) -> list[Any]:
        def a() -> int:
            return 1

        def b() -> int:
            return 2

        def c() -> int:
            return 3

        def d() -> int:
            return 4

        def e() -> int:
            return 5

        def p() -> str:
            return "p"

        def q() -> str:
            return "q"

        def r() -> str:
            return "r"

        return [
            mcp.tool(a),
            mcp.tool()(b),
            mcp.tool("positional")(c),
            mcp.tool(name="keyword")(d),
            mcp.tool(e, name="direct"),
            mcp.prompt(p),
            mcp.prompt("named_prompt")(q),
            mcp.resource("data://r")(r),
        ]

    results = {}
    for cls in SERVER_CLASSES:
        server = cls("same")
        returned = register(server)
        results[cls] = (await _listed(server), [fn() for fn in returned])
    assert results[securemcp.FastMCP] == results[fastmcp.FastMCP]


async def test_programmatic_registration_with_scopes() -> None:
    mcp = securemcp.FastMCP("programmatic")

    def fn_tool() -> int:
        return 1

    def tool_obj_fn() -> int:
        return 2

    def fn_prompt() -> str:
        return "p"

    def prompt_obj_fn() -> str:
        return "q"

    def res_fn() -> str:
        return "r"

    def tpl_fn(id: str) -> str:
        return id

    added = mcp.add_tool(fn_tool, scopes=["a:fn"])
    assert isinstance(added, Tool)
    assert added.meta[SCOPES_META_KEY] == ["a:fn"]
    mcp.add_tool(Tool.from_function(tool_obj_fn, meta={"k": "v"}), scopes=["a:obj"])
    mcp.add_tool(Tool.from_function(lambda: 3, name="unscoped_obj"))
    mcp.add_prompt(fn_prompt, scopes=["a:prompt"])
    mcp.add_prompt(Prompt.from_function(prompt_obj_fn), scopes=["a:prompt_obj"])
    mcp.add_resource(Resource.from_function(res_fn, uri="data://res"), scopes=["a:res"])
    mcp.add_template(
        ResourceTemplate.from_function(tpl_fn, uri_template="data://t/{id}"), scopes=["a:tpl"]
    )

    listed = await _listed(mcp)
    assert listed["tool:fn_tool"][SCOPES_META_KEY] == ["a:fn"]
    assert listed["tool:tool_obj_fn"][SCOPES_META_KEY] == ["a:obj"]
    assert listed["tool:tool_obj_fn"]["k"] == "v"
    assert SCOPES_META_KEY not in listed["tool:unscoped_obj"]
    assert listed["prompt:fn_prompt"][SCOPES_META_KEY] == ["a:prompt"]
    assert listed["prompt:prompt_obj_fn"][SCOPES_META_KEY] == ["a:prompt_obj"]
    assert listed["resource:data://res"][SCOPES_META_KEY] == ["a:res"]
    assert listed["template:data://t/{id}"][SCOPES_META_KEY] == ["a:tpl"]

    async with Client(mcp) as client:  # the development principal holds every scope
        assert (await client.call_tool("fn_tool", {})).data == 1
        assert (await client.call_tool("tool_obj_fn", {})).data == 2
        assert (await client.get_prompt("prompt_obj_fn")).messages[0].content.text == "q"
        assert (await client.read_resource("data://t/7"))[0].text == "7"


async def test_tools_constructor_argument_and_with_scopes() -> None:
    def plain(a: int) -> int:
        return a

    def marked(a: int) -> int:
        return -a

    mcp = securemcp.FastMCP("ctor", tools=[plain, securemcp.with_scopes(marked, ["s"])])
    listed = await _listed(mcp)
    assert SCOPES_META_KEY not in listed["tool:plain"]
    assert listed["tool:marked"][SCOPES_META_KEY] == ["s"]
    assert marked(2) == -2  # with_scopes returns the function itself

    # the same tools= list under FastMCP gives the same tools, minus securemcp's metadata
    base = await _listed(fastmcp.FastMCP("ctor", tools=[plain, marked]))
    stripped = {
        k: {mk: mv for mk, mv in v.items() if mk != SCOPES_META_KEY} for k, v in listed.items()
    }
    assert stripped == base


async def test_server_alias() -> None:
    server = securemcp.Server(name="calc")
    assert isinstance(server, securemcp.FastMCP)
    assert server.name == "calc"

    @server.tool("add", scopes=["calc:write"])
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    assert (await _listed(server))["tool:add"][SCOPES_META_KEY] == ["calc:write"]
    async with Client(server) as client:
        assert (await client.call_tool("add", {"a": 2, "b": 3})).data == 5


async def test_declared_scopes_are_enforced_on_every_registration_path() -> None:
    """The meta each path writes is what the pipeline enforces (not just decoration)."""
    mcp = securemcp.FastMCP("enforced", development_scopes=["other"])
    _register_all(mcp)

    def via_add_tool() -> int:
        return 0

    def via_tools_kw() -> int:
        return 0

    mcp.add_tool(via_add_tool, scopes=["need"])
    mcp.add_tool(Tool.from_function(lambda: 0, name="via_tool_obj"), scopes=["need"])
    mcp.add_tool(securemcp.with_scopes(via_tools_kw, ["need"]))
    scoped = {k for k, v in EXPECTED_SCOPES.items() if v is not None}
    scoped |= {"tool:via_add_tool", "tool:via_tool_obj", "tool:via_tools_kw"}

    listed = await _listed(mcp)
    assert scoped.isdisjoint(listed), "scoped components must be hidden from this caller"
    assert {k for k, v in EXPECTED_SCOPES.items() if v is None} <= set(listed)
    async with Client(mcp) as client:
        for key in sorted(k for k in scoped if k.startswith("tool:")):
            result = await client.call_tool(key[5:], {}, raise_on_error=False)
            assert result.is_error, key
            assert "insufficient_scope" in result.content[0].text, key
        assert not (await client.call_tool("bare", {}, raise_on_error=False)).is_error
        with pytest.raises(Exception, match="insufficient_scope"):
            await client.get_prompt("scoped_prompt")
        with pytest.raises(Exception, match="insufficient_scope"):
            await client.read_resource("data://users/1")


async def test_decorator_honours_with_scopes_marker() -> None:
    mcp = securemcp.FastMCP("marker", development_scopes=["other"])

    def admin_tool() -> int:
        return 1

    def admin_prompt() -> str:
        return "secret"

    mcp.tool(securemcp.with_scopes(admin_tool, ["admin"]))
    mcp.prompt(securemcp.with_scopes(admin_prompt, ["admin"]))
    async with Client(mcp) as client:
        result = await client.call_tool("admin_tool", {}, raise_on_error=False)
        assert result.is_error, "a caller without 'admin' ran a tool declared admin-only"
    listed = await _listed(mcp)
    assert "tool:admin_tool" not in listed
    assert "prompt:admin_prompt" not in listed


async def test_add_tool_scopes_do_not_mutate_decorated_function() -> None:
    @fastmcp.tools.tool(name="shared")
    def shared() -> int:
        return 1

    first = securemcp.FastMCP("first")
    first.add_tool(shared, scopes=["admin"])
    assert (await _listed(first))["tool:shared"][SCOPES_META_KEY] == ["admin"]

    second = securemcp.FastMCP("second")
    second.add_tool(shared)  # no scopes declared here
    assert SCOPES_META_KEY not in (await _listed(second))["tool:shared"]


# --------------------------------------------------------------------------------------------
# 3. bad input at registration
# --------------------------------------------------------------------------------------------

BAD_SCOPES: list[tuple[Any, str]] = [
    ("calc:write", "calc:write"),
    ([1], "int"),
    (["has space"], "has space"),
    ([""], "''"),
    ({"a": 1}, "dict"),
    (["ok", None], "NoneType"),
    (42, "int"),
]


def _bad_sites() -> dict[str, Callable[[securemcp.FastMCP, Any], Any]]:
    def fn() -> int:
        return 1

    def fn_id(id: str) -> str:
        return id

    return {
        "tool-decorator": lambda m, s: m.tool(name="target", scopes=s)(fn),
        "tool-direct": lambda m, s: m.tool(fn, name="target", scopes=s),
        "resource": lambda m, s: m.resource("data://target", scopes=s)(fn),
        "template": lambda m, s: m.resource("data://target/{id}", scopes=s)(fn_id),
        "prompt": lambda m, s: m.prompt(name="target", scopes=s)(fn),
        "add_tool-fn": lambda m, s: m.add_tool(fn, scopes=s),
        "add_tool-Tool": lambda m, s: m.add_tool(Tool.from_function(fn, name="target"), scopes=s),
        "add_prompt": lambda m, s: m.add_prompt(fn, scopes=s),
        "add_resource": lambda m, s: m.add_resource(
            Resource.from_function(fn, uri="data://target"), scopes=s
        ),
        "add_template": lambda m, s: m.add_template(
            ResourceTemplate.from_function(fn_id, uri_template="data://target/{id}"), scopes=s
        ),
        "with_scopes": lambda m, s: securemcp.with_scopes(fn, s),
    }


@pytest.mark.parametrize("site", list(_bad_sites()))
@pytest.mark.parametrize(("bad", "named"), BAD_SCOPES, ids=[repr(b) for b, _ in BAD_SCOPES])
async def test_bad_scopes_rejected_clearly_and_nothing_registered(
    site: str, bad: Any, named: str
) -> None:
    mcp = securemcp.FastMCP("bad")
    with pytest.raises(ScopeDeclarationError) as info:
        _bad_sites()[site](mcp, bad)
    assert isinstance(info.value, TypeError)
    message = str(info.value)
    assert named in message
    assert "scopes" in message  # names the offending argument
    assert await _listed(mcp) == {}, "a rejected declaration must not register anything"


def test_bare_string_scope_suggests_a_list() -> None:
    mcp = securemcp.FastMCP("bad")
    with pytest.raises(TypeError, match=r"scopes=\['calc:write'\]"):
        mcp.tool(lambda: 1, name="t", scopes="calc:write")


def test_bad_development_scopes_rejected() -> None:
    with pytest.raises(ScopeDeclarationError, match="development_scopes"):
        securemcp.FastMCP("x", development_scopes="calc:write")


def test_unknown_constructor_keyword_named() -> None:
    with pytest.raises(TypeError, match="polcy"):
        securemcp.FastMCP("x", polcy=1)
    # FastMCP rejects it too: securemcp is no more lenient
    with pytest.raises(TypeError, match="polcy"):
        fastmcp.FastMCP("x", polcy=1)


def test_near_miss_keyword_suggests_spelling() -> None:
    with pytest.raises(TypeError, match="hide_unauthorised") as info:
        securemcp.FastMCP("x", hide_unauthorised=True)
    assert "hide_unauthorized" in str(info.value)
    with pytest.raises(TypeError, match="mask_error_detail") as info:
        securemcp.FastMCP("x", mask_error_detail=True)
    assert "mask_error_details" in str(info.value)


@pytest.mark.parametrize("removed", ["debug", "host", "log_level", "on_duplicate_tools"])
def test_removed_fastmcp_keyword_still_type_error(removed: str) -> None:
    with pytest.raises(TypeError):
        fastmcp.FastMCP("x", **{removed: True})
    with pytest.raises(TypeError, match=removed):
        securemcp.FastMCP("x", **{removed: True})


def test_removed_fastmcp_keyword_keeps_fastmcp_hint() -> None:
    with pytest.raises(TypeError) as base:
        fastmcp.FastMCP("x", debug=True)
    hint = str(base.value).split("`. ", 1)[1]  # "Set FASTMCP_DEBUG."
    with pytest.raises(TypeError) as secure:
        securemcp.FastMCP("x", debug=True)
    assert hint in str(secure.value)


def test_securemcp_and_fastmcp_keywords_accepted() -> None:
    mcp = securemcp.FastMCP(
        "x",
        hide_unauthorized=False,
        disclose_required_scopes=False,
        development_scopes=["a"],
        mask_error_details=True,
        on_duplicate="error",
        list_page_size=10,
    )
    assert mcp.name == "x"


# --------------------------------------------------------------------------------------------
# 4. the security pipeline stays outermost
# --------------------------------------------------------------------------------------------


def _recorder(label: str, log: list[tuple[str, bool]]) -> Middleware:
    def bound() -> bool:
        try:
            securemcp.current()
        except Exception:
            return False
        return True

    class Recorder(Middleware):
        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            log.append((label, bound()))
            return await call_next(context)

    Recorder.__name__ = Recorder.__qualname__ = label
    return Recorder()


def _pipeline_first(mcp: securemcp.FastMCP) -> None:
    chain = list(mcp.middleware)
    assert type(chain[0]).__name__ == "SecurityPipeline"
    assert sum(type(m).__name__ == "SecurityPipeline" for m in chain) == 1


def _user_labels(mcp: securemcp.FastMCP) -> list[str]:
    return [
        type(m).__name__
        for m in mcp.middleware
        if type(m).__name__ not in ("SecurityPipeline", "DereferenceListings")
    ]


async def _call_and_log(mcp: securemcp.FastMCP, log: list[tuple[str, bool]]) -> None:
    log.clear()
    async with Client(mcp) as client:
        assert (await client.call_tool("probe", {})).data is True


def _probe_server(log: list[tuple[str, bool]], **kwargs: Any) -> securemcp.FastMCP:
    mcp = securemcp.FastMCP("mw", **kwargs)

    @mcp.tool
    def probe() -> bool:
        securemcp.current()  # raises if the pipeline did not bind a context
        return True

    return mcp


async def test_pipeline_outermost_through_every_mutation() -> None:
    log: list[tuple[str, bool]] = []
    mcp = _probe_server(log, middleware=[_recorder("A", log)])
    pipeline = mcp.middleware[0]

    steps: list[tuple[str, Callable[[], Any], list[str]]] = [
        ("constructor", lambda: None, ["A"]),
        ("add_middleware", lambda: mcp.add_middleware(_recorder("B", log)), ["A", "B"]),
        ("insert(0)", lambda: mcp.middleware.insert(0, _recorder("C", log)), ["C", "A", "B"]),
        ("assign", lambda: setattr(mcp, "middleware", [_recorder("D", log)]), ["D"]),
        ("append", lambda: mcp.middleware.append(_recorder("E", log)), ["D", "E"]),
        ("remove(pipeline)", lambda: mcp.middleware.remove(pipeline), ["D", "E"]),
        ("del [0]", lambda: mcp.middleware.__delitem__(0), ["D", "E"]),
        ("pop(0)", lambda: mcp.middleware.pop(0), ["D", "E"]),
        (
            "setitem [0]",
            lambda: mcp.middleware.__setitem__(0, _recorder("F", log)),
            ["F", "D", "E"],
        ),
        ("reverse", lambda: mcp.middleware.reverse(), ["E", "D", "F"]),
        ("sort", lambda: mcp.middleware.sort(key=lambda m: type(m).__name__), ["D", "E", "F"]),
        ("extend", lambda: mcp.middleware.extend([_recorder("G", log)]), ["D", "E", "F", "G"]),
        ("slice", lambda: mcp.middleware.__setitem__(slice(None), [_recorder("H", log)]), ["H"]),
        ("clear", lambda: mcp.middleware.clear(), []),
        (
            "assign+pipeline",
            lambda: setattr(mcp, "middleware", [_recorder("I", log), pipeline]),
            ["I"],
        ),
    ]
    for label, mutate, expected_users in steps:
        mutate()
        _pipeline_first(mcp)
        assert mcp.middleware[0] is pipeline, label
        assert _user_labels(mcp) == expected_users, label
        await _call_and_log(mcp, log)
        assert [name for name, _ in log] == expected_users, label
        assert all(bound for _, bound in log), f"{label}: pipeline did not run first"


async def test_statement_forms_keep_pipeline_first() -> None:
    """The literal statements a server author would write (not just method calls)."""
    log: list[tuple[str, bool]] = []
    mcp = _probe_server(log, middleware=[_recorder("A", log), _recorder("B", log)])
    del mcp.middleware[0]
    _pipeline_first(mcp)
    assert _user_labels(mcp) == ["A", "B"]
    mcp.middleware[0] = _recorder("C", log)
    _pipeline_first(mcp)
    assert _user_labels(mcp) == ["C", "A", "B"]
    del mcp.middleware[:]
    _pipeline_first(mcp)
    mcp.middleware[:] = [_recorder("D", log)]
    _pipeline_first(mcp)
    await _call_and_log(mcp, log)
    assert log == [("D", True)]


async def test_augmented_assignment_on_attribute() -> None:
    log: list[tuple[str, bool]] = []
    mcp = _probe_server(log)
    mcp.middleware += [_recorder("A", log)]
    _pipeline_first(mcp)
    mcp.middleware *= 0
    _pipeline_first(mcp)
    await _call_and_log(mcp, log)


async def test_user_middleware_sees_bound_context_and_pipeline_runs_first() -> None:
    """Control: a user middleware placed outside the pipeline would see no context."""
    log: list[tuple[str, bool]] = []
    mcp = _probe_server(log, middleware=[_recorder("A", log)])
    await _call_and_log(mcp, log)
    assert log == [("A", True)]

    # the recorder really can observe an unbound context: run it around a plain FastMCP server
    plain = fastmcp.FastMCP("plain", middleware=[_recorder("P", log)])
    plain.tool(lambda: True, name="probe")
    log.clear()
    async with Client(plain) as client:
        await client.call_tool("probe", {})
    assert log == [("P", False)]


async def test_in_place_multiply_on_alias_keeps_pipeline() -> None:
    log: list[tuple[str, bool]] = []
    mcp = _probe_server(log)
    chain = mcp.middleware
    chain *= 0
    _pipeline_first(mcp)


# --------------------------------------------------------------------------------------------
# 5. bypass attempts fail closed
# --------------------------------------------------------------------------------------------


def _counted_server() -> tuple[securemcp.FastMCP, dict[str, int]]:
    ran = {"add": 0, "other": 0, "front": 0, "res": 0, "tpl": 0, "prompt": 0}
    mcp = securemcp.FastMCP("bypass")

    @mcp.tool(scopes=["calc:write"])
    def add(a: int, b: int) -> int:
        ran["add"] += 1
        return a + b

    @mcp.tool
    def other() -> str:
        ran["other"] += 1
        return "other ran"

    @mcp.tool
    async def front(ctx: Context) -> str:
        ran["front"] += 1
        return "front ran"

    @mcp.resource("data://secret")
    def res() -> str:
        ran["res"] += 1
        return "secret"

    @mcp.resource("data://secret/{id}")
    def tpl(id: str) -> str:
        ran["tpl"] += 1
        return f"secret {id}"

    @mcp.prompt
    def prompt() -> str:
        ran["prompt"] += 1
        return "prompt"

    return mcp, ran


async def test_call_tool_without_middleware_refused() -> None:
    mcp, ran = _counted_server()
    with pytest.raises(PipelineBypassed):
        await mcp.call_tool("add", {"a": 1, "b": 2}, run_middleware=False)
    with pytest.raises(PipelineBypassed):
        await mcp.call_tool("other", {}, run_middleware=False)
    assert ran["add"] == ran["other"] == 0
    # control: the same call through the pipeline runs the body
    assert (await mcp.call_tool("add", {"a": 1, "b": 2})).structured_content == {"result": 3}
    assert ran["add"] == 1
    # and a plain FastMCP server would have run it: the refusal is securemcp's doing
    base = fastmcp.FastMCP("base")
    base.tool(lambda: "ran", name="t")
    assert (await base.call_tool("t", {}, run_middleware=False)).content[0].text == "ran"


@pytest.mark.parametrize("uri", ["data://secret", "data://secret/1"])
async def test_read_resource_without_middleware_refused(uri: str) -> None:
    mcp, ran = _counted_server()
    with pytest.raises(PipelineBypassed):
        await mcp.read_resource(uri, run_middleware=False)
    assert ran["res"] == ran["tpl"] == 0
    await mcp.read_resource(uri)
    assert ran["res"] + ran["tpl"] == 1


async def test_render_prompt_without_middleware_refused() -> None:
    mcp, ran = _counted_server()
    with pytest.raises(PipelineBypassed):
        await mcp.render_prompt("prompt", {}, run_middleware=False)
    assert ran["prompt"] == 0
    await mcp.render_prompt("prompt", {})
    assert ran["prompt"] == 1


class _SideCall(Middleware):
    """During a call to ``front``, try to run another component without the pipeline."""

    def __init__(self, attempt: str) -> None:
        self.attempt = attempt
        self.outcome: BaseException | str | None = None

    async def on_call_tool(self, context: Any, call_next: Any) -> Any:
        if context.message.name == "front":
            server = context.fastmcp_context.fastmcp
            try:
                if self.attempt == "tool":
                    await server.call_tool("other", {}, run_middleware=False)
                elif self.attempt == "resource":
                    await server.read_resource("data://secret", run_middleware=False)
                else:
                    await server.render_prompt("prompt", {}, run_middleware=False)
                self.outcome = "ran"
            except Exception as exc:
                self.outcome = exc
        return await call_next(context)


@pytest.mark.parametrize(
    ("attempt", "counter"), [("tool", "other"), ("resource", "res"), ("prompt", "prompt")]
)
async def test_middleware_side_call_without_pipeline_refused(attempt: str, counter: str) -> None:
    mcp, ran = _counted_server()
    side = _SideCall(attempt)
    mcp.add_middleware(side)
    async with Client(mcp) as client:
        result = await client.call_tool("front", {})
    assert result.data == "front ran"  # the admitted call itself still works
    assert isinstance(side.outcome, PipelineBypassed), side.outcome
    assert ran[counter] == 0
    assert ran["front"] == 1


async def test_tool_body_side_call_without_pipeline_refused() -> None:
    mcp, ran = _counted_server()
    outcomes: list[Any] = []

    @mcp.tool
    async def sneaky(ctx: Context) -> str:
        try:
            await ctx.fastmcp.call_tool("other", {}, run_middleware=False)
            outcomes.append("ran")
        except PipelineBypassed as exc:
            outcomes.append(exc)
        # going through the pipeline is allowed (and runs under the caller's identity)
        via_pipeline = await ctx.fastmcp.call_tool("other", {})
        outcomes.append(via_pipeline.content[0].text)
        return "done"

    async with Client(mcp) as client:
        assert (await client.call_tool("sneaky", {})).data == "done"
    assert isinstance(outcomes[0], PipelineBypassed)
    assert outcomes[1] == "other ran"
    assert ran["other"] == 1  # only the pipeline-admitted call ran


async def test_inner_middleware_cannot_retarget_admitted_call() -> None:
    class Retarget(Middleware):
        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            if context.message.name == "front":
                message = context.message.model_copy(update={"name": "other"})
                context = context.copy(message=message)
            return await call_next(context)

    mcp, ran = _counted_server()
    mcp.add_middleware(Retarget())
    async with Client(mcp) as client:
        result = await client.call_tool("front", {}, raise_on_error=False)
    assert result.is_error
    assert "pipeline_bypassed" in result.content[0].text
    assert ran["other"] == ran["front"] == 0


async def test_admission_is_single_use() -> None:
    attempts: list[Any] = []

    class Twice(Middleware):
        async def on_call_tool(self, context: Any, call_next: Any) -> Any:
            result = await call_next(context)
            try:
                await call_next(context)
                attempts.append("ran twice")
            except PipelineBypassed as exc:
                attempts.append(exc)
            return result

    mcp, ran = _counted_server()
    mcp.add_middleware(Twice())
    async with Client(mcp) as client:
        assert (await client.call_tool("other", {})).data == "other ran"
    assert isinstance(attempts[0], PipelineBypassed)
    assert ran["other"] == 1


# --------------------------------------------------------------------------------------------
# 6. import time: securemcp stays lazy
# --------------------------------------------------------------------------------------------


def _run_python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=True
    )


def test_import_securemcp_does_not_import_fastmcp_server() -> None:
    probe = "import securemcp, sys; print('fastmcp.server.server' in sys.modules)"
    assert _run_python("-c", probe).stdout.strip() == "False"
    # control: the probe does detect the server module once FastMCP is really used
    used = (
        "from securemcp import FastMCP; import sys; print('fastmcp.server.server' in sys.modules)"
    )
    assert _run_python("-c", used).stdout.strip() == "True"


def test_importtime_trace_has_no_fastmcp_server() -> None:
    trace = _run_python("-X", "importtime", "-c", "import securemcp").stderr
    modules = [line.rsplit("|", 1)[-1].strip() for line in trace.splitlines() if "|" in line]
    assert "securemcp" in modules
    assert "fastmcp.server.server" not in modules
    heavy = _run_python("-X", "importtime", "-c", "from securemcp import FastMCP").stderr
    assert "fastmcp.server.server" in [
        line.rsplit("|", 1)[-1].strip() for line in heavy.splitlines() if "|" in line
    ]
