"""Policy on a resource template read judges the values FastMCP hands the template function.

FastMCP 4.1.2 converts a template's parameter values before its function runs
(``FunctionResourceTemplate.read``: ``int()``, ``float()``, the words true/1/yes and false/0/no
for an exact ``int``/``float``/``bool`` annotation; pydantic's lax validation for every other
annotation), so ``items://07``, ``items://+7``, ``items://%207`` and ``items://%EF%BC%97``
(a full-width 7) all read item 7 of ``id: int``. A rule naming ``items://7`` must hold for all of
them. Every refusal is checked with a list proving the function never ran.

This module deliberately has no ``from __future__ import annotations``: the templates below need
real annotation objects (FastMCP converts ``int``/``float``/``bool`` itself only then).
"""

import logging
import textwrap
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import AfterValidator, StringConstraints

from securemcp import FastMCP
from securemcp.context import Principal
from securemcp.policy import ApprovalGate, Decision, RulesPolicy, open_store
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])

RULES = textwrap.dedent(
    """
    default = "allow"

    [[rule]]
    name = "no-item-7"
    effect = "deny"
    tools = ["items://7"]

    [[rule]]
    name = "no-price-7"
    effect = "deny"
    tools = ["prices://7"]

    [[rule]]
    name = "no-price-2-5"
    effect = "deny"
    tools = ["prices://2.5"]

    [[rule]]
    name = "no-rate-3-written-as-float"
    effect = "deny"
    tools = ["rates://3.0"]

    [[rule]]
    name = "no-flags-on"
    effect = "deny"
    tools = ["flags://x?on=true"]

    [[rule]]
    name = "no-ids-7"
    effect = "deny"
    tools = ["lists://x?ids=7"]

    [[rule]]
    name = "no-lazy-7"
    effect = "deny"
    tools = ["lazy://7"]

    [[rule]]
    name = "no-optional-7"
    effect = "deny"
    tools = ["optional://7"]

    [[rule]]
    name = "no-user-alice"
    effect = "deny"
    tools = ["users://alice"]

    [[rule]]
    name = "no-grid-7-1"
    effect = "deny"
    tools = ["grid://7/1.0"]

    [[rule]]
    name = "no-note-7"
    effect = "deny"
    tools = ["notes://7"]

    [[rule]]
    name = "no-memo-a-hash-b"
    effect = "deny"
    tools = ["memos://a#b"]

    [[rule]]
    name = "vault-7-needs-approval"
    effect = "require_approval"
    tools = ["vault://7"]
    """
)


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def typed_server(
    idp: FakeIdentityProvider, policy: Any, **kwargs: Any
) -> tuple[FastMCP, list[Any]]:
    ran: list[Any] = []
    mcp = FastMCP("typed", auth=idp.verifier(audience=AUDIENCE), policy=policy, **kwargs)

    @mcp.resource("items://{id}")
    def item(id: int) -> str:
        ran.append(("item", id))
        return f"item {id}"

    @mcp.resource("prices://{x}")
    def price(x: float) -> str:
        ran.append(("price", x))
        return f"price {x}"

    @mcp.resource("rates://{x}")
    def rate(x: float) -> str:
        ran.append(("rate", x))
        return f"rate {x}"

    @mcp.resource("flags://x{?on}")
    def flags(on: bool = False) -> str:
        ran.append(("flags", on))
        return f"on {on}"

    @mcp.resource("lists://x{?ids*}")
    def lists(ids: list[int] | None = None) -> str:
        ran.append(("lists", ids))
        return f"ids {ids}"

    @mcp.resource("lazy://{id}")
    def lazy(id: "int") -> str:  # a string annotation: pydantic converts it, not FastMCP
        ran.append(("lazy", id))
        return f"lazy {id}"

    @mcp.resource("optional://{id}")
    def optional(id: int | None) -> str:
        ran.append(("optional", id))
        return f"optional {id}"

    @mcp.resource("users://{name}")
    def user(name: Annotated[str, StringConstraints(to_lower=True)]) -> str:
        ran.append(("user", name))
        return f"user {name}"

    @mcp.resource("grid://{a}/{b}")
    def grid(a: float, b: float) -> str:
        ran.append(("grid", a, b))
        return f"grid {a} {b}"

    @mcp.resource("notes://{id}#x")  # a literal "#": FastMCP matches the whole URI
    def note(id: int) -> str:
        ran.append(("note", id))
        return f"note {id}"

    @mcp.resource("memos://{name}#x")
    def memo(name: str) -> str:
        ran.append(("memo", name))
        return f"memo {name}"

    @mcp.resource("vault://{id}")
    def vault(id: int) -> str:
        ran.append(("vault", id))
        return f"vault {id}"

    return mcp, ran


