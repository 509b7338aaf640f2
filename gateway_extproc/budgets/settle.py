"""The end of a request on the budget side: hand the real cost to settlement (the process-lifetime
`BudgetServices` settle it in the background), log an overrun of the estimate, and owe Redis the
spend of a request admitted fail-open. From values handed over (`BudgetHandoff`), so any worker
can settle a request another worker admitted."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from gateway_extproc.budgets.admission import Decision
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.owed import IfVanished
from gateway_extproc.budgets.results import Charge, SettleResult
from gateway_extproc.budgets.services import BudgetServices
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.handoff import BudgetHandoff
from gateway_extproc.spend.rollup import UsageRecord

log = logging.getLogger("gateway.budgets")


def settle_outcome(
    services: BudgetServices,
    budgets: Sequence[BudgetConfig],
    budget: BudgetHandoff,
    cost_micros: int | None,
    request_id: str | None = None,
    usage: UsageRecord | None = None,
    then: Callable[[SettleResult | None], None] | None = None,
) -> int:
    """Settle a request from its handed-over admission (any worker can: the observer of a
    response need not be the worker that reserved it). Returns the overrun: a cost above
    the reservation's estimate, also counted and logged (0: the bound held). `then`: called
    once with the store's answer (None: none, or nothing was settled in the store)."""
    rid = budget.reservation_id
    overrun = 0
    estimate = budget.estimate_micros
    if cost_micros and budget.charges and cost_micros > estimate:
        overrun = cost_micros - estimate
        services.stats.overruns += 1
        services.stats.overrun_micros += overrun
        log.warning(
            "worst-case overrun: cost %s exceeds the reserved estimate %s by %s (reservation %s)",
            format_usd(cost_micros),
            format_usd(estimate),
            format_usd(overrun),
            rid,
            extra={"request_id": request_id or rid},
        )
    if budget.decision == Decision.FAIL_OPEN.value and budget.charges:
        if cost_micros:  # admitted while the store was down: charge it when it is back
            services.owe_fail_open(
                rid, _charges_of(budgets, budget), cost_micros, budget.arrived, usage
            )
            if then is not None:
                then(None)
        else:  # billed at $0: roll it up alone
            services.settle(rid, None, usage, reserved=False, then=then)
        return overrun
    if budget.reserved:
        # If Redis lost the reservation record (a failover), the cost is owed fail-open.
        if_vanished = IfVanished(_charges_of(budgets, budget, quiet=True), budget.arrived)
        services.settle(
            rid,
            cost_micros,
            usage if cost_micros is not None else None,
            if_vanished=if_vanished,
            then=then,
        )
    else:  # nothing reserved (no budget applied): roll it up alone
        services.settle(rid, None, usage, reserved=False, then=then)
    return overrun


def _charges_of(
    budgets: Sequence[BudgetConfig], budget: BudgetHandoff, *, quiet: bool = False
) -> tuple[Charge, ...]:
    """The handed-over charges as this worker's budget configs (a budget a reload removed
    meanwhile is dropped, and logged unless `quiet`)."""
    by_name = {b.name: b for b in budgets}
    charges = []
    for name, scope_value, estimate, limit in budget.charges:
        config = by_name.get(name)
        if config is None:
            if quiet:
                continue
            log.error("fail-open spend for budget %r dropped: no longer configured", name)
            continue
        charges.append(Charge(config, scope_value, estimate, limit))
    return tuple(charges)
