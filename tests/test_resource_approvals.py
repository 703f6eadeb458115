"""An approval for a resource read serves only the component it was granted for.

A concrete resource ``x://a`` and a template ``x://{name}`` can serve the same URI text:
FastMCP finds a concrete resource by its exact URI, so ``x://a`` reads the concrete one while
``x://%61`` (the same text once percent-decoded, as a policy sees a template read) reads the
template with ``name="a"``. They are different components with different code: an approval
granted for one must never be spent on the other. Every case checks with a list which
function ran.
"""

import textwrap
from pathlib import Path
from typing import Any

import pytest

from securemcp import FastMCP
from securemcp.context import Principal
from securemcp.policy import ApprovalGate, RulesPolicy, open_store
from securemcp.policy.approvals import ApprovalStore, approval_target, describe_target
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
APPROVER = Principal(subject="olga", issuer="https://idp", scopes=["securemcp:approve"])

RULES = textwrap.dedent(
    """
    default = "allow"

    [[rule]]
    name = "a-needs-approval"
    effect = "require_approval"
    tools = ["x://a"]
    """
)


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def twin_server(idp: FakeIdentityProvider, store: ApprovalStore) -> tuple[FastMCP, list[Any]]:
    ran: list[Any] = []
    mcp = FastMCP(
        "twins",
        auth=idp.verifier(audience=AUDIENCE),
        policy=RulesPolicy.from_string(RULES),
        approvals=ApprovalGate(store),
        audit=False,
    )

    @mcp.resource("x://a")
    def concrete() -> str:
        ran.append("concrete")
        return "concrete"

    @mcp.resource("x://{name}")
    def template(name: str) -> str:
        ran.append(("template", name))
        return f"template {name}"

    return mcp, ran


def _approval_id(error: BaseException) -> str:
    return str(error).split("approval id ")[1].split(")")[0]


async def test_an_approval_for_a_concrete_resource_is_not_spent_on_a_template_read(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = twin_server(idp, store)
    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="approval_required") as refused:
            await client.read_resource("x://a")
        granted = await store.approve(_approval_id(refused.value), APPROVER)
        assert granted.tool == "resources/read x://a"  # a concrete read keeps its old form
        with pytest.raises(Exception, match="approval_required") as asked:
            await client.read_resource("x://%61")  # the template, name="a"
        assert _approval_id(asked.value) != granted.id
        assert ran == []
        # the approval still serves the read it was granted for, once
        assert (await client.read_resource("x://a"))[0].text == "concrete"  # type: ignore[union-attr]
    assert ran == ["concrete"]


async def test_an_approval_for_a_template_read_is_not_spent_on_a_concrete_resource(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    store = open_store(tmp_path / "approvals.sqlite3")
    mcp, ran = twin_server(idp, store)
    async with connect(mcp, idp.token("alice")) as client:
        with pytest.raises(Exception, match="approval_required") as refused:
            await client.read_resource("x://%61")
        granted = await store.approve(_approval_id(refused.value), APPROVER)
        with pytest.raises(Exception, match="approval_required") as asked:
            await client.read_resource("x://a")  # the concrete resource
        assert _approval_id(asked.value) != granted.id
        assert ran == []
        assert granted.tool == "resources/read#x://{name} x://a"
        text = (await client.read_resource("x://%61"))[0].text  # type: ignore[union-attr]
        assert text == "template a"
    assert ran == [("template", "a")]


def test_a_template_reads_approval_target_names_its_template_and_lists_readably() -> None:
    concrete = approval_target("resources/read", "x://a")
    template = approval_target("resources/read", "x://a", template="x://{name}")
    other = approval_target("resources/read", "x://a", template="x://{id}")
    versioned = approval_target("resources/read", "x://a", "2", template="x://{name}")
    spaced = approval_target("resources/read", "x://a", template="x://{name} #x")
    assert len({concrete, template, other, versioned, spaced}) == 5
    assert concrete == "resources/read x://a"
    assert versioned == "resources/read@2#x://{name} x://a"
    assert describe_target(template) == "resources/read 'x://a' of template 'x://{name}'"
    assert describe_target(versioned) == (
        "resources/read 'x://a' of template 'x://{name}' version 2"
    )
    assert describe_target(spaced) == "resources/read 'x://a' of template 'x://{name} #x'"
    assert describe_target(concrete) == repr(concrete)
    assert describe_target("tools/call@?1 purge") == "'purge' version unresolved (asked for 1)"
