"""A request the reaper ended and audited, whose own ending comes late: its records sum to the
ledger and the spend rollup (docs/budgets.md, "Every reservation ends in one audit record"). The
processor of a synchronous-mode gateway on a real redis-server; the reaper runs by hand."""

from __future__ import annotations

import dataclasses
import time

from gateway_extproc.response import reaped_audit
from tests.redis_servers import redis_standalone_server  # noqa: F401 - session fixture
from tests.unit.test_processor_interactions import (  # noqa: F401 - fixtures
    ROOMY,
    Gateway,
    chat,
    forwarded_body,
    gw,
    make_gateway,
)


async def test_a_late_answer_after_the_reap_is_recorded_as_its_correction(
    gw: Gateway,  # noqa: F811 - the fixture
) -> None:
    forwarded_body(await gw.ask(ROOMY, chat("gpt-4o", "hello")))
    admission = gw.last.admission
    assert admission is not None and admission.reserved
    store = gw.gate.store
    assert store is not None
    later = time.time() + 10 * gw.gate.settings.lease_s
    (reaped,) = (await store.reap(later)).reaped  # nobody settled it within its lease
    reaped_audit.write(gw.ctx, reaped, later)
    (first,) = gw.records()
    assert first["usage_source"] == "reaped" and first["error_code"] == "lease_expired"
    assert first["cost_micros"] == admission.estimate_micros
    assert first["identity"]["static_token"] == "roomy"
    assert first["served_model"] == "gpt-4o" and first["request_id"] == gw.last.request_id
    # The answer arrives after all (its observer was only late): the settle corrects the reap.
    observer = gw.last.observer
    assert observer is not None
    observer.ctx = dataclasses.replace(observer.ctx, wall_clock=lambda: later)
    await gw.answer("gpt-4o")
    first_again, second = gw.records()
    assert first_again == first
    cost = 20 * 2_500_000 // 1_000_000 + 3 * 10_000_000 // 1_000_000  # gpt-4o: $2.50 / $10 per 1M
    assert second["usage_source"] == "provider"
    assert second["reaped_charge_micros"] == first["cost_micros"]
    assert second["cost_micros"] == cost - first["cost_micros"]  # the correction
    (charge,) = admission.charges
    ledger = (await store.status(charge.budget, charge.scope_value, time.time())).spent_micros
    assert first["cost_micros"] + second["cost_micros"] == ledger == cost
    rolled: dict[str, int] = {}
    for key in await gw.keys("*:spend:*"):
        for field, value in (await gw.redis.hgetall(key)).items():
            metric = field.decode().rsplit("|", 1)[1]
            rolled[metric] = rolled.get(metric, 0) + int(value)
    assert (rolled["n"], rolled["c"], rolled.get("ce", 0)) == (1, cost, 0)
