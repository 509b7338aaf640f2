"""Reads the daily spend rollups from the budget store's Redis (one pipelined HGETALL per day)."""

from __future__ import annotations

import datetime as dt

from gateway_extproc.budgets.scripts import decoded, redis_errors
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend.query import DayRange
from gateway_extproc.spend.rollup import day_key


async def read_days(store: BudgetStore, days: DayRange) -> dict[dt.date, dict[str, str]]:
    wanted = days.days()
    with redis_errors("spend"):
        async with store.client.pipeline(transaction=False) as pipe:
            for day in wanted:
                pipe.hgetall(day_key(store.key_base, day))
            replies = await pipe.execute()
    return {day: decoded(reply) for day, reply in zip(wanted, replies, strict=True)}
