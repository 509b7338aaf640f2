"""The reconciliation schedule, run by sidecar worker 0 of every pod, off the request path.

Every `TICK_S` a worker looks at the UTC clock: once it is past `reconcile.schedule` on a date,
that date's run is due - yesterday, and the `rerun_days` days before it (providers revise their
reports), for every configured provider. Across all pods one worker runs it: the one whose
`SET NX` takes the date's hold in Redis (store.claim_run). A run that reconciled every provider
and day marks the date done; one that failed (a report unreadable, Redis away) logs why - never
an admin key - and keeps the hold until it expires, so the next tick after `RETRY_S` (on any pod)
runs it again, whole (runs are idempotent per provider and day).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway_extproc.admin.recon_runner import SCHEDULE, ReconcileContext, Reconciler
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.budgets.scripts import redis_errors
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.reconcile import store as recon_store

log = logging.getLogger("gateway.reconcile")

TICK_S = 60.0
RETRY_S = 600.0  # a failed run is retried this long after it started
DONE_KEEP_S = 3 * 86_400  # a done marker outlives its date


class _Gate(Protocol):
    @property
    def store(self) -> BudgetStore | None: ...


class ScheduleContext(ReconcileContext, Protocol):
    @property
    def budgets(self) -> _Gate: ...


def due(now: float, at: dt.time) -> dt.date | None:
    """The UTC date whose run is due at `now` (None before the day's schedule)."""
    moment = dt.datetime.fromtimestamp(now, dt.UTC)
    return moment.date() if moment.time() >= at else None


def days_of(date: dt.date, rerun_days: int) -> list[dt.date]:
    """The days a run on `date` reconciles: yesterday first, then the `rerun_days` before it."""
    return [date - dt.timedelta(days=1 + i) for i in range(rerun_days + 1)]


async def tick(
    ctx: ScheduleContext, reconciler: Reconciler, now: float, retry_s: float = RETRY_S
) -> str:
    """One look at the clock: "idle" (not configured, not due, or done), "held" (another
    worker runs it), "done" or "failed"."""
    settings = ctx.config.reconcile
    store = ctx.budgets.store
    date = due(now, settings.schedule)
    if not settings.enabled or store is None or date is None:
        return "idle"
    with redis_errors("reconcile schedule"):
        if await recon_store.is_done(store.client, store.key_base, date):
            return "idle"
        if not await recon_store.claim_run(store.client, store.key_base, date, int(retry_s * 1000)):
            return "held"
    failures = 0
    for day in days_of(date, settings.rerun_days):
        for provider in [p.provider for p in settings.providers]:
            try:
                await reconciler.run(ctx, store, [provider], day, SCHEDULE)
            except Exception as exc:  # logged, retried on a later tick
                failures += 1
                log.error(
                    "scheduled reconciliation of %s %s failed (retried in %.0f s): %s",
                    provider,
                    day,
                    retry_s,
                    exc,
                )
    if failures:
        return "failed"
    with redis_errors("reconcile schedule"):
        await recon_store.run_done(store.client, store.key_base, date, DONE_KEEP_S * 1000)
    log.info("scheduled reconciliation of %s done", date)
    return "done"


async def run_forever(
    context: Callable[[], ScheduleContext],
    reconciler: Reconciler,
    clock: Callable[[], float] = time.time,
    tick_s: float = TICK_S,
) -> None:
    """Tick until cancelled; the running configuration is read on every tick (reloads apply)."""
    while True:
        try:
            await tick(context(), reconciler, clock())
        except BudgetStoreError as exc:
            log.error("reconciliation schedule: %s; trying again next tick", exc)
        except Exception:
            log.exception("reconciliation schedule: unexpected error; trying again next tick")
        await asyncio.sleep(tick_s)
