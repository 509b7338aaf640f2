"""A labelled demo history for `make run` (`spend_page.demo_data: true`): 30 days of spend by a
few users, groups, a service and four models, up to yesterday, so the page has something to
show at once (today holds only real requests).

Written through the rollup path real requests take when no budget applies
(`BudgetStore.record_usage`, the `record` script: same hash, same fields, same TTL), never a
second format. Seeded once: only when the last 30 days of rollups are empty, under a marker
(`P:{T}:ui:demo`, SET NX) that lives as long as the seeded days do; while it is there the page
shows a "demo data" banner. Deterministic: the same history every time (a seeded generator).
"""

from __future__ import annotations

import datetime as dt
import logging
import random

from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.scripts import redis_errors
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend.query import DayRange
from gateway_extproc.spend.rollup import Dimensions, UsageRecord, day_of, day_start, expire_at_ms
from gateway_extproc.tokens import Usage

log = logging.getLogger("gateway.ui")

DAYS = 30
# (user, groups, cost center), and a CI service
PEOPLE = (
    ("ada@example.com", ("eng",), "cc-100"),
    ("grace@example.com", ("eng", "ml"), "cc-100"),
    ("linus@example.com", ("platform",), "cc-200"),
    ("margaret@example.com", ("ml",), "cc-300"),
)
SERVICE = ("ci-runner", ("platform",), "cc-200")
# model -> (provider, micro-dollars per 1,000 input tokens, per 1,000 output tokens): demo
# prices, round numbers near the public list prices
MODELS = {
    "gpt-4o": ("openai", 2_500, 10_000),
    "gpt-4o-mini": ("openai", 150, 600),
    "claude-haiku-4-5": ("anthropic", 1_000, 5_000),
    "claude-sonnet-4-5": ("anthropic", 3_000, 15_000),
}


def marker_key(store: BudgetStore) -> str:
    return f"{store.key_base}:ui:demo"


def history(today: dt.date, zone: dt.tzinfo, now: float) -> list[tuple[str, UsageRecord]]:
    """The demo requests (request id, rollup record) of the DAYS days before `today`, each at
    an instant before `now`. Pure and deterministic. Today is left to real traffic: the mock
    provider's usage reports hold only what it served, so `gatewayctl reconcile --day <today>`
    after a few requests compares like with like (past demo days reconcile against nothing)."""
    rng = random.Random(27)
    out: list[tuple[str, UsageRecord]] = []
    callers: list[tuple[tuple[str, tuple[str, ...], str], str | None]] = [(p, None) for p in PEOPLE]
    callers.append((SERVICE, SERVICE[0]))
    for back in range(DAYS, 0, -1):
        day = today - dt.timedelta(days=back)
        start = day_start(day, zone)
        weekday = day.weekday() < 5
        for (name, groups, cost_center), service in callers:
            for i in range(rng.randint(2, 6) if weekday else rng.randint(0, 2)):
                arrived = start + rng.randint(8 * 3600, 19 * 3600)
                if arrived >= now:
                    continue
                model = rng.choice(list(MODELS))
                provider, per_in, per_out = MODELS[model]
                tokens_in, tokens_out = rng.randint(200, 6000), rng.randint(50, 1500)
                cost = (tokens_in * per_in + tokens_out * per_out) // 1000
                dims = Dimensions(
                    user=None if service else name,
                    groups=tuple(sorted(groups)),
                    service=service,
                    model=model,
                    provider=provider,
                    attributes=(("cost_center", cost_center),),
                )
                usage = Usage(input_tokens=tokens_in, output_tokens=tokens_out)
                record = UsageRecord(arrived, dims, usage, cost, estimated=False)
                out.append((f"demo-{day.isoformat()}-{name}-{i}", record))
    return out


async def present(store: BudgetStore) -> bool:
    with redis_errors("demo marker"):
        return bool(await store.client.exists(marker_key(store)))


async def seed(store: BudgetStore, now: float) -> int:
    """Seed the demo history when the last DAYS days hold no spend and it was never seeded;
    returns the number of requests written (0: nothing done)."""
    zone = store.rollups.zone
    today = day_of(now, zone)
    days = DayRange(today - dt.timedelta(days=DAYS - 1), today)
    if any((await read_days(store, days)).values()):
        return 0  # real spend (or an earlier demo whose marker was removed): leave it
    expires_ms = expire_at_ms(today, store.rollups)
    with redis_errors("demo marker"):
        first = await store.client.set(marker_key(store), "1", nx=True, pxat=expires_ms)
    if not first:
        return 0
    records = history(today, zone, now)
    for request_id, record in records:
        await store.record_usage(request_id, record, now)
    log.warning(
        "seeded %d demo requests over %d days for the spend page (spend_page.demo_data)",
        len(records),
        DAYS,
    )
    return len(records)
