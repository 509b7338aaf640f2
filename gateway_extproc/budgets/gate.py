"""The budget gate on the request path: admit (reserve the worst case in every budget that
applies), downgrade or block, then settle the real cost when the response ends.

I/O at the edge: the decisions are made by the store's Lua scripts; this module adds the
deadline, the circuit breaker, the fallback model and the per-budget Redis-failure policy.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.breaker import CircuitBreaker
from gateway_extproc.budgets.matching import applicable
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    OnRedisError,
    ScopeKind,
)
from gateway_extproc.budgets.refusals import BudgetExceeded, BudgetUnavailable, describe
from gateway_extproc.budgets.results import (
    BudgetState,
    BudgetStoreError,
    Charge,
    ReservationState,
    ReserveResult,
)
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog import Catalog, ModelEntry
from gateway_extproc.identity.model import Identity
from gateway_extproc.pricing import format_usd, worst_case_micros

log = logging.getLogger("gateway.budgets")
_T = TypeVar("_T")


class Decision(enum.StrEnum):
    NONE = "none"  # no budget applies
    ADMITTED = "admitted"
    DOWNGRADED = "downgraded"
    FAIL_OPEN = "fail_open"  # the store failed and every applicable budget is fail_open


@dataclasses.dataclass(frozen=True)
class GateSettings:
    deadline_s: float = 0.05
    lease_s: float = 120.0  # a reservation whose sidecar died is charged after this
    breaker_failures: int = 5  # consecutive store failures that open the breaker
    breaker_open_s: float = 5.0  # while open, calls fail at once (no waiting on a dead Redis)
    estimate_max_output_tokens: int = 8192  # caps the model's output limit in estimates
    reap_interval_s: float = 10.0


@dataclasses.dataclass
class Admission:
    decision: Decision
    entry: ModelEntry  # the model that will be served (the fallback when downgraded)
    charges: tuple[Charge, ...] = ()
    result: ReserveResult | None = None
    downgraded_from: str | None = None
    downgrade_budget: str | None = None
    arrived: float = 0.0
    settled: bool = False

    @property
    def reserved(self) -> bool:
        return self.result is not None and self.result.admitted and bool(self.charges)

    @property
    def most_constrained(self) -> BudgetState | None:
        return self.result.most_constrained if self.result else None

    @property
    def would_block(self) -> bool:
        return bool(self.result and self.result.monitor_would_block)


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
    ) -> None:
        self.store = store
        self.budgets = tuple(budgets)
        self.catalog = catalog
        self.provider_of = provider_of
        self.settings = settings
        self.alerts = alerts
        self.clock = clock
        self.close_client = close_client
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        self.fail_open_admitted = 0
        self.store_errors = 0
        self._pending: set[asyncio.Task[None]] = set()
        # Spend admitted fail-open, to charge when the store is back (bounded; drops counted).
        self._unreconciled: collections.deque[tuple[str, tuple[Charge, ...], int, float]] = (
            collections.deque(maxlen=100_000)
        )
        self.reconcile_dropped = 0

    # -- admission ----------------------------------------------------------------------------

    def estimate(self, entry: ModelEntry, input_tokens: int, max_output: int | None) -> int:
        """The worst-case cost: all input plus the most output the request allows."""
        cap = min(entry.max_output_tokens, self.settings.estimate_max_output_tokens)
        output = cap if max_output is None else min(max_output, entry.max_output_tokens)
        return worst_case_micros(input_tokens, output, entry.price)

    def charges(
        self, identity: Identity, entry: ModelEntry, requested: str, estimate: int
    ) -> tuple[Charge, ...]:
        """Every (budget, scope value) the request charges. Filters see both the name the
        client sent and the catalog name; a model-scoped counter is always keyed by the
        catalog name, so an alias and its model share one counter."""
        provider = self.provider_of(entry)
        names = [requested] if requested == entry.name else [requested, entry.name]
        seen: set[tuple[str, str]] = set()
        out: list[Charge] = []
        for name in names:
            for a in applicable(self.budgets, identity=identity, model=name, provider=provider):
                value = entry.name if a.budget.scope.kind is ScopeKind.MODEL else a.scope_value
                if (a.budget.name, value) not in seen:
                    seen.add((a.budget.name, value))
                    out.append(Charge.of(a.budget, value, estimate))
        return tuple(out)

    async def _call(self, factory: Callable[[], Awaitable[_T]]) -> _T:
        """One store call within the deadline, through the circuit breaker."""
        now = self.clock()
        if self.store is None or not self.breaker.allow(now):
            raise BudgetStoreError("budget store unavailable (circuit open)")
        try:
            async with asyncio.timeout(self.settings.deadline_s):  # no extra task, unlike wait_for
                result = await factory()
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            self.breaker.failure(self.clock())
            self.store_errors += 1
            raise BudgetStoreError(f"budget store: {type(exc).__name__}") from exc
        self.breaker.success()
        return result

    async def admit(
        self,
        *,
        request_id: str,
        identity: Identity,
        entry: ModelEntry,
        requested: str,
        input_tokens: int,
        max_output: int | None,
    ) -> Admission:
        """Reserve the worst case in every applicable budget, or raise BudgetExceeded (429) /
        BudgetUnavailable (503). May return a downgraded admission serving another model."""
        now = self.clock()
        charges = self.charges(
            identity, entry, requested, self.estimate(entry, input_tokens, max_output)
        )
        if not charges:
            return Admission(Decision.NONE, entry, arrived=now)
        result = await self._reserve(request_id, charges, now)
        if result is None:
            return Admission(Decision.FAIL_OPEN, entry, charges, arrived=now)
        if result.admitted:
            return Admission(Decision.ADMITTED, entry, charges, result, arrived=now)
        blockers = result.blocking
        if not blockers:  # a replayed request id whose reservation already ended
            raise BudgetUnavailable(f"request id {request_id} was already used")
        if any(b.budget.action is Action.BLOCK for b in blockers):
            raise await self._exceeded(
                next(b for b in blockers if b.budget.action is Action.BLOCK), charges
            )
        # Every budget that refused says downgrade: the most constrained one picks the target.
        decider = min(blockers, key=lambda b: b.remaining_micros)
        target = self.catalog.lookup(decider.budget.downgrade_to or "")
        if target is None or target.schema is not entry.schema:  # the loader checks this too
            raise await self._exceeded(decider, charges)
        fallback = self.charges(
            identity, target, target.name, self.estimate(target, input_tokens, max_output)
        )
        retry = await self._reserve(request_id, fallback, now)
        if retry is None:
            return Admission(
                Decision.FAIL_OPEN,
                target,
                fallback,
                arrived=now,
                downgraded_from=entry.name,
                downgrade_budget=decider.budget.name,
            )
        if not retry.admitted:
            raise await self._exceeded(retry.blocking[0] if retry.blocking else decider, fallback)
        return Admission(
            Decision.DOWNGRADED,
            target,
            fallback,
            retry,
            downgraded_from=entry.name,
            downgrade_budget=decider.budget.name,
            arrived=now,
        )

    async def _reserve(
        self, request_id: str, charges: tuple[Charge, ...], now: float
    ) -> ReserveResult | None:
        """The reservation, or None when the store failed and every budget is fail_open."""
        store = self.store
        try:
            result = await self._call(
                lambda: store.reserve(request_id, charges, self.settings.lease_s, now)  # type: ignore[union-attr]
            )
        except BudgetStoreError as exc:
            # A reserve that timed out may still run in Redis: release it in the background
            # (idempotent, and a tombstone stops a late reserve from holding anything).
            self._background(self._release_quietly(request_id))
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
                    extra={"request_id": request_id},
                )
                raise BudgetUnavailable(
                    "the budget service is unavailable; the request was not sent "
                    f"(budgets {', '.join(closed)} are fail_closed)"
                ) from None
            self.fail_open_admitted += 1
            log.warning(
                "budget store unavailable; admitting (fail_open): %s",
                exc,
                extra={"request_id": request_id},
            )
            return None
        assert isinstance(result, ReserveResult)
        return result

    async def _exceeded(self, state: BudgetState, charges: tuple[Charge, ...]) -> BudgetExceeded:
        estimate = next((c.estimate_micros for c in charges if c.budget is state.budget), 0)
        retry_after: float | None = None
        store = self.store
        try:
            assert store is not None
            retry_after = await self._call(
                lambda: store.retry_after(state.budget, state.scope_value, estimate, self.clock())
            )
        except BudgetStoreError:
            retry_after = None
        if retry_after is None:
            window = state.budget.window
            retry_after = window.duration_s if not isinstance(window, CalendarWindow) else 3600.0
        seconds = max(1, math.ceil(retry_after))
        message = f"{describe(state)}; this request could cost up to ${format_usd(estimate)}"
        return BudgetExceeded(message, headers={"retry-after": str(seconds)})

    # -- the end of a request -----------------------------------------------------------------

    def finish(self, admission: Admission, cost_micros: int | None, request_id: str) -> None:
        """Settle the real cost (None: nothing was consumed -> release), in the background: the
        response is never held up by Redis, and a failed settle is left to the lease reaper."""
        if admission.settled:
            return
        admission.settled = True
        if admission.decision is Decision.FAIL_OPEN and cost_micros:
            # Admitted while the store was down: charge the spend when it is back.
            if len(self._unreconciled) == self._unreconciled.maxlen:
                self.reconcile_dropped += 1
            self._unreconciled.append(
                (request_id, admission.charges, cost_micros, admission.arrived)
            )
            return
        if admission.reserved:
            self._background(self._settle(request_id, cost_micros))

    async def reconcile(self) -> int:
        """Charge fail-open spend now that the store answers: for each request, a reservation
        with no limit (the request was already served) settled at its real cost, in the
        windows of its arrival time. Idempotent per request id. Returns how many were charged."""
        done = 0
        store = self.store
        while self._unreconciled and store is not None:
            request_id, charges, cost, arrived = self._unreconciled[0]
            unlimited = tuple(
                dataclasses.replace(c, estimate_micros=cost, limit_micros=2**52) for c in charges
            )
            reserve = functools.partial(
                store.reserve, charges=unlimited, lease_s=self.settings.lease_s, now=arrived
            )
            try:
                charge_id = request_id
                result = await self._call(functools.partial(reserve, charge_id))
                if result.replayed and result.state is ReservationState.RELEASED:
                    # The failed reserve's background release left a tombstone on the id:
                    # nothing was charged under it, so charge under an id of its own.
                    charge_id = f"{request_id}:fail-open"
                    await self._call(functools.partial(reserve, charge_id))
                settled = await asyncio.wait_for(store.settle(charge_id, cost, arrived), 1.0)
            except (BudgetStoreError, TimeoutError, OSError):
                return done
            if self.alerts is not None:
                self.alerts.send(settled.crossings)
            self._unreconciled.popleft()
            done += 1
        if done:
            log.warning("reconciled %d request(s) admitted while the budget store was down", done)
        return done

    async def _settle(self, request_id: str, cost_micros: int | None) -> None:
        store = self.store
        assert store is not None
        for attempt in range(3):
            try:
                async with asyncio.timeout(1.0 + attempt):
                    if cost_micros is None:
                        await store.release(request_id)
                        return
                    result = await store.settle(request_id, cost_micros, self.clock())
            except (BudgetStoreError, TimeoutError, OSError) as exc:
                log.warning(
                    "settle attempt %d failed: %s",
                    attempt + 1,
                    exc,
                    extra={"request_id": request_id},
                )
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            if self.alerts is not None:
                self.alerts.send(result.crossings)
            return
        log.error(
            "settle failed; the lease reaper will charge the estimate",
            extra={"request_id": request_id},
        )

    async def _release_quietly(self, request_id: str) -> None:
        if self.store is None:
            return
        with contextlib.suppress(BudgetStoreError, TimeoutError, OSError):
            await asyncio.wait_for(self.store.release(request_id), 2.0)

    async def keep_lease(self, request_id: str, cost_so_far: Callable[[], int]) -> None:
        """While a response runs, checkpoint its cost so far and renew its reservation's lease
        every lease_s / 3: a long stream is never reaped, and if this sidecar dies the reaper
        charges what the stream had used. Cancelled when the request finishes."""
        while True:
            await asyncio.sleep(self.settings.lease_s / 3)
            await self.checkpoint(request_id, cost_so_far())

    async def checkpoint(self, request_id: str, partial_micros: int) -> None:
        """Record partial usage of a long response and extend its lease."""
        if self.store is None:
            return
        now = self.clock()
        try:
            await asyncio.wait_for(
                self.store.checkpoint(request_id, partial_micros, self.settings.lease_s, now), 1.0
            )
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            log.warning("checkpoint failed: %s", exc, extra={"request_id": request_id})

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def start(self) -> None:
        if self.alerts is not None:
            await self.alerts.start()
        if self.store is not None:
            try:  # fail fast on a bad URL in the log; requests still apply on_redis_error
                await asyncio.wait_for(self.store.load_scripts(), 5.0)
            except (BudgetStoreError, TimeoutError, OSError) as exc:
                log.error("budget store not reachable at start: %s", exc)

    async def close(self) -> None:
        await self.drain()
        if self.alerts is not None:
            await self.alerts.close()
        if self.close_client is not None:
            await self.close_client()

    async def reap_once(self) -> None:
        """Charge reservations whose sidecar died (lease expired), exactly once across replicas;
        charge fail-open spend if the store is back."""
        if self.store is None:
            return
        if self._unreconciled:
            await self.reconcile()
        try:
            result = await asyncio.wait_for(self.store.reap(self.clock()), 5.0)
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            log.warning("reaper: %s", exc)
            return
        for reaped in result.reaped:
            log.warning(
                "reaped an expired reservation: charged %s",
                format_usd(sum(reaped.charged_micros)),
                extra={"request_id": reaped.request_id},
            )
        if self.alerts is not None:
            self.alerts.send(result.crossings)

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)
