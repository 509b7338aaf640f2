"""Budget configuration values: what a `budgets:` entry says, already validated. Values only.

Money is integer micro-dollars (see `gateway_extproc.catalog.pricing`). Shared by the settings
parser, the matcher, the window arithmetic and the Redis store, so each can be tested against these
shapes alone.
"""

from __future__ import annotations

import dataclasses
import enum


class ScopeKind(enum.StrEnum):
    """Whose spend a budget counts: one counter per value of this dimension."""

    USER = "user"
    GROUP = "group"
    SERVICE = "service"  # a JWT service (a static token too, if namespaces are shared)
    MODEL = "model"
    PROVIDER = "provider"
    ATTRIBUTE = "attribute"
    GLOBAL = "global"
    STATIC_TOKEN = "static_token"  # a static token by name: a namespace apart from services


class Action(enum.StrEnum):
    BLOCK = "block"  # refuse the request (429) when the worst case does not fit
    DOWNGRADE = "downgrade"  # retry the request on `downgrade_to` when the worst case does not fit
    MONITOR = "monitor"  # count and alert, never refuse


class OnRedisError(enum.StrEnum):
    FAIL_CLOSED = "fail_closed"  # a budget store failure refuses the request (503)
    FAIL_OPEN = "fail_open"  # a budget store failure admits the request, logged and counted


class Period(enum.StrEnum):
    DAY = "day"
    WEEK = "week"  # ISO week: Monday 00:00 to Monday 00:00 in the budget's timezone
    MONTH = "month"


GLOBAL_SCOPE_VALUE = "*"


@dataclasses.dataclass(frozen=True, slots=True)
class Scope:
    kind: ScopeKind
    attribute: str | None = None  # the identity attribute's name, for kind attribute only
    value: str | None = None  # one fixed value; None: each value gets its own counter


@dataclasses.dataclass(frozen=True, slots=True)
class Match:
    """Extra filters; every one that is set must hold. An unset (None) filter always holds."""

    groups: frozenset[str] | None = None  # any of these groups
    models: tuple[str, ...] | None = None  # fnmatch patterns (case-sensitive) on the model
    providers: frozenset[str] | None = None
    users: frozenset[str] | None = None
    services: frozenset[str] | None = None
    static_tokens: frozenset[str] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class CalendarWindow:
    period: Period
    timezone: str = "UTC"  # IANA name, validated with zoneinfo


@dataclasses.dataclass(frozen=True, slots=True)
class RollingWindow:
    duration_s: int
    bucket_s: int  # divides duration_s; spend is attributed to whole buckets

    @property
    def buckets(self) -> int:
        return self.duration_s // self.bucket_s


Window = CalendarWindow | RollingWindow


@dataclasses.dataclass(frozen=True, slots=True)
class Alerts:
    thresholds_percent: tuple[int, ...] = ()  # ascending, each reported once per window
    webhook: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetConfig:
    name: str  # unique, [a-z0-9_-]; part of every Redis key of this budget
    scope: Scope
    limit_micros: int
    window: Window
    action: Action
    match: Match = Match()
    downgrade_to: str | None = None  # set iff action is downgrade; the catalog loader checks it
    alerts: Alerts = Alerts()
    on_redis_error: OnRedisError = OnRedisError.FAIL_CLOSED

    @property
    def enforced(self) -> bool:
        """Whether an exhausted budget refuses (block) or reroutes (downgrade) the request."""
        return self.action is not Action.MONITOR
