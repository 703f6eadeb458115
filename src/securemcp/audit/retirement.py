"""Retiring an audit signing key in a keyring file (``securemcp keys retire``).

A retired key is trusted only for checkpoints of at most N records: its keyring line gains
``retired-after-size=N`` (:mod:`securemcp.audit.keys`). :func:`plan_retirement` finds N and checks
the result before anything is written:

* from logs (``--log``): each must verify against the keyring as it is (``verified`` or
  ``unsealed_tail``); N is the largest matching checkpoint the key signed in them (for a rotation
  made with ``AuditLog.rotate_key``, the checkpoint both keys signed). Each log must then verify
  exactly as before against the new keyring: retiring the key that still seals a log's latest
  checkpoint is refused (rotate first), and so is retiring the key that vouched for a rotation
  to a key the keyring does not pin (a key learned on a retired key's word inherits its bound).
  The new key is never pinned automatically: if the old key leaked, a forged rotation may name
  the forger's key, so the operator adds the line of the key they generated. Only a key the
  keyring pins can be retired: a retired key's line still trusts the key up to its bound, so
  "retiring" a key the keyring never held (one named by a rotation record) would add trust;
* or given (``--after-size N``), when the logs are not at hand.

:func:`retire_in_text` edits the file's text (comments and the other lines are kept) and
:func:`write_keyring` replaces the file atomically.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from securemcp.audit.errors import KeyringError
from securemcp.audit.keys import Keyring, keyring_line, parse_keyring_line
from securemcp.audit.note import NoteError, VerifierKey
from securemcp.audit.verifier import VerificationReport, verify

__all__ = ["Retirement", "plan_retirement", "retire_in_text", "write_keyring"]

_VERIFIES = ("verified", "unsealed_tail")


@dataclass(slots=True)
class Retirement:
    """What retiring ``key`` changes in a keyring.

    Attributes:
        key: the key to retire.
        after_size: its bound: trusted only for checkpoints of at most this many records.
        unchanged: the keyring already retires ``key`` at ``after_size`` (nothing to write).
        reports: each log's verdict against the new keyring.
    """

    key: VerifierKey
    after_size: int
    unchanged: bool = False
    reports: list[VerificationReport] = field(default_factory=list)


def find_key(spec: str, candidates: Iterable[VerifierKey]) -> VerifierKey:
    """The key ``spec`` names: a verifier key, ``<name>+<hex key id>`` or a unique name."""
    known = list(dict.fromkeys(candidates))
    if spec.count("+") >= 2:  # name+id+key (the key's base64 may hold more)
        try:
            return VerifierKey.parse(spec)
        except NoteError as exc:
            raise KeyringError(f"invalid verifier key: {exc}") from exc
    name, _, hex_id = spec.partition("+")
    found = [k for k in known if k.name == name and (not hex_id or k.key_id.hex() == hex_id)]
    if not found:
        raise KeyringError(f"no key {spec!r} in the keyring (or learned from the logs)")
    if len(found) > 1:
        raise KeyringError(f"several keys are named {name!r}: give <name>+<hex key id>")
    return found[0]


def plan_retirement(
    keyring: Keyring,
    spec: str,
    *,
    after_size: int | None = None,
    logs: Sequence[str | os.PathLike[str]] = (),
) -> Retirement:
    """Work out (and check) the retirement of the key ``spec`` names.

    Raises:
        KeyringError: the key is unknown or ambiguous, already retired at another size, never
            signed a matching checkpoint in ``logs`` (and no ``after_size``), a log does not
            verify, or a log would no longer verify as before once the key is retired.
    """
    before = [verify(log, keyring=keyring) for log in logs]
    for log, report in zip(logs, before, strict=True):
        if report.status not in _VERIFIES:
            raise KeyringError(
                f"{log} does not verify against the keyring ({report.status} [{report.kind}]: "
                f"{report.detail}); retire keys against a log you trust"
            )
    learned = [VerifierKey.parse(text) for report in before for text in report.learned_keys]
    key = find_key(spec, [*keyring, *learned])
    if key not in keyring:
        # A retired key's line still trusts it up to its bound: writing one for a key the
        # keyring does not pin (a key named in a rotation record, a suspicious key) would add
        # trust in it, not take trust away.
        raise KeyringError(
            f"{key.name!r} is not in the keyring, so it is not trusted on its own: there is "
            "nothing to retire (a retired key's line still trusts it up to its bound). If the "
            "key is yours, add its line to the keyring first"
        )
    if after_size is None:
        sizes = [r.last_signed[str(key)] for r in before if str(key) in r.last_signed]
        if not sizes:
            raise KeyringError(
                f"{key.name!r} signed no checkpoint in the logs given: pass --after-size N"
            )
        after_size = max(sizes)
    plan = Retirement(key, after_size)
    current = keyring.retired_after_size(key) if key in keyring else None
    if current is not None:
        if current != after_size:
            raise KeyringError(
                f"{key.name!r} is already retired after {current} records; edit the keyring "
                "to change its bound"
            )
        plan.unchanged = True
    retired = Keyring.parse(keyring.dumps())
    retired.retire(key, after_size)
    unpinned = [k for k in dict.fromkeys(learned) if k != key and k not in keyring]
    for log, report in zip(logs, before, strict=True):
        after = verify(log, keyring=retired)
        if after.status != report.status:
            raise KeyringError(
                f"with {key.name!r} retired after {after_size} records, {log} would no longer "
                f"verify ({after.status} [{after.kind}]: {after.detail}); " + _remedy(unpinned)
            )
        plan.reports.append(after)
    return plan


def _remedy(unpinned: list[VerifierKey]) -> str:
    if not unpinned:
        return "rotate to a new key first (AuditLog.rotate_key), so that it seals the log"
    lines = " ".join(str(key) for key in unpinned)
    return (
        f"the log rotated to keys the keyring does not pin: check that they are yours and add "
        f"their lines to the keyring first ({lines})"
    )


def retire_in_text(text: str, plan: Retirement) -> str:
    """The keyring file ``text`` with ``plan`` applied: the key's line gains its bound;
    comments and other lines are kept. ``plan`` names a key ``text`` pins
    (:func:`plan_retirement` refuses any other)."""
    lines = text.splitlines()
    found = False
    for index, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _ = parse_keyring_line(line)
        if key == plan.key:
            lines[index] = keyring_line(key, plan.after_size)
            found = True
    if not found:
        raise KeyringError(f"{plan.key.name!r} is not in the keyring: nothing to retire")
    return "".join(f"{line}\n" for line in lines)


def write_keyring(path: str | os.PathLike[str], text: str) -> None:
    """Replace the keyring file atomically (same folder, same permissions)."""
    target = Path(path)
    mode = target.stat().st_mode & 0o777 if target.exists() else 0o644
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
