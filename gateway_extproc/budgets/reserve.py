"""The store calls of an admission and what their failures mean: reserving under each budget's
`on_redis_error` (fail_closed refuses with a 503, fail_open admits), the 429 a refused budget
becomes (with a `retry-after` the store works out), and a log line for every monitor-only rate
limit that would have refused. Used by `gate.BudgetGate`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from gateway_extproc.budgets.calls import Overloaded
from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.model import CalendarWindow, OnRedisError
from gateway_extproc.budgets.ratelimits.model import RateLimitCharge
from gateway_extproc.budgets.refusals import BudgetExceeded, BudgetUnavailable, describe
from gateway_extproc.budgets.results import BudgetState, BudgetStoreError, Charge, ReserveResult
from gateway_extproc.budgets.services import BudgetServices
from gateway_extproc.catalog.pricing import format_usd

__all__ = ["Reserver", "report_would_block"]

log = logging.getLogger("gateway.budgets")


def report_would_block(result: ReserveResult, reservation_id: str) -> None:
    for state in result.rate_limits:
        if state.would_block and not state.limit.enforced:
            log.warning(
                "rate limit %r (monitor) would block %s %s",
                state.limit.name,
                state.limit.scope.kind.value,
                state.scope_value,
                extra={"request_id": reservation_id},
            )


class Reserver:
    """The store calls one gate makes, with its lease and clock."""

    def __init__(
        self, services: BudgetServices, lease_s: float, clock: Callable[[], float]
    ) -> None:
        self.services = services
        self.lease_s = lease_s
        self.clock = clock

    async def reserve(
        self,
        reservation_id: str,
        charges: tuple[Charge, ...],
        now: float,
        rates: tuple[RateLimitCharge, ...] = (),
        facts: ReservationFacts | None = None,
    ) -> ReserveResult | None:
        """The reservation, or None when the store failed and every budget is fail_open (rate
        limits fail open: their state is disposable, see README "Rate limits")."""
        services = self.services
        store = services.store
        try:
            result = await services.call(
                lambda: store.reserve(  # type: ignore[union-attr]
                    reservation_id, charges, self.lease_s, now, rates, facts
                )
            )
        except BudgetStoreError as exc:
            # A reserve that timed out may still run in Redis: release it in the background
            # (idempotent, and a tombstone stops a late reserve from holding anything).
            if exc.maybe_ran:
                services.settle(reservation_id, None)
            closed = [
                c.budget.name
                for c in charges
                if c.budget.on_redis_error is OnRedisError.FAIL_CLOSED
            ]
            if closed:
                log.error(
                    "budget store unavailable; refusing (fail_closed: %s): %s",
                    ", ".join(closed),
                    exc,
                    extra={"request_id": reservation_id},
                )
                raise BudgetUnavailable(
                    "the budget service is unavailable; the request was not sent "
                    f"(budgets {', '.join(closed)} are fail_closed)"
                ) from None
            log.warning(
                "budget store unavailable; admitting (fail_open): %s",
                exc,
                extra={"request_id": reservation_id},
            )
            return None
        assert isinstance(result, ReserveResult)
        return result

    async def exceeded(self, state: BudgetState, charges: tuple[Charge, ...]) -> BudgetExceeded:
        """The 429 for a budget that refused: what it holds, what this request could cost, and when
        to retry (from the store; the window's length, or an hour for a calendar window, if the
        store cannot say)."""
        estimate = next((c.estimate_micros for c in charges if c.budget is state.budget), 0)
        retry_after: float | None = None
        services = self.services
        store = services.store
        try:
            assert store is not None
            retry_after = await services.call(
                lambda: store.retry_after(state.budget, state.scope_value, estimate, self.clock())
            )
        except (BudgetStoreError, Overloaded):
            retry_after = None
        if retry_after is None:
            window = state.budget.window
            retry_after = window.duration_s if not isinstance(window, CalendarWindow) else 3600.0
        seconds = max(1, math.ceil(retry_after))
        message = f"{describe(state)}; this request could cost up to ${format_usd(estimate)}"
        return BudgetExceeded(message, headers={"retry-after": str(seconds)})
