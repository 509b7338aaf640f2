"""Key pools end to end (issue 26, docs/fallback.md fact 8): openai configured with two keys (one
from the environment, one from a file) in front of the mock, real Envoy retrying a failed key on
the other key of its level, the sidecar's per-attempt filter injecting each attempt's key, the
official openai SDK as the client. One stack for the module.

The mock fails the requests presenting one key (`x-mock-fault: key:<credential>=429@S`). Key
weights are a unit and fact matter (tests/e2e/test_envoy_upstream_extproc.py), not tested here:
the weights below (3:1) only make `main` the usual first pick, and a test that needs it first
sends again (a bounded number of times) when Envoy picked `spare`. Much more skewed weights would
defeat the retry on the other key: `previous_hosts` re-picks at most
`host_selection_retry_max_attempts` (5) times, then Envoy keeps the tried key (measured with
1000:1: both attempts went to `main`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, running_mock, tokens

pytestmark = pytest.mark.e2e
MAIN_SECRET = "sk-pool-main-0f3c9a71d2e84b56"
SPARE_SECRET = "sk-pool-spare-7b1e04c2a9d35f68"
SECRETS = (MAIN_SECRET, SPARE_SECRET)
KEY_OF = {f"Bearer {MAIN_SECRET}": "main", f"Bearer {SPARE_SECRET}": "spare"}
ASK = [{"role": "user", "content": "hi"}]
TRIES = 10  # sends until Envoy picks `main` first (weight 3 of 4): all miss 1 time in 10^6


class Pooled:
    def __init__(self, stack: Stack, mock_url: str) -> None:
        self.stack = stack
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        self.mock = MockLog(mock_url)
        self.oai = openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0
        )

    def ask(self, model: str, fault: str, **kwargs: Any) -> Any:
        self.mock.clear()
        return self.oai.chat.completions.with_raw_response.create(
            model=model, messages=ASK, extra_headers={"x-mock-fault": fault}, **kwargs
        )

    def keys_sent(self) -> list[tuple[str, str]]:
        """(model, key name) of every request the mock received since the last ask."""
        return [
            (r["body"]["model"], KEY_OF[r["headers"]["authorization"]])
            for r in self.mock.received()
        ]

    def ask_main_first(self, model: str, fault: str, **kwargs: Any) -> tuple[Any, list[Any]]:
        """The first response whose first attempt presented `main`, and the mock's requests."""
        for _ in range(TRIES):
            raw = self.ask(model, fault, **kwargs)
            sent = self.keys_sent()
            if sent and sent[0][1] == "main":
                return raw, sent
        raise AssertionError(f"Envoy never picked key main first in {TRIES} requests")


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pooled]:
    run_dir = tmp_path_factory.mktemp("key-pools")
    with running_mock(tmp_path_factory.mktemp("key-pools-mock")) as mock_url:
        spare = run_dir / "spare.key"
        spare.write_text(SPARE_SECRET + "\n")
        config = run_dir / "gateway.yaml"
        config.write_text(
            f"""
mock_unconfigured_providers: false
identity:
  allow_anonymous: true
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
providers:
  anthropic: null
  gemini: null
  openai:
    base_url: {mock_url}/v1
    keys:
      - {{name: main, env: TEST_POOL_MAIN_KEY, weight: 3}}
      - {{name: spare, file: {spare}, weight: 1}}
    forward_headers: ["x-mock-*"]
fallback:
  chains:
    gpt-4o: [openai/gpt-4o, openai/gpt-4o-mini]
"""
        )
        env = stack_environ(run_dir / "run", TEST_POOL_MAIN_KEY=MAIN_SECRET)
        g = Pooled(start_stack(run_dir / "run", config_path=config, environ=env), mock_url)
        yield g
        g.oai.close()
        g.stack.stop()


def _no_attempt_count(sent: list[dict[str, Any]]) -> None:
    assert sent
    for request in sent:
        assert "x-envoy-attempt-count" not in request["headers"]


def test_a_429_on_one_key_is_served_by_the_other_metered_once(gw: Pooled) -> None:
    raw, sent = gw.ask_main_first("gpt-4.1", f"key:{MAIN_SECRET}=429@0")
    reply = raw.parse()
    assert raw.status_code == 200 and reply.model.startswith("gpt-4.1")
    assert sent == [("gpt-4.1", "main"), ("gpt-4.1", "spare")]
    _no_attempt_count(gw.mock.received())
    request_id = raw.headers["x-gateway-request-id"]
    record = gw.audit.wait_for(request_id)
    # Both attempts, by key name (attempts numbered by Envoy's count: neither lost).
    assert [(a["target"], a.get("key"), a["status"]) for a in record["attempts"]] == [
        ("openai/gpt-4.1", "main", 429),
        ("openai/gpt-4.1", "spare", 200),
    ]
    assert record["served_by"] == "openai/gpt-4.1"
    # Metered once, at the model's price: one audit record, one bill.
    usage = reply.usage
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4.1", want)
    assert [r for r in gw.audit.records() if r.get("request_id") == request_id] == [record]
    assert [b["request_id"] for b in gw.mock.bills()].count(request_id) == 1


