"""Calendar windows (ids, DST-correct bounds, resets) and rolling bucket arithmetic."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway_extproc.budgets.model import CalendarWindow, Period, RollingWindow
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.budgets.windows import (
    bucket_index,
    calendar_span,
    rolling_retry_after,
    rolling_spend,
    window_buckets,
)

HOUR = 3600
DAY = 24 * HOUR


def at(text: str, tz: str = "UTC") -> float:
    """Unix time of a local wall-clock time `YYYY-MM-DDTHH:MM:SS` in `tz`."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=zoneinfo.ZoneInfo(tz)).timestamp()


def utc(text: str) -> int:
    return int(at(text))


MONTH = CalendarWindow(Period.MONTH)
WEEK = CalendarWindow(Period.WEEK)
UTC_DAY = CalendarWindow(Period.DAY)


@pytest.mark.parametrize(
    ("now", "window_id", "start", "end"),
    [
        ("2026-11-24T10:00:00", "2026-11", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("2026-11-30T23:59:59", "2026-11", "2026-11-01T00:00:00", "2026-12-01T00:00:00"),
        ("2026-12-01T00:00:00", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2026-12-31T23:59:59", "2026-12", "2026-12-01T00:00:00", "2027-01-01T00:00:00"),
        ("2027-01-01T00:00:00", "2027-01", "2027-01-01T00:00:00", "2027-02-01T00:00:00"),
        ("2028-02-29T12:00:00", "2028-02", "2028-02-01T00:00:00", "2028-03-01T00:00:00"),
        ("2027-02-28T23:59:59", "2027-02", "2027-02-01T00:00:00", "2027-03-01T00:00:00"),
    ],
)
def test_calendar_months(now: str, window_id: str, start: str, end: str) -> None:
    span = calendar_span(MONTH, at(now))
    assert (span.id, span.start, span.end) == (window_id, utc(start), utc(end))


def test_february_lengths() -> None:
    assert calendar_span(MONTH, at("2028-02-29T00:00:00")).length_s == 29 * DAY
    assert calendar_span(MONTH, at("2027-02-14T00:00:00")).length_s == 28 * DAY


def test_window_boundaries_belong_to_the_new_window() -> None:
    boundary = at("2026-12-01T00:00:00")
    assert calendar_span(MONTH, boundary).id == "2026-12"
    assert calendar_span(MONTH, boundary - 0.001).id == "2026-11"
    assert calendar_span(UTC_DAY, boundary - 0.001).id == "2026-11-30"


@pytest.mark.parametrize(
    ("now", "window_id", "monday"),
    [
        ("2026-11-24T12:00:00", "2026-W48", "2026-11-23"),
        ("2026-12-28T00:00:00", "2026-W53", "2026-12-28"),
        ("2026-12-31T23:59:59", "2026-W53", "2026-12-28"),
        ("2027-01-01T08:00:00", "2026-W53", "2026-12-28"),  # ISO year 2026, calendar year 2027
        ("2027-01-03T23:59:59", "2026-W53", "2026-12-28"),
        ("2027-01-04T00:00:00", "2027-W01", "2027-01-04"),
        ("2024-12-30T00:00:00", "2025-W01", "2024-12-30"),  # ISO year 2025, calendar year 2024
        ("2026-01-01T00:00:00", "2026-W01", "2025-12-29"),
    ],
)
def test_iso_weeks_at_year_boundaries(now: str, window_id: str, monday: str) -> None:
    span = calendar_span(WEEK, at(now))
    assert span.id == window_id
    assert span.start == utc(f"{monday}T00:00:00")
    assert span.length_s == 7 * DAY


def test_weeks_start_monday_midnight_local_time() -> None:
    berlin = CalendarWindow(Period.WEEK, "Europe/Berlin")
    span = calendar_span(berlin, at("2026-11-29T23:30:00", "Europe/Berlin"))  # a Sunday
    assert span.id == "2026-W48"
    assert span.start == utc("2026-11-22T23:00:00")  # Monday 00:00 CET
    assert calendar_span(berlin, at("2026-11-30T00:00:00", "Europe/Berlin")).id == "2026-W49"


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("America/New_York", "2026-03-08", 23),  # spring forward
        ("America/New_York", "2026-03-07", 24),
        ("America/New_York", "2026-11-01", 25),  # fall back
        ("America/New_York", "2026-11-02", 24),
        ("Europe/Berlin", "2026-03-29", 23),
        ("Europe/Berlin", "2026-10-25", 25),
        ("Europe/Berlin", "2026-10-26", 24),
        ("America/Havana", "2026-03-08", 23),  # midnight itself is skipped: the day starts 01:00
        ("America/Havana", "2026-11-01", 25),  # midnight happens twice: the first one
        ("UTC", "2026-03-08", 24),
    ],
)
def test_day_windows_across_dst(tz: str, day: str, hours: int) -> None:
    window = CalendarWindow(Period.DAY, tz)
    zone = zoneinfo.ZoneInfo(tz)
    span = calendar_span(window, at(f"{day}T12:00:00", tz))
    assert span.id == day
    assert span.length_s == hours * HOUR
    assert dt.datetime.fromtimestamp(span.start, zone).date().isoformat() == day
    assert calendar_span(window, span.start).id == day
    assert calendar_span(window, span.start - 1).id != day
    assert calendar_span(window, span.end).id != day
    assert calendar_span(window, span.end - 1).id == day


