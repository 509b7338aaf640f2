"""The budget gate (the request-path adapter around the store) against a real redis-server.

The store is never faked: tests share a session redis-server (each test has its own key space),
and tests that pause or revive Redis start their own. Windows, leases and the circuit breaker
run on an injected clock; the gate's deadline is real time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.apis import Schema
from gateway_extproc.budgets.admission import Admission, Decision
from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.breaker import CircuitBreaker
from gateway_extproc.budgets.gate import BudgetGate, GateSettings
from gateway_extproc.budgets.model import (
    Action,
    Alerts,
    BudgetConfig,
    CalendarWindow,
    Match,
    OnRedisError,
    Period,
    RollingWindow,
    Scope,
    ScopeKind,
    Window,
)
from gateway_extproc.budgets.refusals import BudgetExceeded, BudgetUnavailable
from gateway_extproc.budgets.results import AlertCrossing, Charge
from gateway_extproc.budgets.settings import parse_budgets
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.models import Catalog, ModelEntry
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from tests.redis_servers import (  # noqa: F401 - redis_standalone_server is a session fixture
    RedisEndpoint,
    _server,
    _stop,
    _wait_ping,
    free_port,
    redis_standalone_server,
    standalone_redis,
)

T0 = dt.datetime(2026, 11, 24, 12, tzinfo=dt.UTC).timestamp()
DAY = 86_400.0
MONTH = CalendarWindow(Period.MONTH)
CATALOG = Catalog.load()
GPT4O, MINI, EMBEDDING = (
    CATALOG.lookup(n) for n in ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")
)
assert GPT4O is not None and MINI is not None and EMBEDDING is not None
# Every admission below: 1,000 input tokens, at most 100 output tokens.
GPT4O_COST = 3500  # 1,000 x $2.50/M + 100 x $10/M
MINI_COST = 210  # 1,000 x $0.15/M + 100 x $0.60/M
USER = "alice@example.com"
ALICE = Identity(
    kind=Kind.USER,
    auth_method=AuthMethod.JWT,
    user=USER,
    service=None,
    groups=frozenset({"engineering"}),
    issuer="idp",
    attributes={},
    expires_at=None,
)
SCOPE_VALUE = {ScopeKind.USER: USER, ScopeKind.GROUP: "engineering", ScopeKind.GLOBAL: "*"}
SETTINGS = GateSettings(
    deadline_s=0.5, lease_s=60.0, breaker_failures=3, breaker_open_s=5.0, reap_interval_s=1.0
)
STORE_COMMANDS = ("evalsha", "eval", "hgetall", "zrangebyscore", "script|load", "script")


def budget(
    name: str,
    limit_micros: int,
    action: Action = Action.BLOCK,
    *,
    kind: ScopeKind = ScopeKind.USER,
    models: tuple[str, ...] | None = None,
    downgrade_to: str = "gpt-4o-mini",
    on_error: OnRedisError = OnRedisError.FAIL_CLOSED,
    window: Window = MONTH,
    thresholds: tuple[int, ...] = (),
) -> BudgetConfig:
    return BudgetConfig(
        name=name,
        scope=Scope(kind),
        limit_micros=limit_micros,
        window=window,
        action=action,
        match=Match(models=models),
        downgrade_to=downgrade_to if action is Action.DOWNGRADE else None,
        alerts=Alerts(thresholds_percent=thresholds),
        on_redis_error=on_error,
    )


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingAlerts:
    """Stands in for AlertSender's request-path interface only: records what `send` is given."""

    def __init__(self) -> None:
        self.sent: list[AlertCrossing] = []

    def send(self, crossings: Iterable[AlertCrossing]) -> None:
        self.sent.extend(crossings)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass


