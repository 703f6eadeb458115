"""The in-process windows behind ``memory://`` rate limits (``securemcp.policy._memory_windows``).

The property test drives random hit sequences through both these windows and ``limits``' own
sync strategies over its ``MemoryStorage``, under one fake clock, and requires the same answers.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from math import ceil
from typing import Any

import limits.storage.memory
import limits.strategies
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from limits import RateLimitItem, parse, parse_many
from limits.storage import MemoryStorage

from securemcp.policy._memory_windows import (
    SWEEP_EVERY,
    FixedWindows,
    MemoryWindows,
    MovingWindows,
    SlidingWindowCounters,
    memory_windows,
)

STRATEGIES = ("fixed-window", "moving-window", "sliding-window-counter")
REFERENCE: dict[str, Any] = {
    "fixed-window": limits.strategies.FixedWindowRateLimiter,
    "moving-window": limits.strategies.MovingWindowRateLimiter,
    "sliding-window-counter": limits.strategies.SlidingWindowCounterRateLimiter,
}
LIMIT_STRINGS = (
    "1/second",
    "3/second",
    "5 per 2 seconds",
    "2/second;5/minute",
    "10/minute;2/second",
    "3/second;3/second",  # one bucket counted twice per hit, in limits as here
    "4 per 3 seconds;7 per 10 seconds",
    "3 per 60 seconds",  # same expiry as 3/minute, but a separate bucket in limits
    "3/minute",
)
START = 1_700_000_000.0


class FakeClock:
    """Stands in for the ``time`` module in ``limits`` and as the windows' clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class QuietMemoryStorage(MemoryStorage):
    """``limits``' ``MemoryStorage`` without its background expiry timer (deterministic)."""

    def __init__(self) -> None:
        super().__init__()
        self.timer.cancel()

    def _MemoryStorage__schedule_expiry(self) -> None:
        pass

    def expire(self) -> None:
        """Run ``limits``' own expiry now."""
        self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


@contextmanager
def limits_clock(clock: FakeClock) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(limits.storage.memory, "time", clock)
        patch.setattr(limits.strategies, "time", clock)
        yield


def reference_hit(
    strategy: Any, items: tuple[RateLimitItem, ...], key: str, cost: int, clock: FakeClock
) -> float | None:
    """What ``RateLimiter._hit`` did over ``limits``' strategies: ``None`` or retry_after."""
    for item in items:
        if strategy.hit(item, key, cost=cost):
            continue
        stats = strategy.get_window_stats(item, key)
        return float(max(0.0, stats.reset_time - clock.time()))
    return None


# --- differential property test -------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    limit: str
    cost: int


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    limit = draw(st.sampled_from(LIMIT_STRINGS))
    smallest = min(item.amount for item in parse_many(limit))
    return Rule(limit, draw(st.integers(1, smallest)))


steps = st.one_of(
    st.tuples(st.just("hit"), st.integers(0, 2), st.sampled_from("ab")),
    st.tuples(st.just("hit"), st.integers(0, 2), st.sampled_from("ab")),
    st.tuples(
        st.just("advance"),
        st.one_of(
            st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0]),
            st.floats(0.0, 12.0, allow_nan=False),
        ),
    ),
    st.tuples(st.just("boundary"), st.integers(0, 50)),  # exactly where a window ends
    st.tuples(st.just("expire"), st.just(0)),  # limits' own background expiry, run inline
)


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    start=st.one_of(st.sampled_from([START, 0.0, 0.5, START + 0.3]), st.floats(0.0, 2e9)),
    rule_list=st.lists(rules(), min_size=1, max_size=3),
    program=st.lists(steps, max_size=80),
    sweep_every=st.sampled_from([1, 2, 3, 7, SWEEP_EVERY]),
)
def test_same_answers_as_limits(
    strategy: str,
    start: float,
    rule_list: list[Rule],
    program: list[tuple[Any, ...]],
    sweep_every: int,
) -> None:
    clock = FakeClock(start)
    ours = memory_windows(strategy, clock.time, sweep_every=sweep_every)
    items = [tuple(parse_many(rule.limit)) for rule in rule_list]
    windows = [tuple(ours.window(item) for item in rule_items) for rule_items in items]
    expiries = sorted({item.get_expiry() for rule_items in items for item in rule_items})
    hit_times: list[float] = []
    with limits_clock(clock):
        storage = QuietMemoryStorage()
        theirs = REFERENCE[strategy](storage)
        for step in program:
            if step[0] == "advance":
                clock.now += step[1]
            elif step[0] == "boundary":
                ends = {t + e for t in hit_times for e in expiries if t + e > clock.now}
                ends |= {ceil(clock.now / e) * e for e in expiries}  # sliding window edges
                ends = {end for end in ends if end >= clock.now}
                if ends:
                    clock.now = sorted(ends)[step[1] % len(ends)]
            elif step[0] == "expire":
                # limits' moving-window expiry drops an entry at atime + expiry <= now while
                # its lookup still counts it (atime >= now - expiry): a race, not semantics
                if strategy != "moving-window":
                    storage.expire()
            else:
                _, index, key = step
                index %= len(rule_list)
                cost = rule_list[index].cost
                expected = reference_hit(theirs, items[index], key, cost, clock)
                got = ours.hit(windows[index], key, cost)
                hit_times.append(clock.now)
                assert (got is None) == (expected is None), (clock.now, step, expected, got)
                if expected is not None:
                    assert got == pytest.approx(expected, abs=1e-6), (clock.now, step)


