"""A worker whose budget-store turns are all taken answers an honest 503 `overloaded`, through
real Envoy, the sidecar, redis-server and the mock: `budget_store.max_inflight: 1`, and the one
turn held by a reservation that Redis keeps waiting (CLIENT PAUSE WRITE). The refused request
reserves nothing and never reaches the provider; the one holding the turn goes through once Redis
answers."""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, eventually

pytestmark = pytest.mark.e2e

CONFIG = f"""
identity:
  static_tokens:
{static_tokens_yaml()}
sidecar: {{workers: 1}}
budget_store: {{max_inflight: 1, queue_timeout_ms: 300, deadline_ms: 4000, reap_interval_s: 3600}}
budgets:
  - name: everyone
    scope: {{kind: global}}
    limit_usd: 100
    window: {{type: calendar, period: month}}
    action: block
"""
HEADERS = {"authorization": "Bearer client-key"}
CHAT = {"model": "gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {**CHAT, "model": "claude-haiku-4-5"}


@pytest.fixture(scope="module")
def crowded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("overloaded")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    stack = start_stack(tmp_path / "run", config_path=config)
    yield stack
    stack.stop()


def post(stack: Stack, path: str, body: dict[str, object], **headers: str) -> httpx.Response:
    return httpx.post(stack.gateway_url + path, json=body, headers=HEADERS | headers, timeout=30)


def settled(client: redis.Redis) -> bool:
    """The budget holds nothing and has spent something: every reservation so far settled."""
    counters = [client.hgetall(k) for k in client.scan_iter("llmgw:{gwb}:c:everyone:*")]
    return bool(counters) and all(
        int(c.get(b"held", 0)) == 0 and int(c.get(b"spent", 0)) > 0 for c in counters
    )


def test_a_worker_out_of_store_turns_answers_503_overloaded(crowded: Stack) -> None:
    assert crowded.mock_url is not None
    mock = MockLog(crowded.mock_url.removesuffix("/v1"))
    audit = AuditLog(crowded.run_dir / "audit.jsonl")
    warm = post(crowded, "/v1/chat/completions", CHAT)  # the scripts are loaded
    assert warm.status_code == 200, warm.text
    control = redis.Redis.from_url(crowded.redis_url)
    # Its settle (after the response) takes a turn too: settled before Redis is paused, so the
    # one call waiting there is the next reservation.
    eventually(lambda: settled(control), what="the first request never settled")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        control.client_pause(10_000, all=False)  # scripts wait; reads still answer
        try:
            first = pool.submit(post, crowded, "/v1/chat/completions", CHAT)
            # Its reservation waits in Redis, holding the worker's one turn.
            eventually(lambda: control.info("clients")["blocked_clients"] >= 1, 10, "no wait")
            mock.clear()
            started = time.monotonic()
            openai_style = post(crowded, "/v1/chat/completions", CHAT)
            anthropic_style = post(
                crowded, "/v1/messages", MESSAGES, **{"anthropic-version": "2023-06-01"}
            )
            waited = time.monotonic() - started
        finally:
            control.client_unpause()
            control.close()
        holder = first.result(timeout=30)
        assert holder.status_code == 200, holder.text  # the turn's holder went through
    assert openai_style.status_code == 503, openai_style.text
    error = openai_style.json()["error"]
    assert (error["code"], error["type"]) == ("overloaded", "server_error")
    assert anthropic_style.status_code == 503, anthropic_style.text
    doc = anthropic_style.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "overloaded_error"
    assert waited < 4.0  # each waited for a turn (0.3 s), not for Redis (the 4 s deadline)
    assert [q["body"]["model"] for q in mock.received()] == ["gpt-4o-mini"]  # only `first`
    for response in (openai_style, anthropic_style):
        record = audit.wait_for(response.headers["x-gateway-request-id"])
        assert (record["status"], record["error_code"]) == (503, "overloaded")
        assert record["budget"] is None and record["cost_micros"] == 0  # nothing reserved
