"""A cooling chain head skipped end to end (issue 26, docs/fallback.md "Key pools"): a one-key
provider's 429 with `retry-after` cools its key in Redis (the per-attempt filter), and a later
request's request phase reads the chain's cooldowns and routes to the suffix variant cluster,
so the head is not asked again while it cools. Real Envoy, sidecar, redis-server and mock; the
official openai SDK is the client. Its own stack: the cooldown is shared state."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e
# A budget makes the sidecar hold a Redis store (where cooldowns live); `outlier: false` so
# only the cooldown, not Envoy's ejection, can keep the head from being asked.
CONFIG = f"""
identity:
  allow_anonymous: true
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
budgets:
  - name: everyone
    scope: {{kind: global}}
    limit_usd: 100
    window: {{type: calendar, period: month}}
    action: block
fallback:
  outlier: false
  chains:
    gpt-4o: [openai/gpt-4o, anthropic/claude-haiku-4-5]
    gpt-4o-mini: [openai/gpt-4o-mini, anthropic/claude-haiku-4-5]
"""
ASK = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp_path = tmp_path_factory.mktemp("fallback-cooldown")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    s = start_stack(tmp_path / "run", config_path=config)
    yield s
    s.stop()


def _counts(mock_root: str) -> dict[str, Any]:
    with urllib.request.urlopen(mock_root + "/_mock/counts", timeout=5) as r:
        return dict(json.load(r))


def test_a_head_cooling_after_a_429_is_skipped_by_the_next_request(stack: Stack) -> None:
    assert stack.mock_url is not None
    mock_root = stack.mock_url.removesuffix("/v1")
    MockLog(mock_root).clear()
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    with openai.OpenAI(
        base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0
    ) as client:
        chat = client.chat.completions

        first = chat.with_raw_response.create(
            model="gpt-4o", messages=ASK, extra_headers={"x-mock-fault": "gpt-4o=429@30"}
        )
        assert first.status_code == 200
        record = audit.wait_for(first.headers["x-gateway-request-id"])
        assert record["served_by"] == "anthropic/claude-haiku-4-5"
        assert [(a["target"], a["status"]) for a in record["attempts"]] == [
            ("openai/gpt-4o", 429),
            ("anthropic/claude-haiku-4-5", 200),
        ]

        second = chat.with_raw_response.create(model="gpt-4o", messages=ASK)
        assert second.status_code == 200
        record = audit.wait_for(second.headers["x-gateway-request-id"])
        assert record["served_by"] == "anthropic/claude-haiku-4-5"
        assert [(a["target"], a["status"]) for a in record["attempts"]] == [
            ("anthropic/claude-haiku-4-5", 200),
        ]
        assert record["skipped"] == ["openai/gpt-4o"]
        assert record["cost_micros"] > 0  # charged at the answering target's price

        # Providers rate-limit per model: the same key still serves another model's chain.
        other = chat.with_raw_response.create(model="gpt-4o-mini", messages=ASK)
        record = audit.wait_for(other.headers["x-gateway-request-id"])
        assert record["served_by"] == "openai/gpt-4o-mini" and record["skipped"] == []

    counts = _counts(mock_root)
    assert sum(counts.get("gpt-4o", {}).values()) == 1  # the head asked once, in request 1
    assert sum(counts.get("claude-haiku-4-5", {}).values()) == 2
    assert sum(counts.get("gpt-4o-mini", {}).values()) == 1
