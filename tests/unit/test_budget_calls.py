"""StoreCalls' deadline (budgets/calls.py) on a real event loop with calls that answer when the
test says: a call Redis is slow to answer waits while Redis keeps answering other calls, fails
when Redis is silent, and never outlives the patience. These pin the behaviour the leaner
implementation (no task and no asyncio.wait per call) had to keep."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Callable

import pytest

from gateway_extproc.budgets.calls import StoreCalls
from gateway_extproc.budgets.results import BudgetStoreError

DEADLINE_S = 0.1
PATIENCE_S = 0.6


class Breaker:
    def __init__(self) -> None:
        self.failures = 0
        self.successes = 0

    def allow(self, now: float) -> bool:
        return True

    def success(self) -> None:
        self.successes += 1

    def failure(self, now: float) -> None:
        self.failures += 1


def make_calls() -> tuple[StoreCalls, types.SimpleNamespace]:
    services = types.SimpleNamespace(
        store=object(),
        breaker=Breaker(),
        clock=time.monotonic,
        settings=types.SimpleNamespace(queue_timeout_s=PATIENCE_S, deadline_s=DEADLINE_S),
        stats=types.SimpleNamespace(overloaded=0, store_errors=0),
        on_call=None,
    )
    return StoreCalls(services, 4), services  # type: ignore[arg-type]


def answered_after(seconds: float, value: int = 1) -> Callable[[], Awaitable[int]]:
    async def call() -> int:
        await asyncio.sleep(seconds)
        return value

    return call


async def test_a_prompt_answer_is_returned() -> None:
    calls, services = make_calls()
    assert await calls.call(answered_after(0, 7)) == 7
    assert services.breaker.successes == 1


async def test_a_slow_answer_waits_while_redis_keeps_answering_other_calls() -> None:
    calls, services = make_calls()
    stop = asyncio.Event()

    async def others() -> None:  # Redis answers someone every 20 ms
        while not stop.is_set():
            await calls.call(answered_after(0.02))

    background = asyncio.ensure_future(others())
    try:
        started = time.monotonic()
        assert await calls.call(answered_after(3 * DEADLINE_S, 9)) == 9
        assert time.monotonic() - started >= 3 * DEADLINE_S
    finally:
        stop.set()
        await background
    assert services.breaker.failures == 0


async def test_a_silent_redis_fails_the_call_soon_after_its_deadline() -> None:
    calls, services = make_calls()
    started = time.monotonic()
    with pytest.raises(BudgetStoreError, match="TimeoutError"):
        await calls.call(answered_after(10))
    waited = time.monotonic() - started
    assert DEADLINE_S <= waited < PATIENCE_S  # deadline, one short second look, then fail
    assert services.breaker.failures == 1
    assert services.stats.store_errors == 1


async def test_no_call_outlives_the_patience_even_while_redis_answers_others() -> None:
    calls, _ = make_calls()
    stop = asyncio.Event()

    async def others() -> None:
        while not stop.is_set():
            await calls.call(answered_after(0.02))

    background = asyncio.ensure_future(others())
    try:
        started = time.monotonic()
        with pytest.raises(BudgetStoreError, match="TimeoutError"):
            await calls.call(answered_after(10))
        assert PATIENCE_S <= time.monotonic() - started < PATIENCE_S + 2 * DEADLINE_S + 0.3
    finally:
        stop.set()
        await background


async def test_a_cancelled_caller_cancels_its_call() -> None:
    calls, services = make_calls()
    reached = asyncio.Event()
    cancelled = asyncio.Event()

    async def call() -> int:
        reached.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    task = asyncio.ensure_future(calls.call(call))
    await reached.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled.is_set()
    assert services.breaker.failures == 0  # the caller left: not a store fault
    assert not calls.slots.locked() and calls.slots._value == 4  # its turn given back
