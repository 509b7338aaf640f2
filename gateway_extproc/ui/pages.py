"""What each view shows, gathered from the functions the admin API answers with: GetSpend's
(`admin/spend_api.get_spend`) and GetBudgetStatus's (`admin/budget_api.status`). No second
aggregation: the page's numbers are the admin API's numbers."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

from gateway_extproc.admin import budget_api, spend_api
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.output import BUDGET_COLUMNS, budget_record
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.overrides import Overrides
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.spend.query import NONE
from gateway_extproc.ui import views
from gateway_extproc.ui.access import Viewer, own_scope_values
from gateway_extproc.ui.views import SpendQuery

BUDGET_CSV_COLUMNS = (*BUDGET_COLUMNS, "forecast_usd")
TOP_SPENDERS = 10


@dataclasses.dataclass(frozen=True)
class Row:
    value: str  # the group-by value ("" when the requests had none)
    link: str | None  # the drill-down view
    requests: int
    cells: list[str]  # input, output, cost, estimated, then the extras


def _cells(row: pb.SpendRow, extras: Sequence[str]) -> list[str]:
    found = dict(views.extra_fields(row))
    fixed = [
        f"{row.tokens.input:,}",
        f"{row.tokens.output:,}",
        f"${format_usd(row.cost_micros)}",
        f"${format_usd(row.estimated_cost_micros)}",
    ]
    return fixed + [views.cell(name, found.get(name, 0)) for name in extras]


def _extras(response: pb.GetSpendResponse) -> list[str]:
    names: list[str] = []
    for row in (*response.rows, response.total):
        for name, value in views.extra_fields(row):
            if value and name not in names:
                names.append(name)
    return names


async def spend(
    store: BudgetStore, query: SpendQuery, viewer: Viewer, now: float
) -> tuple[SpendQuery, pb.GetSpendResponse]:
    """The view's query as this viewer may run it, and GetSpend's answer to it."""
    held = views.held_to(query, viewer.own_filter)
    return held, await spend_api.get_spend(views.request(held), store, now)


async def spend_context(
    store: BudgetStore,
    query: SpendQuery,
    viewer: Viewer,
    now: float,
    attributes: Sequence[str] = (),
) -> dict[str, Any]:
    """The spend view's values; `attributes` the verified attribute names the configuration
    can produce (views.attribute_names), offered in the "Group by" menu."""
    held, response = await spend(store, query, viewer, now)
    per_day = await spend_api.get_spend(views.request(held, ["day"]), store, now)
    extras = _extras(response)
    rows = []
    for r in response.rows:
        value = r.key[0] if r.key else NONE
        target = views.drill(held, value) if value != NONE else None
        rows.append(Row(value, target.link() if target else None, r.requests, _cells(r, extras)))
    top: list[Row] = []
    if viewer.admin and held.by != "user":
        users = await spend_api.get_spend(views.request(held, ["user"]), store, now)
        for r in users.rows[:TOP_SPENDERS]:
            link = dataclasses.replace(held, filters=(*held.filters, ("user", r.key[0])))
            top.append(Row(r.key[0], link.link() if r.key[0] else None, r.requests, _cells(r, [])))
    by_day = {r.key[0]: r.cost_micros for r in per_day.rows}
    first = dt.date.fromisoformat(response.first_day)
    last = dt.date.fromisoformat(response.last_day)
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    own = viewer.own_filter
    return {
        "query": held,
        "response": response,
        "rows": rows,
        "total": _cells(response.total, extras),
        "extras": [views.label(e) for e in extras],
        "top": top,
        "chart": {
            "days": [d.isoformat() for d in days],
            "cost_micros": [by_day.get(d.isoformat(), 0) for d in days],
        },
        "dimensions": views.dimensions(attributes, held.by),
        "filters": [
            (dim, value, held.without(dim, value).link())
            for dim, value in held.filters
            if (dim, value) != own
        ],
        "csv_link": held.link("/ui/spend.csv"),
    }


async def budget_records(
    overrides: Overrides, budgets: Sequence[BudgetConfig], viewer: Viewer, now: float
) -> list[dict[str, Any]]:
    """Each budget and scope value the viewer may see, as GetBudgetStatus reports it, with
    its forecast to the window's end (views.forecast)."""
    out: list[dict[str, Any]] = []
    for budget in budgets:
        if viewer.admin:
            values = await budget_api.scope_values(overrides, budget, now)
        else:
            values = own_scope_values(budget, viewer.identity)
        for value in values:
            status = await budget_api.status(overrides, budget, value, now)
            record = budget_record(status)
            projected = None
            if status.HasField("resets_at"):
                start = float(status.window_start.seconds)
                end = float(status.resets_at.seconds)
                projected = views.forecast(status.spent_micros, start, end, now)
            record["forecast_usd"] = "" if projected is None else format_usd(projected)
            record["over"] = projected is not None and projected > status.limit_micros
            out.append(record)
    return out