class Harness:
    """Gates on real Redis sharing one fresh key space; drained and closed at teardown."""

    def __init__(self, endpoint: RedisEndpoint) -> None:
        self.endpoint = endpoint
        self.tag = uuid.uuid4().hex[:10]
        self.clients: list[Redis] = []
        self.gates: list[BudgetGate] = []
        self._endpoints: dict[int, RedisEndpoint] = {}  # id(gate) -> its Redis, if not ours

    def client(self, endpoint: RedisEndpoint | None = None) -> Redis:
        ep = endpoint or self.endpoint
        # As build_gate makes it: no client-side retries, bounded socket waits.
        client = Redis(
            host=ep.host,
            port=ep.port,
            socket_timeout=2.0,
            socket_connect_timeout=1.0,
            retry=Retry(NoBackoff(), 0),
        )
        self.clients.append(client)
        return client

    async def gate(
        self,
        budgets: Sequence[BudgetConfig],
        *,
        endpoint: RedisEndpoint | None = None,
        clock: Clock | None = None,
        alerts: RecordingAlerts | None = None,
        catalog: Catalog = CATALOG,
        **settings: Any,
    ) -> BudgetGate:
        store = BudgetStore(self.client(endpoint), prefix=f"t{self.tag}", hash_tag=self.tag)
        gate = BudgetGate(
            store,
            budgets,
            catalog,
            lambda entry: entry.provider,
            dataclasses.replace(SETTINGS, **settings),
            alerts=cast(AlertSender, alerts),
            clock=clock or Clock(),
        )
        await gate.start()
        self.gates.append(gate)
        if endpoint is not None:
            self._endpoints[id(gate)] = endpoint
        return gate

    async def close(self) -> None:
        """Let each gate's background settles land, where they can: one whose Redis is gone
        (never there, or stopped by the test) has none that can, and waiting for them would
        only run out drain()'s 5 s."""
        for gate in self.gates:
            if await _answers(self._endpoints.get(id(gate), self.endpoint)):
                await gate.drain()
        for client in self.clients:
            await client.aclose()


async def _answers(endpoint: RedisEndpoint) -> bool:
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port), 1.0
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    await writer.wait_closed()
    return True


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(request.getfixturevalue("redis_standalone_server"))
    yield h
    await h.close()


@pytest.fixture
def own_redis() -> Iterator[RedisEndpoint]:
    """A redis-server of the test's own, free to pause."""
    with standalone_redis() as endpoint:
        yield endpoint


async def admit(
    gate: BudgetGate,
    request_id: str = "req-1",
    *,
    entry: ModelEntry = GPT4O,
    requested: str | None = None,
    allowed: Callable[[ModelEntry], bool] = lambda e: True,
) -> Admission:
    return await gate.admit(
        reservation_id=request_id,
        identity=ALICE,
        entry=entry,
        requested=requested or entry.name,
        bound_for=lambda e: Bound(1000, 0 if e.embedding else 100, None, None),
        allowed=allowed,
    )


async def counter(gate: BudgetGate, b: BudgetConfig, now: float = T0) -> tuple[int, int]:
    """(spent, held) of the budget's counter for ALICE in the window at `now`."""
    assert gate.store is not None
    status = await gate.store.status(b, SCOPE_VALUE[b.scope.kind], now)
    return status.spent_micros, status.held_micros


async def record_state(gate: BudgetGate, request_id: str) -> str | None:
    assert gate.store is not None
    state = await gate.store._client.hget(gate.store.record_key(request_id), "state")
    return None if state is None else state.decode()


async def store_commands(client: Redis) -> int:
    """Commands of the kinds the budget store sends, served so far by this redis-server."""
    stats = await client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in STORE_COMMANDS)


# -- the circuit breaker (pure) --------------------------------------------------------------

# One event per word: fail@t, ok (a success), allow@t / deny@t (what allow(t) must answer),
# opened=n (how often it opened). failures=3, open_s=10.
BREAKER_CASES = {
    "opens after 3 consecutive failures": "fail@0 fail@1 allow@1 fail@2 opened=1 deny@2 deny@11.9",
    "a success resets the count": "fail@0 fail@0 ok fail@1 fail@1 allow@1 fail@1 deny@1",
    "half-open after open_s lets one call through": "fail@2 fail@2 fail@2 allow@12 deny@12 deny@13",
    "a successful trial closes it": (
        "fail@2 fail@2 fail@2 allow@12 ok allow@12 allow@12 fail@12 allow@12 opened=1"
    ),
    "a failed trial re-opens it for open_s": (
        "fail@2 fail@2 fail@2 allow@12 fail@12 deny@13 deny@21.9 allow@22"
    ),
}


@pytest.mark.parametrize("events", BREAKER_CASES.values(), ids=BREAKER_CASES.keys())
def test_circuit_breaker(events: str) -> None:
    breaker = CircuitBreaker(failures=3, open_s=10.0)
    for event in events.split():
        op, _, arg = event.replace("=", "@").partition("@")
        if op == "fail":
            breaker.failure(float(arg))
        elif op == "ok":
            breaker.success()
        elif op == "opened":
            assert breaker.opened == int(arg), event
        else:
            assert breaker.allow(float(arg)) is (op == "allow"), event


