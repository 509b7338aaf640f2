"""Fallback chains end to end (issue 26, docs/fallback.md): real Envoy retries by priority through
the chain cluster, the sidecar's per-attempt filter rewrites each attempt for its target, the mock
fails the targets a test names (`x-mock-fault`), the official openai SDK is the client. One stack
for the module (observe mode, the default)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
FIRST_BYTE_TIMEOUT_S = 1
CONFIG = f"""
identity:
  allow_anonymous: true
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
fallback:
  first_byte_timeout_s: {FIRST_BYTE_TIMEOUT_S}
  chains:
    gpt-4o: [openai/gpt-4o, openai/gpt-4o-mini]
    gpt-4.1: [openai/gpt-4.1, anthropic/claude-haiku-4-5]
"""
ASK = [{"role": "user", "content": "hi"}]


class Chained:
    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock_root = stack.mock_url.removesuffix("/v1")
        self.mock = MockLog(self.mock_root)
        self.oai = openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0
        )

    def counts(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.mock_root + "/_mock/counts", timeout=5) as r:
            return dict(json.load(r))

    def ask(
        self, model: str, fault: str, *, extra: dict[str, str] | None = None, **kwargs: Any
    ) -> Any:
        self.mock.clear()
        headers = {"x-mock-fault": fault, **(extra or {})}
        return self.oai.chat.completions.with_raw_response.create(
            model=model, messages=ASK, extra_headers=headers, **kwargs
        )


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chained]:
    tmp_path = tmp_path_factory.mktemp("fallback")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    g = Chained(start_stack(tmp_path / "run", config_path=config))
    yield g
    g.oai.close()
    g.stack.stop()


def _served_by_fallback(gw: Chained, raw: Any, first_status: int) -> dict[str, Any]:
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["served_by"] == "openai/gpt-4o-mini"
    assert record["served_model"] == "gpt-4o-mini" and record["requested_model"] == "gpt-4o"
    attempts = record["attempts"]
    assert [(a["target"], a["status"]) for a in attempts] == [
        ("openai/gpt-4o", first_status),
        ("openai/gpt-4o-mini", 200),
    ]
    return record


def test_a_primary_500_is_served_by_the_fallback_json(gw: Chained) -> None:
    raw = gw.ask("gpt-4o", "gpt-4o=500")
    reply = raw.parse()
    assert raw.status_code == 200 and reply.model.startswith("gpt-4o-mini")
    record = _served_by_fallback(gw, raw, 500)
    usage = reply.usage
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4o-mini", want)
    assert raw.headers["x-gateway-cost-usd"] == f"{record['cost_micros'] / 1e6:.6f}"
    # What each target was sent: its own model, no client credential.
    sent = [(r["body"]["model"], r["headers"].get("authorization")) for r in gw.mock.requests()]
    assert [m for m, _ in sent] == ["gpt-4o", "gpt-4o-mini"]
    assert all(auth != "Bearer client-key" for _, auth in sent)


def test_a_primary_500_is_served_by_the_fallback_stream(gw: Chained) -> None:
    raw = gw.ask("gpt-4o", "gpt-4o=500", stream=True, stream_options={"include_usage": True})
    chunks = list(raw.parse())
    assert raw.status_code == 200
    usage = chunks[-1].usage
    assert usage is not None and chunks[0].model.startswith("gpt-4o-mini")
    record = _served_by_fallback(gw, raw, 500)
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4o-mini", want)
    assert record["usage_source"] == "provider"


def test_a_429_falls_over(gw: Chained) -> None:
    raw = gw.ask("gpt-4o", "gpt-4o=429@30")
    assert raw.status_code == 200 and raw.parse().model.startswith("gpt-4o-mini")
    _served_by_fallback(gw, raw, 429)


def test_a_stall_before_the_first_byte_falls_over_after_the_timeout(gw: Chained) -> None:
    started = time.monotonic()
    raw = gw.ask("gpt-4o", "gpt-4o=stall@10000")
    took = time.monotonic() - started
    assert raw.status_code == 200 and raw.parse().model.startswith("gpt-4o-mini")
    assert FIRST_BYTE_TIMEOUT_S <= took < 5
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["served_by"] == "openai/gpt-4o-mini"
    # The stalled attempt never had response headers: no record of its own.
    assert [a["target"] for a in record["attempts"]] == ["openai/gpt-4o-mini"]


def test_a_cut_after_the_first_byte_is_not_retried(gw: Chained) -> None:
    # The body in 100-byte writes 200 ms apart: the headers and the first bytes reach the client
    # before the cut. (A cut while the per-attempt filter still holds the headers is retried:
    # Envoy's router has not seen them, docs/fallback.md fact 5; measured with one 300-byte write.)
    raw = gw.ask(
        "gpt-4o",
        "gpt-4o=cut@300",
        extra={"x-mock-chunk-delay-ms": "200", "x-mock-chunk-bytes": "100"},
        stream=True,
    )
    assert raw.status_code == 200  # the headers reached the client: no other target now
    with contextlib.suppress(openai.APIError, httpx.HTTPError):  # cut: ends short or raises
        list(raw.parse())
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert "gpt-4o-mini" not in gw.counts()  # the fallback never heard of it
    assert record["served_by"] == "openai/gpt-4o" and record["served_model"] == "gpt-4o"
    assert record["completed"] is False and record["usage_source"] == "bound"
    assert record["cost_micros"] > 0  # charged as today's cut streams: within its bound


def test_every_target_failing_is_one_error_in_the_clients_format(gw: Chained) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        gw.ask("gpt-4o", "gpt-4o=500,gpt-4o-mini=500")
    assert err.value.status_code == 500
    record = gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert [(a["target"], a["status"]) for a in record["attempts"]] == [
        ("openai/gpt-4o", 500),
        ("openai/gpt-4o-mini", 500),
    ]
    assert record["cost_micros"] == 0


def test_a_fallback_in_another_api_is_translated_back(gw: Chained) -> None:
    raw = gw.ask("gpt-4.1", "gpt-4.1=500")
    reply = raw.parse()  # chat completions, though Anthropic answered
    assert raw.status_code == 200 and reply.object == "chat.completion"
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["served_by"] == "anthropic/claude-haiku-4-5"
    assert record["provider"] == "anthropic" and record["served_model"] == "claude-haiku-4-5"


def test_a_model_without_a_chain_takes_the_old_path(gw: Chained) -> None:
    raw = gw.ask("gpt-4o-mini", "gpt-4o=500")
    assert raw.status_code == 200
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert "attempts" not in record and "served_by" not in record
    assert record["served_model"] == "gpt-4o-mini"


def test_a_stream_longer_than_the_first_byte_timeout_is_not_cut(gw: Chained) -> None:
    """`first_byte_timeout_s` is Envoy's per_try_timeout: measured on 1.40, it stops counting
    once the attempt's response headers are in, so a stream that runs past it completes."""
    started = time.monotonic()
    raw = gw.ask(
        "gpt-4o",
        "gpt-4o-mini=500",
        extra={"x-mock-chunk-delay-ms": "400", "x-mock-output-tokens": "4"},
        stream=True,
    )
    chunks = list(raw.parse())
    assert time.monotonic() - started > 2 * FIRST_BYTE_TIMEOUT_S  # it did run past it
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["completed"] is True and record["usage_source"] == "provider"
    assert [(a["target"], a["status"]) for a in record["attempts"]] == [("openai/gpt-4o", 200)]
    assert chunks[-1].usage is not None
