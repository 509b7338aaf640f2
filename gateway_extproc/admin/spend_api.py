"""GetSpend: the request's days, groups and filters, answered from the daily rollups."""

from __future__ import annotations

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend import query
from gateway_extproc.spend.query import DayRange, Dimension, SpendRow


def day_range(request: pb.GetSpendRequest, store: BudgetStore, now: float) -> DayRange:
    """The days a request covers (default: this month). Raises query.QueryError."""
    settings = store.rollups
    zone = settings.zone
    period = request.WhichOneof("period")
    if period == "dates":
        days = query.date_range(request.dates.since, request.dates.until)
    elif period == "time":
        since, until = request.time.since, request.time.until
        days = query.time_range(
            since.seconds + since.nanos / 1e9,
            until.seconds + until.nanos / 1e9,
            zone,
            settings.timezone,
        )
    else:
        name, timezone = "month", ""
        if period == "window":
            name, timezone = request.window.name, request.window.timezone
        if timezone not in ("", settings.timezone):
            raise query.QueryError(
                f"spend is kept per day in {settings.timezone}: a window in {timezone} would "
                f"cut days in two; ask in {settings.timezone} or give dates"
            )
        days = query.window_range(name, zone, now)
    query.check_retention(days, zone, now, settings.retention_days)
    return days


def _row(row: SpendRow) -> pb.SpendRow:
    t = row.totals
    return pb.SpendRow(
        key=list(row.key),
        requests=t["requests"],
        tokens=pb.Tokens(
            input=t["input_tokens"],
            cached_input=t["cached_input_tokens"],
            cache_write=t["cache_write_input_tokens"],
            cache_write_1h=t["cache_write_1h_input_tokens"],
            output=t["output_tokens"],
            reasoning=t["reasoning_tokens"],
        ),
        cost_micros=t["cost_micros"],
        estimated_cost_micros=t["estimated_cost_micros"],
        reported_cost_micros=t["cost_micros"] - t["estimated_cost_micros"],
        cache_hits=t["cache_hits"],
        cache_saved_micros=t["cache_saved_micros"],
        refused=pb.Refusals(
            guardrail=t["refused_guardrail"],
            rate_limit=t["refused_rate_limit"],
            budget=t["refused_budget"],
            policy=t["refused_policy"],
        ),
    )


async def get_spend(
    request: pb.GetSpendRequest, store: BudgetStore, now: float
) -> pb.GetSpendResponse:
    """Raises query.QueryError (bad request), query.RetentionError, BudgetStoreError."""
    group_by = [query.parse_dimension(d) for d in request.group_by]
    if len(set(group_by)) != len(group_by):
        raise query.QueryError("group_by names a dimension twice")
    filters: list[tuple[Dimension, str]] = []
    for f in request.filters:
        dim = query.parse_dimension(f.dimension)
        if dim.kind == "day":
            raise query.QueryError("filter on day: give a range instead")
        filters.append((dim, f.value))
    days = day_range(request, store, now)
    data = await read_days(store, days)
    rows = query.aggregate(data, group_by, filters)
    total = query.aggregate(data, [], filters)
    return pb.GetSpendResponse(
        group_by=[str(d) for d in group_by],
        first_day=days.first.isoformat(),
        last_day=days.last.isoformat(),
        timezone=store.rollups.timezone,
        rows=[_row(r) for r in rows],
        total=_row(total[0]) if total else pb.SpendRow(tokens=pb.Tokens(), refused=pb.Refusals()),
    )
