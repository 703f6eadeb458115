"""Rate limits in memory and in a real Redis server (shared by separate OS processes)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from limits.aio.storage import MemoryStorage as AsyncMemoryStorage
from policy_helpers import RedisServer, principal, request

from securemcp.components import ComponentFacts
from securemcp.policy import RateLimited
from securemcp.policy._memory_windows import SWEEP_EVERY, MemoryWindows
from securemcp.policy.enforcement import PolicyEnforcement
from securemcp.policy.ratelimit import RateDecision, RateLimit, RateLimiter, StorageFailure
from securemcp.policy.request import CallRequest

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(params=["memory", "redis"])
async def storage_uri(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    if request.param == "memory":
        yield "memory://"
    else:
        yield request.getfixturevalue("redis_url")


async def test_exactly_the_limit_under_concurrency(storage_uri: str) -> None:
    limiter = RateLimiter([RateLimit("per-user", "10/minute")], storage_uri)
    call = request("add", who=principal("alice"))
    results = await asyncio.gather(*(limiter.hit(call) for _ in range(100)))
    allowed = [r for r in results if r.allowed]
    refused = [r for r in results if not r.allowed]
    assert len(allowed) == 10 and len(refused) == 90
    assert all(r.limit == "per-user" and 0 < r.retry_after <= 60 for r in refused)
    assert all(r.key and len(r.key) == 64 for r in refused)


async def test_other_users_and_tenants_are_unaffected(storage_uri: str) -> None:
    limiter = RateLimiter(
        [RateLimit("per-user", "2/minute"), RateLimit("per-tenant", "5/minute", per="tenant")],
        storage_uri,
    )
    alice = request(who=principal("alice", tenant="acme"))
    for _ in range(2):
        assert (await limiter.hit(alice)).allowed
    assert not (await limiter.hit(alice)).allowed
    # same subject, other issuer / other tenant: separate buckets
    assert (await limiter.hit(request(who=principal("bob", tenant="acme")))).allowed
    assert (await limiter.hit(request(who=principal("alice", tenant="globex")))).allowed
    assert (await limiter.hit(request(who=principal("alice", issuer="https://b.example")))).allowed
    # alice's refusals did not consume acme's budget: 2 (alice) + 1 (bob) used, 2 left
    for name in ("carol", "dave"):
        assert (await limiter.hit(request(who=principal(name, tenant="acme")))).allowed
    refused = await limiter.hit(request(who=principal("erin", tenant="acme")))
    assert not refused.allowed and refused.limit == "per-tenant"
    # globex is unaffected by acme's tenant limit
    assert (await limiter.hit(request(who=principal("erin", tenant="globex")))).allowed


async def test_limits_recover_after_retry_after(storage_uri: str) -> None:
    limiter = RateLimiter([RateLimit("burst", "3/second")], storage_uri)
    call = request()
    for _ in range(3):
        assert (await limiter.hit(call)).allowed
    refused = await limiter.hit(call)
    assert not refused.allowed and 0 < refused.retry_after <= 1.0
    with pytest.raises(RateLimited) as raised:
        refused.raise_if_refused()
    assert raised.value.retry_after == refused.retry_after and raised.value.limit == "burst"
    await asyncio.sleep(refused.retry_after + 0.05)
    assert (await limiter.hit(call)).allowed


async def test_per_tool_scoping_and_cost(storage_uri: str) -> None:
    limiter = RateLimiter(
        [
            RateLimit("expensive", "10/minute", per="principal_tool", tools=("render_*",), cost=5),
            RateLimit("search-global", "3/minute", per="tool", tools=("search",)),
        ],
        storage_uri,
    )
    alice, bob = principal("alice"), principal("bob")
    assert (await limiter.hit(request("render_pdf", who=alice))).allowed
    assert (await limiter.hit(request("render_pdf", who=alice))).allowed
    assert not (await limiter.hit(request("render_pdf", who=alice))).allowed
    assert (await limiter.hit(request("render_png", who=alice))).allowed  # per tool
    assert (await limiter.hit(request("add", who=alice))).allowed  # not covered
    for who in (alice, bob, alice):
        assert (await limiter.hit(request("search", who=who))).allowed
    refused = await limiter.hit(request("search", who=principal("carol")))
    assert not refused.allowed and refused.limit == "search-global"


async def test_keys_are_hashed_and_cannot_collide(
    redis_server: RedisServer, redis_url: str
) -> None:
    limiter = RateLimiter([RateLimit("user-tool", "1/minute", per="principal_tool")], redis_url)
    assert (await limiter.hit(request("c", who=principal("a/b")))).allowed
    # a naive "a/b" + "/" + "c" key would equal "a" + "/" + "b/c"
    assert (await limiter.hit(request("b/c", who=principal("a")))).allowed
    keys = redis_server.keys()
    assert keys and not any("a/b" in k or "alice" in k or "idp.example" in k for k in keys)


async def test_a_template_read_counts_against_the_template_that_serves_it(
    storage_uri: str,
) -> None:
    """FastMCP reads items://7, items://07, items://+7 and items://%207 as one item when the
    template declares ``id: int``: the bucket is the template's, not the URI text's, so neither
    a re-spelling nor another item gets a fresh one (in memory and in a real Redis)."""
    limiter = RateLimiter(
        [
            RateLimit("items", "2/minute", per="principal_tool", tools=["items://*"]),
            RateLimit("notes", "1/minute", per="tool", tools=["notes://{name}"]),
        ],
        storage_uri,
    )
    items = ComponentFacts(uri_template="items://{id}", query_names=frozenset())

    def read(uri: str, facts: ComponentFacts = items, who: str = "alice") -> CallRequest:
        return PolicyEnforcement.call_request(
            principal(who), "resources/read", uri, {}, facts, "in-memory"
        )

    assert read("items://07").target == "items://07"  # rules still see the URI read
    assert (await limiter.hit(read("items://7"))).allowed
    assert (await limiter.hit(read("items://07"))).allowed
    for uri in ("items://+7", "items://%207", "items://8", "items://7#x"):
        refused = await limiter.hit(read(uri))
        assert not refused.allowed and refused.limit == "items", uri
    assert (await limiter.hit(read("items://7", who="bob"))).allowed  # bob's own bucket
    # A concrete resource with the same URI is another component, with a bucket of its own.
    assert (await limiter.hit(read("items://7", ComponentFacts()))).allowed
    # A limit may name the template by its URI template; all callers share a per="tool" one.
    notes = ComponentFacts(uri_template="notes://{name}", query_names=frozenset())
    assert (await limiter.hit(read("notes://a", notes))).allowed
    assert not (await limiter.hit(read("notes://b", notes, who="bob"))).allowed


async def test_pre_auth_address_limit(storage_uri: str) -> None:
    limiter = RateLimiter(
        [RateLimit("per-ip", "2/minute", per="address"), RateLimit("per-user", "100/minute")],
        storage_uri,
    )
    assert (await limiter.hit_address("203.0.113.7")).allowed
    assert (await limiter.hit_address("203.0.113.7")).allowed
    refused = await limiter.hit_address("203.0.113.7")
    assert not refused.allowed and refused.limit == "per-ip" and refused.retry_after > 0
    assert (await limiter.hit_address("::ffff:203.0.113.8")).allowed
    assert (await limiter.hit_address("203.0.113.8")).allowed
    assert not (await limiter.hit_address("203.0.113.8")).allowed  # v4-mapped is the same host
    # IPv6 clients are limited per /64
    assert (await limiter.hit_address("2001:db8::1")).allowed
    assert (await limiter.hit_address("2001:db8::2")).allowed
    assert not (await limiter.hit_address("2001:db8::3")).allowed
    assert (await limiter.hit_address("2001:db8:0:1::1")).allowed
    assert (await limiter.hit_address(None)).allowed  # stdio: no address
    # address limits never apply to hit(), and principal limits never to hit_address()
    assert (await limiter.hit(request())).allowed


async def test_fixed_window_strategy_is_available() -> None:
    limiter = RateLimiter([RateLimit("n", "5/minute")], strategy="fixed-window")
    results = await asyncio.gather(*(limiter.hit(request()) for _ in range(20)))
    assert sum(r.allowed for r in results) == 5


def test_configuration_is_validated() -> None:
    with pytest.raises(ValueError, match="cost"):
        RateLimit("x", "2/minute", cost=3)
    with pytest.raises(ValueError, match="per must be"):
        RateLimit("x", "2/minute", per="planet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="x"):
        RateLimit("x", "lots")
    with pytest.raises(ValueError, match="unique"):
        RateLimiter([RateLimit("x", "1/second"), RateLimit("x", "2/second")])
    limit = RateLimit.from_mapping({"name": "m", "limit": "2/second;100/minute", "tools": ["a*"]})
    assert len(limit.items) == 2 and limit.applies_to("abc") and not limit.applies_to("b")


# --- Redis shared between processes and Redis failures -----------------------------------------

WORKER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    sys.path.insert(0, {src!r})
    from securemcp.context import Principal
    from securemcp.policy.ratelimit import RateLimit, RateLimiter
    from securemcp.policy.request import CallRequest

    async def main():
        limiter = RateLimiter([RateLimit("per-user", "10/minute")], {url!r})
        who = Principal(subject="alice", issuer="https://idp.example")
        call = CallRequest.build(who, "add", {{}})
        while time.time() < {start}:
            await asyncio.sleep(0.001)
        results = await asyncio.gather(*(limiter.hit(call) for _ in range(50)))
        print(json.dumps(sum(r.allowed for r in results)))

    asyncio.run(main())
    """
)


