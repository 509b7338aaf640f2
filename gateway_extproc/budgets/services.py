"""Budget state that lives as long as the process: the store and its breaker, settlement that
never gives up, fail-open spend owed to Redis, the journal, alerts and the reaper.

A configuration reload builds a new `BudgetGate` (budgets, catalog, estimates) over the SAME
services, so a reload can never strand a settle in flight or fail-open spend not yet charged.

Store calls on the request path go through `call` (calls.py: a bounded number at once, each with
a deadline that measures Redis, through the circuit breaker); leases and the reaper are
leases.py's, fail-open spend and the journal's replay owed.py's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from gateway_extproc.budgets.alerts import AlertSender, webhooks_of
from gateway_extproc.budgets.breaker import CircuitBreaker
from gateway_extproc.budgets.calls import StoreCalls
from gateway_extproc.budgets.journal import Journal
from gateway_extproc.budgets.leases import Leases
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.owed import IfVanished, OwedSpend
from gateway_extproc.budgets.results import (
    BudgetStoreError,
    Charge,
    Reaped,
    ReservationState,
    SettleResult,
)
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.cost.bounds import UnseenInput
from gateway_extproc.spend.rollup import UsageRecord

log = logging.getLogger("gateway.budgets")
_T = TypeVar("_T")
# Settle / release retries: first pause, longest pause between attempts, per-attempt timeout.
RETRY_FIRST_S, RETRY_MAX_S, ATTEMPT_TIMEOUT_S = 0.1, 5.0, 2.0


@dataclasses.dataclass(frozen=True)
class GateSettings:
    deadline_s: float = 0.25  # Redis silent this long on a request-path call: it is down
    lease_s: float = 120.0  # a reservation whose sidecar died is charged after this
    breaker_failures: int = 5  # consecutive store failures that open the breaker
    breaker_open_s: float = 5.0  # while open, calls fail at once (no waiting on a dead Redis)
    default_max_output_tokens: int = 8192  # injected when a budgeted request sets no limit
    reap_interval_s: float = 10.0
    unseen_input: UnseenInput = UnseenInput.RESERVE_CONTEXT_WINDOW
    max_inflight: int = 64  # concurrent store calls per worker (and Redis connections)
    queue_timeout_s: float = 2.0  # longest wait for a turn, or for a busy Redis to answer


@dataclasses.dataclass
class BudgetStats:
    """Counters for logs and metrics."""

    store_errors: int = 0
    fail_open_admitted: int = 0
    overloaded: int = 0
    overruns: int = 0
    overrun_micros: int = 0
    settle_retries: int = 0
    reconcile_dropped: int = 0
    reaped: int = 0
    vanished: int = 0  # settles whose reservation record Redis had lost: charged fail-open


class BudgetServices:
    def __init__(
        self,
        store: BudgetStore | None,
        settings: GateSettings,
        alerts: AlertSender | None = None,
        clock: Callable[[], float] = time.time,
        close_client: Callable[[], Awaitable[None]] | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.alerts = alerts
        self.clock = clock
        self.close_client = close_client
        self.journal = journal
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        self.stats = BudgetStats()
        self.budget_lookup: Callable[[str], BudgetConfig | None] = lambda name: None
        self._calls = StoreCalls(self, settings.max_inflight)
        self._pending: set[asyncio.Task[None]] = set()
        # reservation -> (cost (None: release), spend rollup, whether it reserved anything,
        # what to charge if its record vanished)
        self._settling: dict[
            str, tuple[int | None, UsageRecord | None, bool, IfVanished | None]
        ] = {}
        self._sync_task: asyncio.Task[None] | None = None
        self.adopt_from: Path | None = None  # journals of gone workers to take over
        self.attempt_timeout_s = ATTEMPT_TIMEOUT_S  # one settle / release attempt
        self._leases = Leases(self)  # reservations of responses in flight
        self._owed = OwedSpend(self)  # fail-open spend and journaled settles owed to Redis
        # Called with (seconds, ok) after each request-path store call (metrics), if set.
        self.on_call: Callable[[float, bool], None] | None = None
        # Called with (reservation, now) for each reservation this process's reaper expired:
        # its one audit record (response/reaped_audit.py), if set.
        self.on_reaped: Callable[[Reaped, float], None] | None = None

    def use_journal(self, journal: Journal, adopt_from: Path | None = None) -> None:
        """Journal fail-open spend and unfinished settles in `journal` (call before start);
        take over the journals of gone workers in `adopt_from` at start and every reap."""
        self.journal = journal
        self.adopt_from = adopt_from

    def configure(
        self, settings: GateSettings, budgets: Sequence[BudgetConfig], *, webhooks: bool = True
    ) -> None:
        """Apply a (re)loaded configuration's settings, budgets (by name, for the journal) and,
        with `webhooks`, their alert webhooks."""
        self.settings = settings
        self.breaker.failures_to_open = settings.breaker_failures
        self.breaker.open_s = settings.breaker_open_s
        by_name = {b.name: b for b in budgets}
        self.budget_lookup = by_name.get
        if webhooks and self.alerts is not None:
            self.alerts.set_webhooks(webhooks_of(budgets))

    # -- store calls on the request path -----------------------------------------------------

    async def call(self, factory: Callable[[], Awaitable[_T]]) -> _T:
        """One store call: a turn among `max_inflight`, then Redis's answer within the deadline,
        through the circuit breaker. Raises BudgetStoreError, or Overloaded (not a store fault)."""
        return await self._calls.call(factory)

    # -- the end of a request ----------------------------------------------------------------

    def settle(
        self,
        reservation_id: str,
        cost_micros: int | None,
        usage: UsageRecord | None = None,
        *,
        reserved: bool = True,
        if_vanished: IfVanished | None = None,
        then: Callable[[SettleResult | None], None] | None = None,
    ) -> None:
        """Settle the real cost (None: nothing was billed -> release), with the request's spend
        rollup, in the background and retried until Redis has it: the response is never held
        up, and no money is dropped. `reserved` False: nothing was reserved (no budget applied),
        only the rollup is written. `if_vanished`: a cost whose reservation record Redis lost
        is owed as fail-open spend on these charges (without it: logged, counted, dropped).
        `then`: called once with the settle's or release's answer (None: no answer - nothing
        to settle here, or stopped before Redis answered)."""
        if self.store is None or reservation_id in self._settling or (not reserved and not usage):
            if then is not None:
                then(None)
            return
        self._settling[reservation_id] = (cost_micros, usage, reserved, if_vanished)
        self._background(
            self._settle(reservation_id, cost_micros, usage, reserved, if_vanished, then)
        )

    def roll_up_answered(self, request_id: str, record: UsageRecord) -> None:
        """Roll up a request the gateway answered itself (a cache hit, a refusal) in the
        background: the `record` script, exactly once per `request_id` (a marker under that
        id), retried and journaled like a settle. Its id must not be a reservation's (a hit
        may have a reservation to release under the request's own)."""
        self.settle(request_id, None, record, reserved=False)

    async def _settle(
        self,
        reservation_id: str,
        cost_micros: int | None,
        usage: UsageRecord | None = None,
        reserved: bool = True,
        if_vanished: IfVanished | None = None,
        then: Callable[[SettleResult | None], None] | None = None,
    ) -> None:
        store = self.store
        assert store is not None
        pause = RETRY_FIRST_S
        answer: SettleResult | None = None
        try:
            while True:
                try:
                    # A turn among the store calls (no queue deadline: it is off the request
                    # path), so settles never take more connections than the pool has.
                    async with self._calls.slots, asyncio.timeout(self.attempt_timeout_s):
                        if not reserved and usage is not None:
                            await store.record_usage(reservation_id, usage, self.clock())
                            return
                        if cost_micros is None:
                            answer = await store.release(reservation_id)
                            return
                        answer = result = await store.settle(
                            reservation_id, cost_micros, self.clock(), usage
                        )
                except (BudgetStoreError, TimeoutError, OSError) as exc:
                    self.stats.settle_retries += 1
                    log.warning(
                        "settle failed (%s); retrying in %.1fs",
                        exc,
                        pause,
                        extra={"request_id": reservation_id},
                    )
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, RETRY_MAX_S)
                    continue
                if result.state is ReservationState.UNKNOWN and cost_micros:
                    self._vanished(reservation_id, cost_micros, usage, if_vanished)
                if self.alerts is not None:
                    self.alerts.send(result.crossings)
                return
        finally:
            if then is not None:
                then(answer)
            if not _cancelled():  # else close() journals it as still owed
                self._settling.pop(reservation_id, None)
                if reservation_id in self._owed.replayed and self.journal is not None:
                    self._owed.replayed.discard(reservation_id)
                    self.journal.done(reservation_id)

    def _vanished(
        self,
        reservation_id: str,
        cost: int,
        usage: UsageRecord | None,
        if_vanished: IfVanished | None,
    ) -> None:
        """A settle found no reservation record: Redis lost it (a failover with asynchronous
        replication, AOF `everysec`), with its holds - a record that was settled, released or
        reaped is kept `record_retention_s` for exactly this question, and a RESERVED one has no
        TTL. The cost is owed as fail-open spend: journaled, charged under the id
        `<id>:fail-open`, once."""
        self.stats.vanished += 1
        if reservation_id in self._owed.replayed and self.journal is not None:
            self._owed.replayed.discard(reservation_id)  # the settle entry is done: ...
            self.journal.done(reservation_id)  # ... the fail-open entry below replaces it
        if if_vanished is None or not if_vanished.charges:
            log.error(
                "settle: the reservation record is gone (Redis lost it) and no charges are "
                "known: cost %s dropped",
                format_usd(cost),
                extra={"request_id": reservation_id},
            )
            return
        log.error(
            "settle: the reservation record is gone (Redis lost it); its cost %s is charged "
            "as fail-open spend",
            format_usd(cost),
            extra={"request_id": reservation_id},
        )
        self._owed.owe(reservation_id, if_vanished.charges, cost, if_vanished.arrived, usage)

    def owe_fail_open(
        self,
        reservation_id: str,
        charges: tuple[Charge, ...],
        cost: int,
        arrived: float,
        usage: UsageRecord | None = None,
    ) -> None:
        """Spend admitted while the store was down: journal it, charge it when Redis is back."""
        self._owed.owe(reservation_id, charges, cost, arrived, usage)

    async def reconcile(self) -> int:
        """Charge fail-open spend now that the store answers (owed.py). Returns how many
        requests were charged."""
        return await self._owed.reconcile()

    # -- leases and the reaper (leases.py) ---------------------------------------------------

    def hold_lease(self, reservation_id: str, cost_so_far: Callable[[], int]) -> None:
        """Renew the reservation's lease, with a checkpoint of its cost so far, while its
        response runs (see `Leases.hold`). `drop_lease` when the request finishes."""
        self._leases.hold(reservation_id, cost_so_far)

    def drop_lease(self, reservation_id: str) -> None:
        self._leases.drop(reservation_id)

    async def checkpoint(self, reservation_id: str, partial_micros: int) -> None:
        await self._leases.checkpoint(reservation_id, partial_micros)

    async def reap_once(self) -> None:
        """Charge reservations whose sidecar died (lease expired), exactly once across replicas;
        charge fail-open spend if the store is back."""
        if self.store is None:
            return
        await self.adopt()
        if self._owed.queue:
            await self.reconcile()
        await self._leases.reap(self.store)

    async def adopt(self) -> int:
        """Take over the journals of workers that are gone (`adopt_from`): their settles and
        fail-open spend become this worker's. Returns how many entries."""
        return await self._owed.adopt()

    # -- lifecycle -----------------------------------------------------------------------------

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def start(self) -> None:
        if self.alerts is not None:
            await self.alerts.start()
        if self.journal is not None:
            self._owed.replay_journal()
            self._sync_task = asyncio.ensure_future(self._owed.sync_forever())
        if self.store is not None:
            try:  # fail fast on a bad URL in the log; requests still apply on_redis_error
                await asyncio.wait_for(self.store.load_scripts(), 5.0)
                await asyncio.wait_for(self.store.warm(self.settings.max_inflight), 5.0)
            except (BudgetStoreError, TimeoutError, OSError) as exc:
                log.error("budget store not reachable at start: %s", exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=timeout_s)

    async def close(self, grace_s: float = 5.0) -> None:
        """Await pending settles and charge fail-open spend, within `grace_s` together (the
        reap loop, which reconciles while running, is stopped first); journal what is left;
        close everything."""
        deadline = time.monotonic() + grace_s
        await self.drain(grace_s)
        self._leases.close()
        await self._owed.reconcile_until(deadline)
        for task in list(self._pending):
            task.cancel()
        if self.journal is not None:
            for reservation_id, (cost, usage, reserved, vanish) in self._settling.items():
                entry: dict[str, Any] = {
                    "op": "settle",
                    "id": reservation_id,
                    "cost": cost,
                    "reserved": reserved,
                }
                if usage is not None:
                    entry["usage"] = usage.to_json()
                if vanish is not None:
                    entry["charges"] = [[c.budget.name, c.scope_value] for c in vanish.charges]
                    entry["arrived"] = vanish.arrived
                self.journal.owe(entry)
            if self._sync_task is not None:
                self._sync_task.cancel()
            self.journal.close()
        elif self._settling or self._owed.queue:
            log.error(
                "stopping with %d settle(s) and %d fail-open charge(s) not taken by Redis, and "
                "no journal to keep them",
                len(self._settling),
                len(self._owed.queue),
            )
        if self.alerts is not None:
            await self.alerts.close()
        if self.close_client is not None:
            await self.close_client()


def _cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