# -- estimate and charges (no Redis) ---------------------------------------------------------


def test_estimate_in_micro_dollars() -> None:
    gate = BudgetGate(None, (), CATALOG, lambda e: e.provider, SETTINGS)
    assert gate.estimate(Bound(1000, 100, None, None), GPT4O) == GPT4O_COST
    assert gate.estimate(Bound(1000, 100, None, None), MINI) == MINI_COST


CHARGE_BUDGETS = (
    budget("on-alias", 10**7, models=("gpt-4o-2024-08-06",)),
    budget("on-canonical", 10**7, models=("gpt-4o",)),
    budget("on-family", 10**7, models=("gpt-4o*",)),  # matches the alias and the name
    budget("per-group", 10**7, kind=ScopeKind.GROUP),
    budget("everyone", 10**7, Action.MONITOR, kind=ScopeKind.GLOBAL),
    budget("claude-only", 10**7, models=("claude-*",)),
    BudgetConfig("fixed-model", Scope(ScopeKind.MODEL, value="gpt-4o"), 10**7, MONTH, Action.BLOCK),
)


@pytest.mark.parametrize(
    ("requested", "expected"),
    [
        (
            "gpt-4o-2024-08-06",
            {"on-alias", "on-canonical", "on-family", "per-group", "everyone", "fixed-model"},
        ),
        ("gpt-4o", {"on-canonical", "on-family", "per-group", "everyone", "fixed-model"}),
    ],
)
def test_charges_cover_alias_and_canonical_once(requested: str, expected: set[str]) -> None:
    two_groups = dataclasses.replace(ALICE, groups=frozenset({"engineering", "research"}))
    gate = BudgetGate(None, CHARGE_BUDGETS, CATALOG, lambda e: e.provider, SETTINGS)
    charges = gate.charges(two_groups, GPT4O, requested, 777)
    keys = [(c.budget.name, c.scope_value) for c in charges]
    assert len(keys) == len(set(keys)), keys
    assert {name for name, _ in keys} == expected
    assert ("per-group", "engineering") in keys and ("per-group", "research") in keys
    assert all(c.estimate_micros == 777 and c.limit_micros == 10**7 for c in charges)


# -- admit -----------------------------------------------------------------------------------


async def test_no_applicable_budget_is_decided_without_redis(harness: Harness) -> None:
    gate = await harness.gate([budget("claude-only", 1, models=("claude-*",))])
    control = harness.client()
    before = await store_commands(control)
    admission = await admit(gate)
    gate.settle_or_release(admission, 1234)
    await gate.drain()
    assert admission.decision is Decision.NONE and admission.entry is GPT4O
    assert not admission.reserved and admission.charges == ()
    assert await store_commands(control) == before
    assert gate.store_errors == 0


async def test_admitted_holds_the_estimate_in_every_budget(harness: Harness) -> None:
    budgets = [
        budget("user", 10**7),
        budget("team", 10**7, Action.DOWNGRADE, kind=ScopeKind.GROUP),
        budget("everyone", 10**8, Action.MONITOR, kind=ScopeKind.GLOBAL),
    ]
    gate = await harness.gate(budgets)
    admission = await admit(gate)
    assert admission.decision is Decision.ADMITTED and admission.entry is GPT4O
    assert admission.reserved and not admission.would_block
    assert admission.downgraded_from is None and admission.arrived == T0
    assert [await counter(gate, b) for b in budgets] == [(0, GPT4O_COST)] * 3
    assert admission.most_constrained is not None
    assert admission.most_constrained.budget.name == "user"


TINY = budget("tiny", 3000)
SMALL = budget("small", 10_000)
ROLLING = budget("hourly", 10_000, window=RollingWindow(3600, 60))
GLOBAL = budget("all", 3000, kind=ScopeKind.GLOBAL)


