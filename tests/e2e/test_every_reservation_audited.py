"""Every reservation ends in exactly one audit record (docs/budgets.md, "Every reservation ends in
one audit record"), through real Envoy, the sidecar, redis-server and the mock provider:

- a forwarded request whose sidecar (holding its observer) is killed before the response: nobody
  settles; the reaper charges it once, writes its one record (usage_source reaped), rolls it up
  and counts it in the metrics;
- Envoy gives up on a budget check that waits on Redis (its message timeout), and a client leaves
  while its budget check waits: the reservation is released (nothing was sent to the provider),
  and the request's one record says so."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_extproc.identity.devissuer import ensure_dev_issuer
from tests.e2e.conftest import start_stack
from tests.e2e.harness import eventually
from tests.e2e.test_budgets import Budgeted

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
MESSAGE_TIMEOUT_MS = 300
CONFIG = f"""
identity: {{dev_issuer: true}}
sidecar: {{workers: 1}}
limits: {{ext_proc_message_timeout_ms: {MESSAGE_TIMEOUT_MS}}}
# Redis kept waiting (CLIENT PAUSE) is not taken for down: the budget check waits for it.
budget_store: {{lease_s: 5, reap_interval_s: 1, deadline_ms: 10000, queue_timeout_ms: 10000}}
budgets:
  - name: each
    scope: {{kind: user}}
    limit_usd: 50
    window: {{type: calendar, period: month}}
    action: block
"""
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 50}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Budgeted]:
    tmp_path = tmp_path_factory.mktemp("audited")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    b = Budgeted(start_stack(run_dir, config_path=config), issuer)
    yield b
    b.close()
    b.stack.stop()


def records_of(gw: Budgeted, user: str) -> list[dict[str, Any]]:
    return [r for r in gw.audit.records() if (r["identity"] or {}).get("user") == user]


def reservations(gw: Budgeted) -> set[str]:
    return {key.decode() for key in gw.redis.scan_iter("llmgw:{gwb}:res:*")}


def rollup_cost(gw: Budgeted, user: str) -> tuple[int, int]:
    """(requests, cost micros) the spend rollups hold for `user`."""
    requests = cost = 0
    for key in gw.redis.scan_iter("llmgw:{gwb}:spend:*"):
        for field, value in gw.redis.hgetall(key).items():
            row, metric = field.decode().rsplit("|", 1)
            if f'"{user}"' in row:
                requests += int(value) if metric == "n" else 0
                cost += int(value) if metric == "c" else 0
    return requests, cost


def scrape(gw: Budgeted) -> dict[str, float]:
    (url,) = gw.stack.metrics_urls
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def total(samples: dict[str, float], name: str, needle: str) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and needle in k)


def test_a_reservation_nobody_settles_is_reaped_and_audited_once(gw: Budgeted) -> None:
    """The request is forwarded (the provider holds its response headers back) and the one
    sidecar worker, holding its observer, is killed: nobody settles. The reaper of the restarted
    worker charges the estimate once and writes the request's one record."""
    user = "never-settled@example.com"
    before = reservations(gw)
    gw.mock.clear()
    headers = {"x-mock-latency-ms": "20000"}
    with httpx.Client(timeout=60) as client:
        token = gw.token(user, "users")
        pending = client.build_request(
            "POST",
            gw.stack.gateway_url + CHAT,
            json=BODY,
            headers={"authorization": f"Bearer {token}", **headers},
        )
        errors: list[BaseException] = []

        def send() -> None:
            try:
                client.send(pending)
            except BaseException as exc:  # the cut is expected
                errors.append(exc)

        thread = threading.Thread(target=send)
        thread.start()
        eventually(lambda: len(reservations(gw) - before) == 1, what="the reservation")
        (key,) = reservations(gw) - before
        eventually(lambda: len(gw.mock.received()) > 0, what="the request at the provider")
        gw.stack.process("sidecar").kill()  # SIGKILL: no finally, no settle
        gw.stack.process("sidecar").wait(10)  # gone before restart() looks (it refuses a live one)
        thread.join(30)
        assert not thread.is_alive()
    gw.stack.restart("sidecar")
    metrics_before: dict[str, float] = {}  # the restarted worker's counters start from zero
    eventually(lambda: gw.redis.hget(key, "state") == b"EXPIRED", what="the reap", timeout=30)
    eventually(lambda: len(records_of(gw, user)) == 1, what="the reaped record")
    (record,) = records_of(gw, user)
    estimate = int(gw.redis.hget(key, "e:1") or 0)
    charged = int(gw.redis.hget(key, "partial") or estimate)
    assert estimate > 0
    assert record["usage_source"] == "reaped" and record["error_code"] == "lease_expired"
    assert record["cost_micros"] == charged
    assert record["budget"]["reservation_id"] == key.rsplit(":", 1)[1]
    assert record["served_model"] == "gpt-4o-mini" and record["provider"] == "openai"
    assert gw.counters("each", user) == (charged, 0)  # charged once
    assert rollup_cost(gw, user) == (1, charged)  # the spend report agrees
    after = scrape(gw)
    for name, needle, amount in (
        ("gateway_requests_total", "error_type=lease_expired", 1),
        ("gateway_cost_micro_usd_total", "gen_ai_request_model=gpt-4o-mini", charged),
    ):
        assert total(after, name, needle) - total(metrics_before, name, needle) == amount, name
    assert len(records_of(gw, user)) == 1  # the reaper wrote it once, nobody else


