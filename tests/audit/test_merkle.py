"""RFC 9162 Merkle trees: the transparency-dev/merkle vectors and generated proofs."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from securemcp.audit.merkle import (
    EMPTY_ROOT,
    CompactRange,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    root_hash,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors"
INCLUSION = json.loads((VECTORS / "rfc9162_inclusion.json").read_text())
CONSISTENCY = json.loads((VECTORS / "rfc9162_consistency.json").read_text())

# The RFC 6962 reference tree used by the vectors (transparency-dev/merkle testonly).
REFERENCE_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]


def b64(value: str) -> bytes:
    return base64.b64decode(value)


@pytest.mark.parametrize("case", INCLUSION, ids=[c["source"] for c in INCLUSION])
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    proof = [b64(p) for p in case["proof"] or []]
    ok = verify_inclusion(
        case["leafIdx"], case["treeSize"], b64(case["leafHash"]), proof, b64(case["root"])
    )
    assert ok is not case["wantErr"]


@pytest.mark.parametrize("case", CONSISTENCY, ids=[c["source"] for c in CONSISTENCY])
def test_consistency_vectors(case: dict[str, Any]) -> None:
    proof = [b64(p) for p in case["proof"] or []]
    ok = verify_consistency(
        case["size1"], case["size2"], proof, b64(case["root1"]), b64(case["root2"])
    )
    assert ok is not case["wantErr"]


def test_reference_tree_roots_match_the_vectors() -> None:
    hashes = [leaf_hash(leaf) for leaf in REFERENCE_LEAVES]
    roots = {c["treeSize"]: b64(c["root"]) for c in INCLUSION if not c["wantErr"]}
    roots.update({c["size2"]: b64(c["root2"]) for c in CONSISTENCY if not c["wantErr"]})
    roots.update({c["size1"]: b64(c["root1"]) for c in CONSISTENCY if not c["wantErr"]})
    assert {1, 2, 3, 5, 6, 7, 8} <= set(roots)
    for size, root in roots.items():
        assert root_hash(hashes[:size]) == root
        compact = CompactRange()
        for digest in hashes[:size]:
            compact.append(digest)
        assert compact.root() == root
    for case in INCLUSION:
        if not case["wantErr"]:
            size, index = case["treeSize"], case["leafIdx"]
            expected = [b64(p) for p in case["proof"] or []]
            assert inclusion_proof(hashes[:size], index) == expected
    for case in CONSISTENCY:
        if not case["wantErr"] and case["size1"] != case["size2"]:
            expected = [b64(p) for p in case["proof"]]
            assert consistency_proof(hashes[: case["size2"]], case["size1"]) == expected


def test_empty_tree() -> None:
    assert CompactRange().root() == EMPTY_ROOT == root_hash([])
    with pytest.raises(ValueError):
        CompactRange(3, [EMPTY_ROOT])  # one node per set bit: 3 needs two


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=70), st.data())
def test_compact_range_and_proofs_agree_with_the_definition(
    leaves: list[bytes], data: st.DataObject
) -> None:
    hashes = [leaf_hash(leaf) for leaf in leaves]
    compact = CompactRange()
    for digest in hashes:
        compact.append(digest)
    root = root_hash(hashes)
    assert compact.root() == root
    assert CompactRange(compact.size, compact.nodes).root() == root
    index = data.draw(st.integers(0, len(hashes) - 1))
    proof = inclusion_proof(hashes, index)
    assert verify_inclusion(index, len(hashes), hashes[index], proof, root)
    assert not verify_inclusion(index, len(hashes), leaf_hash(b"other"), proof, root)
    old = data.draw(st.integers(1, len(hashes)))
    cproof = consistency_proof(hashes, old)
    assert verify_consistency(old, len(hashes), cproof, root_hash(hashes[:old]), root)
    if old < len(hashes):
        # A forged old root (never the real one: leaves may be b"x" themselves).
        forged = bytes(b ^ 0xFF for b in root_hash(hashes[:old]))
        assert not verify_consistency(old, len(hashes), cproof, forged, root)


@given(st.lists(st.binary(max_size=8), max_size=70), st.data())
def test_extending_a_compact_range_is_appending_each_leaf(
    leaves: list[bytes], data: st.DataObject
) -> None:
    hashes = [leaf_hash(leaf) for leaf in leaves]
    split = data.draw(st.integers(0, len(hashes)))
    one_by_one = CompactRange()
    for digest in hashes:
        one_by_one.append(digest)
    batched = CompactRange()
    batched.extend(hashes[:split])
    batched.extend(hashes[split:])
    assert (batched.size, batched.nodes) == (one_by_one.size, one_by_one.nodes)
    assert batched.root() == root_hash(hashes)
