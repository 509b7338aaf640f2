"""What the budget store takes and returns. Values only; amounts in integer micro-dollars."""

from __future__ import annotations

import dataclasses
import enum
from typing import NamedTuple

from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.ratelimits.model import RateLimitState


class BudgetStoreError(Exception):
    """Redis failed (connection, timeout, script error, cluster trouble). The caller applies the
    budgets' `on_redis_error` policy; the message never carries request content. `maybe_ran`:
    the call may have reached Redis (false when it was never sent, e.g. the breaker is open)."""

    def __init__(self, message: str, *, maybe_ran: bool = True) -> None:
        super().__init__(message)
        self.maybe_ran = maybe_ran


class ReservationState(enum.StrEnum):
    RESERVED = "RESERVED"  # holds in place, lease running
    SETTLED = "SETTLED"  # the real cost was charged
    RELEASED = "RELEASED"  # the holds were dropped, nothing charged
    EXPIRED = "EXPIRED"  # the lease ran out; a reaper charged the checkpoint or the estimate
    UNKNOWN = "UNKNOWN"  # no record: never reserved, rejected, or past its retention


@dataclasses.dataclass(frozen=True, slots=True)
class Charge:
    """One counter a request is about to charge: a budget, the scope value, the worst case."""

    budget: BudgetConfig
    scope_value: str
    estimate_micros: int
    limit_micros: int

    @classmethod
    def of(cls, budget: BudgetConfig, scope_value: str, estimate_micros: int) -> Charge:
        return cls(budget, scope_value, estimate_micros, budget.limit_micros)


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetState:
    """One budget's counter as a reserve saw it (after the hold, when admitted)."""

    budget: BudgetConfig
    scope_value: str
    window_id: str
    spent_micros: int
    held_micros: int
    limit_micros: int
    would_block: bool  # spent + held + estimate > limit (monitor budgets report, never block)
    overridden: bool = False  # limit_micros is an admin override's (top-ups are added in)

    @property
    def remaining_micros(self) -> int:
        """What is left after spend and holds; negative once spend passed the limit."""
        return self.limit_micros - self.spent_micros - self.held_micros


@dataclasses.dataclass(frozen=True, slots=True)
class ReserveResult:
    admitted: bool  # holds are in place (a replay: still RESERVED; no charges at all: True)
    replayed: bool  # the request id already had a reservation; nothing changed
    state: ReservationState  # UNKNOWN when rejected (nothing was written)
    budgets: tuple[BudgetState, ...]  # in the order of the charges
    rate_limits: tuple[RateLimitState, ...] = ()  # in the order of the rate-limit charges

    @property
    def blocking(self) -> tuple[BudgetState, ...]:
        """The enforced (block / downgrade) budgets that refused the request."""
        return tuple(b for b in self.budgets if b.would_block and b.budget.enforced)

    @property
    def rate_limited(self) -> tuple[RateLimitState, ...]:
        """The enforced rate limits that refused the request."""
        return tuple(r for r in self.rate_limits if r.would_block and r.limit.enforced)

    @property
    def monitor_would_block(self) -> tuple[BudgetState, ...]:
        return tuple(b for b in self.budgets if b.would_block and not b.budget.enforced)

    @property
    def most_constrained(self) -> BudgetState | None:
        """The budget with the least remaining (for `x-ratelimit`-style headers)."""
        return min(self.budgets, key=lambda b: b.remaining_micros, default=None)


@dataclasses.dataclass(frozen=True, slots=True)
class AlertCrossing:
    """A threshold crossed, reported once per (budget, scope value, window, threshold)."""

    budget: str
    scope_value: str
    window_id: str  # the calendar window id, or "rolling"
    threshold_percent: int
    spent_micros: int  # in the window, just after the crossing
    limit_micros: int


@dataclasses.dataclass(frozen=True, slots=True)
class SettleResult:
    """The outcome of settle, release or checkpoint."""

    state: ReservationState  # the reservation's state after the call
    changed: bool  # this call made the transition (False: a replayed or late call, a no-op)
    crossings: tuple[AlertCrossing, ...] = ()
    # A late settle or release of a reservation the reaper had ended, audited and rolled up:
    # what the reaper's record charged (this call corrected it). None: no such record.
    reaped_micros: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Reaped:
    request_id: str
    charged_micros: tuple[int, ...]  # per charge: the checkpoint, else that charge's estimate
    # The request's facts kept at reserve (None: none kept, so neither audited nor rolled up),
    # and the cost the reap rolled up for it (the request's one charge).
    facts: ReservationFacts | None = None
    rolled_micros: int | None = None
    budgets: tuple[tuple[str, str, str], ...] = ()  # per charge: budget, scope value, window id


@dataclasses.dataclass(frozen=True, slots=True)
class ReapResult:
    reaped: tuple[Reaped, ...]  # the reservations THIS call expired
    crossings: tuple[AlertCrossing, ...]


class BudgetStatus(NamedTuple):
    spent_micros: int
    held_micros: int
    limit_micros: int

    @property
    def remaining_micros(self) -> int:
        return self.limit_micros - self.spent_micros - self.held_micros