def test_envoy_giving_up_on_the_budget_check_releases_the_reservation(gw: Budgeted) -> None:
    """Redis waits past Envoy's message timeout: Envoy answers the client 503 itself and resets
    the sidecar's stream while the budget check still waits. Nothing was forwarded."""
    user = "timed-out@example.com"
    before = reservations(gw)
    gw.mock.clear()
    gw.redis.client_pause(3 * MESSAGE_TIMEOUT_MS, all=True)
    response = gw.post(gw.token(user, "users"), BODY)
    assert response.status_code == 503, response.text
    assert gw.mock.received() == []  # never sent to the provider
    assert_released_once(gw, user, before)


def test_a_client_that_leaves_during_its_budget_check_releases_its_reservation(
    gw: Budgeted,
) -> None:
    user = "left-early@example.com"
    before = reservations(gw)
    gw.redis.client_pause(2_000, all=True)  # the budget check waits (deadline 10 s)
    with pytest.raises(httpx.TimeoutException):  # the client leaves after 0.2 s
        httpx.post(
            gw.stack.gateway_url + CHAT,
            json=BODY,
            headers={"authorization": f"Bearer {gw.token(user, 'users')}"},
            timeout=0.2,
        )
    assert_released_once(gw, user, before)


def assert_released_once(gw: Budgeted, user: str, before: set[str]) -> None:
    eventually(lambda: len(records_of(gw, user)) == 1, what="the record of the request")
    (record,) = records_of(gw, user)
    assert (record["status"], record["error_code"]) == (499, "client_disconnected_before_forward")
    assert (record["cost_micros"], record["usage_source"]) == (0, "none")
    # Once Redis answers: the reserve that was on the wire holds nothing (released, or replayed
    # onto the release's tombstone) - a final state the reaper never charges.
    eventually(lambda: len(reservations(gw) - before) == 1, what="the reservation record")
    (key,) = reservations(gw) - before
    eventually(lambda: gw.redis.hget(key, "state") == b"RELEASED", what="the release")
    assert gw.redis.zscore("llmgw:{gwb}:leases", key.rsplit(":", 1)[1]) is None
    assert gw.counters("each", user) == (0, 0)
    assert rollup_cost(gw, user) == (0, 0)
    assert len(records_of(gw, user)) == 1
