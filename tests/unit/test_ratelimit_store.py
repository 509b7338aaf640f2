"""Rate limits in the budgets' reservation scripts, against a real redis-server and a real
3-master cluster (the fixtures of test_budget_store). Time is simulated: `now` is passed in."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.budgets.model import Scope, ScopeKind
from gateway_extproc.budgets.ratelimits.model import (
    BUCKETS,
    RateLimitAction,
    RateLimitCharge,
    RateLimitConfig,
)
from gateway_extproc.budgets.results import Charge, ReservationState
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
from tests.redis_servers import (  # noqa: F401 - session fixtures used via getfixturevalue
    redis_cluster_servers,
    redis_standalone_server,
)
from tests.unit.test_budget_store import (  # noqa: F401 - connect, make_store: fixtures
    T0,
    USD,
    MakeStore,
    all_keys,
    budget,
    connect,
    make_store,
    spent_held,
)

LEASE = 60


@pytest.fixture
async def store(make_store: MakeStore) -> BudgetStore:  # noqa: F811
    return await make_store()


def limit(
    name: str = "rpm",
    *,
    requests: int | None = None,
    tokens: int | None = None,
    window_s: int = 60,
    action: RateLimitAction = RateLimitAction.BLOCK,
) -> RateLimitConfig:
    return RateLimitConfig(
        name=name,
        scope=Scope(ScopeKind.USER),
        window_s=window_s,
        action=action,
        requests=requests,
        tokens=tokens,
    )


def usage(tokens_in: int, tokens_out: int) -> UsageRecord:
    return UsageRecord(
        T0, Dimensions(), Usage(input_tokens=tokens_in, output_tokens=tokens_out), 1, False
    )


async def counts(store: BudgetStore, charge: RateLimitCharge) -> tuple[int, int]:
    """(requests, tokens) stored for the counter, over every bucket still there."""
    fields = await store.client.hgetall(store.rate_limit_key(charge))
    requests = sum(int(v) for k, v in fields.items() if k.startswith(b"r:"))
    tokens = sum(int(v) for k, v in fields.items() if k.startswith(b"t:"))
    return requests, tokens


async def test_requests_per_window_and_the_sliding_bucket_arithmetic(store: BudgetStore) -> None:
    rpm = RateLimitCharge(limit(requests=2), "alice", 0)
    first = await store.reserve("a", [], LEASE, T0, [rpm])
    assert first.admitted and first.rate_limits[0].requests_used == 1
    assert first.rate_limits[0].requests_reset_ms == 60_000  # T0 starts a 3 s bucket
    assert (await store.reserve("b", [], LEASE, T0 + 30, [rpm])).admitted
    third = await store.reserve("c", [], LEASE, T0 + 31, [rpm])
    assert not third.admitted and third.state is ReservationState.UNKNOWN
    state = third.rate_limits[0]
    assert state.would_block and state.requests_used == 2 and state.remaining_requests == 0
    # T0's bucket [T0, T0 + 3 s) leaves the window at T0 + 60 s.
    assert state.requests_retry_ms == 29_000 and state.retry_ms == 29_000
    assert state.requests_reset_ms == 59_000  # T0 + 30 s bucket leaves at T0 + 90 s
    assert third.rate_limited == (state,)
    assert not (await store.reserve("d", [], LEASE, T0 + 59.999, [rpm])).admitted
    assert (await store.reserve("e", [], LEASE, T0 + 60, [rpm])).admitted
    # A refused request wrote nothing: no record, no count.
    assert await store.client.exists(store.record_key("c")) == 0
    assert await counts(store, rpm) == (2, 0)  # b and e: a's bucket was dropped at e


async def test_exactly_the_limit_is_admitted_under_concurrency(store: BudgetStore) -> None:
    rpm = RateLimitCharge(limit(requests=20), "alice", 0)
    results = await asyncio.gather(
        *(store.reserve(f"r{i}", [], LEASE, T0, [rpm]) for i in range(200))
    )
    assert sum(r.admitted for r in results) == 20
    assert await counts(store, rpm) == (20, 0)


async def test_a_rate_limit_refusal_holds_nothing_on_budgets_and_vice_versa(
    store: BudgetStore,
) -> None:
    roomy, tight = budget("roomy", 100), budget("tight", 1)
    rpm = RateLimitCharge(limit(requests=1, tokens=10_000), "alice", 500)
    assert (await store.reserve("a", [Charge.of(roomy, "alice", USD)], LEASE, T0, [rpm])).admitted
    assert await spent_held(store, roomy) == (0, USD)
    refused = await store.reserve("b", [Charge.of(roomy, "alice", USD)], LEASE, T0, [rpm])
    assert not refused.admitted and refused.rate_limited
    assert await spent_held(store, roomy) == (0, USD)  # the budget holds nothing more
    other = RateLimitCharge(limit("other", requests=5, tokens=10_000), "alice", 500)
    over = await store.reserve("c", [Charge.of(tight, "alice", 2 * USD)], LEASE, T0, [other])
    assert not over.admitted and over.blocking and not over.rate_limited
    assert await counts(store, other) == (0, 0)  # the rate limit counted nothing
    assert await spent_held(store, tight) == (0, 0)


async def test_token_holds_are_corrected_to_the_real_tokens(store: BudgetStore) -> None:
    tpm = RateLimitCharge(limit(tokens=1_000), "alice", 600)
    assert (await store.reserve("a", [], LEASE, T0, [tpm])).admitted
    refused = await store.reserve("b", [], LEASE, T0 + 1, [tpm])
    assert not refused.admitted and refused.rate_limits[0].tokens_used == 600
    assert refused.rate_limits[0].tokens_retry_ms == 59_000
    settled = await store.settle("a", 1, T0 + 2, usage(100, 50))
    assert settled.state is ReservationState.SETTLED
    assert await counts(store, tpm) == (1, 150)
    assert (await store.settle("a", 1, T0 + 2, usage(900, 0))).changed is False  # idempotent
    assert await counts(store, tpm) == (1, 150)
    second = await store.reserve("b", [], LEASE, T0 + 3, [tpm])
    assert second.admitted and second.rate_limits[0].tokens_used == 750
    released = await store.release("b")
    assert released.state is ReservationState.RELEASED
    assert await counts(store, tpm) == (2, 150)  # the request stays counted, its tokens go


async def test_a_stream_over_its_hold_counts_its_real_tokens(store: BudgetStore) -> None:
    tpm = RateLimitCharge(limit(tokens=10_000), "alice", 100)
    assert (await store.reserve("a", [], LEASE, T0, [tpm])).admitted
    await store.settle("a", 1, T0 + 1, usage(80, 300))
    assert await counts(store, tpm) == (1, 380)


async def test_reap_keeps_the_hold_and_a_late_settle_or_release_corrects_it(
    store: BudgetStore,
) -> None:
    tpm = RateLimitCharge(limit(tokens=10_000, window_s=3600), "alice", 1_000)
    roomy = budget("roomy", 100)
    for rid in ("s", "r"):
        assert (await store.reserve(rid, [Charge.of(roomy, "alice", USD)], 5, T0, [tpm])).admitted
    reaped = await store.reap(T0 + 10)
    assert {r.request_id for r in reaped.reaped} == {"s", "r"}
    assert await counts(store, tpm) == (2, 2_000)
    assert (await store.settle("s", 10, T0 + 11, usage(40, 2))).changed
    assert await counts(store, tpm) == (2, 1_042)
    assert (await store.release("r")).changed
    assert await counts(store, tpm) == (2, 42)
    assert not (await store.settle("s", 10, T0 + 12, usage(1, 1))).changed
    assert await counts(store, tpm) == (2, 42)
    assert await spent_held(store, roomy) == (10, 0)


async def test_monitor_limits_count_and_report_but_never_block(store: BudgetStore) -> None:
    watch = RateLimitCharge(limit(requests=1, action=RateLimitAction.MONITOR), "alice", 0)
    assert (await store.reserve("a", [], LEASE, T0, [watch])).admitted
    second = await store.reserve("b", [], LEASE, T0, [watch])
    assert second.admitted and second.rate_limits[0].would_block and not second.rate_limited
    assert second.rate_limits[0].requests_used == 2


async def test_a_token_estimate_over_the_limit_never_fits(store: BudgetStore) -> None:
    tpm = RateLimitCharge(limit(tokens=100), "alice", 101)
    refused = await store.reserve("a", [], LEASE, T0, [tpm])
    assert not refused.admitted and refused.rate_limits[0].tokens_retry_ms == -1
    assert refused.rate_limits[0].retry_ms == -1


async def test_rate_limit_keys_expire_after_a_window_and_records_do_not(
    store: BudgetStore,
) -> None:
    rps = RateLimitCharge(limit("rps", requests=5, tokens=50, window_s=1), "alice", 10)
    assert (await store.reserve("a", [], LEASE, T0, [rps])).admitted
    key = store.rate_limit_key(rps)
    assert 0 < await store.client.pttl(key) <= 1000 + 1000 // BUCKETS
    assert await store.client.pttl(store.record_key("a")) == -1  # RESERVED: no TTL
    for name in await all_keys(store):
        if name != store.record_key("a") and name != store.leases_key:
            assert await store.client.pttl(name) > 0, name
    # Stale buckets are dropped by the next reserve: memory stays bounded.
    assert (await store.reserve("b", [], LEASE, T0 + 5, [rps])).admitted
    fields = await store.client.hgetall(key)
    assert len(fields) == 2  # r:<bucket>, t:<bucket> of the new request only


async def test_a_replayed_reserve_counts_nothing_twice(store: BudgetStore) -> None:
    rpm = RateLimitCharge(limit(requests=5), "alice", 0)
    assert (await store.reserve("a", [], LEASE, T0, [rpm])).admitted
    again = await store.reserve("a", [], LEASE, T0, [rpm])
    assert again.replayed and again.admitted
    assert await counts(store, rpm) == (1, 0)


async def test_rate_limit_keys_share_the_stores_slot(store: BudgetStore) -> None:
    rpm = RateLimitCharge(limit(requests=5), "bob", 0)
    assert store.rate_limit_key(rpm).startswith(store.key_base + ":rl:")
    if isinstance(store.client, RedisCluster):
        from redis.crc import key_slot

        assert key_slot(store.rate_limit_key(rpm).encode()) == key_slot(store.leases_key.encode())