# --- unit tests -----------------------------------------------------------------------------


def store(strategy: str, now: float = START, **options: Any) -> tuple[MemoryWindows, FakeClock]:
    clock = FakeClock(now)
    return memory_windows(strategy, clock.time, **options), clock


def test_fixed_window_starts_at_the_first_hit_and_resets_at_its_end() -> None:
    windows, clock = store("fixed-window")
    w = (windows.window(parse("3 per 10 seconds")),)
    clock.now = START + 2.5  # window: START + 2.5 .. START + 12.5
    assert [windows.hit(w, "k") for _ in range(3)] == [None, None, None]
    clock.now = START + 6.5
    assert windows.hit(w, "k") == pytest.approx(6.0)
    clock.now = START + 12.5 - 1e-6
    assert windows.hit(w, "k") == pytest.approx(1e-6, abs=1e-7)
    clock.now = START + 12.5  # exactly the end: a new window
    assert [windows.hit(w, "k") for _ in range(3)] == [None, None, None]
    assert windows.hit(w, "k") == pytest.approx(10.0)
    assert windows.hit(w, "other") is None  # per key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_cost_above_one(strategy: str) -> None:
    windows, clock = store(strategy, now=600.0)  # at a sliding-window edge
    w = (windows.window(parse("10/minute")),)
    assert windows.hit(w, "k", cost=4) is None
    assert windows.hit(w, "k", cost=4) is None
    clock.now += 1
    refused = windows.hit(w, "k", cost=4)  # 12 > 10
    assert refused is not None and 0 < refused <= 60
    if strategy == "fixed-window":  # the refused 4 counted (see the next test)
        assert windows.hit(w, "k", cost=1) == pytest.approx(59.0)
    else:  # what is left fits, and no more
        assert [windows.hit(w, "k", cost=1) is None for _ in range(3)] == [True, True, False]


def test_fixed_window_counts_refused_hits_like_limits() -> None:
    windows, _ = store("fixed-window")
    w = (windows.window(parse("10/minute")),)
    assert windows.hit(w, "k", cost=8) is None
    assert windows.hit(w, "k", cost=4) is not None  # 12: refused, and counted
    assert windows.hit(w, "k", cost=1) is not None  # 13 > 10 although 8 + 1 would fit


def test_moving_window_retry_after_is_when_the_oldest_hit_leaves() -> None:
    windows, clock = store("moving-window", now=1000.0)
    w = (windows.window(parse("2 per 10 seconds")),)
    assert windows.hit(w, "k") is None
    clock.now = 1003.0
    assert windows.hit(w, "k") is None
    clock.now = 1005.0
    assert windows.hit(w, "k") == pytest.approx(5.0)  # 1000 leaves at 1010
    clock.now = 1010.0  # limits quirk: still refused at exactly 1000 + 10 ...
    assert windows.hit(w, "k") == pytest.approx(3.0)  # ... and reports the next one (1003)
    clock.now = 1010.5
    assert windows.hit(w, "k") is None
    assert windows.hit(w, "k") == pytest.approx(2.5)  # now 1003 is the oldest


def test_sliding_window_counter_weights_the_previous_window() -> None:
    windows, clock = store("sliding-window-counter", now=600.0)
    w = (windows.window(parse("10/minute")),)
    assert [windows.hit(w, "k") for _ in range(10)] == [None] * 10
    assert windows.hit(w, "k") is not None
    clock.now = 660.0 + 30.0  # half way into the next window: 10 * 30/60 = 5 still count
    assert [windows.hit(w, "k") for _ in range(5)] == [None] * 5
    # refused; retry_after is when the weighted count next drops by one: 30 % (60/10) = 0
    assert windows.hit(w, "k") == 0.0
    clock.now = 691.0  # 10 * 29/60 = 4.83: floor 4, so a 10th fits
    assert windows.hit(w, "k") is None
    assert windows.hit(w, "k") == pytest.approx(5.0)  # 29 % 6: at 696 the weight is 4


def test_several_items_stop_at_the_first_refusal_and_keep_earlier_ones_consumed() -> None:
    windows, clock = store("moving-window")
    minute, second = windows.window(parse("5/minute")), windows.window(parse("2/second"))
    w = (minute, second)
    assert [windows.hit(w, "k") is None for _ in range(4)] == [True, True, False, False]
    assert len(minute.buckets["k"]) == 4  # the per-minute item counted the refused hits
    assert len(second.buckets["k"]) == 2
    clock.now += 1.5
    assert windows.hit(w, "k") is None  # 5th of the minute
    refused = windows.hit(w, "k")
    assert refused == pytest.approx(60 - 1.5)  # refused by the minute now


