"""Leases and the reaper: a reservation whose sidecar died is charged when its lease runs out,
so while a response runs its lease is renewed, with a checkpoint of its cost so far."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway_extproc.budgets.owner import Owner
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd

log = logging.getLogger("gateway.budgets")


class Leases:
    """The leases of one process's `BudgetServices` (its store, settings, clock, stats and
    alerts)."""

    def __init__(self, services: Owner) -> None:
        self._services = services
        # Reservations of responses in flight: id -> (last renewal, cost so far).
        self.held: dict[str, tuple[float, Callable[[], int]]] = {}
        self._task: asyncio.Future[None] | None = None

    def hold(self, reservation_id: str, cost_so_far: Callable[[], int]) -> None:
        """While a response runs, its reservation's lease is renewed with a checkpoint of its
        cost so far every lease_s / 3 (by one task for the whole process, not one per request):
        a long stream is never reaped, and if this sidecar dies the reaper charges what the
        stream had used. `drop` when the request finishes."""
        self.held[reservation_id] = (self._services.clock(), cost_so_far)
        if self._task is None and self._services.store is not None:
            self._task = asyncio.ensure_future(self._renew())

    def drop(self, reservation_id: str) -> None:
        self.held.pop(reservation_id, None)

    async def _renew(self) -> None:
        period = self._services.settings.lease_s / 3
        while True:
            # A lease is renewed between period and 1.5 x period after its last renewal: well
            # before it runs out (lease_s = 3 x period after the reserve).
            await asyncio.sleep(period / 2)
            now = self._services.clock()
            due = [(rid, fn) for rid, (since, fn) in self.held.items() if now - since >= period]
            for rid, cost_so_far in due:
                if rid in self.held:  # not finished meanwhile
                    self.held[rid] = (now, cost_so_far)
                    await self.checkpoint(rid, cost_so_far())

    async def checkpoint(self, reservation_id: str, partial_micros: int) -> None:
        services = self._services
        if services.store is None:
            return
        now = services.clock()
        try:
            await asyncio.wait_for(
                services.store.checkpoint(
                    reservation_id, partial_micros, services.settings.lease_s, now
                ),
                1.0,
            )
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            log.warning("checkpoint failed: %s", exc, extra={"request_id": reservation_id})

    async def reap(self, store: BudgetStore) -> None:
        """Charge reservations whose sidecar died (lease expired), exactly once across
        replicas."""
        services = self._services
        now = services.clock()
        try:
            result = await asyncio.wait_for(store.reap(now), 5.0)
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            log.warning("reaper: %s", exc)
            return
        for reaped in result.reaped:
            services.stats.reaped += 1
            log.warning(
                "reaped an expired reservation: charged %s",
                format_usd(max(reaped.charged_micros, default=0)),
                extra={"request_id": reaped.request_id},
            )
            if services.on_reaped is not None:  # its one audit record
                services.on_reaped(reaped, now)
        if services.alerts is not None:
            services.alerts.send(result.crossings)

    def close(self) -> None:
        """Stop renewing."""
        if self._task is not None:
            self._task.cancel()
