"""Spend owed to Redis: charges of requests admitted fail-open while the store was down, queued
(and journaled) until it answers again, and the journal's settles and fail-open spend that a
previous run of this worker, or a gone worker, still owed Redis. Owned by one `BudgetServices`."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from gateway_extproc.budgets import journal as journals
from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.calls import Overloaded
from gateway_extproc.budgets.journal import SYNC_INTERVAL_S, Journal
from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.results import BudgetStoreError, Charge, ReservationState
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend.rollup import UsageRecord

log = logging.getLogger("gateway.budgets")
_T = TypeVar("_T")
# A fail-open charge has no limit: the request was already served.
_UNLIMITED = 2**52
# The first pause between attempts to charge fail-open spend before exit.
RECONCILE_FIRST_S = 0.1


@dataclasses.dataclass(frozen=True, slots=True)
class IfVanished:
    """What a settle charges as fail-open spend if Redis lost its reservation record (a failover
    with asynchronous replication, AOF `everysec`): the charges (budget, scope value) and the
    request's arrival time, whose windows the spend goes to."""

    charges: tuple[Charge, ...]
    arrived: float


class DebtorSettings(Protocol):
    @property
    def lease_s(self) -> float: ...


class DebtorStats(Protocol):
    reconcile_dropped: int


class Debtor(Protocol):
    """A `BudgetServices`, as the spend it owes Redis sees it."""

    @property
    def store(self) -> BudgetStore | None: ...
    @property
    def settings(self) -> DebtorSettings: ...
    @property
    def stats(self) -> DebtorStats: ...
    @property
    def alerts(self) -> AlertSender | None: ...
    @property
    def journal(self) -> Journal | None: ...
    @property
    def adopt_from(self) -> Path | None: ...
    @property
    def budget_lookup(self) -> Callable[[str], BudgetConfig | None]: ...
    async def call(self, factory: Callable[[], Awaitable[_T]]) -> _T: ...
    def settle(
        self,
        reservation_id: str,
        cost_micros: int | None,
        usage: UsageRecord | None = None,
        *,
        reserved: bool = True,
        if_vanished: IfVanished | None = None,
    ) -> None: ...


