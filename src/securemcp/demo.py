"""``securemcp demo``: a zero-configuration tour of what securemcp does to a FastMCP server.

Builds a small notes server with scoped tools, a fake identity provider (no network), and calls it
as two users with different scopes and as an attacker with a forged token, then prints what
happened and why.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import Any

from securemcp.context import current
from securemcp.server import FastMCP

AUDIENCE = "https://notes.securemcp.test/mcp"


def build_server(verifier: Any, approvals: Any = None) -> FastMCP:
    """The demo's notes server: an open tool, tools for readers, writers and admins, and a
    destructive tool that policy puts behind a human approval."""
    from securemcp.policy import first_match, risk_defaults

    mcp = FastMCP(
        "notes",
        auth=verifier,
        policy=first_match(risk_defaults),  # destructive tools need an approver's approval
        approvals=approvals,
    )
    notes: list[str] = ["buy milk"]

    @mcp.tool(scopes=["notes:read"])
    def list_notes() -> list[str]:
        """List every note."""
        return list(notes)

    @mcp.tool(scopes=["notes:write"])
    def add_note(text: str) -> str:
        """Add a note, signed by the verified caller."""
        author = current().principal.subject
        notes.append(f"{text} (by {author})")
        return f"added note #{len(notes)} as {author}"

    @mcp.tool(scopes=["notes:admin"])
    def purge_notes() -> str:
        """Delete every note."""
        notes.clear()
        return "purged"

    @mcp.tool(scopes=["notes:write"], annotations={"destructiveHint": True})
    def archive_notes() -> str:
        """Move every note to the archive (destructive: needs an approval)."""
        count = len(notes)
        notes.clear()
        return f"archived {count} notes"

    @mcp.tool
    def whoami() -> dict[str, Any]:
        """Who the server thinks you are (from your verified token, never from arguments)."""
        principal = current().principal
        return {"subject": principal.subject, "scopes": sorted(principal.scopes)}

    return mcp


@dataclass
class Step:
    actor: str
    action: str
    outcome: str
    why: str


async def _call(client: Any, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    result = await client.call_tool(tool, args, raise_on_error=False)
    text = result.content[0].text if result.content else ""
    if result.is_error:
        return False, text
    return True, str(result.data if result.data is not None else text)


async def run_demo() -> list[Step]:
    """Run the scripted calls and return what happened, step by step."""
    import tempfile

    from securemcp.context import Principal
    from securemcp.policy import ApprovalGate, open_store
    from securemcp.testing.client import connect
    from securemcp.testing.idp import FakeIdentityProvider

    idp = FakeIdentityProvider(audience=AUDIENCE)
    store = open_store(f"{tempfile.mkdtemp(prefix='securemcp-demo-')}/approvals.sqlite3")
    server = build_server(idp.verifier(audience=AUDIENCE), ApprovalGate(store))
    steps: list[Step] = []

    alice = idp.token("alice", scopes=["notes:read", "notes:write"])
    bob = idp.token("bob", scopes=["notes:read"])
    mallory = FakeIdentityProvider(issuer=idp.issuer, audience=AUDIENCE).token(
        "alice", scopes=["notes:admin"]
    )

    async with connect(server, token=alice) as client:
        visible = sorted(t.name for t in await client.list_tools())
        steps.append(
            Step(
                "alice",
                "tools/list",
                ", ".join(visible),
                "purge_notes is hidden: it needs notes:admin, which alice's token lacks",
            )
        )
        ok, text = await _call(client, "add_note", {"text": "ship securemcp"})
        steps.append(
            Step(
                "alice",
                "add_note",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "alice's token carries notes:write",
            )
        )
        ok, text = await _call(client, "whoami", {})
        steps.append(
            Step(
                "alice",
                "whoami",
                text,
                "identity comes from the verified token, fresh for every call",
            )
        )

    async with connect(server, token=bob) as client:
        visible = sorted(t.name for t in await client.list_tools())
        steps.append(
            Step(
                "bob",
                "tools/list",
                ", ".join(visible),
                "bob only holds notes:read, so write and admin tools are hidden",
            )
        )
        ok, text = await _call(client, "list_notes", {})
        steps.append(
            Step(
                "bob",
                "list_notes",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "bob's token carries notes:read",
            )
        )
        ok, text = await _call(client, "add_note", {"text": "bob was here"})
        steps.append(
            Step(
                "bob",
                "add_note",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "the tool body never ran; the error names the missing scope",
            )
        )
        ok, text = await _call(client, "purge_notes", {})
        steps.append(
            Step(
                "bob",
                "purge_notes (hidden)",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "hidden from bob's list, and refused when called by name",
            )
        )

    async with connect(server, token=alice) as client:
        ok, text = await _call(client, "archive_notes", {})
        steps.append(
            Step(
                "alice",
                "archive_notes (destructive)",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "policy puts destructive tools behind a human approval; nothing was archived",
            )
        )
        approval_id = text.split("approval id ")[1].split(")")[0] if not ok else ""
        olga = Principal(subject="olga", issuer=idp.issuer, scopes=frozenset({"securemcp:approve"}))
        if approval_id:
            await store.approve(approval_id, olga)
        ok, text = await _call(client, "archive_notes", {})
        steps.append(
            Step(
                "alice",
                "archive_notes, after olga approved",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "the approval is bound to alice, this tool, these arguments and this policy; "
                "alice could not approve it herself, and it works once",
            )
        )

    async with connect(server, token=mallory) as client:
        ok, text = await _call(client, "purge_notes", {})
        steps.append(
            Step(
                "mallory",
                "purge_notes with a forged 'alice' admin token",
                ("ALLOWED: " if ok else "REFUSED: ") + text,
                "the token is signed by a key the identity provider never published",
            )
        )
    auditor = server._securemcp_pipeline.auditor
    if auditor is not None:
        auditor.log.close()  # seal the log with a final signed checkpoint
        steps.append(
            Step(
                "audit",
                "signed, hash-chained log",
                f"{auditor.log.size} records in {auditor.log.directory}",
                "every decision and outcome above, sealed by Ed25519 checkpoints; check it "
                "offline with: securemcp audit verify   (read it: securemcp audit show)",
            )
        )
    return steps


def main() -> int:
    """Entry point of ``securemcp demo``: run the tour and print a readable summary."""
    os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
    os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
    logging.getLogger("securemcp").setLevel(logging.ERROR)
    logging.getLogger("fastmcp").setLevel(logging.CRITICAL)
    steps = asyncio.run(run_demo())
    print("securemcp demo: a FastMCP notes server behind securemcp, with a fake identity provider")
    print("(real signed tokens, verified on every call; no network, no configuration)\n")
    for number, step in enumerate(steps, 1):
        print(f"{number}. {step.actor:<8} {step.action}")
        print(f"   -> {step.outcome}")
        print(f"   why: {step.why}\n")
    print("Every call above ran in its own fresh security context with a verified identity.")
    print("Next: README.md (Quickstart) and docs/ for configuring a real identity provider.")
    return 0