@pytest.mark.parametrize(
    ("b", "prior", "retry_after", "message"),
    [
        pytest.param(
            TINY,
            None,
            3600,  # the estimate alone exceeds the limit: waiting never helps
            "budget 'tiny' for user alice@example.com is exhausted: $0.000000 spent and "
            "$0.000000 reserved of $0.003000 this month",
            id="estimate above the limit",
        ),
        pytest.param(
            SMALL,
            ("spend", T0),
            int(dt.datetime(2026, 12, 1, tzinfo=dt.UTC).timestamp() - T0),  # the month's end
            "budget 'small' for user alice@example.com is exhausted: $0.008000 spent and "
            "$0.000000 reserved of $0.010000 this month",
            id="spent this month",
        ),
        pytest.param(
            SMALL,
            ("hold", T0),
            3600,  # held by a live request: no telling when it ends
            "budget 'small' for user alice@example.com is exhausted: $0.000000 spent and "
            "$0.008000 reserved of $0.010000 this month",
            id="held by another request",
        ),
        pytest.param(
            ROLLING,
            ("spend", T0 - 600),
            3000,  # when the spend of ten minutes ago leaves the hour
            "budget 'hourly' for user alice@example.com is exhausted: $0.008000 spent and "
            "$0.000000 reserved of $0.010000 in the last 60 minutes",
            id="rolling window",
        ),
        pytest.param(
            GLOBAL,
            None,
            3600,
            "budget 'all' for everyone is exhausted: $0.000000 spent and $0.000000 reserved "
            "of $0.003000 this month",
            id="global budget",
        ),
    ],
)
async def test_block_budget_without_room_is_429(
    harness: Harness,
    b: BudgetConfig,
    prior: tuple[str, float] | None,
    retry_after: int,
    message: str,
) -> None:
    gate = await harness.gate([b])
    assert gate.store is not None
    before = (0, 0)
    if prior is not None:
        how, when = prior
        charge = Charge.of(b, SCOPE_VALUE[b.scope.kind], 8000)
        assert (await gate.store.reserve("prior", [charge], 60, when)).admitted
        if how == "spend":
            await gate.store.settle("prior", 8000, when)
            before = (8000, 0)
        else:
            before = (0, 8000)
    with pytest.raises(BudgetExceeded) as raised:
        await admit(gate)
    exc = raised.value
    assert (exc.status, exc.code) == (429, "budget_exceeded")
    assert exc.headers == {"retry-after": str(retry_after)}
    assert exc.message == f"{message}; this request could cost up to $0.003500"
    assert await counter(gate, b) == before
    assert await record_state(gate, "req-1") is None


async def test_one_refusing_budget_holds_nothing_anywhere(harness: Harness) -> None:
    budgets = [
        budget("user", 10**7),
        budget("team", 3000, kind=ScopeKind.GROUP),
        budget("everyone", 10**8, Action.MONITOR, kind=ScopeKind.GLOBAL),
        budget("models", 10**7, Action.DOWNGRADE, kind=ScopeKind.GLOBAL),
    ]
    gate = await harness.gate(budgets)
    with pytest.raises(BudgetExceeded, match="budget 'team' for group engineering"):
        await admit(gate)
    assert [await counter(gate, b) for b in budgets] == [(0, 0)] * 4
    assert await record_state(gate, "req-1") is None
    assert gate.store is not None
    assert await gate.store._client.zcard(gate.store.leases_key) == 0


@pytest.mark.parametrize(
    ("budgets", "holds"),
    [
        pytest.param(
            [budget("gpt4o-cap", 3000, Action.DOWNGRADE, models=("gpt-4o",)), SMALL],
            [(0, 0), (0, MINI_COST)],
            id="capped on gpt-4o only",
        ),
        pytest.param(
            [budget("gpt4o-cap", 3000, Action.DOWNGRADE), SMALL],
            [(0, MINI_COST), (0, MINI_COST)],
            id="the fallback fits the same budget",
        ),
    ],
)
async def test_downgrade_budget_without_room_serves_the_fallback(
    harness: Harness, budgets: list[BudgetConfig], holds: list[tuple[int, int]]
) -> None:
    gate = await harness.gate(budgets)
    admission = await admit(gate)
    assert admission.decision is Decision.DOWNGRADED
    assert admission.entry is MINI and admission.reserved
    assert (admission.downgraded_from, admission.downgrade_budget) == ("gpt-4o", "gpt4o-cap")
    assert {c.estimate_micros for c in admission.charges} == {MINI_COST}
    assert [await counter(gate, b) for b in budgets] == holds
    gate.settle_or_release(admission, 100)
    await gate.drain()
    assert [await counter(gate, b) for b in budgets] == [(100 if h else 0, 0) for _, h in holds]