def test_items_share_a_window_exactly_when_limits_would_share_a_counter() -> None:
    windows, _ = store("fixed-window")
    assert windows.window(parse("3/minute")) is windows.window(parse("3 per 1 minute"))
    assert windows.window(parse("3/minute")) is not windows.window(parse("3 per 60 seconds"))
    assert windows.window(parse("3/minute")) is not windows.window(parse("4/minute"))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_expired_buckets_are_swept_inline(strategy: str) -> None:
    before = set(threading.enumerate())
    windows, clock = store(strategy)
    w = (windows.window(parse("5/minute")),)
    for i in range(10_000):
        assert windows.hit(w, f"key-{i}") is None
    assert windows.bucket_count() == 10_000
    clock.now = START + 100
    for i in range(100):  # still live below: kept
        windows.hit(w, f"late-{i}")
    clock.now = START + 121  # past every expiry of the first keys (sliding counters: 2 min)
    for _ in range(SWEEP_EVERY):
        windows.hit(w, "live")
    assert windows.bucket_count() == 101
    clock.now += 200
    for _ in range(SWEEP_EVERY):
        windows.hit(w, "live")
    assert windows.bucket_count() == 1
    assert set(threading.enumerate()) == before  # no thread, no timer


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_memory_stays_bounded_under_churn(strategy: str) -> None:
    windows, clock = store(strategy)
    w = (windows.window(parse("2/second")),)
    most = 0
    for i in range(20_000):
        clock.now += 0.01  # 100 new keys a second, each live for at most 2 s
        windows.hit(w, f"key-{i}")
        most = max(most, windows.bucket_count())
    assert most <= 300 + SWEEP_EVERY


def test_a_moving_window_bucket_keeps_at_most_amount_timestamps() -> None:
    windows, clock = store("moving-window")
    window = windows.window(parse("3/second"))
    for _ in range(50):
        clock.now += 0.4
        windows.hit((window,), "k")
    assert len(window.buckets["k"]) == 3


def race(threads: int, work: Callable[[], int]) -> int:
    """Run ``work`` in ``threads`` threads at once, switching as often as possible."""
    counts = [0] * threads
    go = threading.Barrier(threads)

    def worker(n: int) -> None:
        go.wait()
        counts[n] = work()

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    finally:
        sys.setswitchinterval(switch)
    return sum(counts)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_threads_hitting_one_key_get_exactly_the_limit(strategy: str) -> None:
    windows = memory_windows(strategy)
    w = (windows.window(parse("1000/hour")),)
    assert race(8, lambda: sum(windows.hit(w, "shared") is None for _ in range(400))) == 1000


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_threads_creating_the_same_buckets_get_one_hit_each(strategy: str) -> None:
    windows = memory_windows(strategy)
    w = (windows.window(parse("1/hour")),)
    assert race(8, lambda: sum(windows.hit(w, f"k{i}") is None for i in range(300))) == 300


def test_reset_drops_every_bucket_and_the_windows_keep_working() -> None:
    windows, _ = store("moving-window")
    w = (windows.window(parse("1/minute")),)
    assert windows.hit(w, "a") is None and windows.hit(w, "b") is None
    assert windows.hit(w, "a") is not None
    assert windows.reset() == 2
    assert windows.bucket_count() == 0
    assert windows.hit(w, "a") is None


def test_strategy_names_and_options_are_checked() -> None:
    assert isinstance(memory_windows("fixed-window"), FixedWindows)
    assert isinstance(memory_windows("moving-window"), MovingWindows)
    assert isinstance(memory_windows("sliding-window-counter"), SlidingWindowCounters)
    with pytest.raises(ValueError, match="strategy"):
        memory_windows("token-bucket")
    with pytest.raises(ValueError, match="sweep_every"):
        memory_windows("fixed-window", sweep_every=0)


def test_the_default_clock_is_time_time() -> None:
    clock: Callable[[], float] = memory_windows("fixed-window").clock
    assert clock is time.time


def test_sliding_window_recheck_after_the_increment_refuses_as_in_limits() -> None:
    # limits re-checks floor(weighted) after incrementing and undoes the hit when it is over;
    # a float rounding makes the two checks disagree: (1 - 2**-52) + 0 floors to 0, + 2 to 3
    clock = FakeClock(0.5)
    item = parse("2/second")
    ours = memory_windows("sliding-window-counter", clock.time)
    w = (ours.window(item),)
    answers = []
    with limits_clock(clock):
        theirs = limits.strategies.SlidingWindowCounterRateLimiter(QuietMemoryStorage())
        for now, cost in [(0.5, 1), (1 + 2**-52, 2), (1.5, 1), (1.5, 1), (1.5, 1)]:
            clock.now = now
            expected = reference_hit(theirs, (item,), "k", cost, clock)
            answers.append(expected)
            assert ours.hit(w, "k", cost) == expected
    assert answers == [None, pytest.approx(1.0), None, None, 0.5]  # refused, and undone
