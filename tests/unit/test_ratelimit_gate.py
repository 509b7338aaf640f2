"""The gate with rate limits on a real redis-server: admission when only rate limits apply, the
429 and its headers, monitor mode, downgrades, settlement with the real tokens."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from gateway_extproc.budgets import report
from gateway_extproc.budgets.admission import Decision
from gateway_extproc.budgets.gate import BudgetGate
from gateway_extproc.budgets.model import Action, Match, Scope, ScopeKind
from gateway_extproc.budgets.ratelimits.model import (
    RateLimitAction,
    RateLimitCharge,
    RateLimitConfig,
)
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.budgets.refusals import BudgetExceeded
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
from tests.unit.test_budget_gate import (  # noqa: F401 - fixtures
    ALICE,
    CATALOG,
    GPT4O,
    MINI,
    SETTINGS,
    T0,
    USER,
    Clock,
    Harness,
    budget,
    redis_standalone_server,
)


@pytest.fixture
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = Harness(request.getfixturevalue("redis_standalone_server"))
    yield h
    await h.close()


BOUND_TOKENS = 1100  # every admission below: 1,000 input tokens + at most 100 output


def limit(
    name: str = "rpm",
    *,
    requests: int | None = None,
    tokens: int | None = None,
    action: RateLimitAction = RateLimitAction.BLOCK,
    models: tuple[str, ...] | None = None,
) -> RateLimitConfig:
    return RateLimitConfig(
        name=name,
        scope=Scope(ScopeKind.USER),
        window_s=60,
        action=action,
        requests=requests,
        tokens=tokens,
        match=Match(models=models),
    )


async def make_gate(
    h: Harness, limits: tuple[RateLimitConfig, ...], budgets: tuple = (), clock: Clock | None = None
) -> BudgetGate:
    store = BudgetStore(h.client(), prefix=f"t{h.tag}", hash_tag=h.tag)
    gate = BudgetGate(
        store,
        budgets,
        CATALOG,
        lambda entry: entry.provider,
        SETTINGS,
        clock=clock or Clock(),
        rate_limits=limits,
    )
    await gate.start()
    h.gates.append(gate)
    return gate


bounds_asked: list[str] = []


def bound_for(entry: object) -> Bound:
    bounds_asked.append(getattr(entry, "name", "?"))
    return Bound(1000, 100, None, None)


async def admit(gate: BudgetGate, rid: str, entry: object = GPT4O) -> object:
    return await gate.admit(
        reservation_id=rid,
        identity=ALICE,
        entry=entry,  # type: ignore[arg-type]
        requested=entry.name,  # type: ignore[attr-defined]
        bound_for=bound_for,
    )


async def counted(gate: BudgetGate, lim: RateLimitConfig, kind: bytes) -> int:
    """What a rate limit's counter holds over its buckets: b"r" requests, b"t" tokens."""
    store = gate.store
    assert store is not None
    fields = await store.client.hgetall(store.rate_limit_key(RateLimitCharge(lim, USER, 0)))
    return sum(int(v) for k, v in fields.items() if k.startswith(kind + b":"))


async def tokens_counted(gate: BudgetGate, lim: RateLimitConfig) -> int:
    return await counted(gate, lim, b"t")


async def test_rate_limits_alone_reserve_and_refuse_with_headers(harness: Harness) -> None:
    rpm = limit(requests=2, tokens=10_000)
    gate = await make_gate(harness, (rpm,))
    first = await admit(gate, "a")
    assert first.decision is Decision.NONE and first.reserved  # type: ignore[attr-defined]
    assert first.bound == Bound(1000, 100, None, None)  # type: ignore[attr-defined]
    headers = report.response_headers(first)  # type: ignore[arg-type]
    assert headers == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "1",
        "x-ratelimit-reset-requests": "1m0s",
        "x-ratelimit-limit-tokens": "10000",
        "x-ratelimit-remaining-tokens": str(10_000 - BOUND_TOKENS),
        "x-ratelimit-reset-tokens": "1m0s",
    }
    await admit(gate, "b")
    with pytest.raises(RateLimited) as refused:
        await admit(gate, "c")
    err = refused.value
    assert err.status == 429 and err.code == "rate_limited"
    assert err.headers["retry-after"] == "60"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert "rate limit 'rpm' for user alice@example.com reached" in err.message
    assert [s.limit.name for s in err.states] == ["rpm"]
    fields = report.rate_limit_fields(None, err)
    assert fields is not None and fields[0]["blocked"] is True


async def test_a_requests_only_limit_needs_no_bound(harness: Harness) -> None:
    gate = await make_gate(harness, (limit(requests=5),))
    bounds_asked.clear()
    admission = await admit(gate, "a")
    assert admission.bound is None and bounds_asked == []  # type: ignore[attr-defined]