def test_two_processes_share_one_limit(redis_url: str) -> None:
    script = WORKER.format(src=SRC, url=redis_url, start=time.time() + 1.5)
    workers = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    counts = []
    for worker in workers:
        out, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0
        counts.append(json.loads(out))
    assert sum(counts) == 10, counts


@pytest.mark.parametrize("behaviour", ["deny", "allow"])
async def test_redis_down(private_redis: RedisServer, behaviour: str) -> None:
    failures: list[StorageFailure] = []
    limiter = RateLimiter(
        [RateLimit("per-user", "10/minute")],
        private_redis.url,
        on_storage_error=behaviour,  # type: ignore[arg-type]
        on_storage_failure=failures.append,
    )
    assert (await limiter.hit(request())).allowed
    assert failures == []
    private_redis.stop()
    decision = await limiter.hit(request())
    assert decision.allowed is (behaviour == "allow")
    assert decision.storage_error and decision.limit == "per-user"
    assert len(failures) == 1 and failures[0].behaviour == behaviour
    assert failures[0].limit == "per-user" and failures[0].error
    # while the circuit is open the storage is not retried, but every call is still reported
    again = await limiter.hit(request())
    assert again.allowed is (behaviour == "allow") and len(failures) == 2


async def test_default_is_fail_closed_with_per_limit_override() -> None:
    failures: list[StorageFailure] = []
    limiter = RateLimiter(
        [
            RateLimit("open-one", "10/minute", on_storage_error="allow"),
            RateLimit("sensitive", "10/minute", per="tool", tools=("wire_*",)),
        ],
        "redis://127.0.0.1:1/0",  # nothing listens here
        on_storage_failure=failures.append,
    )
    assert limiter.on_storage_error == "deny"
    relaxed = await limiter.hit(request("add"))
    assert relaxed.allowed and relaxed.storage_error
    strict = await limiter.hit(request("wire_money"))
    assert not strict.allowed and strict.limit == "sensitive"
    assert {f.behaviour for f in failures} == {"allow", "deny"}


