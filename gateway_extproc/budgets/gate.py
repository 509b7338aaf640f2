"""The budget gate on the request path: admit (reserve the worst case in every budget that
applies and count the request in every rate limit that applies, in one script), downgrade or
block; at the end hand the real cost to settlement.

One gate per configuration (budgets, catalog, estimate settings); everything that must outlive a
reload - the store and its breaker, settles being retried, fail-open spend - lives in the
process-lifetime `BudgetServices` the gate is built over. The decisions are made by the store's
Lua scripts; this module adds the worst case and the fallback model, and `reserve` the store
calls with what `on_redis_error` makes of their failures.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from gateway_extproc.budgets.admission import Admission, Decision
from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.breaker import CircuitBreaker
from gateway_extproc.budgets.calls import Overloaded
from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.matching import for_entry
from gateway_extproc.budgets.model import Action, BudgetConfig
from gateway_extproc.budgets.ratelimits import report as rate_report
from gateway_extproc.budgets.ratelimits.model import RateLimitCharge, RateLimitConfig
from gateway_extproc.budgets.refusals import BudgetUnavailable
from gateway_extproc.budgets.reserve import Reserver, report_would_block
from gateway_extproc.budgets.results import Charge, ReserveResult, SettleResult
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.settle import settle_outcome
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.catalog.pricing import worst_case_micros
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.handoff import BudgetHandoff
from gateway_extproc.identity.model import Identity
from gateway_extproc.spend.rollup import UsageRecord

__all__ = ["Admission", "BudgetGate", "Decision", "GateSettings", "Overloaded"]

# The worst case of a request on a model (bounds.bound with the request's shape); may raise
# bounds.Unbounded, which the processor answers with a 400.
BoundFor = Callable[[ModelEntry], Bound]


class BudgetGate:
    def __init__(
        self,
        store: BudgetStore | None,
        budgets: Sequence[BudgetConfig],
        catalog: Catalog,
        provider_of: Callable[[ModelEntry], str],
        settings: GateSettings,
        alerts: AlertSender | None = None,
        clock: Callable[[], float] = time.time,
        close_client: Callable[[], Awaitable[None]] | None = None,
        services: BudgetServices | None = None,
        rate_limits: Sequence[RateLimitConfig] = (),
    ) -> None:
        self.budgets = tuple(budgets)
        self.rate_limits = tuple(rate_limits)
        self.catalog = catalog
        self.provider_of = provider_of
        self.settings = settings
        self.clock = clock
        # A gate built alone (tests, tools) owns its services; the runtime shares one across
        # reloads and closes it itself.
        self._owns_services = services is None
        if services is None:
            services = BudgetServices(store, settings, alerts, clock, close_client)
        self.services = services
        self._reserver = Reserver(services, settings.lease_s, clock)
        services.configure(settings, self.budgets, webhooks=not self._owns_services)

    # Process-lifetime state, reached through the gate for callers and tests.
    @property
    def store(self) -> BudgetStore | None:
        return self.services.store

    @property
    def breaker(self) -> CircuitBreaker:
        return self.services.breaker

    @property
    def store_errors(self) -> int:
        return self.services.stats.store_errors

    @property
    def fail_open_admitted(self) -> int:
        return self.services.stats.fail_open_admitted

    # -- admission ----------------------------------------------------------------------------

    def applicable(
        self, identity: Identity, entry: ModelEntry, requested: str
    ) -> list[tuple[BudgetConfig, str]]:
        """Every (budget, scope value) a request for `entry` charges (see `for_entry`)."""
        return for_entry(
            self.budgets,
            identity=identity,
            served=entry.name,
            requested=requested,
            provider=self.provider_of(entry),
        )

    def applicable_rate_limits(
        self, identity: Identity, entry: ModelEntry, requested: str
    ) -> list[tuple[RateLimitConfig, str]]:
        """Every (rate limit, scope value) a request for `entry` counts in."""
        return for_entry(
            self.rate_limits,
            identity=identity,
            served=entry.name,
            requested=requested,
            provider=self.provider_of(entry),
        )

    def rate_charges(
        self, identity: Identity, entry: ModelEntry, requested: str, bound: Bound | None
    ) -> tuple[RateLimitCharge, ...]:
        """The rate-limit counters a request counts in; token limits hold the bound's tokens."""
        tokens = 0 if bound is None else bound.input_tokens + bound.output_tokens
        return tuple(
            RateLimitCharge(limit, value, tokens if limit.tokens is not None else 0)
            for limit, value in self.applicable_rate_limits(identity, entry, requested)
        )

    def charges(
        self, identity: Identity, entry: ModelEntry, requested: str, estimate: int
    ) -> tuple[Charge, ...]:
        return tuple(
            Charge.of(budget, value, estimate)
            for budget, value in self.applicable(identity, entry, requested)
        )

    @staticmethod
    def estimate(bound: Bound, entry: ModelEntry) -> int:
        """The worst-case cost in micro-dollars of a bound on `entry` (at the bound's price:
        the request's service tier, without rates it cannot incur)."""
        price = bound.reserve_price or entry.price
        return worst_case_micros(bound.input_tokens, bound.output_tokens, price)

    async def admit(
        self,
        *,
        reservation_id: str,
        identity: Identity,
        entry: ModelEntry,
        requested: str,
        bound_for: BoundFor,
        allowed: Callable[[ModelEntry], bool] = lambda entry: True,
        facts_for: Callable[[ModelEntry], ReservationFacts] | None = None,
    ) -> Admission:
        """Reserve the worst case in every applicable budget and count the request in every
        applicable rate limit (one script), or raise RateLimited / BudgetExceeded (429),
        BudgetUnavailable / Overloaded (503). May return a downgraded admission serving another
        model (one `allowed` for the caller). `bound_for` is only called when a budget or a
        token rate limit applies. `facts_for(served entry)`: what the reservation record keeps
        for the reaper to audit the request by, should nobody settle it."""
        now = self.clock()
        budgets = self.applicable(identity, entry, requested)
        limits = self.applicable_rate_limits(identity, entry, requested)
        if not budgets and not limits:
            return Admission(Decision.NONE, entry, reservation_id, arrived=now)
        bound = bound_for(entry) if _needs_bound(budgets, limits) else None
        estimate = self.estimate(bound, entry) if bound is not None and budgets else 0
        charges = tuple(Charge.of(b, value, estimate) for b, value in budgets)
        rates = self.rate_charges(identity, entry, requested, bound)
        facts = None if facts_for is None else facts_for(entry)
        result = await self._reserver.reserve(reservation_id, charges, now, rates, facts)
        decision = Decision.ADMITTED if budgets else Decision.NONE
        if result is None:
            self.services.stats.fail_open_admitted += 1
            return Admission(
                Decision.FAIL_OPEN, entry, reservation_id, charges, None, bound, arrived=now
            )
        if result.admitted:
            report_would_block(result, reservation_id)
            return Admission(
                decision,
                entry,
                reservation_id,
                charges,
                result,
                bound,
                arrived=now,
                rate_charges=rates,
            )
        if result.rate_limited:
            raise rate_report.refusal(result.rate_limited, result.rate_limits, _tokens(rates))
        blockers = result.blocking
        if not blockers:  # a replayed reservation id whose reservation already ended
            raise BudgetUnavailable(f"reservation {reservation_id} was already used")
        if any(b.budget.action is Action.BLOCK for b in blockers):
            raise await self._reserver.exceeded(
                next(b for b in blockers if b.budget.action is Action.BLOCK), charges
            )
        # Every budget that refused says downgrade: the most constrained one picks the target.
        decider = min(blockers, key=lambda b: b.remaining_micros)
        target = self.catalog.lookup(decider.budget.downgrade_to or "")
        if target is None or not allowed(target):
            # The caller says what it may be served: its model policy, and a target of another
            # API only when its request can be translated to it.
            raise await self._reserver.exceeded(decider, charges)
        served: ModelEntry = target
        target_bound = bound_for(served)
        target_estimate = self.estimate(target_bound, target)
        fallback = self.charges(identity, target, target.name, target_estimate)
        fallback_rates = self.rate_charges(identity, target, target.name, target_bound)

        def downgraded(
            decision: Decision,
            charges: tuple[Charge, ...] = (),
            result: ReserveResult | None = None,
        ) -> Admission:
            return Admission(
                decision,
                served,
                reservation_id,
                charges,
                result,
                target_bound,
                downgraded_from=entry.name,
                downgrade_budget=decider.budget.name,
                arrived=now,
                rate_charges=fallback_rates if result is not None else (),
            )

        if not fallback and not fallback_rates:  # nothing applies to the fallback at all
            return downgraded(Decision.DOWNGRADED)
        facts = None if facts_for is None else facts_for(served)
        retry = await self._reserver.reserve(reservation_id, fallback, now, fallback_rates, facts)
        if retry is None:
            self.services.stats.fail_open_admitted += 1
            return downgraded(Decision.FAIL_OPEN, fallback)
        if retry.rate_limited:
            raise rate_report.refusal(
                retry.rate_limited, retry.rate_limits, _tokens(fallback_rates)
            )
        if not retry.admitted:
            blocker = retry.blocking[0] if retry.blocking else decider
            raise await self._reserver.exceeded(blocker, fallback)
        report_would_block(retry, reservation_id)
        return downgraded(Decision.DOWNGRADED, fallback, retry)

    def bound_if_admitted(
        self, *, identity: Identity, entry: ModelEntry, requested: str, bound_for: BoundFor
    ) -> Bound | None:
        """The bound `admit` computes for this request when it admits it on `entry` (None: no
        budget and no token rate limit applies, so it computes none and injects no output
        cap). Pure: the response cache keys an answer by the cap the provider will see."""
        budgets = self.applicable(identity, entry, requested)
        limits = self.applicable_rate_limits(identity, entry, requested)
        return bound_for(entry) if _needs_bound(budgets, limits) else None

    async def admit_cache_hit(
        self, *, reservation_id: str, identity: Identity, entry: ModelEntry, requested: str
    ) -> Admission | None:
        """A response-cache hit holds nothing and counts in no budget; it counts one request
        (no tokens) in each applicable rate limit set to `count_cache_hits`, or raises
        RateLimited (429). None when no such limit applies, or when the store is unreachable
        (rate limits admit then). The caller releases the admission at once: the request
        stays counted."""
        rates = tuple(
            RateLimitCharge(limit, value, 0)
            for limit, value in self.applicable_rate_limits(identity, entry, requested)
            if limit.count_cache_hits
        )
        if not rates:
            return None
        now = self.clock()
        result = await self._reserver.reserve(reservation_id, (), now, rates)
        if result is None:
            return None
        if result.rate_limited:
            raise rate_report.refusal(result.rate_limited, result.rate_limits, 0)
        report_would_block(result, reservation_id)
        return Admission(
            Decision.NONE, entry, reservation_id, (), result, None, arrived=now, rate_charges=rates
        )

    # -- the end of a request -----------------------------------------------------------------

    def settle_or_release(
        self,
        admission: Admission,
        cost_micros: int | None,
        request_id: str | None = None,
        usage: UsageRecord | None = None,
    ) -> None:
        """Hand the real cost to settlement (None: nothing was consumed -> release), with the
        request's spend rollup (`usage`, for a billed request). Never blocks: the response is
        not held up by Redis. An overrun is recorded on the admission for the audit."""
        if admission.settled:
            return
        admission.settled = True
        admission.overrun_micros = self.settle_outcome(
            admission.handoff(), cost_micros, request_id, usage
        )

    def settle_outcome(
        self,
        budget: BudgetHandoff,
        cost_micros: int | None,
        request_id: str | None = None,
        usage: UsageRecord | None = None,
        then: Callable[[SettleResult | None], None] | None = None,
    ) -> int:
        """Settle a request from its handed-over admission; returns the overrun (see
        `settle.settle_outcome`)."""
        return settle_outcome(
            self.services, self.budgets, budget, cost_micros, request_id, usage, then
        )

    # -- delegated to the process-lifetime services -------------------------------------------

    async def reconcile(self) -> int:
        return await self.services.reconcile()

    async def checkpoint(self, reservation_id: str, partial_micros: int) -> None:
        await self.services.checkpoint(reservation_id, partial_micros)

    async def reap_once(self) -> None:
        await self.services.reap_once()

    async def drain(self, timeout_s: float = 5.0) -> None:
        await self.services.drain(timeout_s)

    async def start(self) -> None:
        if self._owns_services:
            await self.services.start()

    async def close(self) -> None:
        if self._owns_services:
            await self.services.close()


def _tokens(rates: Sequence[RateLimitCharge]) -> int:
    return max((r.tokens_estimate for r in rates), default=0)


def _needs_bound(budgets: Sequence[object], limits: Sequence[tuple[RateLimitConfig, str]]) -> bool:
    """Whether a request's worst case is computed (and an output cap injected): a budget or a
    token rate limit applies to it."""
    return bool(budgets) or any(limit.tokens is not None for limit, _ in limits)
