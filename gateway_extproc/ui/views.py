"""The spend page's views as values: a query string in, GetSpend requests, links, drill-downs,
forecasts and CSV out. Pure (no Redis, no clock: `now` is passed).

A view is its query string, so every view is a link:

    /ui/?by=model&window=week&user=alice@example.com&group=eng
    /ui/?by=user&since=2026-11-01&until=2026-12-01&attribute:cost_center=cc-7
    /ui/spend.csv?<the same query>

`by` is the dimension rows are grouped by (GetSpend's names: user, group, service,
static_token, model, provider, day, attribute:NAME); `window` (day, week, month) or
`since`/`until` (dates, until exclusive) the days; every other parameter named after a dimension
is a filter (repeat it for alternatives). The numbers come from GetSpend itself
(`admin/spend_api.get_spend`), never from a second aggregation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.output import SPEND_COLUMNS, render, spend_records
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.identity.model import IdentityConfig
from gateway_extproc.spend.query import KINDS, WINDOWS, QueryError, parse_dimension

RESERVED = ("by", "window", "since", "until")
# Drill-down: a clicked row's value becomes a filter and the next dimension not yet filtered
# groups the rows.
DRILL_ORDER = ("group", "user", "service", "static_token", "model", "provider")
MAX_FILTERS = 50
# SpendRow fields the page knows; any other integer field (h-rollups: cache hits, savings,
# refusals by kind) is shown and exported as it is, named after the field.
_KNOWN = {"key", "requests", "tokens", "cost_micros", "estimated_cost_micros"}
_KNOWN |= {"reported_cost_micros"}


@dataclasses.dataclass(frozen=True)
class SpendQuery:
    by: str = "user"
    window: str | None = "month"
    since: str | None = None
    until: str | None = None
    filters: tuple[tuple[str, str], ...] = ()

    def params(self) -> list[tuple[str, str]]:
        out = [("by", self.by)]
        if self.since is not None and self.until is not None:
            out += [("since", self.since), ("until", self.until)]
        elif self.window is not None:
            out.append(("window", self.window))
        return out + list(self.filters)

    def link(self, path: str = "/ui/") -> str:
        return f"{path}?{urlencode(self.params())}"

    def without(self, dim: str, value: str) -> SpendQuery:
        return dataclasses.replace(
            self, filters=tuple(f for f in self.filters if f != (dim, value))
        )


def parse_query(params: Iterable[tuple[str, str]]) -> SpendQuery:
    """Raises QueryError naming the parameter at fault."""
    by, window, since, until = "user", None, None, None
    filters: list[tuple[str, str]] = []
    for key, value in params:
        if key == "by":
            by = str(parse_dimension(value))
        elif key == "window":
            if value not in WINDOWS:
                raise QueryError(f"window: use one of {', '.join(WINDOWS)} (got {value!r})")
            window = value
        elif key in ("since", "until"):
            if value == "":  # the page's own form sends its empty date fields
                continue
            try:
                dt.date.fromisoformat(value)
            except ValueError:
                raise QueryError(f"{key}: a date YYYY-MM-DD (got {value!r})") from None
            since, until = (value, until) if key == "since" else (since, value)
        else:
            dim = parse_dimension(key)
            if dim.kind == "day":
                raise QueryError("day: give since and until instead")
            if (str(dim), value) not in filters:
                filters.append((str(dim), value))
    if (since is None) != (until is None):
        raise QueryError("since and until go together (until is exclusive)")
    if len(filters) > MAX_FILTERS:
        raise QueryError(f"at most {MAX_FILTERS} filters")
    if since is None and window is None:
        window = "month"
    return SpendQuery(by, None if since else window, since, until, tuple(filters))


def attribute_names(identity: IdentityConfig) -> list[str]:
    """The verified attributes requests can carry under this identity configuration: the names
    of every issuer's claim mapping (`claims.attributes`) and every static token's attributes.
    (The client metadata header's attributes are unverified and never reach the rollups.)"""
    names = {name for issuer in identity.issuers for name in issuer.claims.attributes}
    names |= {name for token in identity.static_tokens for name in token.attributes}
    return sorted(names)


def dimensions(attributes: Iterable[str], by: str) -> list[str]:
    """The "Group by" menu: GetSpend's dimensions, `attribute:NAME` for each attribute the
    configuration can produce, then day; the view's own `by` too when only its link names it
    (an attribute a past configuration produced), so the form keeps it."""
    out = [k for k in KINDS if k != "day"] + [f"attribute:{name}" for name in attributes]
    if by not in out and by != "day":
        out.append(by)
    return [*out, "day"]


def held_to(query: SpendQuery, own: tuple[str, str] | None) -> SpendQuery:
    """The query an own-view caller may run: filters on their principal's dimension replaced
    by their own value (never widened by a parameter)."""
    if own is None:
        return query
    dim, value = own
    kept = tuple(f for f in query.filters if f[0] != dim)
    return dataclasses.replace(query, filters=((dim, value), *kept))


def request(query: SpendQuery, group_by: Sequence[str] | None = None) -> pb.GetSpendRequest:
    out = pb.GetSpendRequest(group_by=list(group_by if group_by is not None else [query.by]))
    for dim, value in query.filters:
        out.filters.add(dimension=dim, value=value)
    if query.since is not None and query.until is not None:
        out.dates.since, out.dates.until = query.since, query.until
    else:
        out.window.name = query.window or "month"
    return out


def drill(query: SpendQuery, value: str) -> SpendQuery | None:
    """The view a click on the row `value` of `query` opens, or None (nothing further)."""
    if query.by == "day":
        day = dt.date.fromisoformat(value)
        since, until = day.isoformat(), (day + dt.timedelta(days=1)).isoformat()
        return dataclasses.replace(query, by="model", window=None, since=since, until=until)
    filters = (*(f for f in query.filters if f[0] != query.by), (query.by, value))
    taken = {d for d, _ in filters}
    following = [d for d in DRILL_ORDER if d not in taken]
    if query.by in DRILL_ORDER:
        after = DRILL_ORDER[DRILL_ORDER.index(query.by) + 1 :]
        following = [d for d in after if d not in taken] or following
    if not following:
        return None
    return dataclasses.replace(query, by=following[0], filters=filters)


def forecast(spent_micros: int, start: float, end: float, now: float) -> int | None:
    """Spend at the window's end if it goes on at the window's pace so far: linear on the
    elapsed fraction (spent x length / elapsed), in whole micro-dollars. None for a window
    without an end (rolling) or one not yet begun."""
    if end <= start or now <= start:
        return None
    if now >= end:
        return spent_micros
    return spent_micros * int((end - start) * 1000) // int((now - start) * 1000)


# -- rows and CSV ------------------------------------------------------------------------------


def extra_fields(row: Any, prefix: str = "") -> list[tuple[str, int]]:
    """Integer fields of a SpendRow the page has no column for (merged from other branches):
    name (nested messages flattened with `_`) and value."""
    out: list[tuple[str, int]] = []
    for field in row.DESCRIPTOR.fields:
        if not prefix and field.name in _KNOWN:
            continue
        value = getattr(row, field.name)
        name = f"{prefix}{field.name}"
        if field.message_type is not None and not field.is_repeated:
            out += extra_fields(value, f"{name}_")
        elif isinstance(value, int) and not isinstance(value, bool):
            out.append((name, value))
    return out


def label(name: str) -> str:
    return name.removesuffix("_micros").replace("_", " ")


def cell(name: str, value: int) -> str:
    return f"${format_usd(value)}" if name.endswith("_micros") else f"{value:,}"


def spend_csv(response: pb.GetSpendResponse) -> str:
    """The CSV of a view: `gatewayctl spend --format csv`'s columns (one per dimension, then
    SPEND_COLUMNS), then any further totals the rollups carry (USD for micro-dollar fields)."""
    records = spend_records(response)
    extras: list[str] = []
    for record, row in zip(records, response.rows, strict=True):
        for name, value in extra_fields(row):
            usd = name.endswith("_micros")
            column = name.removesuffix("_micros") + "_usd" if usd else name
            if column in SPEND_COLUMNS:  # gatewayctl's columns already carry it
                continue
            record[column] = format_usd(value) if usd else value
            if column not in extras:
                extras.append(column)
    columns = [*response.group_by, *SPEND_COLUMNS, *extras]
    return render(records, columns, "csv") + "\n"


def budgets_csv(records: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    return render(records, columns, "csv") + "\n"
