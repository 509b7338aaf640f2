"""The budget store against real Redis: a standalone redis-server and a real 3-master cluster.

Time is simulated (`now` is passed in); key TTLs are relative to that `now`, so the simulated
dates work whatever the machine's clock says.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot

from gateway_extproc.budgets.model import (
    Action,
    Alerts,
    BudgetConfig,
    CalendarWindow,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
    Window,
)
from gateway_extproc.budgets.pipe import ScriptPipe
from gateway_extproc.budgets.results import BudgetStoreError, Charge, ReservationState
from gateway_extproc.budgets.store import BudgetStore
from tests.redis_servers import (  # noqa: F401 - session fixtures used via getfixturevalue
    RedisClusterNodes,
    RedisEndpoint,
    free_port,
    redis_cluster_servers,
    redis_standalone_server,
)

Client = Redis | RedisCluster
USD = 1_000_000
HOUR = 3600
MONTH = CalendarWindow(Period.MONTH)
GRACE_S = 7 * 86_400


def at(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


T0 = at("2026-11-24T12:00:00")


def budget(
    name: str,
    limit_usd: float,
    *,
    window: Window = MONTH,
    action: Action = Action.BLOCK,
    thresholds: tuple[int, ...] = (),
) -> BudgetConfig:
    return BudgetConfig(
        name=name,
        scope=Scope(ScopeKind.USER),
        limit_micros=round(limit_usd * USD),
        window=window,
        action=action,
        downgrade_to="gpt-4o-mini" if action is Action.DOWNGRADE else None,
        alerts=Alerts(thresholds_percent=thresholds),
    )


@pytest.fixture(params=["standalone", "pipelined", "cluster"])
async def connect(request: pytest.FixtureRequest) -> AsyncIterator[Callable[[], Client]]:
    """Make clients (one per simulated replica) to one Redis deployment; closed at teardown.
    `pipelined`: standalone, the stores' scripts on their own pipelined connection (pipe.py)."""
    clients: list[Client] = []
    if request.param in ("standalone", "pipelined"):
        node: RedisEndpoint = request.getfixturevalue("redis_standalone_server")

        def make() -> Client:
            clients.append(Redis(host=node.host, port=node.port, max_connections=512))
            return clients[-1]
    else:
        nodes: RedisClusterNodes = request.getfixturevalue("redis_cluster_servers")

        def make() -> Client:
            first = nodes.first
            clients.append(RedisCluster(host=first.host, port=first.port, max_connections=512))
            return clients[-1]

    yield make
    for client in clients:
        await client.aclose()


MakeStore = Callable[[], Awaitable[BudgetStore]]


@pytest.fixture
async def make_store(
    connect: Callable[[], Client], request: pytest.FixtureRequest
) -> AsyncIterator[MakeStore]:
    """Stores (replicas) sharing one fresh key space (prefix and hash tag unique to the test)."""
    tag = uuid.uuid4().hex[:10]
    pipelined = request.node.callspec.params["connect"] == "pipelined"
    stores: list[BudgetStore] = []

    async def make() -> BudgetStore:
        client = connect()
        pipe = ScriptPipe.for_client(client) if pipelined else None
        assert pipe is not None or not pipelined
        store = BudgetStore(
            client, prefix=f"t{tag}", hash_tag=tag, counter_grace_s=GRACE_S, pipe=pipe
        )
        stores.append(store)
        await store.load_scripts()
        return store

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> BudgetStore:
    return await make_store()


async def all_keys(store: BudgetStore) -> list[str]:
    """Every key under the store's prefix (on a cluster: on the node owning its hash tag)."""
    client = store._client
    pattern = store.leases_key.split(":")[0] + ":*"
    if isinstance(client, RedisCluster):
        node = client.get_node_from_key(store.leases_key)
        found = await client.keys(pattern, target_nodes=node)
    else:
        found = await client.keys(pattern)
    return sorted(k.decode() for k in found)


async def spent_held(store: BudgetStore, b: BudgetConfig, now: float = T0) -> tuple[int, int]:
    status = await store.status(b, "alice", now)
    return status.spent_micros, status.held_micros


