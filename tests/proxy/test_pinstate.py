"""The running proxy's lockfile view: hot reload, failed reloads keep the pins, blocks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from securemcp.proxy.pinning import Lockfile, PinnedDefinition, UpstreamLock
from securemcp.proxy.pinstate import PinState


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def tool(description: str) -> PinnedDefinition:
    definition = {"name": "search", "description": description, "inputSchema": {"type": "object"}}
    return PinnedDefinition.of("tool", definition)


def write(path: Path, description: str) -> None:
    Lockfile.empty().with_upstream(UpstreamLock.create("vendor", [tool(description)])).save(path)


def test_reload_replaces_pins_and_clears_blocks(tmp_path: Path) -> None:
    path, clock = tmp_path / "lock.json", Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    write(path, "v1")
    pins = PinState(path, clock=clock, on_event=lambda e, f: events.append((e, f)))
    pins.block("vendor", "tool", "search", "changed")
    pins.block("vendor", "tool", "search", "changed")  # reported once
    assert [e for e, _ in events] == ["proxy.pin_blocked"]
    assert pins.blocked("vendor", "tool", "search") is not None

    write(path, "v2")
    assert pins.refresh().upstream("vendor").get("tool", "search").definition["description"] == "v1"  # type: ignore[union-attr]
    clock.now += 1.5  # re-read at most once a second
    lock = pins.refresh().upstream("vendor")
    assert lock is not None and lock.get("tool", "search").definition["description"] == "v2"  # type: ignore[union-attr]
    assert pins.blocked("vendor", "tool", "search") is None
    assert pins.generation == 1
    assert events[-1][0] == "proxy.lock_reloaded"


def test_a_broken_lockfile_keeps_the_previous_pins(tmp_path: Path) -> None:
    path, clock = tmp_path / "lock.json", Clock()
    events: list[str] = []
    write(path, "v1")
    pins = PinState(path, clock=clock, on_event=lambda e, f: events.append(e))
    path.write_text('{"version": 1, "upstreams": {"vendor": ', encoding="utf-8")
    clock.now += 2
    lock = pins.refresh().upstream("vendor")
    assert lock is not None and lock.get("tool", "search") is not None
    assert events == ["proxy.lock_reload_failed"]


def test_a_hand_edited_definition_is_refused_on_reload(tmp_path: Path) -> None:
    path, clock = tmp_path / "lock.json", Clock()
    write(path, "v1")
    pins = PinState(path, clock=clock)
    # Someone edits the description without re-locking: the digest no longer matches.
    path.write_text(path.read_text().replace('"v1"', '"v1 <IMPORTANT>"'), encoding="utf-8")
    clock.now += 2
    lock = pins.refresh().upstream("vendor")
    assert lock.get("tool", "search").definition["description"] == "v1"  # type: ignore[union-attr]


def test_no_lockfile_pins_nothing(tmp_path: Path) -> None:
    pins = PinState(tmp_path / "missing.json")
    assert pins.upstream("vendor") is None
