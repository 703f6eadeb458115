"""RFC 9162 (Certificate Transparency v2, same tree as RFC 6962) Merkle trees over audit records.

* leaf hash ``SHA-256(0x00 ‖ leaf)``, interior node ``SHA-256(0x01 ‖ left ‖ right)``, the tree
  head of an empty tree ``SHA-256()`` (RFC 9162 §2.1.1); the domain separation stops an interior
  node from being passed off as a leaf;
* :class:`CompactRange` keeps the tree's right edge (one perfect-subtree root per set bit of the
  size, O(log n) state), so appending a record and computing the current root are cheap;
* inclusion and consistency proofs are generated (§2.1.3.1, §2.1.4.1) and verified
  (§2.1.3.2, §2.1.4.2) exactly as ``transparency-dev/merkle``'s ``proof/verify.go`` does; the
  verifiers are checked against that project's published test vectors.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Final

__all__ = [
    "EMPTY_ROOT",
    "CompactRange",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_hash",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256

#: The tree head of the empty tree: SHA-256 of the empty string (RFC 9162 §2.1.1).
EMPTY_ROOT: Final = _sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    """``SHA-256(0x00 ‖ leaf)``."""
    return _sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """``SHA-256(0x01 ‖ left ‖ right)``."""
    return _sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_hash(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle tree hash (MTH) of a list of leaf hashes (RFC 9162 §2.1.1)."""
    n = len(leaf_hashes)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaf_hashes[0]
    k = _split(n)
    return node_hash(root_hash(leaf_hashes[:k]), root_hash(leaf_hashes[k:]))


class CompactRange:
    """The right edge of a Merkle tree: enough state to append leaves and compute the root.

    ``nodes`` holds the roots of the perfect subtrees that make up the tree, largest first (one
    per set bit of ``size``).
    """

    __slots__ = ("nodes", "size")

    def __init__(self, size: int = 0, nodes: Iterable[bytes] = ()) -> None:
        self.size = size
        self.nodes: list[bytes] = list(nodes)
        if len(self.nodes) != size.bit_count() or any(len(h) != 32 for h in self.nodes):
            raise ValueError("a compact range needs one 32-byte node per set bit of its size")

    def append(self, leaf: bytes) -> None:
        """Append a leaf *hash* (already ``SHA-256(0x00 ‖ leaf)``)."""
        nodes = self.nodes
        nodes.append(leaf)
        size = self.size
        while size & 1:
            right = nodes.pop()
            nodes[-1] = _sha256(b"\x01" + nodes[-1] + right).digest()
            size >>= 1
        self.size += 1

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Append leaf *hashes* in order: the same as :meth:`append` for each, in one loop."""
        nodes = self.nodes
        size = self.size
        for leaf in leaves:
            nodes.append(leaf)
            carry = size
            while carry & 1:
                right = nodes.pop()
                nodes[-1] = _sha256(b"\x01" + nodes[-1] + right).digest()
                carry >>= 1
            size += 1
        self.size = size

    def root(self) -> bytes:
        """The tree head of the leaves appended so far."""
        nodes = self.nodes
        if not nodes:
            return EMPTY_ROOT
        root = nodes[-1]
        for node in reversed(nodes[:-1]):
            root = node_hash(node, root)
        return root

    def copy(self) -> CompactRange:
        """An independent copy."""
        return CompactRange(self.size, self.nodes)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of ``leaf_hashes`` (RFC 9162 §2.1.3.1)."""
    n = len(leaf_hashes)
    if not 0 <= index < n:
        raise ValueError("leaf index out of range")
    if n == 1:
        return []
    k = _split(n)
    if index < k:
        return [*inclusion_proof(leaf_hashes[:k], index), root_hash(leaf_hashes[k:])]
    return [*inclusion_proof(leaf_hashes[k:], index - k), root_hash(leaf_hashes[:k])]


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """The proof that the first ``old_size`` leaves are a prefix (RFC 9162 §2.1.4.1)."""
    if not 0 < old_size <= len(leaf_hashes):
        raise ValueError("old size out of range")
    return _subproof(old_size, leaf_hashes, complete=True)


def _subproof(m: int, leaves: Sequence[bytes], *, complete: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if complete else [root_hash(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], complete=complete), root_hash(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], complete=False), root_hash(leaves[:k])]


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Check an inclusion proof (RFC 9162 §2.1.3.2). Every hash must be 32 bytes."""
    if index >= size or index < 0:
        return False
    if len(leaf) != 32 or len(root) != 32 or any(len(p) != 32 for p in proof):
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(
    size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes
) -> bool:
    """Check a consistency proof (RFC 9162 §2.1.4.2).

    As in ``transparency-dev/merkle``: a proof from size 0 is meaningless (rejected), and equal
    sizes need an empty proof and equal roots.
    """
    if size1 > size2 or size1 <= 0:
        return False
    if size1 == size2:
        return not proof and root1 == root2
    if len(root1) != 32 or len(root2) != 32 or any(len(p) != 32 for p in proof):
        return False
    if not proof:
        return False
    path = list(proof)
    if size1 & (size1 - 1) == 0:  # size1 is a power of two: its root is the first node
        path = [root1, *path]
    fn, sn = size1 - 1, size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while True:
                    fn >>= 1
                    sn >>= 1
                    if fn & 1 or fn == 0:
                        break
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == root1 and sr == root2 and sn == 0