async def test_reserve_is_all_or_nothing(store: BudgetStore) -> None:
    a = budget("a", 10)
    b = budget("b", 5)
    c = budget("c", 100, window=RollingWindow(86_400, HOUR))
    assert (await store.reserve("r0", [Charge.of(b, "alice", 2 * USD)], 60, T0)).admitted
    await store.settle("r0", 2 * USD, T0)

    charges = [Charge.of(x, "alice", 4 * USD) for x in (a, b, c)]
    result = await store.reserve("r1", charges, 60, T0)
    assert not result.admitted and not result.replayed
    assert result.state is ReservationState.UNKNOWN
    assert [s.budget.name for s in result.blocking] == ["b"]
    assert [(s.spent_micros, s.held_micros, s.limit_micros) for s in result.budgets] == [
        (0, 0, 10 * USD),
        (2 * USD, 0, 5 * USD),
        (0, 0, 100 * USD),
    ]
    assert [await spent_held(store, x) for x in (a, b, c)] == [(0, 0), (2 * USD, 0), (0, 0)]
    client = store._client
    assert await client.exists(store.record_key("r1")) == 0
    assert await client.zscore(store.leases_key, "r1") is None

    result = await store.reserve("r1", [Charge.of(x, "alice", 3 * USD) for x in (a, b, c)], 60, T0)
    assert result.admitted and result.state is ReservationState.RESERVED
    assert [await spent_held(store, x) for x in (a, b, c)] == [
        (0, 3 * USD),
        (2 * USD, 3 * USD),
        (0, 3 * USD),
    ]
    constrained = result.most_constrained
    assert constrained is not None and constrained.budget.name == "b"
    assert constrained.remaining_micros == 0


async def test_exactly_n_admitted_under_concurrency(store: BudgetStore) -> None:
    n, estimate = 37, 1_234_567
    tight = budget("tight", (n * estimate + estimate - 1) / USD)
    roomy = budget("roomy", 10_000, window=RollingWindow(86_400, HOUR))

    async def one(i: int) -> bool:
        charges = [Charge.of(roomy, "alice", estimate), Charge.of(tight, "alice", estimate)]
        return (await store.reserve(f"req-{i}", charges, 60, T0)).admitted

    admitted = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(admitted) == n
    assert await spent_held(store, tight) == (0, n * estimate)
    assert await spent_held(store, roomy) == (0, n * estimate)


async def test_duplicate_and_out_of_order_calls(store: BudgetStore) -> None:
    b = budget("b", 100)
    charges = [Charge.of(b, "alice", 10 * USD)]
    assert (await store.reserve("r1", charges, 60, T0)).admitted
    replay = await store.reserve("r1", charges, 60, T0)
    assert replay.admitted and replay.replayed and replay.state is ReservationState.RESERVED
    assert await spent_held(store, b) == (0, 10 * USD)

    first = await store.settle("r1", 7 * USD, T0)
    assert (first.state, first.changed) == (ReservationState.SETTLED, True)
    again = await store.settle("r1", 7 * USD, T0 + 1)
    assert (again.state, again.changed) == (ReservationState.SETTLED, False)
    late_release = await store.release("r1")
    assert (late_release.state, late_release.changed) == (ReservationState.SETTLED, False)
    late_checkpoint = await store.checkpoint("r1", 1, 60, T0)
    assert (late_checkpoint.state, late_checkpoint.changed) == (ReservationState.SETTLED, False)
    replay = await store.reserve("r1", charges, 60, T0)
    assert replay.replayed and not replay.admitted and replay.state is ReservationState.SETTLED
    assert await spent_held(store, b) == (7 * USD, 0)

    assert (await store.reserve("r2", charges, 60, T0)).admitted
    released = await store.release("r2")
    assert (released.state, released.changed) == (ReservationState.RELEASED, True)
    assert (await store.release("r2")).changed is False
    late_settle = await store.settle("r2", 5 * USD, T0)
    assert (late_settle.state, late_settle.changed) == (ReservationState.RELEASED, False)
    assert await spent_held(store, b) == (7 * USD, 0)

    for outcome in (
        await store.settle("never", 1, T0),
        await store.checkpoint("never", 1, 60, T0),
    ):
        assert (outcome.state, outcome.changed) == (ReservationState.UNKNOWN, False)