@pytest.mark.parametrize(
    ("budgets", "refused_by"),
    [
        pytest.param(
            [budget("cap", 200, Action.DOWNGRADE)], "'cap'", id="fallback over the same budget"
        ),
        pytest.param(
            [
                budget("cap", 3000, Action.DOWNGRADE, models=("gpt-4o",)),
                budget("mini-cap", 100, models=("gpt-4o-mini",)),
            ],
            "'mini-cap'",
            id="fallback over its own block budget",
        ),
        pytest.param(
            [budget("cap", 3000, Action.DOWNGRADE), budget("hard", 3000)],
            "'hard'",
            id="a block budget refuses as well",
        ),
        pytest.param(
            [budget("cap", 3000, Action.DOWNGRADE, downgrade_to="no-such-model")],
            "'cap'",
            id="fallback not in the catalog",
        ),
    ],
)
async def test_downgrade_that_cannot_be_served_is_429(
    harness: Harness, budgets: list[BudgetConfig], refused_by: str
) -> None:
    gate = await harness.gate(budgets)
    with pytest.raises(BudgetExceeded, match=f"budget {refused_by} for ") as raised:
        await admit(gate)
    assert raised.value.status == 429
    assert [await counter(gate, b) for b in budgets] == [(0, 0)] * len(budgets)
    assert await record_state(gate, "req-1") is None


@pytest.mark.parametrize("reachable", [True, False])
async def test_downgrades_across_api_schemas_only_where_the_caller_allows(
    harness: Harness, reachable: bool
) -> None:
    """The cheap target speaks another API: the gate downgrades to it when the caller says the
    request can reach it (the processor: a translation exists), else refuses rather than send
    a request that cannot be served."""
    price = Price(input=10**6, output=10**6, cached_input=10**6, cache_write=10**6, reasoning=0)
    big = ModelEntry("big-chat", "p", Schema.OPENAI, 1000, dataclasses.replace(price, input=10**7))
    cheap = ModelEntry("cheap-messages", "q", Schema.ANTHROPIC, 1000, price)
    cap = budget("cap", 5000, Action.DOWNGRADE, downgrade_to="cheap-messages")
    gate = await harness.gate([cap], catalog=Catalog([big, cheap]))
    assert (
        gate.estimate(Bound(1000, 100, None, None), cheap)
        < cap.limit_micros
        < gate.estimate(Bound(1000, 100, None, None), big)
    )

    def allowed(e: ModelEntry) -> bool:
        return reachable or e.schema is Schema.OPENAI

    if reachable:
        admission = await admit(gate, entry=big, allowed=allowed)
        assert admission.entry is cheap and admission.downgraded_from == "big-chat"
        return
    with pytest.raises(BudgetExceeded, match="budget 'cap' for user"):
        await admit(gate, entry=big, allowed=allowed)
    assert await counter(gate, cap) == (0, 0)


async def test_monitor_budget_without_room_admits_and_reports(harness: Harness) -> None:
    watch = budget("watch", 3000, Action.MONITOR)
    gate = await harness.gate([watch, SMALL])
    admission = await admit(gate)
    assert admission.decision is Decision.ADMITTED and admission.entry is GPT4O
    assert admission.would_block and admission.reserved
    assert admission.most_constrained is not None
    assert admission.most_constrained.budget is watch
    assert await counter(gate, watch) == (0, GPT4O_COST)


# -- settle_or_release -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("costs", "spent", "state"),
    [
        ([1234], 1234, "SETTLED"),
        ([0], 0, "SETTLED"),
        ([None], 0, "RELEASED"),
        ([1234, 999], 1234, "SETTLED"),  # a second settle_or_release changes nothing
        ([None, 1234], 0, "RELEASED"),
    ],
)
async def test_finish_settles_or_releases_once(
    harness: Harness, costs: list[int | None], spent: int, state: str
) -> None:
    gate = await harness.gate([SMALL])
    admission = await admit(gate)
    for cost in costs:
        gate.settle_or_release(admission, cost)
    await gate.drain()
    assert admission.settled
    assert await counter(gate, SMALL) == (spent, 0)
    assert await record_state(gate, "req-1") == state


