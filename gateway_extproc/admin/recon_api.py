"""GetReconciliation and RunReconciliation: requests read, results as messages. Pure but for
the calls into recon_runner (stored results, a run now)."""

from __future__ import annotations

import datetime as dt

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.budget_api import ts
from gateway_extproc.admin.recon_runner import (
    ADMIN,
    ReconcileContext,
    ReconcileError,
    Reconciler,
    chosen_providers,
    stored,
)
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.reconcile.compare import Comparison
from gateway_extproc.reconcile.results import DayResult
from gateway_extproc.reconcile.rows import Tokens
from gateway_extproc.reconcile.settings import ReconcileSettings
from gateway_extproc.spend import query
from gateway_extproc.spend.query import DayRange, QueryError


def _tokens(t: Tokens) -> pb.Tokens:
    return pb.Tokens(
        input=t.input,
        cached_input=t.cached_input,
        cache_write=t.cache_write,
        cache_write_1h=t.cache_write_1h,
        output=t.output,
    )


def row_pb(c: Comparison) -> pb.ReconciliationRow:
    g, p, e = c.gateway, c.reported, c.explained
    return pb.ReconciliationRow(
        model=c.model,
        gateway_tokens=_tokens(g.tokens),
        provider_tokens=_tokens(p.tokens),
        outside_tokens=_tokens(p.outside_tokens),
        gateway_requests=g.requests,
        provider_requests=-1 if p.requests is None else p.requests,
        gateway_cost_micros=g.cost_micros,
        estimated_cost_micros=g.estimated_cost_micros,
        provider_cost_micros=p.cost_micros,
        outside_cost_micros=p.outside_cost_micros,
        difference_micros=c.difference_micros,
        capture_rate=c.capture_rate or "",
        explained_outside_micros=e.outside,
        explained_estimates_micros=e.estimates,
        explained_rounding_micros=e.rounding,
        unexplained_micros=e.unexplained,
    )


def day_pb(result: DayResult) -> pb.ReconciliationDay:
    return pb.ReconciliationDay(
        provider=result.provider,
        day=result.day.isoformat(),
        reconciled_at=ts(result.reconciled_at),
        rows=[row_pb(c) for c in result.comparisons],
        total=row_pb(result.total),
    )


def parse_day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise QueryError(f"day must be YYYY-MM-DD (got {text!r})") from None


def yesterday(now: float) -> dt.date:
    return dt.datetime.fromtimestamp(now, dt.UTC).date() - dt.timedelta(days=1)


def _check(days: DayRange, store: BudgetStore, now: float) -> None:
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    if days.last > today:
        raise QueryError(f"{days.last} is in the future (UTC today is {today})")
    query.check_retention(days, dt.UTC, now, store.rollups.retention_days)


def request_days(request: pb.GetReconciliationRequest, store: BudgetStore, now: float) -> DayRange:
    """The request's UTC days (default: yesterday). Raises QueryError / RetentionError."""
    period = request.WhichOneof("period")
    if period == "dates":
        days = query.date_range(request.dates.since, request.dates.until)
    elif period == "day":
        day = parse_day(request.day)
        days = DayRange(day, day)
    else:
        day = yesterday(now)
        days = DayRange(day, day)
    _check(days, store, now)
    return days


async def reconciled(
    request: pb.GetReconciliationRequest,
    settings: ReconcileSettings,
    store: BudgetStore,
    now: float,
) -> tuple[list[DayResult], list[tuple[str, dt.date]]]:
    """The stored results a GetReconciliation request asks for, and the (provider, day) pairs
    never reconciled: what GetReconciliation answers and the spend page shows. Raises
    AdminError, QueryError, BudgetStoreError."""
    providers = chosen_providers(settings, list(request.providers))
    return await stored(store, providers, request_days(request, store, now))


async def get_reconciliation(
    request: pb.GetReconciliationRequest,
    ctx: ReconcileContext,
    store: BudgetStore,
    now: float,
) -> pb.GetReconciliationResponse:
    results, missing = await reconciled(request, ctx.config.reconcile, store, now)
    return pb.GetReconciliationResponse(
        days=[day_pb(r) for r in results],
        missing=[f"{p} {d.isoformat()}" for p, d in missing],
    )


async def run_reconciliation(
    request: pb.RunReconciliationRequest,
    ctx: ReconcileContext,
    reconciler: Reconciler,
    store: BudgetStore,
    now: float,
) -> pb.RunReconciliationResponse:
    """Raises ReconcileError, AdminError, QueryError, BudgetStoreError."""
    providers = chosen_providers(ctx.config.reconcile, list(request.providers))
    day = parse_day(request.day) if request.day else yesterday(now)
    _check(DayRange(day, day), store, now)
    results = await reconciler.run(ctx, store, providers, day, ADMIN)
    return pb.RunReconciliationResponse(days=[day_pb(r) for r in results])


__all__ = ["ReconcileError", "get_reconciliation", "run_reconciliation"]
