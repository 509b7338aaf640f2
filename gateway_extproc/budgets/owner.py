"""What the store calls (`calls.py`) and the leases (`leases.py`) read of the `BudgetServices`
that own them: the owner is passed in, and these views keep the modules it is built from from
importing it back (no cycle)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.breaker import CircuitBreaker
from gateway_extproc.budgets.results import Reaped
from gateway_extproc.budgets.store import BudgetStore


class OwnerSettings(Protocol):
    @property
    def deadline_s(self) -> float: ...
    @property
    def queue_timeout_s(self) -> float: ...
    @property
    def lease_s(self) -> float: ...


class OwnerStats(Protocol):
    overloaded: int
    store_errors: int
    reaped: int


class Owner(Protocol):
    """A `BudgetServices`, as its store calls and leases see it."""

    @property
    def store(self) -> BudgetStore | None: ...
    @property
    def settings(self) -> OwnerSettings: ...
    @property
    def stats(self) -> OwnerStats: ...
    @property
    def breaker(self) -> CircuitBreaker: ...
    @property
    def alerts(self) -> AlertSender | None: ...
    @property
    def clock(self) -> Callable[[], float]: ...
    @property
    def on_call(self) -> Callable[[float, bool], None] | None: ...
    @property
    def on_reaped(self) -> Callable[[Reaped, float], None] | None: ...
