"""``securemcp policy check|explain`` and ``securemcp approvals list|approve|deny``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

import pytest
from policy_helpers import principal

from securemcp.policy.approvals import ApprovalStatus
from securemcp.policy.approvals_sqlite import SQLiteApprovalStore
from securemcp.policy.cli import register

RULES = """\
default = "deny"

[[rule]]
name = "admins"
effect = "allow"
claims = { role = "admin" }

[[rule]]
name = "small-refunds"
effect = "allow"
tools = ["refund"]
scopes = ["billing:write"]
arguments = { amount = { le = 100 } }
"""


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="securemcp")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(RULES)
    return path


def test_check_valid(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("policy", "check", str(rules)) == 0
    out = capsys.readouterr().out
    assert "OK, 2 rules, default deny, version sha256:" in out


def test_check_invalid_is_line_precise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(RULES.replace('effect = "allow"\ntools', 'effect = "alow"\ntools'))
    assert run("policy", "check", str(bad)) == 1
    err = capsys.readouterr().err
    assert f"{bad}:10: 'effect' must be one of" in err
    assert run("policy", "check", str(tmp_path / "missing.toml")) == 2


def test_explain(rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "policy",
        "explain",
        str(rules),
        "--tool",
        "refund",
        "--subject",
        "alice",
        "--scope",
        "billing:write other:scope",
        "--arg",
        "amount=50",
        "--claim",
        "role=support",
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "rule 'admins' (line 3): no match: claim 'role' fails contains 'admin'" in out
    assert "decision: allow by 'small-refunds' at line 8" in out
    run(
        "policy", "explain", str(rules), "--tool", "refund", "--subject", "a", "--arg", "amount=500"
    )
    assert "decision: deny by 'default'" in capsys.readouterr().out
    assert (
        run("policy", "explain", str(rules), "--tool", "x", "--subject", "a", "--arg", "oops") == 2
    )


def test_approvals_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "approvals.sqlite3"
    store = SQLiteApprovalStore(db)
    first = asyncio.run(
        store.request(principal("alice"), "drop_db", "sha256:a", "sha256:p", reason="destructive")
    )
    second = asyncio.run(store.request(principal("bob"), "drop_db", "sha256:b", "sha256:p"))
    assert run("approvals", "list", "--store", str(db)) == 0
    out = capsys.readouterr().out
    assert first in out and second in out and "'drop_db' for alice" in out
    assert run("approvals", "approve", first, "--store", str(db), "--reusable-for", "60") == 0
    assert "approved by" in capsys.readouterr().out
    assert run("approvals", "deny", second, "--store", str(db), "--reason", "no") == 0
    approved = asyncio.run(store.get(first))
    assert approved is not None and approved.status is ApprovalStatus.APPROVED
    assert (
        approved.reusable
        and approved.decided_by
        and "securemcp:local-operator" in approved.decided_by
    )
    denied = asyncio.run(store.get(second))
    assert denied is not None and denied.status is ApprovalStatus.DENIED and denied.note == "no"
    # deciding twice, or an unknown id, is refused with exit 1
    assert run("approvals", "approve", first, "--store", str(db)) == 1
    assert "already been decided" in capsys.readouterr().err
    assert run("approvals", "approve", "apr_unknown", "--store", str(db)) == 1
    capsys.readouterr()
    assert run("approvals", "list", "--store", str(db)) == 0
    assert "no pending approval requests" in capsys.readouterr().out
    assert run("approvals", "list", "--all", "--json", "--store", str(db)) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["status"] for r in records} == {"approved", "denied"}


def test_approvals_cli_store_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("approvals", "list", "--store", "redis://127.0.0.1:1/0") == 2
    assert "unavailable" in capsys.readouterr().err


def test_explain_judges_the_version_given_as_the_one_that_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "versions.toml"
    path.write_text(
        'default = "allow"\n[[rule]]\nname = "old"\neffect = "deny"\nversions = [">=1,<2"]\n'
    )
    assert (
        run("policy", "explain", str(path), "--tool", "purge", "--subject", "a", "--version", "1.5")
        == 0
    )
    out = capsys.readouterr().out
    assert "call: tools/call 'purge' version 1.5 as" in out
    assert "decision: deny by 'old'" in out
    assert (
        run("policy", "explain", str(path), "--tool", "purge", "--subject", "a", "--version", "2")
        == 0
    )
    assert "version '2' is in none of ['>=1,<2']" in capsys.readouterr().out


def test_approvals_list_names_versions_and_escapes_an_asked_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version asked for is the caller's text: listed escaped, never as a forged line."""
    from securemcp.policy.approvals import approval_target

    db = tmp_path / "approvals.sqlite3"
    store = SQLiteApprovalStore(db)
    targets = [
        approval_target("tools/call", "purge", "2"),
        approval_target("prompts/get", "brief", "1.0"),
        approval_target("tools/call", "purge", None, resolved=False, requested="1"),
        approval_target("tools/call", "purge", None, resolved=False, requested="1\nFORGED"),
    ]
    assert targets[0] == "tools/call@2 purge" and targets[2] == "tools/call@?1 purge"
    for index, target in enumerate(targets):
        asyncio.run(store.request(principal("alice"), target, f"sha256:{index}", "sha256:p"))
    assert run("approvals", "list", "--store", str(db)) == 0
    out = capsys.readouterr().out
    assert "'purge' version 2 for alice" in out
    assert "prompts/get 'brief' version 1.0 for alice" in out
    assert "'purge' version unresolved (asked for 1) for alice" in out
    assert "(asked for '1\\nFORGED')" in out
    assert not any(line.startswith("FORGED") for line in out.splitlines())