async def test_settle_passes_threshold_crossings_to_the_alert_sender(harness: Harness) -> None:
    alerts = RecordingAlerts()
    watched = budget("watched", 10_000, thresholds=(50, 80, 100))
    gate = await harness.gate([watched], alerts=alerts)
    first = await admit(gate, "req-1")
    second = await admit(gate, "req-2")
    gate.settle_or_release(first, 6000)
    await gate.drain()
    gate.settle_or_release(second, 2500)
    await gate.drain()
    assert [(a.threshold_percent, a.spent_micros) for a in alerts.sent] == [(50, 6000), (80, 8500)]
    assert {(a.budget, a.scope_value, a.window_id, a.limit_micros) for a in alerts.sent} == {
        ("watched", USER, "2026-11", 10_000)
    }


# -- Redis trouble ---------------------------------------------------------------------------

DEAD_POLICIES = {
    "fail_closed": ([OnRedisError.FAIL_CLOSED], "closed-0"),
    "fail_open": ([OnRedisError.FAIL_OPEN], None),
    "one fail_closed among fail_open": (
        [OnRedisError.FAIL_OPEN, OnRedisError.FAIL_CLOSED, OnRedisError.FAIL_OPEN],
        "closed-1",
    ),
}


# Far above any deadline these tests set (0.1 - 0.2 s), far below the 10 s a paused Redis holds a
# script: a call that outlives it waited on Redis instead of its deadline. Never reached otherwise,
# however slow the machine.
NOT_A_HANG_S = 5.0


async def until_blocked(control: Redis, clients: int) -> None:
    """Wait until `clients` connections wait behind CLIENT PAUSE (their commands are queued)."""
    for _ in range(1000):  # 10 s at most: only a failure ever waits that long
        if (await control.info("clients"))["blocked_clients"] >= clients:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"fewer than {clients} clients waiting behind the pause")


@pytest.mark.parametrize(("policies", "closed"), DEAD_POLICIES.values(), ids=DEAD_POLICIES.keys())
async def test_unreachable_store_applies_each_budgets_policy(
    harness: Harness, policies: list[OnRedisError], closed: str | None
) -> None:
    dead = RedisEndpoint("127.0.0.1", free_port())
    budgets = [
        budget(f"{p.value.split('_')[1]}-{i}", 10**7, on_error=p) for i, p in enumerate(policies)
    ]
    gate = await harness.gate(budgets, endpoint=dead, deadline_s=0.2)
    started = time.monotonic()
    if closed is not None:
        with pytest.raises(BudgetUnavailable, match=f"budgets {closed} are fail_closed") as raised:
            await admit(gate)
        assert (raised.value.status, raised.value.code) == (503, "budget_store_unavailable")
    else:
        admission = await admit(gate)
        assert admission.decision is Decision.FAIL_OPEN and admission.entry is GPT4O
        assert not admission.reserved and len(admission.charges) == len(budgets)
        assert gate.fail_open_admitted == 1
    assert time.monotonic() - started < NOT_A_HANG_S
    assert gate.store_errors == 1


async def test_hanging_store_meets_the_deadline_then_the_breaker_fails_fast(
    harness: Harness, own_redis: RedisEndpoint
) -> None:
    clock = Clock()
    closed, opened = budget("closed", 10**7), budget("open", 10**7, on_error=OnRedisError.FAIL_OPEN)
    gate = await harness.gate([closed], endpoint=own_redis, clock=clock, deadline_s=0.2)
    lenient = await harness.gate([opened], endpoint=own_redis, clock=clock, deadline_s=0.2)
    control = harness.client(own_redis)
    await control.client_pause(10_000, all=False)  # scripts wait; reads still answer
    try:
        for i in range(3):  # breaker_failures: each waits out the deadline
            started = time.monotonic()
            with pytest.raises(BudgetUnavailable):
                await admit(gate, f"slow-{i}")
            assert 0.2 <= time.monotonic() - started < NOT_A_HANG_S  # waited the deadline
        with pytest.raises(BudgetUnavailable):
            await admit(gate, "fast")
        # Refused by the open breaker without a store call (a call would have timed out and
        # counted a fourth store error).
        assert gate.store_errors == 3 and gate.breaker.opened == 1
        admission = await admit(lenient, "lenient")  # the other gate's breaker is closed
        assert admission.decision is Decision.FAIL_OPEN
    finally:
        await control.client_unpause()
    clock.now += SETTINGS.breaker_open_s  # half-open: one trial call, which succeeds
    admission = await admit(gate, "after")
    assert admission.decision is Decision.ADMITTED
    assert gate.breaker.opened_at is None and gate.breaker.consecutive == 0
    await gate.drain()
    assert await counter(gate, closed) == (0, GPT4O_COST)