async def test_settle_corrects_the_token_hold_to_the_real_tokens(harness: Harness) -> None:
    tpm = limit(tokens=100_000)
    gate = await make_gate(harness, (tpm,))
    admission = await admit(gate, "a")
    assert await tokens_counted(gate, tpm) == BOUND_TOKENS
    usage = UsageRecord(T0, Dimensions(), Usage(input_tokens=7, output_tokens=35), 3, False)
    gate.settle_or_release(admission, 3, "a", usage)  # type: ignore[arg-type]
    await gate.drain()
    assert await tokens_counted(gate, tpm) == 42
    released = await admit(gate, "b")
    gate.settle_or_release(released, None, "b")  # type: ignore[arg-type]
    await gate.drain()
    assert await tokens_counted(gate, tpm) == 42


async def test_monitor_mode_admits_and_reports_would_block(harness: Harness) -> None:
    watch = limit(requests=1, action=RateLimitAction.MONITOR)
    gate = await make_gate(harness, (watch,))
    await admit(gate, "a")
    second = await admit(gate, "b")
    assert second.rate_limit_would_block  # type: ignore[attr-defined]
    headers = report.response_headers(second)  # type: ignore[arg-type]
    assert headers["x-gateway-ratelimit-would-block"] == "true"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    fields = report.rate_limit_fields(second)  # type: ignore[arg-type]
    assert fields == [
        {
            "name": "rpm",
            "scope_value": USER,
            "action": "monitor",
            "window_s": 60,
            "limit_requests": 1,
            "remaining_requests": 0,
            "limit_tokens": None,
            "remaining_tokens": None,
            "would_block": True,
            "blocked": False,
        }
    ]


async def test_a_rate_limit_blocks_even_when_a_budget_would_downgrade(harness: Harness) -> None:
    tight = budget("tight", 1, Action.DOWNGRADE, models=("gpt-4o",))  # no room at all
    rpm = limit(requests=1, models=("gpt-4o-mini",))
    gate = await make_gate(harness, (rpm,), (tight,))
    first = await admit(gate, "a")  # downgraded to gpt-4o-mini: its rate limit counts it
    assert first.decision is Decision.DOWNGRADED  # type: ignore[attr-defined]
    assert first.entry is MINI or first.entry.name == MINI.name  # type: ignore[attr-defined]
    assert [s.limit.name for s in first.rate_limits] == ["rpm"]  # type: ignore[attr-defined]
    with pytest.raises((RateLimited, BudgetExceeded)) as refused:
        await admit(gate, "b")
    assert isinstance(refused.value, RateLimited)


async def test_a_burst_admits_exactly_the_limit(harness: Harness) -> None:
    gate = await make_gate(harness, (limit(requests=20),))
    outcomes = await asyncio.gather(
        *(admit(gate, f"r{i}") for i in range(200)), return_exceptions=True
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 20
    assert all(isinstance(o, RateLimited) for o in outcomes if isinstance(o, BaseException))


async def test_rate_limits_fail_open_when_the_store_is_down(harness: Harness) -> None:
    gate = await make_gate(harness, (limit(requests=1),))
    gate.services.breaker.failures_to_open = 1
    gate.services.breaker.failure(T0)  # open: no call reaches Redis
    admission = await admit(gate, "a")
    assert admission.decision is Decision.FAIL_OPEN and not admission.reserved  # type: ignore[attr-defined]
    assert dataclasses.asdict(SETTINGS)  # settings untouched


async def hit(gate: BudgetGate, rid: str) -> object:
    return await gate.admit_cache_hit(
        reservation_id=rid, identity=ALICE, entry=GPT4O, requested=GPT4O.name
    )


async def requests_counted(gate: BudgetGate, lim: RateLimitConfig) -> int:
    return await counted(gate, lim, b"r")


async def test_cache_hits_count_one_request_only_where_configured(harness: Harness) -> None:
    counting = dataclasses.replace(
        limit("hits", requests=2, tokens=10_000, models=("gpt-4o",)), count_cache_hits=True
    )
    free = limit("free", requests=1)  # every model; a hit counts nothing here
    gate = await make_gate(harness, (counting, free))
    for rid in ("h1", "h2"):
        admission = await hit(gate, rid)
        assert admission is not None and admission.reserved  # type: ignore[attr-defined]
        assert [s.limit.name for s in admission.rate_limits] == ["hits"]  # type: ignore[attr-defined]
        gate.settle_or_release(admission, None, rid)  # type: ignore[arg-type]  # released at once: still counted
    await gate.drain()
    assert await requests_counted(gate, counting) == 2
    assert await tokens_counted(gate, counting) == 0  # a hit generates no tokens
    assert await requests_counted(gate, free) == 0  # a limit not set to count hits
    with pytest.raises(RateLimited) as refused:
        await hit(gate, "h3")
    assert [s.limit.name for s in refused.value.states] == ["hits"]
    assert await requests_counted(gate, counting) == 2  # the refused hit holds nothing
    await admit(gate, "real", MINI)  # the free limit still has its one request
    assert await requests_counted(gate, free) == 1


async def test_a_cache_hit_counts_nowhere_without_a_counting_limit(harness: Harness) -> None:
    gate = await make_gate(harness, (limit(requests=1),))
    assert await hit(gate, "h") is None
    await admit(gate, "real")  # the limit's one request is still free