def test_explain_shows_a_template_reads_canonical_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --template and the parameters' types, explain judges the read as the server does:
    as FastMCP reads the URI and as the template function receives its values."""
    path = tmp_path / "items.toml"
    path.write_text(
        'default = "allow"\n[[rule]]\nname = "no-item-7"\neffect = "deny"\n'
        'tools = ["items://7?on=true"]\n'
    )
    argv = ("policy", "explain", str(path), "--subject", "a", "--template", "items://{id}{?on}")
    assert (
        run(*argv, "--tool", "items://%2007?on=YES#x", "--param", "id=int", "--param", "on=bool")
        == 0
    )
    out = capsys.readouterr().out
    assert "call: resources/read 'items:// 07?on=YES' as 'a'" in out
    assert "canonical spelling: 'items://7?on=true'" in out
    assert "strictest decision: deny by 'no-item-7'" in out
    assert run(*argv, "--tool", "items://8?on=1", "--param", "id=int", "--param", "on=bool") == 0
    assert "strictest decision: allow by 'default'" in capsys.readouterr().out
    # untyped parameters are read as text: no other spelling
    assert run(*argv, "--tool", "items://07?on=YES") == 0
    out = capsys.readouterr().out
    assert "canonical spelling" not in out and "decision: allow by 'default'" in out
    assert run(*argv, "--tool", "items://7", "--param", "id=long") == 2
    assert "--param must look like NAME=TYPE" in capsys.readouterr().err


def test_explain_matches_a_rule_naming_a_read_in_any_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A rule naming grid://7/1.0 (two float values written in mixed forms) decides every
    spelling of that read, as a server does; before, only the uniform forms were judged."""
    path = tmp_path / "grid.toml"
    path.write_text(
        'default = "allow"\n[[rule]]\nname = "no-grid"\neffect = "deny"\ntools = ["grid://7/1.0"]\n'
    )
    argv = ("policy", "explain", str(path), "--subject", "a", "--template", "grid://{a}/{b}")
    floats = ("--param", "a=float", "--param", "b=float")
    for uri in ("grid://7.0/1", "grid://7/1", "grid://07/1e0"):
        assert run(*argv, "--tool", uri, *floats) == 0
        assert "decision: deny by 'no-grid'" in capsys.readouterr().out, uri
    assert run(*argv, "--tool", "grid://7/1.5", *floats) == 0
    out = capsys.readouterr().out
    assert "decision: allow by 'default'" in out
    assert "(written canonically: ['grid://7/1'])" in out


def test_explain_shows_a_prompt_calls_argument_forms(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --prompt-param, explain judges a prompts/get call as the server does: the arguments
    as sent (text), as the prompt function receives them and as canonical text."""
    path = tmp_path / "prompts.toml"
    path.write_text(
        'default = "allow"\n'
        '[[rule]]\nname = "no-cell-7-1"\neffect = "deny"\ntools = ["cell"]\n'
        'arguments = { x = "7", y = "1.0" }\n'
        '[[rule]]\nname = "no-big"\neffect = "deny"\ntools = ["pay"]\n'
        "arguments = { amount = { gt = 1000 } }\n"
    )
    argv = ("policy", "explain", str(path), "--subject", "a")
    cell = ("--tool", "cell", "--prompt-param", "x=float", "--prompt-param", "y=float")
    assert run(*argv, *cell, "--arg", "x=07", "--arg", "y=1e0") == 0
    out = capsys.readouterr().out
    assert "call: prompts/get 'cell' as 'a'" in out
    assert (
        "arguments as sent: {'x': '07', 'y': '1e0'}; as received: {'x': 7.0, 'y': 1.0}; "
        "canonical: {'x': '7', 'y': '1'}" in out
    )
    assert "strictest decision: deny by 'no-cell-7-1'" in out
    # a number condition holds on the value received, never on the text sent
    pay = ("--tool", "pay", "--prompt-param", "amount=int")
    assert run(*argv, *pay, "--arg", "amount=5_000") == 0
    assert "strictest decision: deny by 'no-big'" in capsys.readouterr().out
    assert run(*argv, *pay, "--arg", "amount=500") == 0
    assert "strictest decision: allow by 'default'" in capsys.readouterr().out
    # a value FastMCP refuses: the render fails, the call is judged as sent
    assert run(*argv, *pay, "--arg", "amount=five") == 0
    assert "arguments: as sent" in capsys.readouterr().out
    assert run(*argv, *pay, "--prompt-param", "amount=long") == 2
    assert "--prompt-param must look like NAME=TYPE" in capsys.readouterr().err