class OwedSpend:
    """The spend one process's `BudgetServices` owes Redis."""

    def __init__(self, services: Debtor) -> None:
        self._services = services
        # Spend admitted fail-open, to charge when the store is back (bounded; drops counted).
        self.queue: collections.deque[
            tuple[str, tuple[Charge, ...], int, float, UsageRecord | None]
        ] = collections.deque(maxlen=100_000)
        self.replayed: set[str] = set()  # settles owed by a previous run (journal entries)

    def owe(
        self,
        reservation_id: str,
        charges: tuple[Charge, ...],
        cost: int,
        arrived: float,
        usage: UsageRecord | None = None,
    ) -> None:
        """Spend admitted while the store was down: journal it, charge it when Redis is back."""
        if len(self.queue) == self.queue.maxlen:
            self._services.stats.reconcile_dropped += 1
            log.error("fail-open queue full: the oldest unreconciled spend is dropped")
        self.queue.append((reservation_id, charges, cost, arrived, usage))
        if self._services.journal is not None:
            self._services.journal.owe(
                {
                    "op": "fail_open",
                    "id": reservation_id,
                    "cost": cost,
                    "arrived": arrived,
                    "charges": [[c.budget.name, c.scope_value] for c in charges],
                    "usage": None if usage is None else usage.to_json(),
                }
            )

    async def reconcile(self) -> int:
        """Charge fail-open spend now that the store answers: for each request, a reservation
        with no limit (the request was already served) settled at its real cost, in the
        windows of its arrival time. Idempotent per request id. Returns how many were charged."""
        done = 0
        services = self._services
        store = services.store
        while self.queue and store is not None:
            request_id, charges, cost, arrived, usage = self.queue[0]
            unlimited = tuple(
                dataclasses.replace(c, estimate_micros=cost, limit_micros=_UNLIMITED)
                for c in charges
            )
            reserve = functools.partial(
                store.reserve,
                charges=unlimited,
                lease_s=self._services.settings.lease_s,
                now=arrived,
            )
            try:
                charge_id = f"{request_id}:fail-open"
                await self._services.call(functools.partial(reserve, charge_id))
                settled = await asyncio.wait_for(store.settle(charge_id, cost, arrived, usage), 1.0)
            except (BudgetStoreError, TimeoutError, OSError, Overloaded):
                return done
            if settled.state is ReservationState.UNKNOWN:  # lost between reserve and settle
                return done  # (a failover): reserved and settled again next time
            if self._services.alerts is not None:
                self._services.alerts.send(settled.crossings)
            self.queue.popleft()
            if self._services.journal is not None:
                self._services.journal.done(request_id, "fail_open")
            done += 1
        if done:
            log.warning("reconciled %d request(s) admitted while the budget store was down", done)
        return done

    async def adopt(self) -> int:
        """Take over the journals of workers that are gone (`adopt_from`, journal.py `adopt`):
        their settles and fail-open spend become this worker's. Returns how many entries."""
        if self._services.journal is None or self._services.adopt_from is None:
            return 0
        entries = await asyncio.to_thread(
            journals.adopt, self._services.journal, self._services.adopt_from
        )
        self.requeue(entries)
        return len(entries)

    def replay_journal(self) -> None:
        """Re-queue what a previous run of this worker still owed Redis, then compact; take over
        the journals of gone workers (`adopt_from`)."""
        assert self._services.journal is not None
        kept = self.requeue(self._services.journal.outstanding())
        self._services.journal.compact(kept)
        if kept:
            log.warning("journal: %d charge(s) owed to Redis from a previous run", len(kept))
        if self._services.adopt_from is not None:
            self.requeue(journals.adopt(self._services.journal, self._services.adopt_from))

    def requeue(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Queue journal entries (settles, fail-open spend) again; returns those still owed (an
        entry whose budgets are all gone is dropped, logged and marked done)."""
        kept = []
        for entry in entries:
            key = str(entry["id"])
            usage = _usage_of(entry)
            charges = self._charges_of(entry)
            if entry["op"] == "settle":
                cost = entry.get("cost")
                self.replayed.add(key)
                reserved = bool(entry.get("reserved", True))
                if_vanished = None
                if "arrived" in entry:
                    if_vanished = IfVanished(charges, float(entry["arrived"]))
                self._services.settle(
                    key,
                    None if cost is None else int(cost),
                    usage,
                    reserved=reserved,
                    if_vanished=if_vanished,
                )
                kept.append(entry)
            elif charges:
                self.queue.append(
                    (key, charges, int(entry["cost"]), float(entry["arrived"]), usage)
                )
                kept.append(entry)
            elif self._services.journal is not None:
                self._services.journal.done(key, "fail_open")
        return kept

    def _charges_of(self, entry: dict[str, Any]) -> tuple[Charge, ...]:
        charges = []
        for name, scope_value in entry.get("charges", []):
            budget = self._services.budget_lookup(name)
            if budget is None:
                log.error("journal: budget %r is gone; its spend owed to Redis is dropped", name)
                continue
            charges.append(Charge.of(budget, scope_value, int(entry.get("cost") or 0)))
        return tuple(charges)

    async def sync_forever(self) -> None:
        assert self._services.journal is not None
        while True:
            await asyncio.sleep(SYNC_INTERVAL_S)
            await asyncio.to_thread(self._services.journal.sync)

    async def reconcile_until(self, deadline: float) -> None:
        """Charge fail-open spend before exit, retrying while Redis (or the breaker) refuses,
        until `deadline` (monotonic). What is left stays in the journal for the next run."""
        pause = RECONCILE_FIRST_S
        while self.queue and self._services.store is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(self.reconcile(), left)
            except TimeoutError:
                break
            if self.queue:
                await asyncio.sleep(min(pause, max(deadline - time.monotonic(), 0)))
                pause = min(pause * 2, 1.0)
        if self.queue:
            log.warning(
                "stopping with %d fail-open charge(s) not taken by Redis: %s",
                len(self.queue),
                "left in the journal"
                if self._services.journal is not None
                else "lost (no journal)",
            )


def _usage_of(entry: dict[str, Any]) -> UsageRecord | None:
    doc = entry.get("usage")
    return UsageRecord.from_json(doc) if isinstance(doc, dict) else None