async def test_a_settle_is_retried_until_redis_has_it(
    harness: Harness, own_redis: RedisEndpoint
) -> None:
    """Not dropped after a few attempts: a settle keeps trying while Redis holds its scripts,
    and lands exactly once when Redis answers again."""
    b = budget("b", 10**7)
    gate = await harness.gate([b], endpoint=own_redis, deadline_s=0.2)
    gate.services.attempt_timeout_s = 0.1
    admission = await admit(gate, "patient")
    control = harness.client(own_redis)
    await control.client_pause(60_000, all=False)  # scripts wait; reads still answer
    try:
        gate.settle_or_release(admission, 1234)
        for _ in range(1000):  # until more attempts failed than the old code ever made (3)
            if gate.services.stats.settle_retries >= 5:
                break
            await asyncio.sleep(0.01)
        assert gate.services.stats.settle_retries >= 5
        assert await counter(gate, b) == (0, GPT4O_COST)  # still held, nothing charged yet
    finally:
        await control.client_unpause()
    await gate.drain(NOT_A_HANG_S * 4)
    assert await counter(gate, b) == (1234, 0)
    assert await record_state(gate, "patient") == "SETTLED"


async def test_fail_open_spend_is_reconciled_once_when_redis_is_back(harness: Harness) -> None:
    clock = Clock()
    port = free_port()
    opened = budget("open", 10**7, on_error=OnRedisError.FAIL_OPEN)
    gate = await harness.gate([opened], endpoint=RedisEndpoint("127.0.0.1", port), clock=clock)
    admission = await admit(gate, "down")
    assert admission.decision is Decision.FAIL_OPEN
    gate.settle_or_release(admission, 2500)
    gate.settle_or_release(admission, 2500)
    assert await gate.reconcile() == 0  # still down: kept for later
    with tempfile.TemporaryDirectory(prefix="redis-") as tmp:
        proc = _server(Path(tmp), port)
        try:
            _wait_ping(proc, port)
            clock.now = T0 + 10 * DAY  # back in December, after the breaker's open_s
            assert await gate.reconcile() == 1
            assert await gate.reconcile() == 0
            await gate.reap_once()
            assert await counter(gate, opened) == (2500, 0)  # in November, when it arrived
            assert await counter(gate, opened, clock.now) == (0, 0)
        finally:
            _stop(proc)


async def test_fail_open_after_a_timeout_is_still_reconciled(
    harness: Harness, own_redis: RedisEndpoint
) -> None:
    """A reserve that timed out is released in the background, which leaves a tombstone on the
    request id: reconciling that request must still charge what it cost."""
    opened = budget("open", 10**7, on_error=OnRedisError.FAIL_OPEN)
    gate = await harness.gate([opened], endpoint=own_redis, deadline_s=0.2)
    control = harness.client(own_redis)
    await control.client_pause(10_000, all=False)
    try:
        admission = await admit(gate, "slow")
    finally:
        await control.client_unpause()
    assert admission.decision is Decision.FAIL_OPEN
    await gate.drain()  # the background release ran
    assert await record_state(gate, "slow") == "RELEASED"
    gate.settle_or_release(admission, 2500)
    assert await gate.reconcile() == 1
    assert await gate.reconcile() == 0
    assert await counter(gate, opened) == (2500, 0)


@pytest.mark.parametrize("lands", ["before the release", "after the release"])
async def test_a_timed_out_reserve_that_lands_late_holds_nothing(
    harness: Harness, own_redis: RedisEndpoint, lands: str
) -> None:
    """redis-py drops the connection of a cancelled call, so the gate's own timed-out reserve
    never runs on a paused server; a second client plays the same reserve still on the wire."""
    gate = await harness.gate([SMALL], endpoint=own_redis, deadline_s=0.1)
    wire = BudgetStore(harness.client(own_redis), prefix=f"t{harness.tag}", hash_tag=harness.tag)
    charges = [Charge.of(SMALL, USER, GPT4O_COST)]
    control = harness.client(own_redis)
    await control.client_pause(10_000, all=False)  # scripts wait behind the pause
    try:
        early = None
        if lands == "before the release":
            early = asyncio.ensure_future(wire.reserve("late", charges, 60, T0))
            await until_blocked(control, 1)  # queued in Redis ahead of the gate's calls
        with pytest.raises(BudgetUnavailable):
            await admit(gate, "late")
        # The gate's background release runs after the early reserve whenever it reaches Redis:
        # that one is queued first, and scripts run in arrival order.
    finally:
        await control.client_unpause()
    await gate.drain()
    if early is not None:
        assert (await early).admitted  # it did hold, until the release dropped it
    else:
        replay = await wire.reserve("late", charges, 60, T0)  # lands on the tombstone
        assert (replay.admitted, replay.replayed) == (False, True)
    assert await counter(gate, SMALL) == (0, 0)
    assert await record_state(gate, "late") == "RELEASED"


