"""A translated request (an OpenAI-SDK client on a Claude model) meets the same budgets, policy,
guardrails and rate limits as a native one, and bypasses the response cache
(docs/translation.md#what-applies-unchanged)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog

pytestmark = pytest.mark.e2e
MODEL = "claude-haiku-4-5"
CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 1}
policies:
  default: {allow: ["*"]}
  rules:
    - groups: [gpt-only]
      allow: [gpt-4o-mini]
guardrails:
  - name: no-secrets
    match: {groups: [guarded]}
    categories: {secrets: block}
budgets:
  - name: tiny-claude  # any claude request is over it
    scope: {kind: user}
    match: {groups: [broke]}
    limit_usd: 0.000001
    window: {type: calendar, period: month}
    action: block
rate_limits:
  - name: two-requests
    scope: {kind: user}
    match: {groups: [limited]}
    requests: 2
    window: 1h
    action: block
cache:
  rules:
    - name: everyone-cached
      match: {groups: [cached]}
      ttl: 1h
"""


class Governed:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.clients: list[openai.OpenAI] = []

    def client(self, *groups: str) -> openai.OpenAI:
        user = f"{uuid.uuid4().hex[:8]}@example.com"
        token = self.issuer.mint(user, list(groups), None, 3600, {}, time.time())
        base = self.stack.gateway_url + "/v1"
        c = openai.OpenAI(base_url=base, api_key=token, max_retries=0)
        self.clients.append(c)
        return c


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Governed]:
    tmp_path = tmp_path_factory.mktemp("translation-governance")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    g = Governed(start_stack(run_dir, config_path=config), issuer)
    yield g
    for c in g.clients:
        c.close()
    g.stack.stop()


def ask(client: openai.OpenAI, text: str = "hi", **kwargs: Any) -> Any:
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": text}], **kwargs
    )


def test_budget_blocks_a_translated_request(gw: Governed) -> None:
    gw.mock.clear()
    with pytest.raises(openai.RateLimitError) as err:
        ask(gw.client("broke"))
    assert "tiny-claude" in err.value.message
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "budget_exceeded"
    assert gw.mock.received() == []


def test_policy_refuses_a_translated_request(gw: Governed) -> None:
    with pytest.raises(openai.PermissionDeniedError) as err:
        ask(gw.client("gpt-only"))
    assert MODEL in err.value.message


def test_guardrail_blocks_a_translated_request(gw: Governed) -> None:
    gw.mock.clear()
    with pytest.raises(openai.BadRequestError) as err:
        ask(gw.client("guarded"), "my key is AKIA6I8J76B2LAJLJ4H9, keep it")
    assert isinstance(err.value.body, dict) and err.value.body["code"] == "guardrail_blocked"
    assert gw.mock.received() == []


def test_rate_limit_applies_to_translated_requests(gw: Governed) -> None:
    client = gw.client("limited")
    ask(client)
    ask(client)
    with pytest.raises(openai.RateLimitError) as err:
        ask(client)
    assert "two-requests" in err.value.message


def test_cache_is_bypassed_for_translated_requests(gw: Governed) -> None:
    """The same question twice from a cached group: both reach the provider, neither record
    names the cache (a native request of that group is cached: tests/e2e/test_cache.py)."""
    client = gw.client("cached")
    marker = uuid.uuid4().hex
    gw.mock.clear()
    first, second = ask(client, marker), ask(client, marker)
    assert sum(marker in str(r.get("body")) for r in gw.mock.received()) == 2
    for raw in (first, second):
        assert "x-gateway-cache-status" not in raw.headers
        rec = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
        assert rec["cache"] is None and rec["provider_api"] == "anthropic_messages"
        assert raw.parse().choices[0].message.content
    native = [ask_native(client, marker) for _ in range(2)]
    assert native[1].headers["x-gateway-cache-status"] == "hit"  # the rule does apply


def ask_native(client: openai.OpenAI, text: str) -> Any:
    return client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": text}]
    )
