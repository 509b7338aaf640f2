"""Random sequences of reserve / settle / release / checkpoint / reap / time passing against a
real redis-server, checked step by step against a plain-Python model of the budgets."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.results import Charge, ReservationState
from gateway_extproc.budgets.store import BudgetStore
from tests.redis_servers import (  # noqa: F401 - session fixture
    RedisEndpoint,
    redis_standalone_server,
)

T = TypeVar("T")
USD = 1_000_000
# whole dollars often (so limits are hit exactly), any micro amount sometimes
AMOUNTS = st.integers(0, 6).map(lambda n: n * USD) | st.integers(0, 6 * USD)
START = 1_795_176_000.0  # 2026-11-20T12:00:00Z: every step stays inside November
MONTHLY = BudgetConfig(
    name="monthly",
    scope=Scope(ScopeKind.USER),
    limit_micros=20 * USD,
    window=CalendarWindow(Period.MONTH),
    action=Action.BLOCK,
)
HOURLY = BudgetConfig(
    name="hourly",
    scope=Scope(ScopeKind.USER),
    limit_micros=10 * USD,
    window=RollingWindow(duration_s=3600, bucket_s=60),
    action=Action.DOWNGRADE,
    downgrade_to="small",
)
WATCH = BudgetConfig(
    name="watch",
    scope=Scope(ScopeKind.GLOBAL),
    limit_micros=3 * USD,
    window=CalendarWindow(Period.DAY),
    action=Action.MONITOR,
)
BUDGETS = (MONTHLY, HOURLY, WATCH)
ENDPOINT: RedisEndpoint | None = None  # set by the test before the machine runs


class BudgetMachine(RuleBasedStateMachine):
    requests = Bundle("requests")

    def __init__(self) -> None:
        super().__init__()
        assert ENDPOINT is not None
        self.runner = asyncio.Runner()
        self.client = Redis(host=ENDPOINT.host, port=ENDPOINT.port)
        tag = uuid.uuid4().hex[:10]
        self.store = BudgetStore(self.client, prefix=f"sm{tag}", hash_tag=tag)
        self.now = START
        self.live: dict[str, int] = {}  # RESERVED request -> estimate
        self.lease: dict[str, float] = {}
        self.partial: dict[str, int] = {}
        self.bucket: dict[str, int] = {}  # request -> the rolling bucket it reserved in
        self.final: dict[str, ReservationState] = {}
        self.charged: dict[str, int] = {}  # request -> what settle / reap charged (once)
        self.hourly_buckets: dict[int, int] = {}
        self.reaped: set[str] = set()  # EXPIRED, not yet corrected by a late settle / release

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.runner.close()

    # -- the model --------------------------------------------------------------------------

    def hourly_spent(self) -> int:
        oldest = int(self.now // 60) - 59
        return sum(v for b, v in self.hourly_buckets.items() if b >= oldest)

    def charge(self, request_id: str, amount: int) -> None:
        assert request_id not in self.charged, "a request was charged twice"
        self.charged[request_id] = amount
        bucket = self.bucket[request_id]
        self.hourly_buckets[bucket] = self.hourly_buckets.get(bucket, 0) + amount
        del self.live[request_id]

    def correct(self, request_id: str, amount: int) -> None:
        """A late settle (or release: 0) of a reaped request replaces the reaper's charge."""
        self.reaped.discard(request_id)
        bucket = self.bucket[request_id]
        self.hourly_buckets[bucket] += amount - self.charged[request_id]
        self.charged[request_id] = amount

    # -- rules ------------------------------------------------------------------------------

    @rule(target=requests, estimate=AMOUNTS, lease_s=st.sampled_from([30, 300]))
    def reserve(self, estimate: int, lease_s: int) -> str:
        request_id = f"req-{uuid.uuid4().hex[:8]}"
        held = sum(self.live.values())
        fits_monthly = sum(self.charged.values()) + held + estimate <= MONTHLY.limit_micros
        fits_hourly = self.hourly_spent() + held + estimate <= HOURLY.limit_micros
        charges = [Charge.of(b, "alice" if b is not WATCH else "*", estimate) for b in BUDGETS]
        result = self.run(self.store.reserve(request_id, charges, lease_s, self.now))
        assert result.admitted == (fits_monthly and fits_hourly)
        event("admitted" if result.admitted else "rejected")
        assert not result.replayed
        if result.admitted:
            for state in result.budgets:  # at admission: spent + held (incl. this) <= limit
                if state.budget.enforced:
                    assert state.spent_micros + state.held_micros <= state.limit_micros
            self.live[request_id] = estimate
            self.lease[request_id] = self.now + lease_s
            self.bucket[request_id] = int(self.now // 60)
        else:
            self.final[request_id] = ReservationState.UNKNOWN
        return request_id

    @rule(request_id=requests)
    def replay_reserve(self, request_id: str) -> None:
        if self.final.get(request_id) is ReservationState.UNKNOWN:
            return  # rejected: nothing was written, so a retry is a new reserve, not a replay
        estimate = self.live.get(request_id, 1)
        charges = [Charge.of(b, "alice" if b is not WATCH else "*", estimate) for b in BUDGETS]
        result = self.run(self.store.reserve(request_id, charges, 30, self.now))
        assert result.replayed
        if request_id in self.live:
            assert result.admitted and result.state is ReservationState.RESERVED
        else:
            assert not result.admitted and result.state is self.final[request_id]

    @rule(request_id=requests, actual=AMOUNTS)
    def settle(self, request_id: str, actual: int) -> None:
        result = self.run(self.store.settle(request_id, actual, self.now))
        if request_id in self.live:
            assert (result.state, result.changed) == (ReservationState.SETTLED, True)
            self.charge(request_id, actual)
            self.final[request_id] = ReservationState.SETTLED
            event("settled")
        elif request_id in self.reaped:
            assert (result.state, result.changed) == (ReservationState.SETTLED, True)
            self.correct(request_id, actual)
            self.final[request_id] = ReservationState.SETTLED
            event("late settle corrected a reap")
        else:
            assert not result.changed
            assert result.state is self.final[request_id]

    @rule(request_id=requests)
    def release(self, request_id: str) -> None:
        result = self.run(self.store.release(request_id))
        if request_id in self.live:
            assert (result.state, result.changed) == (ReservationState.RELEASED, True)
            del self.live[request_id]
            self.final[request_id] = ReservationState.RELEASED
        elif request_id in self.reaped:
            assert (result.state, result.changed) == (ReservationState.RELEASED, True)
            self.correct(request_id, 0)
            self.final[request_id] = ReservationState.RELEASED
            event("late release refunded a reap")
        elif self.final[request_id] is ReservationState.UNKNOWN:
            # nothing was reserved: a tombstone makes a late reserve of this id replay
            assert (result.state, result.changed) == (ReservationState.RELEASED, False)
            self.final[request_id] = ReservationState.RELEASED
        else:
            assert not result.changed and result.state is self.final[request_id]

    @rule(request_id=requests, partial=AMOUNTS, lease_s=st.sampled_from([30, 300]))
    def checkpoint(self, request_id: str, partial: int, lease_s: int) -> None:
        result = self.run(self.store.checkpoint(request_id, partial, lease_s, self.now))
        assert result.changed == (request_id in self.live)
        if result.changed:
            self.partial[request_id] = max(partial, self.partial.get(request_id, 0))
            self.lease[request_id] = self.now + lease_s

    @rule(seconds=st.integers(0, 900))
    def tick(self, seconds: int) -> None:
        self.now += seconds

    @rule()
    def reap(self) -> None:
        result = self.run(self.store.reap(self.now))
        due = {r for r in self.live if self.lease[r] <= self.now}
        assert {r.request_id for r in result.reaped} == due
        for reaped in result.reaped:
            request_id = reaped.request_id
            amount = self.partial.get(request_id, self.live[request_id])
            assert reaped.charged_micros == (amount,) * len(BUDGETS)
            self.charge(request_id, amount)
            self.final[request_id] = ReservationState.EXPIRED
            self.reaped.add(request_id)
            event("reaped")

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def counters_match_the_model(self) -> None:
        held = sum(self.live.values())
        monthly = self.run(self.store.status(MONTHLY, "alice", self.now))
        hourly = self.run(self.store.status(HOURLY, "alice", self.now))
        watch = self.run(self.store.status(WATCH, "*", self.now))
        assert monthly.held_micros == hourly.held_micros == watch.held_micros == held >= 0
        assert monthly.spent_micros == sum(self.charged.values()) == watch.spent_micros
        assert hourly.spent_micros == self.hourly_spent()


def test_budget_state_machine(redis_standalone_server: RedisEndpoint) -> None:  # noqa: F811
    global ENDPOINT
    ENDPOINT = redis_standalone_server
    run_state_machine_as_test(
        BudgetMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
