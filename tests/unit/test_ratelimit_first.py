"""Rate limits checked before a large prompt's scan (request/ratelimit_first.py), on a real
redis-server: the peek counts nothing, agrees with what the reservation decides, refuses with
the reservation's own 429, and lets requests through when Redis fails (rate limits fail open)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from gateway_extproc.budgets.gate import BudgetGate
from gateway_extproc.budgets.ratelimits.model import RateLimitAction, RateLimitCharge
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.errors import CostUnbounded
from gateway_extproc.request import ratelimit_first as first
from tests.redis_servers import RedisEndpoint
from tests.unit.test_budget_gate import (  # noqa: F401 - fixtures
    ALICE,
    CATALOG,
    GPT4O,
    NOT_A_HANG_S,
    Harness,
    free_port,
    redis_standalone_server,
)
from tests.unit.test_ratelimit_gate import admit, bound_for, counted, limit, make_gate


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(request.getfixturevalue("redis_standalone_server"))
    yield h
    await h.close()


async def check(gate: BudgetGate, bound: object = bound_for) -> None:
    await first.refuse_if_over(
        gate,
        identity=ALICE,
        entry=GPT4O,
        requested=GPT4O.name,
        bound_for=bound,  # type: ignore[arg-type]
    )


async def test_the_peek_counts_nothing_and_agrees_with_the_reservation(harness: Harness) -> None:
    rpm = limit(requests=2)
    gate = await make_gate(harness, (rpm,))
    for _ in range(5):
        await check(gate)  # room: nothing raised, nothing counted
    assert await counted(gate, rpm, b"r") == 0
    await admit(gate, "a")
    await check(gate)
    await admit(gate, "b")
    with pytest.raises(RateLimited) as peeked:
        await check(gate)
    with pytest.raises(RateLimited) as reserved:
        await admit(gate, "c")
    assert await counted(gate, rpm, b"r") == 2
    # The same 429 the reservation gives: message, headers (retry-after included), states.
    assert peeked.value.message == reserved.value.message
    assert peeked.value.headers == reserved.value.headers
    assert [s.requests_used for s in peeked.value.states] == [2]


async def test_token_limits_are_peeked_with_the_request_s_bound(harness: Harness) -> None:
    tpm = limit(tokens=2000)  # one bound (1,100 tokens) fits, two do not
    gate = await make_gate(harness, (tpm,))
    await check(gate)
    await admit(gate, "a")
    with pytest.raises(RateLimited, match="may use up to 1100"):
        await check(gate)


async def test_monitor_limits_and_no_limit_cost_no_round_trip(harness: Harness) -> None:
    watch = limit(requests=1, action=RateLimitAction.MONITOR)
    gate = await make_gate(harness, (watch,))
    await admit(gate, "a")
    calls: list[object] = []
    store = gate.store
    assert store is not None
    real = store.peek_rate_limits

    async def spy(limits: tuple[RateLimitCharge, ...], now: float) -> object:
        calls.append(limits)
        return await real(limits, now)

    store.peek_rate_limits = spy  # type: ignore[method-assign]
    await check(gate)  # a monitor limit never refuses: not asked
    other = await make_gate(harness, (limit("gpt4o-only", requests=1, models=("gpt-4o",)),))
    await first.refuse_if_over(
        other, identity=ALICE, entry=GPT4O, requested="gpt-4o-mini", bound_for=bound_for
    )
    assert calls == []


async def test_an_unbounded_request_is_left_to_the_reservation(harness: Harness) -> None:
    gate = await make_gate(harness, (limit(tokens=10),))

    def unbounded(entry: object) -> Bound:
        raise CostUnbounded("no output cap")

    await check(gate, unbounded)  # the reservation answers it with its own 400


async def test_an_unreachable_store_lets_the_request_through(harness: Harness) -> None:
    dead = RedisEndpoint("127.0.0.1", free_port())
    gate = await harness.gate([], endpoint=dead, deadline_s=0.2)
    gate = BudgetGate(
        gate.store,
        (),
        CATALOG,
        lambda e: e.provider,
        gate.settings,
        rate_limits=(limit(requests=1),),
    )
    started = time.monotonic()
    await check(gate)  # rate limits fail open; the reservation then applies its own policy
    assert time.monotonic() - started < NOT_A_HANG_S
    assert gate.store_errors == 1
