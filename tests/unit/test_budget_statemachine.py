"""Random sequences of reserve / settle / release / checkpoint / reap / time passing against a
real redis-server, checked step by step against a plain-Python model of the budgets and of a
rate limit (requests and tokens in a sliding window) checked in the same reservations. A live
reservation's record can vanish (a failover lost the reserve): a settle through the budget
services then owes its cost fail-open, and a reconcile charges it - never below the bill, never
twice."""

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
    precondition,
    rule,
    run_state_machine_as_test,
)
from redis.asyncio import Redis

from gateway_extproc.budgets.facts import ReservationFacts
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.owed import IfVanished
from gateway_extproc.budgets.ratelimits.model import (
    BUCKETS,
    RateLimitAction,
    RateLimitCharge,
    RateLimitConfig,
)
from gateway_extproc.budgets.results import Charge, ReservationState, SettleResult
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
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
RATE = RateLimitConfig(
    name="rate",
    scope=Scope(ScopeKind.USER),
    window_s=600,  # 30 s buckets; ticks of up to 900 s let whole windows pass
    action=RateLimitAction.BLOCK,
    requests=8,
    tokens=20_000,
)
RATE_BUCKET_S = RATE.window_s // BUCKETS
TOKENS = st.integers(0, 6_000)
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
        self.bucket: dict[str, int] = {}  # request -> the rolling bucket it was charged in
        self.final: dict[str, ReservationState] = {}
        self.charged: dict[str, int] = {}  # request -> what settle / reap charged (once)
        self.hourly_buckets: dict[int, int] = {}
        self.reaped: set[str] = set()  # EXPIRED, not yet corrected by a late settle / release
        # The rate limit: bucket -> [requests, tokens] as Redis keeps them (stale buckets are
        # dropped by the next admitted reserve), and each request's bucket and token hold.
        self.rate: dict[int, list[int]] = {}
        self.rate_bucket: dict[str, int] = {}
        self.rate_hold: dict[str, int] = {}
        # The audit-visible charges: per request, the cost of each record its endings wrote -
        # the final one (a settle or release by its observer, or the reaper's), then at most one
        # correction (a late settle or release after the reap). Every ending is audited here as
        # the gateway audits it: a settle or release by what it charged, a reap by what it rolled
        # up, a late one by the correction the store reports.
        self.records: dict[str, list[int]] = {}
        # Vanished records: the budget services settle them fail-open (services.py).
        self.services = BudgetServices(self.store, GateSettings(), clock=lambda: self.now)
        self.services.configure(GateSettings(), BUDGETS, webhooks=False)
        self.arrived: dict[str, float] = {}  # request -> its reserve's time
        self.estimate: dict[str, int] = {}
        # Lost while RESERVED, not ended since. Ids are random, so choices are drawn from lists
        # in the order the rules made them (insertion order), never sorted: a replayed example
        # must pick the same request.
        self.vanished: dict[str, None] = {}
        self.owed: dict[str, int] = {}  # vanished and settled: cost owed, not reconciled yet
        self.billed: dict[str, int] = {}  # what a settle through the services reported
        self.reconciled: set[str] = set()  # vanished, then charged fail-open (rolled up once)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.runner.close()

    # -- the model --------------------------------------------------------------------------

    def hourly_spent(self) -> int:
        oldest = int(self.now // 60) - 59
        return sum(v for b, v in self.hourly_buckets.items() if b >= oldest)

    def rate_oldest(self) -> int:
        return int(self.now // RATE_BUCKET_S) - BUCKETS + 1

    def rate_used(self) -> tuple[int, int]:
        oldest = self.rate_oldest()
        live = [v for b, v in self.rate.items() if b >= oldest]
        return sum(v[0] for v in live), sum(v[1] for v in live)

    def rate_correct(self, request_id: str, tokens: int) -> None:
        """Settle (real tokens), release (0), late settle / release: the hold becomes `tokens`
        in the bucket it was held in, if Redis still has that bucket."""
        bucket = self.rate_bucket[request_id]
        if bucket in self.rate:
            self.rate[bucket][1] += tokens - self.rate_hold[request_id]

    def rate_charge(self, estimate_tokens: int) -> RateLimitCharge:
        return RateLimitCharge(RATE, "alice", estimate_tokens)

    def usage(self, request_id: str, tokens: int, cost: int) -> UsageRecord:
        """A settle's rollup, as the observer writes it: at the request's arrival, its cost."""
        arrived = self.arrived.get(request_id, self.now)
        return UsageRecord(
            arrived, Dimensions(user="alice"), Usage(input_tokens=tokens), cost, True
        )

    def audit(self, request_id: str, cost: int, *, correction: bool = False) -> None:
        records = self.records.setdefault(request_id, [])
        assert len(records) == (1 if correction else 0), "a request accounted for twice"
        records.append(cost)

    def charge(self, request_id: str, amount: int) -> None:
        assert request_id not in self.charged, "a request was charged twice"
        self.charged[request_id] = amount
        bucket = self.bucket[request_id] = int(self.now // 60)  # rolling: the settle's bucket
        self.hourly_buckets[bucket] = self.hourly_buckets.get(bucket, 0) + amount
        del self.live[request_id]

    def correct(self, request_id: str, amount: int) -> None:
        """A late settle (or release: 0) of a reaped request replaces the reaper's charge."""
        self.reaped.discard(request_id)
        bucket = self.bucket[request_id]
        self.hourly_buckets[bucket] += amount - self.charged[request_id]
        self.charged[request_id] = amount

    # -- rules ------------------------------------------------------------------------------

    @rule(target=requests, estimate=AMOUNTS, lease_s=st.sampled_from([30, 300]), tokens=TOKENS)
    def reserve(self, estimate: int, lease_s: int, tokens: int) -> str:
        request_id = f"req-{uuid.uuid4().hex[:8]}"
        held = sum(self.live.values())
        fits_monthly = sum(self.charged.values()) + held + estimate <= MONTHLY.limit_micros
        fits_hourly = self.hourly_spent() + held + estimate <= HOURLY.limit_micros
        rate_requests, rate_tokens = self.rate_used()
        assert RATE.requests is not None and RATE.tokens is not None
        fits_rate = rate_requests < RATE.requests and rate_tokens + tokens <= RATE.tokens
        charges = [Charge.of(b, "alice" if b is not WATCH else "*", estimate) for b in BUDGETS]
        facts = ReservationFacts(self.now, Dimensions(user="alice"), {"rid": request_id})
        result = self.run(
            self.store.reserve(
                request_id, charges, lease_s, self.now, [self.rate_charge(tokens)], facts
            )
        )
        assert result.admitted == (fits_monthly and fits_hourly and fits_rate)
        assert bool(result.rate_limited) == (not fits_rate)
        event("admitted" if result.admitted else "rejected")
        if not fits_rate:
            event("rate limited")
        assert not result.replayed
        (rate,) = result.rate_limits
        if result.admitted:  # at admission: used (incl. this) <= limit, in both dimensions
            assert rate.requests_used <= RATE.requests and rate.tokens_used <= RATE.tokens
            oldest = self.rate_oldest()
            self.rate = {b: v for b, v in self.rate.items() if b >= oldest}  # stale dropped
            bucket = int(self.now // RATE_BUCKET_S)
            counts = self.rate.setdefault(bucket, [0, 0])
            counts[0] += 1
            counts[1] += tokens
            self.rate_bucket[request_id] = bucket
            self.rate_hold[request_id] = tokens
        assert (rate.requests_used, rate.tokens_used) == self.rate_used()
        if result.admitted:
            for state in result.budgets:  # at admission: spent + held (incl. this) <= limit
                if state.budget.enforced:
                    assert state.spent_micros + state.held_micros <= state.limit_micros
            self.live[request_id] = estimate
            self.lease[request_id] = self.now + lease_s
            self.arrived[request_id] = self.now
            self.estimate[request_id] = estimate
        else:
            self.final[request_id] = ReservationState.UNKNOWN
        return request_id

    @rule(request_id=requests)
    def replay_reserve(self, request_id: str) -> None:
        if self.final.get(request_id) is ReservationState.UNKNOWN:
            return  # rejected: nothing was written, so a retry is a new reserve, not a replay
        estimate = self.live.get(request_id, 1)
        charges = [Charge.of(b, "alice" if b is not WATCH else "*", estimate) for b in BUDGETS]
        rate = [self.rate_charge(self.rate_hold.get(request_id, 0))]
        result = self.run(self.store.reserve(request_id, charges, 30, self.now, rate))
        assert result.replayed
        if request_id in self.live:
            assert result.admitted and result.state is ReservationState.RESERVED
        else:
            assert not result.admitted and result.state is self.final[request_id]

    @rule(request_id=requests, actual=AMOUNTS, tokens=TOKENS)
    def settle(self, request_id: str, actual: int, tokens: int) -> None:
        usage = self.usage(request_id, tokens, actual)
        result = self.run(self.store.settle(request_id, actual, self.now, usage))
        if request_id in self.live:
            assert (result.state, result.changed) == (ReservationState.SETTLED, True)
            assert result.reaped_micros is None
            self.rate_correct(request_id, tokens)
            self.charge(request_id, actual)
            self.audit(request_id, actual)
            self.final[request_id] = ReservationState.SETTLED
            event("settled")
        elif request_id in self.reaped:
            assert (result.state, result.changed) == (ReservationState.SETTLED, True)
            assert result.reaped_micros == self.charged[request_id]  # the reaper's record
            self.audit(request_id, actual - result.reaped_micros, correction=True)
            self.rate_correct(request_id, tokens)
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
            assert result.reaped_micros is None
            self.rate_correct(request_id, 0)
            del self.live[request_id]
            self.audit(request_id, 0)
            self.final[request_id] = ReservationState.RELEASED
        elif request_id in self.reaped:
            assert (result.state, result.changed) == (ReservationState.RELEASED, True)
            assert result.reaped_micros == self.charged[request_id]
            self.audit(request_id, 0 - result.reaped_micros, correction=True)
            self.rate_correct(request_id, 0)
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
            assert reaped.facts is not None and reaped.facts.audit == {"rid": request_id}
            assert reaped.rolled_micros == amount  # what its one record charges
            self.audit(request_id, amount)
            self.charge(request_id, amount)
            self.final[request_id] = ReservationState.EXPIRED
            self.reaped.add(request_id)
            event("reaped")

    # -- vanished records (a failover lost the reserve) ---------------------------------------

    def charges(self, estimate: int) -> tuple[Charge, ...]:
        return tuple(Charge.of(b, "alice" if b is not WATCH else "*", estimate) for b in BUDGETS)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def vanish(self, data: st.DataObject) -> None:
        """Redis loses a live reservation's reserve (async replication, AOF everysec): the
        record, its lease and its holds are gone, and the rate-limit counts it added."""
        request_id = data.draw(st.sampled_from(list(self.live)))
        estimate = self.live.pop(request_id)
        arrived = self.arrived[request_id]
        client = self.store.client

        async def lose() -> None:
            await client.delete(self.store.record_key(request_id))
            await client.zrem(self.store.leases_key, request_id)
            for budget in BUDGETS:
                scope = "alice" if budget is not WATCH else "*"
                key, _ = self.store.counter_key(budget, scope, arrived)
                await client.hincrby(key, "held", -estimate)
            bucket = self.rate_bucket[request_id]
            if bucket in self.rate:
                key = self.store.rate_limit_key(self.rate_charge(0))
                await client.hincrby(key, f"r:{bucket}", -1)
                await client.hincrby(key, f"t:{bucket}", -self.rate_hold[request_id])

        self.run(lose())
        bucket = self.rate_bucket[request_id]
        if bucket in self.rate:
            self.rate[bucket][0] -= 1
            self.rate[bucket][1] -= self.rate_hold[request_id]
        self.vanished[request_id] = None
        self.final[request_id] = ReservationState.UNKNOWN
        event("record vanished")

    @rule(request_id=requests, actual=AMOUNTS, tokens=TOKENS)
    def settle_through_services(self, request_id: str, actual: int, tokens: int) -> None:
        """The budget services' settle, with the handed-over charges: a vanished record's cost
        is owed as fail-open spend (in the windows of its arrival)."""
        if request_id not in self.arrived:
            return  # rejected: nothing is ever settled
        if_vanished = IfVanished(self.charges(self.estimate[request_id]), self.arrived[request_id])

        answers: list[SettleResult | None] = []

        async def settle() -> None:
            usage = self.usage(request_id, tokens, actual)
            self.services.settle(
                request_id, actual, usage, if_vanished=if_vanished, then=answers.append
            )
            await self.services.drain()

        self.run(settle())
        assert len(answers) == 1  # `then` is called exactly once
        answer = answers[0]
        if request_id in self.live:
            self.rate_correct(request_id, tokens)
            self.charge(request_id, actual)
            self.audit(request_id, actual)
            self.final[request_id] = ReservationState.SETTLED
            self.billed[request_id] = actual
        elif request_id in self.reaped:
            assert answer is not None and answer.reaped_micros == self.charged[request_id]
            self.audit(request_id, actual - answer.reaped_micros, correction=True)
            self.rate_correct(request_id, tokens)
            self.correct(request_id, actual)
            self.final[request_id] = ReservationState.SETTLED
            self.billed[request_id] = actual
        elif (
            request_id in self.vanished
            and self.final[request_id] is ReservationState.UNKNOWN
            and actual
            and request_id not in self.charged
            and request_id not in self.owed
        ):
            # The observer audits the real cost; the ledger takes it when it is reconciled.
            self.audit(request_id, actual)
            self.owed[request_id] = actual
            self.billed[request_id] = actual
            event("vanished record owed fail-open")

    @precondition(
        lambda self: any(self.final[r] is ReservationState.UNKNOWN for r in self.vanished)
    )
    @rule(data=st.data(), actual=AMOUNTS, tokens=TOKENS)
    def settle_a_vanished_one(self, data: st.DataObject, actual: int, tokens: int) -> None:
        gone = [r for r in self.vanished if self.final[r] is ReservationState.UNKNOWN]
        self.settle_through_services(data.draw(st.sampled_from(gone)), actual, tokens)

    @precondition(lambda self: self.owed)
    @rule()
    def reconcile_what_is_owed(self) -> None:
        self.reconcile()

    @rule()
    def reconcile(self) -> None:
        self.run(self.services.reconcile())
        for request_id, amount in self.owed.items():
            assert request_id not in self.charged, "a vanished request was charged twice"
            self.charged[request_id] = amount
            bucket = self.bucket[request_id] = int(self.arrived[request_id] // 60)
            self.hourly_buckets[bucket] = self.hourly_buckets.get(bucket, 0) + amount
            self.reconciled.add(request_id)
            event("vanished record charged")
        self.owed.clear()

    @invariant()
    def ledger_never_below_the_bill_nor_counted_twice(self) -> None:
        """Every cost reported through the services is charged once (`charged` refuses a second
        charge; the counters equal the model's), a vanished one once reconciled."""
        for request_id, amount in self.billed.items():
            if request_id not in self.owed:
                assert self.charged[request_id] == amount

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

    @invariant()
    def the_ledger_equals_the_audit_and_the_rollups(self) -> None:
        """Summing every record's cost gives the ledger; so does the spend rollup, which counts
        each request that ended billed (settled, or reaped and not refunded) exactly once."""
        ledger = self.run(self.store.status(MONTHLY, "alice", self.now)).spent_micros
        owed = sum(self.owed.values())  # audited, charged when reconciled
        assert sum(sum(costs) for costs in self.records.values()) == ledger + owed
        ended = {r for r in self.records if r not in self.live}
        assert ended == set(self.records)  # a live reservation has no record yet
        rolled = {"n": 0, "c": 0, "ce": 0}
        for key in self.run(self.client.keys(self.store.key_base + ":spend:*")):
            for name, value in self.run(self.client.hgetall(key)).items():
                metric = name.decode().rsplit("|", 1)[1]
                if metric in rolled:
                    rolled[metric] += int(value)
        billed = [
            r
            for r, state in self.final.items()
            if state in (ReservationState.SETTLED, ReservationState.EXPIRED)
        ] + sorted(self.reconciled)
        assert rolled == {"n": len(billed), "c": ledger, "ce": ledger}

    @invariant()
    def rate_limit_counters_match_the_model(self) -> None:
        key = self.store.rate_limit_key(self.rate_charge(0))
        fields = self.run(self.client.hgetall(key))
        stored: dict[int, list[int]] = {}
        for name, value in fields.items():
            kind, bucket = name.decode().split(":")
            stored.setdefault(int(bucket), [0, 0])[0 if kind == "r" else 1] += int(value)
        assert stored == self.rate
        assert all(v[1] >= 0 for v in stored.values())


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