async def test_allowed_decision_is_shared_constant() -> None:
    limiter = RateLimiter([])
    assert await limiter.hit(request()) == RateDecision(True)


async def test_in_memory_limiter_expires_buckets_without_a_background_thread() -> None:
    before = set(threading.enumerate())
    limiter = RateLimiter([RateLimit("per-user", "2/minute")])
    windows = limiter.storage
    assert isinstance(windows, MemoryWindows)  # in-process windows, not limits' storage
    clock = [time.time()]
    windows.clock = lambda: clock[0]
    for i in range(10):
        assert (await limiter.hit(request(who=principal(f"user{i}")))).allowed
    assert windows.bucket_count() == 10
    clock[0] += 61
    for _ in range(SWEEP_EVERY):
        await limiter.hit(request(who=principal("live")))
    assert windows.bucket_count() == 1  # the expired buckets are gone
    assert set(threading.enumerate()) == before


async def test_earlier_items_stay_consumed_when_a_later_one_refuses() -> None:
    limiter = RateLimiter([RateLimit("burst", "5/minute;2/second")])
    clock = [1_700_000_000.0]
    limiter.storage.clock = lambda: clock[0]
    call = request()
    assert [(await limiter.hit(call)).allowed for _ in range(4)] == [True, True, False, False]
    clock[0] += 1.5
    assert (await limiter.hit(call)).allowed  # the 5th of the minute (4 counted above)
    refused = await limiter.hit(call)
    assert not refused.allowed and refused.limit == "burst"
    assert refused.retry_after == pytest.approx(60 - 1.5)