# -- leases ----------------------------------------------------------------------------------


async def test_reaper_charges_expired_leases(harness: Harness) -> None:
    clock, alerts = Clock(), RecordingAlerts()
    watched = budget("watched", 8000, thresholds=(50,))
    gate = await harness.gate([watched], clock=clock, alerts=alerts, lease_s=1.0)
    crashed = await admit(gate, "crashed")
    streaming = await admit(gate, "streaming")
    assert await counter(gate, watched) == (0, 2 * GPT4O_COST)
    clock.now = T0 + 0.8
    await gate.checkpoint("streaming", 1000)  # cost so far; the lease now ends at T0 + 1.8
    clock.now = T0 + 1.5
    await gate.reap_once()  # only "crashed" expired: charged its estimate
    assert await counter(gate, watched) == (GPT4O_COST, GPT4O_COST)
    assert alerts.sent == []
    clock.now = T0 + 2.0
    await gate.reap_once()  # "streaming" expired: charged its checkpoint
    assert await counter(gate, watched) == (GPT4O_COST + 1000, 0)
    assert [(a.budget, a.threshold_percent) for a in alerts.sent] == [("watched", 50)]
    # The sidecar was only slow (say Redis was out of its reach): its late settles correct the
    # reaper's charges to the real costs, once.
    gate.settle_or_release(crashed, 100)
    gate.settle_or_release(streaming, 1500)
    await gate.drain()
    assert await counter(gate, watched) == (100 + 1500, 0)
    assert await record_state(gate, "crashed") == "SETTLED"


async def test_held_leases_are_renewed_with_their_cost_until_dropped(harness: Harness) -> None:
    """One task renews every response's lease (not one task per request): a response that runs
    longer than lease_s / 3 is checkpointed with its cost so far, so the reaper never charges a
    live stream, and a dropped lease is renewed no more."""
    clock = Clock()
    watched = budget("watched", 8000)
    gate = await harness.gate([watched], clock=clock, lease_s=0.6)
    await admit(gate, "long")
    await admit(gate, "short")
    assert gate.store is not None
    services = gate.services
    services.hold_lease("long", lambda: 700)
    services.hold_lease("short", lambda: 300)
    services.drop_lease("short")  # finished at once: never renewed
    key = gate.store.record_key

    async def partial(rid: str) -> bytes | None:
        value: bytes | None = await gate.store._client.hget(key(rid), "partial")  # type: ignore[union-attr]
        return value

    clock.now = T0 + 0.25  # past lease_s / 3 for the renewal task (it reads the gate's clock)
    deadline = asyncio.get_running_loop().time() + 5
    while await partial("long") is None:
        assert asyncio.get_running_loop().time() < deadline, "the lease was never renewed"
        await asyncio.sleep(0.02)
    assert await partial("long") == b"700"
    assert await partial("short") is None
    services.drop_lease("long")
    assert services._leases.held == {}


def test_an_alias_and_its_model_share_one_model_scoped_counter() -> None:
    """Each-model budgets are keyed by the catalog name, whatever alias the client sent."""
    problems: list[str] = []
    budgets = parse_budgets(
        [
            {
                "name": "per-model",
                "scope": {"kind": "model"},
                "limit_usd": 10,
                "window": {"type": "calendar", "period": "month"},
                "action": "block",
            }
        ],
        problems,
    )
    assert problems == []
    catalog = Catalog.load()
    entry = catalog.lookup("gpt-4o-2024-08-06")
    assert entry is not None and entry.name == "gpt-4o"
    gate = BudgetGate(None, budgets, catalog, lambda e: e.provider, GateSettings())
    anyone = Identity(
        Kind.USER, AuthMethod.JWT, "u@example.com", None, frozenset(), "dev", {}, None
    )
    charges = gate.charges(anyone, entry, "gpt-4o-2024-08-06", 100)
    assert [(c.budget.name, c.scope_value) for c in charges] == [("per-model", "gpt-4o")]
