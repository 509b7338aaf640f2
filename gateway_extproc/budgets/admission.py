"""What the budget gate decided for a request: the `Decision`, and the `Admission` that carries
it to the end of the request (the charges held, the reserve's answer, the downgrade) and hands
settlement the values it needs (`handoff`)."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from gateway_extproc.budgets.ratelimits.model import RateLimitCharge, RateLimitState
from gateway_extproc.budgets.results import BudgetState, Charge, ReserveResult
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.handoff import BudgetHandoff

__all__ = ["Admission", "Decision"]


class Decision(enum.StrEnum):
    NONE = "none"  # no budget applies
    ADMITTED = "admitted"
    DOWNGRADED = "downgraded"
    FAIL_OPEN = "fail_open"  # the store failed and every applicable budget is fail_open


@dataclasses.dataclass
class Admission:
    decision: Decision
    entry: ModelEntry  # the model that will be served (the fallback when downgraded)
    reservation_id: str = ""
    charges: tuple[Charge, ...] = ()
    result: ReserveResult | None = None
    bound: Bound | None = None  # the worst case on `entry`, when a budget or token limit applies
    downgraded_from: str | None = None
    downgrade_budget: str | None = None
    arrived: float = 0.0
    settled: bool = False
    overrun_micros: int = 0  # real cost above the estimate (0: the bound held)
    rate_charges: tuple[RateLimitCharge, ...] = ()

    @property
    def reserved(self) -> bool:
        return (
            self.result is not None
            and self.result.admitted
            and bool(self.charges or self.rate_charges)
        )

    @property
    def rate_limits(self) -> tuple[RateLimitState, ...]:
        return self.result.rate_limits if self.result else ()

    @property
    def rate_limit_would_block(self) -> tuple[RateLimitState, ...]:
        """The monitor rate limits this admitted request went over."""
        return tuple(r for r in self.rate_limits if r.would_block and not r.limit.enforced)

    @property
    def estimate_micros(self) -> int:
        return max((c.estimate_micros for c in self.charges), default=0)

    @property
    def most_constrained(self) -> BudgetState | None:
        return self.result.most_constrained if self.result else None

    @property
    def would_block(self) -> bool:
        return bool(self.result and self.result.monitor_would_block)

    def handoff(self, audit: dict[str, Any] | None = None) -> BudgetHandoff:
        """What settling this admission needs, as values another worker can be handed."""
        return BudgetHandoff(
            decision=self.decision.value,
            reservation_id=self.reservation_id,
            reserved=self.reserved,
            charges=tuple(
                (c.budget.name, c.scope_value, c.estimate_micros, c.limit_micros)
                for c in self.charges
            ),
            arrived=self.arrived,
            audit=audit,
            span_budgets=tuple(
                (b.budget.name, b.scope_value, b.limit_micros, b.spent_micros, b.held_micros)
                for b in (self.result.budgets if self.result is not None else ())
            ),
        )
