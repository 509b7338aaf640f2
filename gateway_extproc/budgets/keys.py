"""The budget store's key layout: every key a script touches, derived from values and `now`.

Key layout (P = prefix, T = hash tag; every key of every call shares the slot of `{T}`):

    P:{T}:c:<budget>:<scope value>:<window id>   calendar counter  hash spent, held, a:<pct>
    P:{T}:r:<budget>:<scope value>:<bucket s>    rolling counter   hash b:<bucket>..., held, a:<pct>
    P:{T}:rl:<limit>:<scope value>:<window s>    rate limit        hash r:<bucket>, t:<bucket>
    P:{T}:res:<request id>                       reservation       hash state, lease, charges...
    P:{T}:leases                                 lease expiries    zset request id -> lease ms
    P:{T}:ov:<budget>:<scope value>              override          hash limit, expires, reason...
    P:{T}:overrides                              override index    zset budget\x1fscope -> expiry
    P:{T}:spend:<YYYY-MM-DD>                     spend rollup      hash "<row>|<metric>" (spend/)
"""

from __future__ import annotations

from gateway_extproc.budgets import windows
from gateway_extproc.budgets.model import BudgetConfig, CalendarWindow
from gateway_extproc.budgets.ratelimits.model import RateLimitCharge
from gateway_extproc.spend.rollup import RollupDay, RollupSettings, UsageRecord, day_key

ROLLING_WINDOW_ID = "rolling"


class StoreKeys:
    """The keys of one store (prefix and hash tag), with the calendar spans and the rollup day
    they need remembered while `now` stays in them."""

    def __init__(self, prefix: str, hash_tag: str, rollups: RollupSettings | None) -> None:
        for name, value in (("prefix", prefix), ("hash_tag", hash_tag)):
            if not value or "{" in value or "}" in value:
                raise ValueError(f"{name} must be non-empty and free of braces (got {value!r})")
        self.rollups = rollups or RollupSettings()
        self._base = f"{prefix}:{{{hash_tag}}}"
        self._leases = f"{self._base}:leases"
        self._spans: dict[CalendarWindow, windows.CalendarSpan] = {}  # calendar_span's memo
        self._day: RollupDay | None = None  # rollup_day's memo

    @property
    def key_base(self) -> str:
        """`P:{T}`: every key of this store starts with it (one hash slot)."""
        return self._base

    def counter_key(self, budget: BudgetConfig, scope_value: str, now: float) -> tuple[str, str]:
        """The counter hash a charge at `now` debits, and its window id."""
        window = budget.window
        if isinstance(window, CalendarWindow):
            span = self.calendar_span(window, now)
            return f"{self._base}:c:{budget.name}:{scope_value}:{span.id}", span.id
        key = f"{self._base}:r:{budget.name}:{scope_value}:{window.bucket_s}"
        return key, ROLLING_WINDOW_ID

    def calendar_span(self, window: CalendarWindow, now: float) -> windows.CalendarSpan:
        """`windows.calendar_span`, remembered per window until `now` leaves it (every reserve
        needs it; computing it builds datetimes in the window's timezone)."""
        span = self._spans.get(window)
        if span is None or not span.start <= now < span.end:
            span = self._spans[window] = windows.calendar_span(window, now)
        return span

    def rate_limit_key(self, charge: RateLimitCharge) -> str:
        limit = charge.limit
        return f"{self._base}:rl:{limit.name}:{charge.scope_value}:{limit.window_s}"

    def override_key(self, budget: str, scope_value: str) -> str:
        return f"{self._base}:ov:{budget}:{scope_value}"

    def rollup_key(self, usage: UsageRecord) -> str:
        return day_key(self._base, self.rollup_day(usage.arrived).day)

    def rollup_day(self, ts: float) -> RollupDay:
        """The rollup day of `ts`, remembered until a settle's arrival leaves it (computing it
        builds datetimes in the rollups' timezone)."""
        day = self._day
        if day is None or not day.holds(ts):
            day = self._day = RollupDay.of(ts, self.rollups)
        return day

    def record_key(self, request_id: str) -> str:
        return f"{self._base}:res:{request_id}"

    @property
    def leases_key(self) -> str:
        return self._leases
