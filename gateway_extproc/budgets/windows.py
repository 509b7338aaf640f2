"""Budget window arithmetic. Pure: no clock reads, every function takes `now` (unix seconds).

Calendar windows are real calendar periods in the budget's IANA timezone: a day runs from local
midnight to local midnight (23 h on a spring-forward day, 25 h on a fall-back day), an ISO week from
Monday 00:00 to the next Monday 00:00 (ids like `2026-W53`: the ISO year, which differs from the
calendar year around 1 January), a month from the 1st 00:00 to the next 1st 00:00. Window ids are
`2026-11-24`, `2026-W48` and `2026-11`.

Rolling windows are kept as sub-bucket counters: spend is attributed to whole buckets of `bucket_s`
seconds, bucket `i` covering `[i * bucket_s, (i + 1) * bucket_s)` of unix time, and the window at
`now` is the `duration_s / bucket_s` buckets up to and including the current one. Error bound: the
current bucket is only partly elapsed, so the window effectively covers between
`duration - bucket` and `duration` of history - spend up to one bucket older than `duration` may
still count, and none younger than `duration - bucket` is ever forgotten. The bound is one-sided in
the safe direction (a budget can only be *stricter* than exact, by at most one bucket's spend).
Memory is `duration / bucket` integer counters per scope value (24 for the default `24h` / `1h`),
instead of one entry per request. A reservation holds its estimate beside the buckets and is
settled into the bucket of its settle (not of its reserve): spend counts for a whole window from
when it is charged, however long the request ran - one longer than the window would otherwise
settle into a bucket already out of it, and never count.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import zoneinfo
from collections.abc import Mapping

from gateway_extproc.budgets.model import CalendarWindow, Period, RollingWindow


@dataclasses.dataclass(frozen=True, slots=True)
class CalendarSpan:
    """One calendar window: its id and `[start, end)` as unix seconds."""

    id: str
    start: int
    end: int

    @property
    def length_s(self) -> int:
        return self.end - self.start

    def seconds_to_reset(self, now: float) -> float:
        return max(0.0, self.end - now)


def calendar_span(window: CalendarWindow, now: float) -> CalendarSpan:
    """The calendar window containing `now`, DST-correct in the window's timezone."""
    zone = zoneinfo.ZoneInfo(window.timezone)
    today = dt.datetime.fromtimestamp(now, zone).date()
    if window.period is Period.DAY:
        first, following = today, today + dt.timedelta(days=1)
        window_id = today.isoformat()
    elif window.period is Period.WEEK:
        iso = today.isocalendar()
        first = today - dt.timedelta(days=iso.weekday - 1)
        following = first + dt.timedelta(days=7)
        window_id = f"{iso.year}-W{iso.week:02d}"
    else:
        first = today.replace(day=1)
        following = (first + dt.timedelta(days=32)).replace(day=1)
        window_id = f"{today.year:04d}-{today.month:02d}"
    return CalendarSpan(id=window_id, start=_midnight(first, zone), end=_midnight(following, zone))


def _midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> int:
    """The instant `day` begins in `zone`. Where local midnight falls in a DST gap, fold=0 maps it
    to the transition instant, i.e. the first instant of that day; where midnight occurs twice,
    fold=0 is the first occurrence."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=zone).timestamp())


def bucket_index(now: float, bucket_s: int) -> int:
    """The rolling bucket containing `now`: floor(now / bucket_s)."""
    return math.floor(now / bucket_s)


def window_buckets(window: RollingWindow, now: float) -> range:
    """The bucket indexes inside the rolling window at `now`, oldest first."""
    current = bucket_index(now, window.bucket_s)
    return range(current - window.buckets + 1, current + 1)


def rolling_spend(spend_by_bucket: Mapping[int, int], window: RollingWindow, now: float) -> int:
    """The spend inside the window at `now` (buckets newer than now, from clock skew, count)."""
    oldest = window_buckets(window, now).start
    return sum(amount for index, amount in spend_by_bucket.items() if index >= oldest)


def rolling_retry_after(
    spend_by_bucket: Mapping[int, int], window: RollingWindow, now: float, excess: int
) -> float | None:
    """Seconds until at least `excess` micro-dollars of spend have aged out of the window.

    `excess` is what stands in the way: `spent + held + estimate - limit`. Bucket `i` leaves the
    window at `(i + buckets) * bucket_s`. 0.0 when nothing needs to age out; None when aging out
    cannot make room (the holds or the estimate alone are too large).
    """
    if excess <= 0:
        return 0.0
    oldest = window_buckets(window, now).start
    freed = 0
    for index in sorted(i for i in spend_by_bucket if i >= oldest):
        freed += spend_by_bucket[index]
        if freed >= excess:
            return max(0.0, (index + window.buckets) * window.bucket_s - now)
    return None
