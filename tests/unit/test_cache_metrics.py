"""Cache outcomes and the money hits saved, as metrics."""

from __future__ import annotations

from gateway_extproc.observability.settings import ObservabilityConfig
from tests.unit.test_observability import FACTS, collect, metrics_with, record


def test_cache_outcomes_and_savings_are_counted() -> None:
    metrics, reader = metrics_with(ObservabilityConfig())
    metrics.record(record(cache="miss"), FACTS)
    metrics.record(record(cache="hit", cost_micros=0, cost_saved_micros=120), FACTS)
    metrics.record(record(cache="hit", cost_micros=0, cost_saved_micros=80), FACTS)
    metrics.record(record(), FACTS)  # no cache rule: not counted
    got = collect(reader)
    by_status = {
        p.attributes["gateway.cache.status"]: p.value for p in got["gateway.cache.requests"]
    }
    assert by_status == {"miss": 1, "hit": 2}
    (saved,) = got["gateway.cache.saved.micro_usd"]
    assert saved.value == 200