def test_havana_day_starts_at_the_transition() -> None:
    span = calendar_span(CalendarWindow(Period.DAY, "America/Havana"), at("2026-03-08T12:00:00"))
    start = dt.datetime.fromtimestamp(span.start, zoneinfo.ZoneInfo("America/Havana"))
    assert (start.hour, start.minute) == (1, 0)


def test_dst_weeks_and_months() -> None:
    ny_week = CalendarWindow(Period.WEEK, "America/New_York")
    assert calendar_span(ny_week, at("2026-03-08T12:00:00", "America/New_York")).length_s == (
        7 * DAY - HOUR
    )
    berlin_month = CalendarWindow(Period.MONTH, "Europe/Berlin")
    october = calendar_span(berlin_month, at("2026-10-15T12:00:00", "Europe/Berlin"))
    assert october.id == "2026-10" and october.length_s == 31 * DAY + HOUR
    assert october.start == utc("2026-09-30T22:00:00")  # 00:00 CEST
    assert october.end == utc("2026-10-31T23:00:00")  # 00:00 CET


def test_seconds_to_reset() -> None:
    now = at("2026-11-30T23:59:59.5")
    span = calendar_span(MONTH, now)
    assert span.seconds_to_reset(now) == pytest.approx(0.5)
    assert span.seconds_to_reset(span.end + 10) == 0.0
    ny = CalendarWindow(Period.DAY, "America/New_York")
    now = at("2026-11-01T00:00:00", "America/New_York")
    assert calendar_span(ny, now).seconds_to_reset(now) == 25 * HOUR


DAY_HOURLY = RollingWindow(duration_s=DAY, bucket_s=HOUR)


def test_bucket_index_and_window() -> None:
    assert bucket_index(100 * HOUR, HOUR) == 100
    assert bucket_index(100 * HOUR - 0.001, HOUR) == 99
    assert bucket_index(100 * HOUR + 0.5, HOUR) == 100
    buckets = window_buckets(DAY_HOURLY, 100 * HOUR + 10)
    assert buckets == range(77, 101)
    assert len(buckets) == DAY_HOURLY.buckets == 24


def test_rolling_spend_counts_only_window_buckets() -> None:
    spend = {50: 1000, 76: 100, 77: 10, 100: 1, 101: 5}  # 101: a replica's clock runs ahead
    assert rolling_spend(spend, DAY_HOURLY, 100 * HOUR + 10) == 16
    assert rolling_spend(spend, DAY_HOURLY, 101 * HOUR) == 6


def test_rolling_retry_after() -> None:
    now = 100 * HOUR + 600
    spend = {50: 999, 80: 5, 90: 10, 100: 3}
    assert rolling_retry_after(spend, DAY_HOURLY, now, 0) == 0.0
    assert rolling_retry_after(spend, DAY_HOURLY, now, -5) == 0.0
    assert rolling_retry_after(spend, DAY_HOURLY, now, 5) == 104 * HOUR - now
    assert rolling_retry_after(spend, DAY_HOURLY, now, 6) == 114 * HOUR - now
    assert rolling_retry_after(spend, DAY_HOURLY, now, 18) == 124 * HOUR - now
    assert rolling_retry_after(spend, DAY_HOURLY, now, 19) is None
    # at the retry instant the freed spend really is out of the window
    later = now + (114 * HOUR - now)
    assert rolling_spend(spend, DAY_HOURLY, later) == 3


@given(
    now=st.integers(min_value=10 * DAY, max_value=10**10),
    age=st.integers(min_value=0, max_value=3 * DAY),
    bucket_s=st.sampled_from([60, 225, 900, 3600]),
)
def test_rolling_error_bound(now: int, age: int, bucket_s: int) -> None:
    """Spend made `age` seconds ago counts if younger than duration - bucket, never once it is
    duration or older: the window covers between duration - bucket and duration."""
    window = RollingWindow(duration_s=DAY, bucket_s=bucket_s)
    counted = rolling_spend({bucket_index(now - age, bucket_s): 1}, window, now) == 1
    if age < window.duration_s - bucket_s:
        assert counted
    if age >= window.duration_s:
        assert not counted


@given(
    st.lists(st.floats(min_value=1.6e9, max_value=1.9e9), min_size=1, max_size=20),
    st.sampled_from(list(Period)),
    st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
)
def test_the_stores_remembered_span_is_always_the_span_of_now(
    moments: list[float], period: Period, timezone: str
) -> None:
    """BudgetStore keeps the last span per window (computing one builds datetimes in the
    timezone on every reserve): whatever order the moments come in, across window ends and
    DST changes, it answers what calendar_span would."""
    store = BudgetStore(Redis())
    window = CalendarWindow(period, timezone)
    for now in moments:
        assert store.calendar_span(window, now) == calendar_span(window, now)
        assert store.calendar_span(window, now + 1) == calendar_span(window, now + 1)
