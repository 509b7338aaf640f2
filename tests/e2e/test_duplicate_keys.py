"""A repeated JSON key is refused before anything acts on the request, through real Envoy, the
sidecar, redis-server and the mock provider: the gateway reads the last of a repeated key, a
provider or proxy may read the first, so the model policy, the guardrails and the budget would
check one request while the provider served another (raw HTTP: the SDKs cannot send one)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest
import redis

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e

KEY = "dup-keys-client-key"  # a static token in group `dup`
SECRET = "sk-proj-Ab3dEf6hIj9kLmN0pQr2StU5vWx8yZdupKeysE2E"
CONFIG = f"""
sidecar: {{workers: 1}}
identity:
  static_tokens:
    dup-bot: {{sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}", groups: [dup]}}
policies:
  default: {{allow: []}}
  rules:
    - groups: [dup]
      allow: [gpt-4o-mini, claude-haiku-4-5]
guardrails:
  - name: no-secrets
    categories: {{secrets: block}}
budgets:
  - name: dup-month
    scope: {{kind: group, value: dup}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
"""
MESSAGES = '[{"role": "user", "content": "Count the stars."}]'


class Gateway:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.redis = redis.Redis.from_url(stack.redis_url)

    def post(self, path: str, raw: str, **headers: str) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + path,
            content=raw.encode(),
            headers={"authorization": f"Bearer {KEY}", "content-type": "application/json"}
            | headers,
            timeout=30,
        )

    def budget(self) -> tuple[int, int, int]:
        """(spent, held, reservations) of the group's budget, in micro-dollars, from Redis."""
        spent = held = 0
        for key in self.redis.scan_iter("llmgw:{gwb}:[cr]:dup-month:dup:*"):
            fields = {k.decode(): int(v) for k, v in self.redis.hgetall(key).items()}
            spent += fields.get("spent", 0) + sum(
                v for k, v in fields.items() if k.startswith("b:")
            )
            held += fields.get("held", 0)
        return spent, held, sum(1 for _ in self.redis.scan_iter("llmgw:{gwb}:res:*"))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp_path = tmp_path_factory.mktemp("duplicate-keys")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    stack = start_stack(tmp_path / "run", config_path=config)
    gateway = Gateway(stack)
    yield gateway
    gateway.redis.close()
    stack.stop()


def refused_before_the_provider(gw: Gateway, r: httpx.Response, key: str) -> None:
    doc = r.json()
    message = doc["error"]["message"]
    assert f"repeats the key `{key}` in one JSON object" in message, message
    record = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    assert record["status"] == 400 and record["error_code"] == "invalid_request"
    assert record["provider"] is None and record["cost_micros"] == 0


OPENAI_BODIES = {
    # the policy allows gpt-4o-mini, not gpt-4o: a provider reading the first would serve gpt-4o
    "model": f'{{"model": "gpt-4o", "model": "gpt-4o-mini", "messages": {MESSAGES}}}',
    "messages": (
        f'{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "{SECRET}"}}], '
        f'"messages": {MESSAGES}}}'
    ),
    "max_completion_tokens": (
        f'{{"model": "gpt-4o-mini", "max_completion_tokens": 100000, "messages": {MESSAGES}, '
        f'"max_completion_tokens": 5}}'
    ),
    "content": (
        f'{{"model": "gpt-4o-mini", "messages": [{{"role": "user", "content": "{SECRET}", '
        f'"content": "hello"}}]}}'
    ),
    # the same key written with an escape: parsers decode keys before comparing them
    "model (escaped)": (
        f'{{"mo\\u0064el": "gpt-4o", "model": "gpt-4o-mini", "messages": {MESSAGES}}}'
    ),
}


@pytest.mark.parametrize("case", sorted(OPENAI_BODIES))
def test_openai_repeated_key_is_a_400_before_the_provider(gw: Gateway, case: str) -> None:
    gw.mock.clear()
    r = gw.post("/v1/chat/completions", OPENAI_BODIES[case])
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
    refused_before_the_provider(gw, r, case.split()[0])
    assert gw.mock.received() == []  # the audit line is written after the refusal


ANTHROPIC_BODIES = {
    "model": (
        f'{{"model": "claude-opus-4-1", "max_tokens": 10, "messages": {MESSAGES}, '
        f'"model": "claude-haiku-4-5"}}'
    ),
    "messages": (
        f'{{"model": "claude-haiku-4-5", "max_tokens": 10, '
        f'"messages": [{{"role": "user", "content": "{SECRET}"}}], "messages": {MESSAGES}}}'
    ),
    "max_tokens": (
        f'{{"model": "claude-haiku-4-5", "max_tokens": 64000, "messages": {MESSAGES}, '
        f'"max_tokens": 5}}'
    ),
    "text": (
        f'{{"model": "claude-haiku-4-5", "max_tokens": 10, "messages": [{{"role": "user", '
        f'"content": [{{"type": "text", "text": "{SECRET}", "text": "hello"}}]}}]}}'
    ),
}


@pytest.mark.parametrize("case", sorted(ANTHROPIC_BODIES))
def test_anthropic_repeated_key_is_a_400_in_anthropics_format(gw: Gateway, case: str) -> None:
    gw.mock.clear()
    r = gw.post("/v1/messages", ANTHROPIC_BODIES[case], **{"anthropic-version": "2023-06-01"})
    assert r.status_code == 400, r.text
    doc = r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "invalid_request_error"
    refused_before_the_provider(gw, r, case)
    assert gw.mock.received() == []


def test_a_repeated_output_cap_reserves_nothing_and_never_reaches_the_provider(
    gw: Gateway,
) -> None:
    """Money: the budget would reserve for the 5 tokens the gateway reads while a provider
    reading the first value could bill 100,000. Refused before the reservation; the same body
    with the cap written once is reserved and settled (so the counters do move when they should)."""
    gw.mock.clear()
    before_budget = gw.budget()
    r = gw.post("/v1/chat/completions", OPENAI_BODIES["max_completion_tokens"])
    assert r.status_code == 400, r.text
    refused_before_the_provider(gw, r, "max_completion_tokens")
    assert gw.budget() == before_budget
    assert gw.mock.received() == []

    once = f'{{"model": "gpt-4o-mini", "max_completion_tokens": 5, "messages": {MESSAGES}}}'
    ok = gw.post("/v1/chat/completions", once)
    assert ok.status_code == 200, ok.text
    record = gw.audit.wait_for(ok.headers["x-gateway-request-id"])
    assert record["cost_micros"] > 0
    (sent,) = gw.mock.received()
    assert sent["body"]["max_completion_tokens"] == 5
    spent, _, _ = gw.budget()
    assert spent == before_budget[0] + record["cost_micros"]