async def test_release_before_a_late_reserve_leaves_a_tombstone(store: BudgetStore) -> None:
    """A reserve that timed out may still reach Redis after the caller released it."""
    b = budget("b", 100)
    released = await store.release("timed-out")
    assert (released.state, released.changed) == (ReservationState.RELEASED, False)
    late = await store.reserve("timed-out", [Charge.of(b, "alice", 10 * USD)], 60, T0)
    assert late.replayed and not late.admitted and late.state is ReservationState.RELEASED
    assert await spent_held(store, b) == (0, 0)
    assert (await store.settle("timed-out", USD, T0)).changed is False
    assert 0 < await store._client.pttl(store.record_key("timed-out")) <= 600_000


async def test_settle_after_the_window_rolled_lands_in_the_reserved_window(
    store: BudgetStore,
) -> None:
    b = budget("monthly", 100)
    reserved_at, settled_at = at("2026-11-30T23:59:59"), at("2026-12-01T00:00:01")
    result = await store.reserve("r1", [Charge.of(b, "alice", 5 * USD)], 60, reserved_at)
    assert result.budgets[0].window_id == "2026-11"
    assert (await store.settle("r1", 3 * USD, settled_at)).changed
    assert await spent_held(store, b, reserved_at) == (3 * USD, 0)
    assert await spent_held(store, b, settled_at) == (0, 0)
    november, _ = store.counter_key(b, "alice", reserved_at)
    ttl_ms = await store._client.pttl(november)
    assert (GRACE_S - 2) * 1000 - 5000 < ttl_ms <= (GRACE_S - 1) * 1000


async def test_every_key_written_has_a_ttl(store: BudgetStore) -> None:
    monthly = budget("monthly", 100, thresholds=(1,))
    rolling = budget("rolling", 100, window=RollingWindow(86_400, HOUR), thresholds=(1,))
    charges = [Charge.of(monthly, "alice", USD), Charge.of(rolling, "alice", USD)]
    for i in range(4):
        assert (await store.reserve(f"r{i}", charges, 60, T0)).admitted
    await store.checkpoint("r0", 10, 120, T0)
    await store.settle("r0", 2 * USD, T0)  # crosses 1 %: alert markers written
    await store.release("r1")
    await store.checkpoint("r2", 10, 30, T0)
    await store.reap(T0 + 1000)  # r2, r3 expire
    client = store._client
    keys = await all_keys(store)
    counter_keys = [store.counter_key(b, "alice", T0)[0] for b in (monthly, rolling)]
    record_keys = [store.record_key(f"r{i}") for i in range(4)]
    assert keys == sorted([*counter_keys, *record_keys])  # the lease set emptied and is gone
    for key in keys:
        assert await client.pttl(key) > 0, key

    assert (await store.reserve("r9", charges, 60, T0)).admitted
    month_end = at("2026-12-01T00:00:00")
    assert abs(await client.pttl(counter_keys[0]) - (month_end + GRACE_S - T0) * 1000) < 5000
    assert abs(await client.pttl(counter_keys[1]) - (86_400 + GRACE_S) * 1000) < 5000
    assert abs(await client.pttl(store.record_key("r0")) - 600 * 1000) < 5000  # settled
    assert abs(await client.pttl(store.record_key("r2")) - 86_400 * 1000) < 5000  # reaped
    # A live reservation and the lease set never expire: only settle/release/reap end them.
    assert await client.pttl(store.record_key("r9")) == -1
    assert await client.pttl(store.leases_key) == -1
    await store.checkpoint("r9", 5, 30, T0)
    assert await client.pttl(store.record_key("r9")) == -1


async def test_a_late_settle_corrects_the_reapers_charge_once(store: BudgetStore) -> None:
    monthly = budget("monthly", 100)
    charges = [Charge.of(monthly, "alice", 10 * USD)]
    assert (await store.reserve("late", charges, 60, T0)).admitted
    await store.checkpoint("late", 2 * USD, 60, T0)
    assert [r.charged_micros for r in (await store.reap(T0 + 1000)).reaped] == [(2 * USD,)]
    assert await spent_held(store, monthly, T0) == (2 * USD, 0)
    result = await store.settle("late", 7 * USD, T0 + 1001)  # the real cost arrives late
    assert (result.state, result.changed) == (ReservationState.SETTLED, True)
    assert await spent_held(store, monthly, T0) == (7 * USD, 0)
    again = await store.settle("late", 9 * USD, T0 + 1002)
    assert (again.state, again.changed) == (ReservationState.SETTLED, False)
    assert await spent_held(store, monthly, T0) == (7 * USD, 0)


