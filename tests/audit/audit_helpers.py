"""Helpers for the audit tests: writing sample calls, reading and forging logs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from securemcp.audit import AuditLog, Ed25519Signer, jcs
from securemcp.audit.chain import genesis_prev
from securemcp.audit.checkpoint import Checkpoint
from securemcp.audit.merkle import CompactRange, leaf_hash
from securemcp.audit.note import sign_note
from securemcp.audit.storage import CHECKPOINTS_FILE, list_segments


def write_calls(log: AuditLog, calls: int, *, user: str = "alice", tool: str = "add") -> None:
    """Append a decision and an outcome record for each of ``calls`` tool calls."""
    for index in range(calls):
        call_id = f"call-{log.size}-{index}"
        identity = {"sub": user, "iss": "https://idp.example", "verified": True}
        log.decision(
            call_id=call_id,
            method="tools/call",
            target=tool,
            result="deny" if index % 5 == 4 else "allow",
            reason="policy says no" if index % 5 == 4 else "",
            identity=identity,
            arguments={"a": index, "b": 2},
            trace_id=f"{index:032x}",
        )
        log.outcome(
            call_id=call_id,
            method="tools/call",
            target=tool,
            outcome="refused" if index % 5 == 4 else "ok",
            duration_ms=0.5 + index,
            identity=identity,
        )


# --- reading and forging logs ------------------------------------------------------------------


def segment_path(directory: Path, index: int = 0) -> Path:
    return list_segments(directory)[index][1]


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def records(directory: Path) -> list[dict[str, Any]]:
    out = []
    for _, path in list_segments(directory):
        out.extend(json.loads(line) for line in read_lines(path))
    return out


def checkpoint_sizes(directory: Path) -> list[int]:
    lines = read_lines(directory / CHECKPOINTS_FILE)
    return [int(json.loads(line)["note"].split("\n")[1]) for line in lines]


def forge(
    directory: Path,
    bodies: list[dict[str, Any]],
    signer: Ed25519Signer,
    *,
    sizes: list[int] | None = None,
    origin: str | None = None,
) -> None:
    """Rewrite a log from scratch as a key holder would: re-chain ``bodies`` (keeping their
    ``ts``) into one segment and sign checkpoints at ``sizes`` (default: the current ones)."""
    sizes = sizes if sizes is not None else checkpoint_sizes(directory)
    origin = origin or bodies[0]["log"]
    prev = genesis_prev(origin)
    compact = CompactRange()
    lines, cps = [], []
    for seq, body in enumerate(bodies):
        record = {**body, "log": origin, "seq": seq, "prev": prev}
        line = jcs.dumps(record)
        lines.append(line)
        digest = leaf_hash(line)
        compact.append(digest)
        prev = digest.hex()
        if compact.size in sizes:
            note = sign_note(Checkpoint(origin, compact.size, compact.root()).text(), [signer])
            cps.append(jcs.dumps({"note": note, "range": [n.hex() for n in compact.nodes]}))
    for _, path in list_segments(directory):
        path.unlink()
    write_lines(directory / "audit-000000.jsonl", lines)
    write_lines(directory / CHECKPOINTS_FILE, cps)