@pytest.mark.parametrize("strategy", ["moving-window", "fixed-window", "sliding-window-counter"])
async def test_reset_clears_in_memory_counters(strategy: str) -> None:
    limiter = RateLimiter([RateLimit("n", "1/minute")], strategy=strategy)  # type: ignore[arg-type]
    assert (await limiter.hit(request())).allowed
    assert not (await limiter.hit(request())).allowed
    await limiter.reset()
    assert (await limiter.hit(request())).allowed


async def test_memory_with_storage_options_still_uses_limits() -> None:
    limiter = RateLimiter([RateLimit("n", "3/minute")], storage_options={"wrap_exceptions": True})
    assert isinstance(limiter.storage, AsyncMemoryStorage)
    results = await asyncio.gather(*(limiter.hit(request()) for _ in range(10)))
    assert sum(r.allowed for r in results) == 3
    await limiter.reset()
    assert (await limiter.hit(request())).allowed


@pytest.mark.parametrize("behaviour", ["deny", "allow"])
async def test_a_failing_in_memory_counter_is_a_storage_failure(
    behaviour: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The in-process counters have no I/O, but an unexpected error in them is still decided by
    ``on_storage_error`` and reported, never an unexplained exception on the call path."""
    failures: list[StorageFailure] = []
    limiter = RateLimiter(
        [RateLimit("per-user", "10/minute")],
        on_storage_error=behaviour,  # type: ignore[arg-type]
        on_storage_failure=failures.append,
    )
    assert (await limiter.hit(request())).allowed

    def broken(*args: object) -> None:
        raise RuntimeError("counter state corrupted")

    monkeypatch.setattr(limiter._memory, "hit", broken)
    decision = await limiter.hit(request())
    assert decision.allowed is (behaviour == "allow")
    assert decision.storage_error and decision.limit == "per-user"
    assert len(failures) == 1 and failures[0].behaviour == behaviour


@pytest.mark.parametrize("counters", ["in-process", "limits"])
async def test_a_storage_error_message_reaches_only_the_server_log(
    counters: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A storage's exception message can name hosts or, for a custom storage, credentials: the
    decision, the refusal and the reported failure (all of which reach audit records) carry
    only the exception's type name; the message is logged for the operator."""
    secret = "redis://:hunter2-s3cret@10.0.0.7:6379"
    failures: list[StorageFailure] = []
    options = {"wrap_exceptions": True} if counters == "limits" else None
    limiter = RateLimiter(
        [RateLimit("per-user", "10/minute")],
        storage_options=options,
        on_storage_failure=failures.append,
    )

    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError(f"cannot reach {secret}")

    if counters == "limits":
        assert limiter._memory is None
        monkeypatch.setattr(limiter._strategy, "hit", broken)
    else:
        monkeypatch.setattr(limiter._memory, "hit", broken)
    with caplog.at_level("ERROR", logger="securemcp"):
        decision = await limiter.hit(request())
    assert not decision.allowed
    assert decision.storage_error == "ConnectionError"
    assert [f.error for f in failures] == ["ConnectionError"]
    with pytest.raises(RateLimited) as refused:
        decision.raise_if_refused()
    assert refused.value.reason == "ConnectionError"
    assert "hunter2" not in repr(refused.value) + str(refused.value)
    assert "hunter2-s3cret" in caplog.text  # the operator still sees what went wrong
    # while the circuit is open the storage is not retried: reported as such
    again = await limiter.hit(request())
    assert not again.allowed and again.storage_error == "circuit_open"
    assert failures[-1].error == "circuit_open"