async def test_a_late_release_refunds_the_reapers_estimate(store: BudgetStore) -> None:
    monthly = budget("monthly", 100)
    charges = [Charge.of(monthly, "alice", 10 * USD)]
    assert (await store.reserve("failed", charges, 60, T0)).admitted
    assert [r.charged_micros for r in (await store.reap(T0 + 1000)).reaped] == [(10 * USD,)]
    assert await spent_held(store, monthly, T0) == (10 * USD, 0)
    result = await store.release("failed")  # the provider errored: nothing was billed
    assert (result.state, result.changed) == (ReservationState.RELEASED, True)
    assert await spent_held(store, monthly, T0) == (0, 0)
    assert (await store.release("failed")).changed is False
    assert await spent_held(store, monthly, T0) == (0, 0)


async def test_every_key_of_a_store_shares_one_slot(store: BudgetStore) -> None:
    b = budget("b", 100)
    charges = [Charge.of(b, user, USD) for user in ("alice", "bob", "{carol}", "dave:x")]
    assert (await store.reserve("r{1}", charges, 60, T0)).admitted
    keys = [store.record_key("r{1}"), store.leases_key]
    keys += [store.counter_key(b, user, T0)[0] for user in ("alice", "bob", "{carol}", "dave:x")]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert (await store.settle("r{1}", USD, T0)).changed


async def test_monitor_budgets_never_block_but_report(store: BudgetStore) -> None:
    watch = budget("watch", 1, action=Action.MONITOR)
    block = budget("block", 100)
    charges = [Charge.of(watch, "alice", 2 * USD), Charge.of(block, "alice", 2 * USD)]
    for request_id in ("r1", "r2"):
        result = await store.reserve(request_id, charges, 60, T0)
        assert result.admitted
        assert [s.budget.name for s in result.monitor_would_block] == ["watch"]
        assert result.blocking == ()
    assert await spent_held(store, watch) == (0, 4 * USD)

    downgrade = budget("downgrade", 1, action=Action.DOWNGRADE)
    result = await store.reserve("r3", [Charge.of(downgrade, "alice", 2 * USD)], 60, T0)
    assert not result.admitted and [s.budget.name for s in result.blocking] == ["downgrade"]


async def test_checkpoint_and_reap_charge_once_with_concurrent_reapers(
    make_store: MakeStore,
) -> None:
    store = await make_store()
    b = budget("b", 100, thresholds=(5,))
    assert (await store.reserve("long", [Charge.of(b, "alice", 10 * USD)], 30, T0)).admitted
    assert (await store.reserve("short", [Charge.of(b, "alice", 4 * USD)], 30, T0)).admitted
    assert (await store.checkpoint("long", 3 * USD, 60, T0 + 20)).changed
    assert (await store.checkpoint("long", 2 * USD, 60, T0 + 20)).changed  # keeps the largest

    early = await store.reap(T0 + 40)
    assert [(r.request_id, r.charged_micros) for r in early.reaped] == [("short", (4 * USD,))]
    assert await spent_held(store, b) == (4 * USD, 10 * USD)

    reapers = [await make_store() for _ in range(5)]
    results = await asyncio.gather(*(r.reap(T0 + 100) for r in reapers))
    reaped = [r for result in results for r in result.reaped]
    assert [(r.request_id, r.charged_micros) for r in reaped] == [("long", (3 * USD,))]
    crossings = [c for result in (early, *results) for c in result.crossings]
    assert [(c.threshold_percent, c.spent_micros) for c in crossings] == [(5, 7 * USD)]
    assert await spent_held(store, b) == (7 * USD, 0)
    # The sidecar was alive after all (say Redis was out of its reach): its late settle corrects
    # the reaper's 3 USD checkpoint charge to the real 9 USD, once.
    late = await store.settle("long", 9 * USD, T0 + 101)
    assert (late.state, late.changed) == (ReservationState.SETTLED, True)
    assert await spent_held(store, b) == (13 * USD, 0)
    replay = await store.settle("long", 9 * USD, T0 + 102)
    assert (replay.state, replay.changed) == (ReservationState.SETTLED, False)
    assert await spent_held(store, b) == (13 * USD, 0)
    assert (await store.reap(T0 + 200)).reaped == ()


