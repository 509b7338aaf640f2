"""Spend that must reach Redis whatever happened to it (a real redis-server): a settle whose
reservation record Redis lost (a failover, AOF everysec) is charged as fail-open spend, once; a
settle of a record that was settled, released or reaped is not mistaken for a vanished one; and a
worker that stops charges its fail-open spend before exit when Redis answers."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.budgets.journal import Journal
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.owed import IfVanished
from gateway_extproc.budgets.results import Charge
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.store import BudgetStore
from tests.redis_servers import RedisEndpoint, free_port, redis_standalone_server  # noqa: F401

BUDGET = BudgetConfig(
    name="team",
    scope=Scope(ScopeKind.GROUP),
    limit_micros=10_000_000,
    window=CalendarWindow(Period.MONTH),
    action=Action.BLOCK,
)
ESTIMATE, COST = 2_000_000, 700_000


@pytest.fixture
async def store(
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[BudgetStore]:
    tag = uuid.uuid4().hex[:8]
    client = Redis(port=redis_standalone_server.port)
    yield BudgetStore(client, prefix=f"t{tag}", hash_tag=tag)
    await client.aclose()


def services_on(store: BudgetStore, journal: Journal | None = None) -> BudgetServices:
    services = BudgetServices(store, GateSettings(), journal=journal)
    services.configure(GateSettings(), [BUDGET], webhooks=False)
    return services


async def reserve(store: BudgetStore, rid: str, now: float) -> IfVanished:
    charges = (Charge.of(BUDGET, "eng", ESTIMATE),)
    assert (await store.reserve(rid, charges, 120, now)).admitted
    return IfVanished(charges, now)


async def lose_the_reserve(store: BudgetStore, rid: str, now: float) -> None:
    """What a failover that lost the reserve's write leaves: no record, no lease, no hold."""
    client = store.client
    counter, _ = store.counter_key(BUDGET, "eng", now)
    await client.delete(store.record_key(rid))
    await client.zrem(store.leases_key, rid)
    await client.hincrby(counter, "held", -ESTIMATE)


async def spent_held(store: BudgetStore, now: float) -> tuple[int, int]:
    status = await store.status(BUDGET, "eng", now)
    return status.spent_micros, status.held_micros


async def test_a_settle_whose_record_vanished_is_charged_once_as_fail_open_spend(
    store: BudgetStore, tmp_path: Path
) -> None:
    now = time.time()
    rid = f"req-{uuid.uuid4().hex[:8]}"
    if_vanished = await reserve(store, rid, now)
    await lose_the_reserve(store, rid, now)
    journal = Journal(tmp_path / "journal.jsonl")
    services = services_on(store, journal)
    services.settle(rid, COST, if_vanished=if_vanished)
    await services.drain()
    assert services.stats.vanished == 1
    # owed like fail-open spend: journaled at once, charged when reconciled
    assert [(e["op"], e["id"], e["cost"]) for e in journal.outstanding()] == [
        ("fail_open", rid, COST)
    ]
    assert await services.reconcile() == 1
    assert await spent_held(store, now) == (COST, 0)
    assert journal.outstanding() == []
    # the settle retried (a reply lost on the wire): charged once all the same
    services.settle(rid, COST, if_vanished=if_vanished)
    await services.drain()
    await services.reconcile()
    assert await spent_held(store, now) == (COST, 0)
    await services.close()


async def test_a_release_of_a_vanished_record_charges_nothing(store: BudgetStore) -> None:
    now = time.time()
    rid = f"req-{uuid.uuid4().hex[:8]}"
    if_vanished = await reserve(store, rid, now)
    await lose_the_reserve(store, rid, now)
    services = services_on(store)
    services.settle(rid, None, if_vanished=if_vanished)
    await services.drain()
    assert await services.reconcile() == 0
    assert await spent_held(store, now) == (0, 0)
    assert services.stats.vanished == 0
    await services.close()


@pytest.mark.parametrize("ending", ["settled", "released", "reaped"])
async def test_a_settle_of_an_ended_record_is_not_mistaken_for_a_vanished_one(
    store: BudgetStore, ending: str
) -> None:
    """Settled, released or reaped: the record is kept for its retention, so the settle (or
    its retry) finds it and charges nothing more than the real cost."""
    now = time.time()
    rid = f"req-{uuid.uuid4().hex[:8]}"
    if_vanished = await reserve(store, rid, now)
    expected = COST
    if ending == "settled":
        await store.settle(rid, COST, now)
    elif ending == "released":
        await store.release(rid)
        expected = 0
    else:
        assert [r.request_id for r in (await store.reap(now + 121)).reaped] == [rid]
    services = services_on(store)
    services.settle(rid, COST, if_vanished=if_vanished)
    await services.drain()
    assert services.stats.vanished == 0
    assert await services.reconcile() == 0
    assert await spent_held(store, now) == (expected, 0)
    await services.close()


async def test_close_charges_fail_open_spend_before_exit(
    store: BudgetStore, tmp_path: Path
) -> None:
    """The reap loop, which reconciled while it ran, is stopped before close(): close() itself
    charges what Redis now answers for, and the journal has nothing left for a successor."""
    now = time.time()
    journal = Journal(tmp_path / "journal.jsonl")
    services = services_on(store, journal)
    services.owe_fail_open("req-1", (Charge.of(BUDGET, "eng", COST),), COST, now)
    await services.close(grace_s=5)
    assert await spent_held(store, now) == (COST, 0)
    successor = Journal(tmp_path / "journal.jsonl")
    assert successor.outstanding() == []
    successor.close()


async def test_close_keeps_in_the_journal_what_redis_does_not_take_within_the_grace(
    tmp_path: Path,
) -> None:
    now = time.time()
    dead = Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = BudgetStore(dead, prefix="dead", hash_tag="dead")
    journal = Journal(tmp_path / "journal.jsonl")
    services = services_on(store, journal)
    services.owe_fail_open("req-1", (Charge.of(BUDGET, "eng", COST),), COST, now)
    started = time.monotonic()
    await services.close(grace_s=1)
    assert time.monotonic() - started < 3
    successor = Journal(tmp_path / "journal.jsonl")
    assert [e["id"] for e in successor.outstanding()] == ["req-1"]
    successor.close()
    await dead.aclose()
