"""Rollups owed to Redis survive a restart: a worker that stops with a rollup-only settle still
retrying, or fail-open spend not yet reconciled, journals the rollup with it; the next run
replays it into Redis exactly once (a real redis-server; the first run's Redis is a dead port)."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.journal import Journal
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.results import Charge
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend import query
from gateway_extproc.spend.outcome import Outcome
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
from tests.redis_servers import RedisEndpoint, free_port, redis_standalone_server  # noqa: F401

BUDGET = BudgetConfig(
    name="team",
    scope=Scope(ScopeKind.GROUP),
    limit_micros=10_000_000,
    window=CalendarWindow(Period.MONTH),
    action=Action.BLOCK,
)


def store_at(port: int, tag: str) -> BudgetStore:
    client = Redis(port=port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    return BudgetStore(client, prefix=f"t{tag}", hash_tag=tag)


async def test_rollups_owed_at_shutdown_are_replayed(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> None:
    now = time.time()
    tag = uuid.uuid4().hex[:8]
    journal_path = tmp_path / "journal.jsonl"
    dims = Dimensions(user="ann", groups=("eng",), model="gpt-4o", provider="openai")
    alone = UsageRecord(now, dims, Usage(input_tokens=3), 700, estimated=False)
    failed_open = UsageRecord(now, dims, Usage(output_tokens=5), 300, estimated=True)

    dead = store_at(free_port(), tag)  # the first run never reaches Redis
    first = BudgetServices(dead, GateSettings(), journal=Journal(journal_path))
    first.configure(GateSettings(), [BUDGET], webhooks=False)
    first.settle("req-1", None, alone, reserved=False)
    first.owe_fail_open("req-2", (Charge.of(BUDGET, "eng", 300),), 300, now, failed_open)
    hit = UsageRecord.answered(now, dims, Outcome.CACHE_HIT, saved_micros=70)
    first.roll_up_answered("req-3:answered", hit)
    first.roll_up_answered(
        "req-4:answered", UsageRecord.answered(now, dims, Outcome.REFUSED_BUDGET)
    )
    await first.close(grace_s=0.3)

    live = store_at(redis_standalone_server.port, tag)
    second = BudgetServices(live, GateSettings(), journal=Journal(journal_path))
    second.configure(GateSettings(), [BUDGET], webhooks=False)
    await second.start()
    await second.drain()
    assert await second.reconcile() == 1
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = await read_days(live, query.DayRange(today, today))
    [row] = query.aggregate(days, [])
    assert row.totals["requests"] == 2
    assert row.totals["cost_micros"] == 1000 and row.totals["estimated_cost_micros"] == 300
    assert row.totals["input_tokens"] == 3 and row.totals["output_tokens"] == 5
    assert (row.totals["cache_hits"], row.totals["cache_saved_micros"]) == (1, 70)
    assert row.totals["refused_budget"] == 1
    assert (await live.status(BUDGET, "eng", now)).spent_micros == 300
    await second.close()
    await dead.client.aclose()
    await live.client.aclose()
    after = Journal(journal_path)
    assert after.outstanding() == []  # everything owed was marked done
    after.close()
