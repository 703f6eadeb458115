"""Property tests: whatever is done to a sealed log, the verifier never says "verified"."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import read_lines, write_calls, write_lines
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemcp.audit import AuditLog, Ed25519Signer, Keyring, jcs, verify
from securemcp.audit.storage import CHECKPOINTS_FILE, list_segments

SIGNER = Ed25519Signer.generate("prop-key")
KEYRING = Keyring([SIGNER.verifier_key()])
MUTATIONS = (
    "flip_byte",
    "delete_line",
    "duplicate_line",
    "swap_lines",
    "move_line",
    "truncate",
    "insert_foreign",
    "replace_foreign",
    "insert_garbage",
    "edit_field",
    "remove_segment",
    "flip_checkpoint_byte",
    "drop_last_checkpoint",
)


def _build(directory: Path, calls: int, segment_max_bytes: int, every: int) -> Path:
    log = AuditLog(
        directory,
        signer=SIGNER,
        checkpoint_every=10**9,
        checkpoint_interval=3600,
        segment_max_bytes=segment_max_bytes,
        fsync="never",
    )
    with log:
        sealed = log.size
        for index in range(calls):
            write_calls(log, 1, user=f"user-{index % 3}")
            if log.size - sealed >= every:
                log.checkpoint()
                sealed = log.size
    return directory


@pytest.fixture(scope="module")
def base_logs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bases")
    return {
        "small": _build(root / "small", 6, 64 * 1024 * 1024, 3),
        "segmented": _build(root / "segmented", 40, 4096, 7),
        "foreign": _build(root / "foreign", 6, 64 * 1024 * 1024, 3),
    }


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per Hypothesis example (function fixtures are shared between examples)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def _segment_lines(directory: Path) -> list[tuple[Path, list[bytes]]]:
    return [(path, read_lines(path)) for _, path in list_segments(directory)]


def mutate(directory: Path, foreign: Path, kind: str, data: st.DataObject) -> None:
    """Apply one mutation of ``kind`` to the log in ``directory``."""
    segments = _segment_lines(directory)
    index = data.draw(st.integers(0, len(segments) - 1), label="segment")
    path, lines = segments[index]
    pick = st.integers(0, len(lines) - 1)
    if kind == "flip_byte":
        raw = bytearray(path.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[at] ^= data.draw(st.integers(1, 255), label="xor")
        path.write_bytes(bytes(raw))
        return
    if kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1), label="size")])
        return
    if kind == "remove_segment":
        path.unlink()
        return
    if kind in ("flip_checkpoint_byte", "drop_last_checkpoint"):
        cps = directory / CHECKPOINTS_FILE
        if kind == "drop_last_checkpoint":
            write_lines(cps, read_lines(cps)[:-1])
            return
        raw = bytearray(cps.read_bytes())
        at = data.draw(st.integers(0, len(raw) - 1), label="cp offset")
        raw[at] ^= data.draw(st.integers(1, 255), label="cp xor")
        cps.write_bytes(bytes(raw))
        return
    at = data.draw(pick, label="line")
    other_lines = [line for _, seg in _segment_lines(foreign) for line in seg]
    if kind == "delete_line":
        del lines[at]
    elif kind == "duplicate_line":
        lines.insert(data.draw(st.integers(0, len(lines)), label="to"), lines[at])
    elif kind == "swap_lines":
        other = data.draw(pick.filter(lambda i: lines[i] != lines[at]), label="other")
        lines[at], lines[other] = lines[other], lines[at]
    elif kind == "move_line":
        line = lines.pop(at)
        to = data.draw(st.integers(0, len(lines)).filter(lambda i: i != at), label="to")
        lines.insert(to, line)
    elif kind == "insert_foreign":
        lines.insert(at, data.draw(st.sampled_from(other_lines), label="foreign"))
    elif kind == "replace_foreign":
        lines[at] = data.draw(st.sampled_from(other_lines), label="foreign")
    elif kind == "insert_garbage":
        lines.insert(at, data.draw(st.binary(max_size=40).filter(lambda b: b"\n" not in b)))
    elif kind == "edit_field":
        record = jcs.loads(lines[at])
        field = data.draw(st.sampled_from(sorted(record)), label="field")
        value = data.draw(
            st.one_of(st.integers(-5, 10**6), st.text(max_size=12), st.none(), st.booleans()),
            label="value",
        )
        if record[field] == value:
            value = [value]
        record[field] = value
        lines[at] = jcs.dumps(record)
    write_lines(path, lines)


@settings(
    max_examples=int(os.environ.get("AUDIT_PROPERTY_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(MUTATIONS), which=st.sampled_from(["small", "segmented"]), data=st.data()
)
def test_no_mutation_of_a_sealed_log_verifies(
    base_logs: dict[str, Path], kind: str, which: str, data: st.DataObject
) -> None:
    with scratch() as workdir:
        _mutate_and_check(workdir / "log", base_logs, kind, which, data)


def _mutate_and_check(
    directory: Path, base_logs: dict[str, Path], kind: str, which: str, data: st.DataObject
) -> None:
    shutil.copytree(base_logs[which], directory)
    if kind == "remove_segment" and len(list_segments(directory)) == 1:
        kind = "delete_line"
    before = sorted((p.name, p.read_bytes()) for p in directory.iterdir() if p.is_file())
    mutate(directory, base_logs["foreign"], kind, data)
    after = sorted((p.name, p.read_bytes()) for p in directory.iterdir() if p.is_file())
    if before == after:  # e.g. a line swapped with an identical one
        return
    report = verify(directory, keyring=KEYRING)
    assert report.status != "verified", (kind, report)
    assert report.exit_code in (1, 2, 3, 4)


record_bodies = st.dictionaries(
    st.text(alphabet="abcdefgh_", min_size=1, max_size=6).filter(
        lambda k: k not in {"v", "log", "seq", "ts", "prev", "type"}
    ),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**53) + 1, 2**53 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=10),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=4), children, max_size=3)
        ),
        max_leaves=6,
    ),
    max_size=4,
)


@settings(
    max_examples=int(os.environ.get("AUDIT_PROPERTY_EXAMPLES", "250")) // 4,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    bodies=st.lists(record_bodies, min_size=1, max_size=12),
    every=st.integers(1, 5),
    kind=st.sampled_from([m for m in MUTATIONS if m != "remove_segment"]),
    data=st.data(),
)
def test_random_logs_verify_and_no_mutation_does(
    base_logs: dict[str, Path],
    bodies: list[dict[str, Any]],
    every: int,
    kind: str,
    data: st.DataObject,
) -> None:
    with scratch() as workdir:
        _random_log_check(workdir / "random", base_logs, bodies, every, kind, data)


def _random_log_check(
    directory: Path,
    base_logs: dict[str, Path],
    bodies: list[dict[str, Any]],
    every: int,
    kind: str,
    data: st.DataObject,
) -> None:
    with AuditLog(directory, signer=SIGNER, checkpoint_every=10**9, fsync="never") as log:
        for count, body in enumerate(bodies, 1):
            try:
                log.append({"type": "config_change", **body})
            except ValueError:  # e.g. a lone surrogate, or a key the guard refuses
                continue
            if count % every == 0:
                log.checkpoint()
    assert verify(directory, keyring=KEYRING).ok
    before = sorted((p.name, p.read_bytes()) for p in directory.iterdir() if p.is_file())
    mutate(directory, base_logs["foreign"], kind, data)
    after = sorted((p.name, p.read_bytes()) for p in directory.iterdir() if p.is_file())
    if before == after:
        return
    report = verify(directory, keyring=KEYRING)
    assert report.status != "verified", (kind, report)