DODGES = [
    ("items://07", "no-item-7"),
    ("items://+7", "no-item-7"),
    ("items://%207", "no-item-7"),  # int() strips whitespace
    ("items://7%20", "no-item-7"),
    ("items://%EF%BC%97", "no-item-7"),  # a full-width 7: int() reads any Unicode digit
    ("items://%D9%A7", "no-item-7"),  # an Arabic-Indic 7
    ("items://0_7", "no-item-7"),  # int() accepts underscores between digits
    ("prices://7.0", "no-price-7"),  # a rule author writes 7 for the float 7.0
    ("prices://07", "no-price-7"),
    ("prices://7e0", "no-price-7"),
    ("prices://%207", "no-price-7"),
    ("prices://2.50", "no-price-2-5"),
    ("prices://25e-1", "no-price-2-5"),
    ("rates://3", "no-rate-3-written-as-float"),  # ... or 3.0 for the float 3.0
    ("rates://03.00", "no-rate-3-written-as-float"),
    ("flags://x?on=YES", "no-flags-on"),
    ("flags://x?on=1", "no-flags-on"),
    ("flags://x?on=True", "no-flags-on"),
    ("flags://x?on=yes&on=no", "no-flags-on"),  # FastMCP reads the first value
    ("lists://x?ids=07", "no-ids-7"),  # pydantic converts list[int] items
    ("lazy://07", "no-lazy-7"),
    ("lazy://7.0", "no-lazy-7"),  # pydantic's int accepts an integral decimal
    ("optional://%207", "no-optional-7"),
    ("users://ALICE", "no-user-alice"),  # the function receives "alice"
    # a rule mixing forms across several float values: one canonical spelling per value
    ("grid://7/1.0", "no-grid-7-1"),
    ("grid://7.0/1", "no-grid-7-1"),
    ("grid://7/1", "no-grid-7-1"),
    ("grid://7.0/1.0", "no-grid-7-1"),
    ("grid://07/1e0", "no-grid-7-1"),
    # a template spelling out "#": FastMCP matches the whole URI, values may hold a "#"
    ("notes://7#x", "no-note-7"),
    ("notes://07#x", "no-note-7"),
    ("memos://a%23b#x", "no-memo-a-hash-b"),
    ("memos://a#b#x", "no-memo-a-hash-b"),
]


@pytest.mark.parametrize(("uri", "rule"), DODGES)
async def test_a_deny_rule_on_a_typed_value_holds_for_every_spelling_fastmcp_converts(
    idp: FakeIdentityProvider, caplog: pytest.LogCaptureFixture, uri: str, rule: str
) -> None:
    """Each URI reads the value the rule names; that rule denies it (as the server log says)."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES), audit=False)
    with caplog.at_level(logging.INFO, logger="securemcp.pipeline"):
        async with connect(mcp, idp.token("alice")) as client:
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource(uri)
    assert ran == []
    refused = [r.getMessage() for r in caplog.records if "securemcp refused" in r.getMessage()]
    assert len(refused) == 1 and f"{rule}: rule '{rule}'" in refused[0], refused


async def test_other_values_and_the_rules_own_spelling_are_judged_as_before(
    idp: FakeIdentityProvider,
) -> None:
    """Only reads of the value a rule names are refused: other values run, and the rule's own
    spelling is still refused."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES))
    async with connect(mcp, idp.token("alice")) as client:
        for uri in ("items://7", "prices://7", "prices://2.5", "rates://3.0", "flags://x?on=true"):
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource(uri)
        for uri in (
            "items://8",
            "items://70",
            "items://0_8",
            "prices://7.5",
            "prices://2.05",
            "flags://x?on=no",
            "flags://x?on=0&on=1",
            "lists://x?ids=8&ids=17",
            "lazy://8",
            "users://bob",
            "grid://7/1.5",
            "grid://1/7",
            "memos://a#x",
            "memos://a#c#x",
        ):
            await client.read_resource(uri)
    assert ran == [
        ("item", 8),
        ("item", 70),
        ("item", 8),
        ("price", 7.5),
        ("price", 2.05),
        ("flags", False),
        ("flags", False),
        ("lists", [8, 17]),
        ("lazy", 8),
        ("user", "bob"),
        ("grid", 7.0, 1.5),
        ("grid", 1.0, 7.0),
        ("memo", "a"),
        ("memo", "a#c"),
    ]


