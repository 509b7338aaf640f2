"""Spend reports over the daily rollups: which days, grouped and filtered how. Pure.

A report reads whole days of the rollup timezone (`rollup.py`), so a range is a set of days: a
named window (today, this week - ISO, from Monday - or this month, up to and including today),
dates, or instants that fall on day boundaries. Rows are grouped by any dimensions and filtered
on any: filters on one dimension are alternatives (OR), filters on different ones must all hold.
A request in several groups counts in each of them when grouped by group (as budgets do).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

from gateway_extproc.spend.rollup import METRICS, Dimensions, day_of, day_start

KINDS = ("user", "group", "service", "static_token", "model", "provider", "day")
WINDOWS = ("day", "week", "month")
NONE = ""  # a dimension the request had no value for (shown as "-")


class QueryError(ValueError):
    """A report that cannot be answered as asked (the message names the problem)."""


class RetentionError(QueryError):
    """The range starts before the oldest day the rollups keep."""


class Dimension(NamedTuple):
    kind: str
    attribute: str | None = None

    def __str__(self) -> str:
        return f"attribute:{self.attribute}" if self.kind == "attribute" else self.kind


def parse_dimension(text: str) -> Dimension:
    if text.startswith("attribute:") and len(text) > len("attribute:"):
        return Dimension("attribute", text.removeprefix("attribute:"))
    if text in KINDS:
        return Dimension(text)
    raise QueryError(f"unknown dimension {text!r}: use one of {', '.join(KINDS)} or attribute:NAME")


def values_of(dim: Dimension, row: Dimensions, day: dt.date) -> list[str]:
    """The row's values for a dimension (several for group; [NONE] when it has none)."""
    if dim.kind == "group":
        return list(row.groups) or [NONE]
    if dim.kind == "day":
        return [day.isoformat()]
    if dim.kind == "attribute":
        value = dict(row.attributes).get(dim.attribute or "")
    else:
        value = getattr(row, dim.kind)
    return [value or NONE]


class DayRange(NamedTuple):
    first: dt.date
    last: dt.date  # inclusive

    def days(self) -> list[dt.date]:
        count = (self.last - self.first).days + 1
        return [self.first + dt.timedelta(days=i) for i in range(count)]


def window_range(name: str, zone: dt.tzinfo, now: float) -> DayRange:
    today = day_of(now, zone)
    if name == "day":
        return DayRange(today, today)
    if name == "week":
        return DayRange(today - dt.timedelta(days=today.weekday()), today)
    if name == "month":
        return DayRange(today.replace(day=1), today)
    raise QueryError(f"unknown window {name!r}: use one of {', '.join(WINDOWS)}")


def date_range(since: str, until: str) -> DayRange:
    """Dates YYYY-MM-DD; `until` is exclusive."""
    try:
        first, end = dt.date.fromisoformat(since), dt.date.fromisoformat(until)
    except ValueError as exc:
        raise QueryError(f"dates must be YYYY-MM-DD (got {since!r}, {until!r})") from exc
    if end <= first:
        raise QueryError(f"inverted range: until {until} is not after since {since}")
    return DayRange(first, end - dt.timedelta(days=1))


def time_range(since: float, until: float, zone: dt.tzinfo, zone_name: str) -> DayRange:
    """Instants on day boundaries of the rollup timezone; `until` is exclusive."""
    if until <= since:
        raise QueryError("inverted range: until is not after since")
    first, end = day_of(since, zone), day_of(until, zone)
    if day_start(first, zone) != since or day_start(end, zone) != until:
        raise QueryError(
            f"spend is kept per day in {zone_name}: since and until must be midnights there"
        )
    return DayRange(first, end - dt.timedelta(days=1))


def check_retention(days: DayRange, zone: dt.tzinfo, now: float, retention_days: int) -> None:
    oldest = day_of(now, zone) - dt.timedelta(days=retention_days)
    if days.first < oldest:
        raise RetentionError(
            f"range starts {days.first}, beyond the {retention_days}-day retention "
            f"(the oldest day kept is {oldest})"
        )
    if days.last - days.first > dt.timedelta(days=retention_days):
        raise RetentionError(f"range is longer than the {retention_days}-day retention")


@dataclasses.dataclass
class SpendRow:
    key: tuple[str, ...]  # one value per group-by dimension
    totals: dict[str, int]  # metric name (METRICS values) -> sum


def parse_fields(fields: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """A day hash {"<row>|<metric>": n} as {row: {metric: n}}."""
    rows: dict[str, dict[str, int]] = {}
    for field, value in fields.items():
        row, _, metric = field.rpartition("|")
        if metric in METRICS:
            rows.setdefault(row, {})[metric] = int(value)
    return rows


def aggregate(
    days: Mapping[dt.date, Mapping[str, str]],
    group_by: Sequence[Dimension],
    filters: Iterable[tuple[Dimension, str]] = (),
) -> list[SpendRow]:
    """Sum the rollups of `days` per group, dearest first."""
    wanted: dict[Dimension, set[str]] = {}
    for dim, value in filters:
        wanted.setdefault(dim, set()).add(value)
    out: dict[tuple[str, ...], dict[str, int]] = {}
    for day, fields in sorted(days.items()):
        for encoded, metrics in parse_fields(fields).items():
            row = Dimensions.decode(encoded)
            if not all(set(values_of(d, row, day)) & v for d, v in wanted.items()):
                continue
            keys: list[tuple[str, ...]] = [()]
            for dim in group_by:
                keys = [(*k, v) for k in keys for v in values_of(dim, row, day)]
            for key in keys:
                totals = out.setdefault(key, dict.fromkeys(METRICS.values(), 0))
                for metric, amount in metrics.items():
                    totals[METRICS[metric]] += amount
    rows = [SpendRow(key, totals) for key, totals in out.items()]
    rows.sort(key=lambda r: (-r.totals["cost_micros"], r.key))
    return rows
