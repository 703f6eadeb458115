"""Which keys the offline verifier trusts for which checkpoint: pinning, rotation, retirement.

The verifier (:mod:`securemcp.audit.verifier`) asks :class:`KeyTrust` to judge each signed
checkpoint (a C2SP ``signed-note`` over a ``tlog-checkpoint``) as it reaches its size:

* **Pinned keys.** A key in the :class:`~securemcp.audit.keys.Keyring` is trusted; a signature
  by a trusted key that does not verify is tampering (:meth:`KeyTrust.judge` names it).
* **Rotations.** A ``key_rotation`` record sealed by a checkpoint that a trusted key *and* the
  new key both signed teaches the new key (:meth:`KeyTrust.learn`), with the authority of the
  keys that vouched for it: current if one of them is, else the largest of their bounds (a key
  cannot vouch for itself; learned twice, the wider authority stands).
* **Retirement** (``retired-after-size=N`` in the keyring): a retired key's signature counts only
  on checkpoints of at most N records; a key learned only from retired keys inherits their bound
  (a retired key cannot mint a current one), and a rotation never lifts a pinned retirement
  (:meth:`KeyTrust.bound`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from securemcp.audit.checkpoint import Checkpoint
from securemcp.audit.keys import Keyring
from securemcp.audit.note import Note, NoteError, VerifierKey

__all__ = ["CheckpointEntry", "KeyTrust"]


@dataclass(slots=True)
class CheckpointEntry:
    """One signed checkpoint (a ``checkpoints.jsonl`` line, or the supplied trusted checkpoint)
    and the verdict on its signatures."""

    line: int
    checkpoint: Checkpoint
    note: Note
    text: str
    range: list[bytes]
    trusted: bool = False
    matched: bool = False
    #: the keys whose verified signatures make this checkpoint trusted
    trusted_by: list[VerifierKey] = field(default_factory=list)
    #: one of them is current (not retired)
    current: bool = False
    #: retired keys whose verified signatures are past their bound (so they count for nothing)
    past_bound: list[VerifierKey] = field(default_factory=list)


class KeyTrust:
    """The keys trusted so far in one verification: pinned, and learned from rotations.

    ``learned_keys`` (the report's list) receives each key learned from a rotation, once.
    ``pending`` holds the ``(seq, new key)`` of rotation records not yet sealed by a checkpoint
    that teaches their key.
    """

    __slots__ = ("learned", "learned_bound", "learned_keys", "pending", "pinned")

    def __init__(self, pinned: Keyring, learned_keys: list[str]) -> None:
        self.pinned = pinned
        self.learned: dict[tuple[str, bytes], VerifierKey] = {}
        self.learned_bound: dict[tuple[str, bytes], int | None] = {}
        self.learned_keys = learned_keys
        self.pending: list[tuple[int, str]] = []

    def lookup(self, name: str, key_id: bytes) -> VerifierKey | None:
        """The trusted (pinned or learned) key with this name and id, if any."""
        return self.pinned.lookup(name, key_id) or self.learned.get((name, key_id))

    def bound(self, key: VerifierKey) -> int | None:
        """The largest checkpoint size ``key`` is trusted for (``None``: current).

        The keyring's word wins over what a rotation taught: a pinned key's retirement is the
        operator's, and a rotation record cannot lift it.
        """
        if self.pinned.lookup(key.name, key.key_id) is not None:
            return self.pinned.retired_after_size(key)
        return self.learned_bound.get((key.name, key.key_id))

    def judge(self, entry: CheckpointEntry) -> VerifierKey | None:
        """Decide whether ``entry`` is signed by a trusted key (and learn rotated keys).

        Returns the first trusted key whose signature does not verify (tampering: ``entry`` is
        then left unjudged), else ``None``.
        """
        good, bad = entry.note.verify(self.lookup)
        if bad:
            return bad[0]
        size = entry.checkpoint.size
        bounds = {(key.name, key.key_id): self.bound(key) for key in good}
        for key in good:
            bound = bounds[(key.name, key.key_id)]
            (entry.trusted_by if bound is None or size <= bound else entry.past_bound).append(key)
        entry.trusted = bool(entry.trusted_by)
        entry.current = any(bounds[(k.name, k.key_id)] is None for k in entry.trusted_by)
        if not entry.trusted:
            return None
        for seq, text in list(self.pending):
            if seq >= size:
                continue
            try:
                new_key = VerifierKey.parse(text)
            except NoteError:
                continue
            signed, _ = entry.note.verify(Keyring([new_key]).lookup)
            if signed:
                self.learn(new_key, entry, bounds)
                self.pending.remove((seq, text))
        return None

    def learn(
        self,
        new_key: VerifierKey,
        entry: CheckpointEntry,
        bounds: dict[tuple[str, bytes], int | None],
    ) -> None:
        """Trust ``new_key``, introduced by a rotation that ``entry`` seals, with the authority
        of the keys that vouched for it: current if one of them is, else the largest of their
        retirement bounds (a key cannot vouch for itself)."""
        index = (new_key.name, new_key.key_id)
        vouching = [bounds[(k.name, k.key_id)] for k in entry.trusted_by if k != new_key]
        if not vouching:
            return
        bound = None if None in vouching else max(b for b in vouching if b is not None)
        if index in self.learned:  # learned twice: the wider authority stands
            before = self.learned_bound[index]
            bound = None if before is None or bound is None else max(before, bound)
        else:
            self.learned_keys.append(str(new_key))
        self.learned[index] = new_key
        self.learned_bound[index] = bound

    def describe(self, keys: Iterable[VerifierKey]) -> list[str]:
        """``'name' up to N records`` for each of ``keys`` (retired keys, with their bounds)."""
        return [f"{key.name!r} up to {self.bound(key)} records" for key in keys]