async def test_a_value_fastmcp_cannot_convert_fails_the_read_not_the_policy_step(
    idp: FakeIdentityProvider,
) -> None:
    """items://0x7 is no dodge (int() refuses it, the read fails): the policy step must not
    crash on it (no internal error, no policy_error), and FastMCP's own error reaches the
    client."""
    mcp, ran = typed_server(idp, RulesPolicy.from_string(RULES))
    async with connect(mcp, idp.token("alice")) as client:
        for uri in ("items://0x7", "items://7.0", "prices://seven", "flags://x?on=maybe"):
            with pytest.raises(Exception) as failed:
                await client.read_resource(uri)
            message = str(failed.value)
            assert "policy_error" not in message and "Internal" not in message, message
            assert "Error reading resource" in message, message
    assert ran == []


async def test_an_approval_for_a_typed_value_is_asked_and_spent_under_its_canonical_spelling(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    """vault://07 needs the approval vault://7 needs. The approval names the read as the
    function runs it (vault://7, not the caller's spelling), a granted one lets the read run
    once, and every spelling of the same value then needs a new approval."""
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = typed_server(
        idp, RulesPolicy.from_string(RULES), approvals=ApprovalGate(store), audit=False
    )
    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="approval_required") as refused:
            await client.read_resource("vault://07")
        approval_id = str(refused.value).split("approval id ")[1].split(")")[0]
        # another spelling of the same value waits on the same request
        with pytest.raises(Exception, match=approval_id):
            await client.read_resource("vault://%207")
        granted = await store.approve(approval_id, APPROVER)
        assert granted.tool == "resources/read#vault://{id} vault://7"
        assert (await client.read_resource("vault://07"))[0].text == "vault 7"  # type: ignore[union-attr]
        # single use, whatever the spelling
        for uri in ("vault://07", "vault://7"):
            with pytest.raises(Exception, match="approval_required"):
                await client.read_resource(uri)
        # another value is another read
        assert (await client.read_resource("vault://8"))[0].text == "vault 8"  # type: ignore[union-attr]
    assert ran == [("vault", 7), ("vault", 8)]


async def test_constraints_for_a_typed_value_hold_for_every_spelling(
    idp: FakeIdentityProvider,
) -> None:
    """A hook that constrains the read of item 7 constrains items://07 too, and the constraints
    of every spelling combine, the tighter of each."""

    def hook(request: Any) -> Decision:
        if request.target == "items://7":
            return Decision.constrain(max_result_bytes=3, rule="small-item-7")
        if request.target == "items://07":
            return Decision.constrain(timeout_seconds=30, rule="slow-item-07")
        return Decision.allow()

    mcp, ran = typed_server(idp, hook, audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        for uri in ("items://07", "items://+7"):
            with pytest.raises(Exception, match="result_too_large"):
                await client.read_resource(uri)
        assert (await client.read_resource("items://8"))[0].text == "item 8"  # type: ignore[union-attr]
    assert ran == [("item", 7), ("item", 7), ("item", 8)]


async def test_a_hook_is_asked_about_each_spelling_and_the_strictest_answer_wins(
    idp: FakeIdentityProvider,
) -> None:
    """The hook sees the URI as FastMCP reads it, then the canonical spelling; it cannot tell
    the request apart from a read of the canonical URI, and the uri as sent is kept."""
    seen: list[tuple[str, str | None]] = []

    def hook(request: Any) -> Decision:
        seen.append((request.target, request.uri))
        if request.target == "items://7":
            return Decision.deny("item 7 is secret", rule="secret-7")
        return Decision.allow()

    mcp, ran = typed_server(idp, hook, audit=False)
    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="policy_denied"):
            await client.read_resource("items://%2B7")
        await client.read_resource("items://8")
    assert seen == [
        ("items://+7", "items://%2B7"),
        ("items://7", "items://%2B7"),
        ("items://8", "items://8"),
    ]
    assert ran == [("item", 8)]


