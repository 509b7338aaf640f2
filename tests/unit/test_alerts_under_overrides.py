"""Budget alert thresholds while an admin has raised the limit (an override or a top-up), on real
Redis (standalone and a 3-master cluster): they stay relative to the CONFIGURED limit
(docs/admin.md, "Overrides and top-ups"), each crossed once, and the crossing reports the
configured limit. An operator who raises a $10 budget to $40 for a launch still hears when $5 and
$10 are spent."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from gateway_extproc.budgets.model import Alerts
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.budgets.results import Charge
from gateway_extproc.budgets.store import BudgetStore
from tests.redis_servers import (  # noqa: F401 - session fixtures used via getfixturevalue
    RedisClusterNodes,
    RedisEndpoint,
    redis_cluster_servers,
    redis_standalone_server,
)
from tests.unit.test_spend_store import MONTHLY, T0, USD

WATCHED = dataclasses.replace(MONTHLY, name="watched", alerts=Alerts(thresholds_percent=(50, 100)))
assert WATCHED.limit_micros == 10 * USD


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
    store = BudgetStore(client, prefix=f"t{tag}", hash_tag=tag)
    await store.load_scripts()
    yield store
    await client.aclose()


async def raise_limit(store: BudgetStore, how: str) -> None:
    """Put $40 in force for alice this month: an override of $40, or a $30 top-up of the $10."""
    overrides = Overrides(store)
    if how == "override":
        await overrides.set(WATCHED, "alice", 40 * USD, T0 + 3600, "launch", "root", T0)
    else:
        assert await overrides.top_up(WATCHED, "alice", 30 * USD, T0) == 30 * USD
    state = await overrides.counter(WATCHED, "alice", T0)
    assert state.limit_micros(WATCHED) == 40 * USD


@pytest.mark.parametrize("how", ["override", "top-up"])
async def test_thresholds_stay_relative_to_the_configured_limit(
    store: BudgetStore, how: str
) -> None:
    await raise_limit(store, how)
    crossed = []
    for i, cost in enumerate([4 * USD, 2 * USD, 5 * USD, 10 * USD, 10 * USD]):
        reserved = await store.reserve(f"a{i}", [Charge.of(WATCHED, "alice", cost)], 60, T0)
        assert reserved.admitted  # up to $31 spent: within the $40 in force
        assert reserved.budgets[0].limit_micros == 40 * USD
        settled = await store.settle(f"a{i}", cost, T0 + 1)
        crossed.append([(c.threshold_percent, c.spent_micros) for c in settled.crossings])
        assert {c.limit_micros for c in settled.crossings} <= {10 * USD}
    # 50 % and 100 % of the configured $10 ($5, $10), once each; not of the $40 ($20, $40).
    assert crossed == [[], [(50, 6 * USD)], [(100, 11 * USD)], [], []]