async def test_alert_crossings_reported_once_with_concurrent_settles(
    make_store: MakeStore,
) -> None:
    replicas = [await make_store() for _ in range(4)]
    store = replicas[0]
    b = budget("alerting", 10, action=Action.MONITOR, thresholds=(50, 80, 100))
    charges = [Charge.of(b, "alice", USD)]
    for i in range(25):
        assert (await store.reserve(f"r{i}", charges, 60, T0)).admitted
    results = await asyncio.gather(
        *(replicas[i % 4].settle(f"r{i}", USD // 2, T0) for i in range(25))
    )
    crossings = sorted((c for r in results for c in r.crossings), key=lambda c: c.spent_micros)
    assert [(c.threshold_percent, c.spent_micros) for c in crossings] == [
        (50, 5 * USD),
        (80, 8 * USD),
        (100, 10 * USD),
    ]
    assert {(c.budget, c.scope_value, c.window_id, c.limit_micros) for c in crossings} == {
        ("alerting", "alice", "2026-11", 10 * USD)
    }

    # a new window crosses again; so does another scope value
    december = at("2026-12-02T00:00:00")
    assert (await store.reserve("dec", charges, 60, december)).admitted
    assert (await store.reserve("bob", [Charge.of(b, "bob", USD)], 60, T0)).admitted
    dec = await store.settle("dec", 6 * USD, december)
    bob = await store.settle("bob", 6 * USD, T0)
    assert [(c.window_id, c.scope_value, c.threshold_percent) for c in dec.crossings] == [
        ("2026-12", "alice", 50)
    ]
    assert [(c.window_id, c.scope_value, c.threshold_percent) for c in bob.crossings] == [
        ("2026-11", "bob", 50)
    ]


async def test_rolling_window_alerts_rearm_after_a_duration(store: BudgetStore) -> None:
    b = budget("hourly", 10, window=RollingWindow(HOUR, 60), thresholds=(50,))
    amounts = [(T0, 6), (T0 + 10, 1), (T0 + 3700, 6)]
    fired = []
    for i, (now, usd) in enumerate(amounts):
        assert (await store.reserve(f"r{i}", [Charge.of(b, "alice", usd * USD)], 60, now)).admitted
        fired.append(
            [c.threshold_percent for c in (await store.settle(f"r{i}", usd * USD, now)).crossings]
        )
    assert fired == [[50], [], [50]]


async def test_rolling_window_spend_ages_out(store: BudgetStore) -> None:
    b = budget("daily", 10, window=RollingWindow(86_400, HOUR))
    start = 1_000 * 86_400 + 1800.0  # half way through a bucket
    assert (await store.reserve("r1", [Charge.of(b, "alice", 8 * USD)], 60, start)).admitted
    await store.settle("r1", 8 * USD, start)
    later = start + 5 * HOUR
    assert not (await store.reserve("r2", [Charge.of(b, "alice", 5 * USD)], 60, later)).admitted
    retry = await store.retry_after(b, "alice", 5 * USD, later)
    assert retry == pytest.approx(24 * HOUR - 5 * HOUR - 1800)  # the bucket's end + 24 h
    assert await store.retry_after(b, "alice", 11 * USD, later) is None
    assert await store.retry_after(b, "alice", USD, later) == 0.0
    assert not (
        await store.reserve("r2", [Charge.of(b, "alice", 5 * USD)], 60, later + retry - 1)
    ).admitted
    result = await store.reserve("r2", [Charge.of(b, "alice", 5 * USD)], 60, later + retry)
    assert result.admitted and result.budgets[0].spent_micros == 0


async def test_a_request_longer_than_its_rolling_window_still_counts(store: BudgetStore) -> None:
    """A rolling charge is settled into the bucket of its settle. Before, it went to the bucket
    of its reserve: a request that ran longer than the window settled into a bucket already out
    of it, and its spend never counted (the next reserve deleted it as stale)."""
    b = budget("short", 10, window=RollingWindow(HOUR, 60))
    assert (await store.reserve("long", [Charge.of(b, "alice", 8 * USD)], 60, T0)).admitted
    end = T0 + 2 * HOUR  # the stream ran two hours: a checkpoint kept its lease alive
    assert (await store.settle("long", 8 * USD, end)).changed
    assert await spent_held(store, b, end) == (8 * USD, 0)
    refused = await store.reserve("next", [Charge.of(b, "alice", 5 * USD)], 60, end + 1)
    assert not refused.admitted and refused.budgets[0].spent_micros == 8 * USD
    assert await spent_held(store, b, end + HOUR - 60) == (8 * USD, 0)  # a whole window on
    assert await spent_held(store, b, end + HOUR) == (0, 0)


async def test_a_reaped_long_request_counts_where_the_reaper_charged_it(
    store: BudgetStore,
) -> None:
    """The reaper charges a rolling counter in the bucket of the reap; the sidecar's late settle
    corrects that very bucket to the real cost."""
    b = budget("short", 10, window=RollingWindow(HOUR, 60))
    assert (await store.reserve("lost", [Charge.of(b, "alice", 6 * USD)], 60, T0)).admitted
    reaped = T0 + 2 * HOUR
    assert [r.request_id for r in (await store.reap(reaped)).reaped] == ["lost"]
    assert await spent_held(store, b, reaped) == (6 * USD, 0)
    assert (await store.settle("lost", 2 * USD, reaped + 120)).changed
    assert await spent_held(store, b, reaped + 120) == (2 * USD, 0)
    assert await spent_held(store, b, reaped + HOUR) == (0, 0)  # aged out from the reap's bucket


async def test_calendar_retry_after_is_the_reset(store: BudgetStore) -> None:
    b = budget("monthly", 10)
    await store.reserve("r1", [Charge.of(b, "alice", 9 * USD)], 60, T0)
    await store.settle("r1", 9 * USD, T0)
    assert await store.retry_after(b, "alice", 2 * USD, T0) == at("2026-12-01T00:00:00") - T0
    assert await store.retry_after(b, "alice", 11 * USD, T0) is None


@pytest.mark.parametrize("pipelined", [False, True])
async def test_redis_failures_raise_budget_store_error(pipelined: bool) -> None:
    client = Redis(host="127.0.0.1", port=free_port(), retry=Retry(NoBackoff(), 0))
    store = BudgetStore(client, "down", pipe=ScriptPipe.for_client(client) if pipelined else None)
    b = budget("b", 10)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.reserve("r1", [Charge.of(b, "alice", 1)], 60, T0),
        lambda: store.settle("r1", 1, T0),
        lambda: store.release("r1"),
        lambda: store.checkpoint("r1", 1, 60, T0),
        lambda: store.reap(T0),
        lambda: store.status(b, "alice", T0),
    ]
    try:
        for call in calls:
            with pytest.raises(BudgetStoreError, match="ConnectionError"):
                await call()
    finally:
        await store.aclose()
        await client.aclose()


def test_prefix_and_tag_must_not_contain_braces() -> None:
    client = Redis()
    with pytest.raises(ValueError, match="prefix"):
        BudgetStore(client, "a{b}")
    with pytest.raises(ValueError, match="hash_tag"):
        BudgetStore(client, "ok", hash_tag="")


async def test_scripts_reload_after_script_flush(store: BudgetStore) -> None:
    """EVALSHA falls back to loading the script when a node lost it (restart, failover)."""
    await store._client.script_flush()
    b = budget("b", 10)
    assert (await store.reserve("r1", [Charge.of(b, "alice", USD)], 60, T0)).admitted
    await store._client.script_flush()
    assert (await store.settle("r1", USD, T0)).changed


async def test_zero_amounts(store: BudgetStore) -> None:
    """A free request (estimate 0) reserves, settles and releases: Lua's -0 is never sent."""
    b = budget("b", 10, window=RollingWindow(86_400, HOUR))
    for request_id in ("settled", "released", "reaped"):
        assert (await store.reserve(request_id, [Charge.of(b, "alice", 0)], 30, T0)).admitted
    assert (await store.settle("settled", 0, T0)).changed
    assert (await store.release("released")).changed
    assert [r.request_id for r in (await store.reap(T0 + 60)).reaped] == ["reaped"]
    assert await spent_held(store, b) == (0, 0)