async def test_a_parents_rule_holds_for_a_mounted_servers_typed_template(
    idp: FakeIdentityProvider,
) -> None:
    """A mount forwards the read to the mounted server, whose template converts the value: the
    parent's rule on items://ns/7 holds for items://ns/07, two mounts deep too, whether the
    mounted servers are plain FastMCP servers or securemcp servers without a policy."""
    import fastmcp

    ran: list[Any] = []
    child = fastmcp.FastMCP("child")

    @child.resource("items://{id}")
    def item(id: int) -> str:
        ran.append(("item", id))
        return f"item {id}"

    grandchild = FastMCP("grandchild", audit=False)

    @grandchild.resource("deep://{id}{?on}")
    def deep(id: int, on: bool = False) -> str:
        ran.append(("deep", id, on))
        return f"deep {id} {on}"

    middle = fastmcp.FastMCP("middle")
    middle.mount(grandchild, namespace="g")
    rules = textwrap.dedent(
        """
        default = "allow"

        [[rule]]
        name = "no-mounted-7"
        effect = "deny"
        tools = ["items://ns/7", "deep://m/g/7?on=true"]
        """
    )
    parent = FastMCP(
        "parent",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(rules),
        audit=False,
    )
    parent.mount(child, namespace="ns")
    parent.mount(middle, namespace="m")
    async with connect(parent, idp.token("alice")) as client:
        for uri in ("items://ns/07", "items://ns/%2B7", "deep://m/g/07?on=YES"):
            with pytest.raises(Exception, match="policy_denied"):
                await client.read_resource(uri)
        assert (await client.read_resource("items://ns/08"))[0].text == "item 8"  # type: ignore[union-attr]
        assert (await client.read_resource("deep://m/g/07?on=no"))[0].text == "deep 7 False"  # type: ignore[union-attr]
    assert ran == [("item", 8), ("deep", 7, False)]


async def test_a_validator_in_an_annotation_runs_once_to_judge_and_once_in_fastmcp(
    idp: FakeIdentityProvider,
) -> None:
    """securemcp cannot hand FastMCP the values it judged: FastMCP's read takes the URI and
    converts its values itself (``FunctionResourceTemplate.read``). So a validator in a typed
    parameter's annotation runs twice per read (documented): once when securemcp judges the
    read, once in FastMCP. The values a rule names are converted once per template, not per
    read."""
    runs: list[int] = []

    def counted(value: int) -> int:
        runs.append(value)
        return value

    policy = RulesPolicy.from_string(
        'default = "allow"\n[[rule]]\nname = "no-c-7"\neffect = "deny"\ntools = ["c://7"]\n'
    )
    mcp = FastMCP("counted", auth=idp.verifier(audience=AUDIENCE), policy=policy, audit=False)

    @mcp.resource("c://{id}")
    def counted_item(id: Annotated[int, AfterValidator(counted)]) -> str:
        return f"c {id}"

    async with connect(mcp, idp.token("alice")) as client:
        await client.read_resource("c://8")
        assert runs == [8, 7, 7, 8]  # judged, the rule's c://7 (a fixed point), FastMCP
        runs.clear()
        await client.read_resource("c://08")
        await client.read_resource("c://9")
    assert runs == [8, 8, 9, 9]
