"""Spend rollups, overrides and top-ups in the budget store, on real Redis (standalone and a
3-master cluster). Time is simulated; TTLs are relative to the simulated `now`."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.budgets.ratelimits.model import (
    RateLimitAction,
    RateLimitCharge,
    RateLimitConfig,
)
from gateway_extproc.budgets.results import Charge, ReservationState
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend import query
from gateway_extproc.spend.outcome import Outcome
from gateway_extproc.spend.rollup import Dimensions, RollupSettings, UsageRecord
from gateway_extproc.tokens import Usage
from tests.redis_servers import (  # noqa: F401 - session fixtures used via getfixturevalue
    RedisClusterNodes,
    RedisEndpoint,
    redis_cluster_servers,
    redis_standalone_server,
)

USD = 1_000_000
T0 = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC).timestamp()
DAY = query.DayRange(dt.date(2026, 11, 24), dt.date(2026, 11, 24))
MONTHLY = BudgetConfig(
    name="monthly",
    scope=Scope(ScopeKind.USER),
    limit_micros=10 * USD,
    window=CalendarWindow(Period.MONTH),
    action=Action.BLOCK,
)
ROLLING = BudgetConfig(
    name="rolling",
    scope=Scope(ScopeKind.USER),
    limit_micros=10 * USD,
    window=RollingWindow(86_400, 3600),
    action=Action.BLOCK,
)
ALICE = Dimensions(user="alice", groups=("eng", "ml"), model="gpt-4o", provider="openai")


def usage(cost: int, *, dims: Dimensions = ALICE, estimated: bool = False) -> UsageRecord:
    return UsageRecord(T0, dims, Usage(input_tokens=100, output_tokens=7), cost, estimated)


@pytest.fixture(params=["standalone", "cluster"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    client: Redis | RedisCluster
    if request.param == "standalone":
        node: RedisEndpoint = request.getfixturevalue("redis_standalone_server")
        client = Redis(host=node.host, port=node.port)
    else:
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_servers")
        client = RedisCluster(host=nodes.first.host, port=nodes.first.port)
    tag = uuid.uuid4().hex[:10]
    store = BudgetStore(client, prefix=f"t{tag}", hash_tag=tag, rollups=RollupSettings())
    await store.load_scripts()
    yield store
    await client.aclose()


async def report(store: BudgetStore, *by: str) -> dict[tuple[str, ...], dict[str, int]]:
    rows = query.aggregate(await read_days(store, DAY), [query.parse_dimension(d) for d in by])
    return {r.key: r.totals for r in rows}


async def test_settle_rolls_up_exactly_once(store: BudgetStore) -> None:
    charge = Charge.of(MONTHLY, "alice", 2 * USD)
    assert (await store.reserve("r1", [charge], 60, T0)).admitted
    first = await store.settle("r1", 1_234_567, T0 + 1, usage(1_234_567))
    again = await store.settle("r1", 1_234_567, T0 + 2, usage(1_234_567))
    assert first.changed and not again.changed
    totals = (await report(store))[()]
    assert totals["requests"] == 1
    assert totals["cost_micros"] == 1_234_567
    assert totals["input_tokens"] == 100 and totals["output_tokens"] == 7
    assert (await store.status(MONTHLY, "alice", T0)).spent_micros == 1_234_567


async def test_record_without_reservation_is_idempotent(store: BudgetStore) -> None:
    bob = Dimensions(user="bob", model="gpt-4o-mini", provider="openai")
    assert (await store.record_usage("r2", usage(500, dims=bob, estimated=True), T0)).changed
    assert not (await store.record_usage("r2", usage(500, dims=bob), T0)).changed
    by_user = await report(store, "user")
    assert by_user[("bob",)]["cost_micros"] == 500
    assert by_user[("bob",)]["estimated_cost_micros"] == 500


async def test_reaped_then_settled_rolls_up_once(store: BudgetStore) -> None:
    assert (await store.reserve("r3", [Charge.of(MONTHLY, "alice", USD)], 1, T0)).admitted
    reaped = await store.reap(T0 + 5)
    assert [r.request_id for r in reaped.reaped] == ["r3"]
    settled = await store.settle("r3", 300, T0 + 6, usage(300))
    assert settled.state is ReservationState.SETTLED and settled.changed
    assert (await report(store))[()]["cost_micros"] == 300
    assert (await store.status(MONTHLY, "alice", T0 + 6)).spent_micros == 300


async def test_group_by_group_counts_each_group(store: BudgetStore) -> None:
    await store.record_usage("g1", usage(10), T0)
    by_group = await report(store, "group", "model")
    assert by_group[("eng", "gpt-4o")]["cost_micros"] == 10
    assert by_group[("ml", "gpt-4o")]["cost_micros"] == 10


async def test_override_applies_in_the_reserve(store: BudgetStore) -> None:
    overrides = Overrides(store)
    big = Charge.of(MONTHLY, "alice", 15 * USD)
    assert not (await store.reserve("o1", [big], 60, T0)).admitted
    await overrides.set(MONTHLY, "alice", 20 * USD, T0 + 3600, "quarter end", "root", T0)
    result = await store.reserve("o2", [big], 60, T0)
    assert result.admitted
    assert result.budgets[0].overridden and result.budgets[0].limit_micros == 20 * USD
    # Expired: the configured limit is back (the hash may still exist on a simulated clock).
    assert not (await store.reserve("o3", [big], 60, T0 + 7200)).admitted
    assert [o.scope_value for o in await overrides.in_force(T0)] == ["alice"]
    assert await overrides.remove("monthly", "alice")
    assert not await overrides.remove("monthly", "alice")
    assert await overrides.in_force(T0) == []


async def test_top_up_credits_the_current_window(store: BudgetStore) -> None:
    overrides = Overrides(store)
    big = Charge.of(MONTHLY, "alice", 12 * USD)
    assert not (await store.reserve("t1", [big], 60, T0)).admitted
    assert await overrides.top_up(MONTHLY, "alice", 3 * USD, T0) == 3 * USD
    state = await overrides.counter(MONTHLY, "alice", T0)
    assert state.limit_micros(MONTHLY) == 13 * USD
    assert (await store.reserve("t2", [big], 60, T0)).admitted
    next_month = dt.datetime(2026, 12, 2, tzinfo=dt.UTC).timestamp()
    assert not (await store.reserve("t3", [big], 60, next_month)).admitted
    with pytest.raises(ValueError):
        await overrides.top_up(ROLLING, "alice", USD, T0)
    with pytest.raises(ValueError):
        await overrides.top_up(MONTHLY, "alice", -1, T0)


async def test_scope_values_found_by_scan(store: BudgetStore) -> None:
    for user in ("alice", "bob:x"):
        assert (await store.reserve(f"s-{user}", [Charge.of(MONTHLY, user, 1)], 60, T0)).admitted
    assert await Overrides(store).scope_values(MONTHLY, T0) == ["alice", "bob:x"]


async def test_rollup_keys_share_the_budget_slot(store: BudgetStore) -> None:
    key = store.rollup_key(usage(1))
    assert key.startswith(store.key_base + ":spend:2026-11-24")
    client = store.client
    await store.record_usage("ttl", usage(1), T0)
    ttl_ms = await client.pttl(key)
    end_of_day = dt.datetime(2026, 11, 25, tzinfo=dt.UTC).timestamp()
    # The day's end plus the retention, relative to the caller's (simulated) clock.
    assert abs(ttl_ms - ((end_of_day - T0) * 1000 + 400 * 86_400_000)) < 60_000


async def test_answered_requests_roll_up_once_beside_billed_ones(store: BudgetStore) -> None:
    """A cache hit and refusals go through the `record` script: once per id, even retried;
    a row with refusals only is reported."""
    eve = Dimensions(user="eve", model="claude-haiku-4-5", provider="anthropic")
    await store.record_usage("b1", usage(40), T0)
    hit = UsageRecord.answered(T0, ALICE, Outcome.CACHE_HIT, saved_micros=321)
    assert (await store.record_usage("h1:answered", hit, T0)).changed
    assert not (await store.record_usage("h1:answered", hit, T0 + 1)).changed  # a retry
    for n, outcome in enumerate([Outcome.REFUSED_GUARDRAIL, Outcome.REFUSED_BUDGET] * 2):
        await store.record_usage(f"x{n}:answered", UsageRecord.answered(T0, eve, outcome), T0)
    by_user = await report(store, "user")
    alice, eve_row = by_user[("alice",)], by_user[("eve",)]
    assert (alice["requests"], alice["cost_micros"]) == (1, 40)  # a hit is no billed request
    assert (alice["cache_hits"], alice["cache_saved_micros"]) == (1, 321)
    assert eve_row["requests"] == 0 and eve_row["cost_micros"] == 0
    assert (eve_row["refused_guardrail"], eve_row["refused_budget"]) == (2, 2)


async def test_a_hit_releases_its_reservation_and_rolls_up_under_its_own_id(
    store: BudgetStore,
) -> None:
    """A hit counted in a rate limit holds a reservation under the request's id, released when
    the hit is answered: the hit's rollup, under `<id>:answered`, is not swallowed by it (nor
    dropped as a duplicate of the release in flight)."""
    limit = RateLimitConfig(
        "hits", Scope(ScopeKind.USER), 60, RateLimitAction.BLOCK, requests=10, count_cache_hits=True
    )
    charge = RateLimitCharge(limit, "alice", 0)
    assert (await store.reserve("h2", [], 60, T0, limits=[charge])).admitted
    services = BudgetServices(store, GateSettings(), clock=lambda: T0)
    services.settle("h2", None)  # the release conclude() hands over
    hit = UsageRecord.answered(T0, ALICE, Outcome.CACHE_HIT, saved_micros=5)
    services.roll_up_answered("h2:answered", hit)
    await services.drain()
    assert (await report(store))[()]["cache_hits"] == 1
    record = await store.client.hgetall(store.record_key("h2"))
    assert record[b"state"] == b"RELEASED"
