"""Budget store calls on the request path, and the honest 503 when a worker has too many.

Store calls on the request path go through `call`: at most `max_inflight` at once per worker
(more wait their turn up to `queue_timeout_s`, then get an honest 503 `overloaded`), each with a
deadline that measures Redis rather than this process's own queueing: a call that overruns
`deadline_s` fails only if Redis has answered nothing at all for that long; while Redis keeps
answering other calls (the process is merely busy) the call waits, up to `queue_timeout_s`.
Only such failures and connection errors count towards the circuit breaker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway_extproc.budgets.owner import Owner
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.errors import ClientError

_T = TypeVar("_T")


class Overloaded(ClientError):
    """This worker has more budget checks queued than it can answer in time: an honest 503."""

    status = 503
    code = "overloaded"
    openai_type = "server_error"
    anthropic_type = "overloaded_error"


class StoreCalls:
    """The turns at the store of one process's `BudgetServices` (settles take one too, without
    the queue deadline), and when Redis last answered. The store, breaker, settings, clock,
    stats and `on_call` are the services'."""

    def __init__(self, services: Owner, max_inflight: int) -> None:
        self._services = services
        self.slots = asyncio.Semaphore(max_inflight)
        self._last_ok = float("-inf")  # loop time of the last answer from Redis

    async def call(self, factory: Callable[[], Awaitable[_T]]) -> _T:
        """One store call: a turn among `max_inflight`, then Redis's answer within the deadline,
        through the circuit breaker. Raises BudgetStoreError, or Overloaded (not a store fault)."""
        services = self._services
        if services.store is None or not services.breaker.allow(services.clock()):
            raise BudgetStoreError("budget store unavailable (circuit open)", maybe_ran=False)
        try:
            if self.slots.locked():  # wait for a turn, up to the queue deadline
                async with asyncio.timeout(services.settings.queue_timeout_s):
                    await self.slots.acquire()
            else:  # a free turn: taken at once, no timer needed
                await self.slots.acquire()
        except TimeoutError:
            services.stats.overloaded += 1
            raise Overloaded(
                "the gateway is overloaded: too many requests are waiting for their budget "
                "check; retry shortly"
            ) from None
        try:
            return await self._answer(factory)
        finally:
            self.slots.release()

    async def _answer(self, factory: Callable[[], Awaitable[_T]]) -> _T:
        """Await the call in this task (no task of its own, no asyncio.wait: they cost more than
        the call itself on the lean Redis path); a timer looks at it each deadline and cancels
        it (TimeoutError) only when Redis is silent or the patience ran out."""
        services = self._services
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline, patience = services.settings.deadline_s, services.settings.queue_timeout_s
        try:
            async with asyncio.timeout(None) as limit:
                watch = _Watch(self, loop, limit, started, deadline, patience)
                try:
                    result = await factory()
                finally:
                    watch.stop()
        except (BudgetStoreError, TimeoutError, OSError) as exc:
            services.breaker.failure(services.clock())
            services.stats.store_errors += 1
            if services.on_call is not None:
                services.on_call(loop.time() - started, False)
            raise BudgetStoreError(f"budget store: {type(exc).__name__}") from exc
        if services.on_call is not None:
            services.on_call(loop.time() - started, True)
        self._last_ok = loop.time()
        services.breaker.success()
        return result

    def _redis_silent(self, loop: asyncio.AbstractEventLoop, woken: float, deadline: float) -> bool:
        """Whether Redis, not this process, is why a call overran its deadline: this wake-up
        came on time (the event loop is not lagging) and no call at all got an answer from
        Redis for a whole deadline. A busy process whose calls keep being answered waits on."""
        now = loop.time()
        lagging = now - woken > deadline / 2
        return not lagging and now - self._last_ok >= deadline


class _Watch:
    """The deadline of one store call: at each wake-up, give up (cancel the call through its
    `asyncio.timeout`, which raises TimeoutError) if Redis is silent twice in a row or the
    patience ran out; else look again - shortly after a silent look, after another deadline
    otherwise."""

    def __init__(
        self,
        calls: StoreCalls,
        loop: asyncio.AbstractEventLoop,
        limit: asyncio.Timeout,
        started: float,
        deadline: float,
        patience: float,
    ) -> None:
        self._calls, self._loop, self._limit = calls, loop, limit
        self._started, self._deadline, self._patience = started, deadline, patience
        self._handle = loop.call_at(started + deadline, self._look, started + deadline, False)

    def _look(self, woken: float, suspect: bool) -> None:
        loop = self._loop
        silent = self._calls._redis_silent(loop, woken, self._deadline)
        if (silent and suspect) or loop.time() - self._started >= self._patience:
            self._limit.reschedule(loop.time())  # a cancelled script ran whole or not at all
            return
        # Silent once: look again shortly, after the loop has read what Redis may have sent
        # while this wake-up was queued behind other work.
        when = loop.time() + (self._deadline / 5 if silent else self._deadline)
        self._handle = loop.call_at(when, self._look, when, silent)

    def stop(self) -> None:
        self._handle.cancel()