def test_a_streamed_429_on_one_key_is_served_by_the_other(gw: Pooled) -> None:
    raw, sent = gw.ask_main_first(
        "gpt-4.1",
        f"key:{MAIN_SECRET}=429@0",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    usage = chunks[-1].usage
    assert raw.status_code == 200 and usage is not None
    assert sent == [("gpt-4.1", "main"), ("gpt-4.1", "spare")]
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert [(a.get("key"), a["status"]) for a in record["attempts"]] == [
        ("main", 429),
        ("spare", 200),
    ]
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4.1", want)


def test_both_keys_429_go_to_the_next_target_of_the_chain(gw: Pooled) -> None:
    raw = gw.ask("gpt-4o", "gpt-4o=429@0")
    reply = raw.parse()
    assert raw.status_code == 200 and reply.model.startswith("gpt-4o-mini")
    sent = gw.keys_sent()
    # Every key of the first target once, then the next target (on either key).
    assert sorted(sent[:2]) == [("gpt-4o", "main"), ("gpt-4o", "spare")]
    assert [m for m, _ in sent[2:]] == ["gpt-4o-mini"]
    _no_attempt_count(gw.mock.received())
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    attempts = [(a["target"], a.get("key"), a["status"]) for a in record["attempts"]]
    assert sorted(attempts[:2]) == [
        ("openai/gpt-4o", "main", 429),
        ("openai/gpt-4o", "spare", 429),
    ]
    assert attempts[2] == ("openai/gpt-4o-mini", sent[2][1], 200) and len(attempts) == 3
    assert record["served_by"] == "openai/gpt-4o-mini"
    usage = reply.usage
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4o-mini", want)


def test_both_keys_429_without_a_chain_is_one_openai_429(gw: Pooled) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        gw.ask("gpt-4.1", "gpt-4.1=429@0")
    err = caught.value
    assert err.status_code == 429
    body = err.response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    assert sorted(gw.keys_sent()) == [("gpt-4.1", "main"), ("gpt-4.1", "spare")]
    record = gw.audit.wait_for(err.response.headers["x-gateway-request-id"])
    assert sorted((a.get("key"), a["status"]) for a in record["attempts"]) == [
        ("main", 429),
        ("spare", 429),
    ]
    assert record["cost_micros"] == 0


def test_an_unchained_request_never_carries_the_attempt_count(gw: Pooled) -> None:
    """Embeddings are never chained: the provider cluster's own filter removes the count."""
    gw.mock.clear()
    gw.oai.embeddings.create(model="text-embedding-3-small", input="hi")
    _no_attempt_count(gw.mock.received())


COOLED_ASKS = 6  # Envoy's endpoint is `main` in 3 of 4: without the cooldown one goes to main


def test_a_429_with_retry_after_cools_the_key_for_the_next_requests(gw: Pooled) -> None:
    """Cools `main` for 30 s: run after every test that needs it (file order)."""
    fault = f"key:{MAIN_SECRET}=429@30"
    raw, sent = gw.ask_main_first("gpt-4.1", fault)
    assert raw.status_code == 200 and sent == [("gpt-4.1", "main"), ("gpt-4.1", "spare")]
    for _ in range(COOLED_ASKS):  # whichever endpoint Envoy picks, the attempt presents spare
        raw = gw.ask("gpt-4.1", fault)
        assert raw.status_code == 200
        assert gw.keys_sent() == [("gpt-4.1", "spare")]
        record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
        assert [(a.get("key"), a["status"]) for a in record["attempts"]] == [("spare", 200)]


def test_no_secret_in_the_audit_or_the_logs(gw: Pooled) -> None:
    """Run last in the module (file order): every request above has been logged."""
    audit = gw.audit.path.read_text(errors="replace")
    log = (gw.stack.run_dir / "stack.log").read_text(errors="replace")
    assert '"key": "main"' in audit or '"key":"main"' in audit  # the names are there
    for secret in SECRETS:
        assert secret not in audit and secret not in log
