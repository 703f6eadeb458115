"""Reviewing and pinning upstream definitions: what ``securemcp proxy lock`` and ``check`` do.

Locking connects to each upstream with its configured credentials, lists every tool, resource,
resource template and prompt, scans each definition for hidden instructions
(:mod:`securemcp.proxy.poisoning`), shows what changed since the last lock, and writes the
lockfile (:mod:`securemcp.proxy.pinning`). A definition with findings is **not** pinned unless
the operator accepts the findings explicitly (``--accept-findings``); a previously pinned
definition whose findings were accepted stays pinned while it is unchanged.

For an upstream reached by RFC 8693 token exchange, the operator's own access token (from
``SECUREMCP_ACCESS_TOKEN``) is exchanged, as it would be for any caller.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from securemcp.proxy.config import ProxyConfig
from securemcp.proxy.credentials import UpstreamAuth, auth_from_config
from securemcp.proxy.pinning import (
    LockDiff,
    Lockfile,
    PinnedDefinition,
    UpstreamLock,
    diff,
)
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.poisoning import Finding, scan_definition, summarize
from securemcp.proxy.sessions import Session
from securemcp.proxy.upstream import Upstream

__all__ = ["LockReport", "fetch_live", "lock_upstreams"]

ALL_KINDS = frozenset({"tool", "resource", "template", "prompt"})


@dataclass
class LockReport:
    """What locking found for one upstream."""

    upstream: str
    diff: LockDiff
    findings: dict[tuple[str, str], tuple[Finding, ...]] = field(default_factory=dict)
    refused: list[PinnedDefinition] = field(default_factory=list)
    error: str | None = None

    def lines(self) -> list[str]:
        """Human-readable report lines."""
        if self.error is not None:
            return [f"{self.upstream}: ERROR {self.error}"]
        out = [f"{self.upstream}:"]
        out += [f"  {line}" for line in self.diff.describe()] or ["  no changes"]
        for (kind, key), findings in sorted(self.findings.items()):
            for finding in findings:
                out.append(
                    f"  FLAGGED {kind} {key!r}: {finding.code} at {finding.where}: {finding.detail}"
                )
        for pin in self.refused:
            out.append(
                f"  NOT PINNED {pin.kind} {pin.key!r}: flagged "
                f"({', '.join(pin.findings)}); review it, then re-run with --accept-findings"
            )
        return out


async def fetch_live(
    upstream: Upstream, *, subject_token: str | None = None
) -> list[PinnedDefinition]:
    """Every definition the upstream currently offers (one short-lived operator session)."""
    session: Session[object] = Session(
        key="securemcp-proxy-lock", client=None, created=0.0, last_used=0.0
    )
    session.credential = await upstream.session_credential(subject_token, session.key)
    client = await upstream._open(session)
    try:
        return await upstream.live_definitions(client, set(ALL_KINDS))
    finally:
        await upstream._close(client)


def _scan(live: Iterable[PinnedDefinition]) -> dict[tuple[str, str], tuple[Finding, ...]]:
    found: dict[tuple[str, str], tuple[Finding, ...]] = {}
    for pin in live:
        findings = scan_definition(pin.kind, pin.definition)
        if findings:
            found[(pin.kind, pin.key)] = findings
    return found


async def lock_upstreams(
    config: ProxyConfig,
    *,
    lockfile: str | os.PathLike[str] | None = None,
    only: Iterable[str] | None = None,
    accept_findings: bool = False,
    write: bool = True,
    upstream_auth: Mapping[str, UpstreamAuth] | None = None,
    subject_token: str | None = None,
) -> tuple[Lockfile, list[LockReport]]:
    """Pin the upstreams' current definitions (or, with ``write=False``, only report drift).

    Returns:
        The new lockfile (written unless ``write=False``) and one report per upstream.
    """
    path = lockfile if lockfile is not None else config.lockfile
    pins = PinState(path, quiet=True)
    current = pins.lockfile
    subject_token = subject_token or os.environ.get("SECUREMCP_ACCESS_TOKEN")
    wanted = set(only) if only is not None else None
    reports: list[LockReport] = []
    updated = current
    for upstream_config in config.upstreams:
        if wanted is not None and upstream_config.name not in wanted:
            continue
        auth = (upstream_auth or {}).get(upstream_config.name) or auth_from_config(
            upstream_config.auth
        )
        upstream = Upstream(upstream_config, auth, pins)
        previous = current.upstream(upstream_config.name)
        try:
            live = await fetch_live(upstream, subject_token=subject_token)
            changes = diff(previous, live)  # refuses an upstream listing one key twice
        except Exception as exc:
            empty = diff(previous, ())
            reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
            reports.append(LockReport(upstream_config.name, empty, error=reason))
            continue
        findings = _scan(live)
        report = LockReport(upstream_config.name, changes, findings)
        entries = {}
        for pin in live:
            flagged = findings.get((pin.kind, pin.key), ())
            codes = summarize(flagged)
            candidate = PinnedDefinition.of(pin.kind, pin.definition, findings=codes)
            if codes and not accept_findings:
                old = previous.get(pin.kind, pin.key) if previous is not None else None
                if old is not None and old.digest == pin.digest and set(codes) <= set(old.findings):
                    entries[(pin.kind, pin.key)] = old  # accepted before, unchanged since
                else:
                    report.refused.append(candidate)
                continue
            entries[(pin.kind, pin.key)] = candidate
        reports.append(report)
        if previous is not None and entries == dict(previous.entries):
            continue  # unchanged: keep the previous lock (and its date) for a clean diff
        updated = updated.with_upstream(
            UpstreamLock(
                upstream=upstream_config.name,
                locked_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                entries=entries,
            )
        )
    if write and not any(r.error for r in reports):
        updated.save(path)
    return updated, reports
