"""Fallback chains end to end (issue 26, docs/fallback.md): real Envoy retries by priority through
the chain cluster, the sidecar's per-attempt filter rewrites each attempt for its target, the mock
fails the targets a test names (`x-mock-fault`), the official openai SDK is the client. One stack
for the module in each metering mode (observe, the default, and synchronous)."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack, static_tokens_yaml
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens
from tests.e2e.worst_case import release

pytestmark = pytest.mark.e2e
FIRST_BYTE_TIMEOUT_S = 1
# A 3-target chain whose middle target one group may not use and whose last another may not,
# the last the dearest (gpt-4.1: $8/M output; gpt-4.1-mini $1.6/M).
THREE = ["openai/gpt-4.1-mini", "openai/gpt-5-nano", "openai/gpt-4.1"]
# Covers gpt-4.1-mini's bound for 1,000 output tokens, not gpt-4.1's.
THRIFTY_LIMIT_USD = 0.004
CONFIG = f"""
identity:
  dev_issuer: true
  allow_anonymous: true
  static_tokens:
{static_tokens_yaml()}sidecar: {{workers: 1}}
policies:
  rules:
    - groups: [no-nano]
      allow: ["*"]
      deny: [gpt-5-nano]
    - groups: [no-gpt-4.1]
      allow: ["*"]
      deny: [gpt-4.1]
budgets:
  - name: thrifty
    scope: {{kind: user}}
    match: {{groups: [thrifty]}}
    limit_usd: {THRIFTY_LIMIT_USD}
    window: {{type: calendar, period: month}}
    action: block
fallback:
  first_byte_timeout_s: {FIRST_BYTE_TIMEOUT_S}
  # Off here: these tests fail a primary again and again to exercise the retry; ejecting it
  # would make a later test pass without one (test_fallback_outlier.py has it on).
  outlier: false
  chains:
    gpt-4o: [openai/gpt-4o, openai/gpt-4o-mini]
    gpt-4.1: [openai/gpt-4.1, anthropic/claude-haiku-4-5]
    gpt-4.1-mini: [{", ".join(THREE)}]
"""
ASK = [{"role": "user", "content": "hi"}]


class Chained:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.clients: list[openai.OpenAI] = []
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock_root = stack.mock_url.removesuffix("/v1")
        self.mock = MockLog(self.mock_root)
        self.oai = openai.OpenAI(
            base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0
        )

    def member(self, group: str) -> openai.OpenAI:
        """A client with a token of a fresh user in `group`."""
        user = f"{uuid.uuid4().hex[:8]}@example.com"
        token = self.issuer.mint(user, [group], None, 3600, {}, time.time())
        c = openai.OpenAI(base_url=self.stack.gateway_url + "/v1", api_key=token, max_retries=0)
        self.clients.append(c)
        return c

    def sent(self) -> list[str]:
        """The models the mock was asked for since the last `ask`, in order."""
        return [r["body"]["model"] for r in self.mock.requests()]

    def counts(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.mock_root + "/_mock/counts", timeout=5) as r:
            return dict(json.load(r))

    def ask(
        self,
        model: str,
        fault: str,
        *,
        extra: dict[str, str] | None = None,
        client: openai.OpenAI | None = None,
        **kwargs: Any,
    ) -> Any:
        self.mock.clear()
        headers = {**({"x-mock-fault": fault} if fault else {}), **(extra or {})}
        return (client or self.oai).chat.completions.with_raw_response.create(
            model=model, messages=ASK, extra_headers=headers, **kwargs
        )


@pytest.fixture(scope="module", params=["observe", "synchronous"])
def gw(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Chained]:
    tmp_path = tmp_path_factory.mktemp(f"fallback-{request.param}")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG + f"metering: {{mode: {request.param}}}\n")
    g = Chained(start_stack(run_dir, config_path=config), issuer)
    yield g
    for c in [g.oai, *g.clients]:
        c.close()
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
    # Money per attempt: the failed one is not billed, the answering one carries the charge.
    assert [a["cost_micros"] for a in attempts] == [0, record["cost_micros"]]
    assert all(isinstance(a["latency_ms"], int) and a["latency_ms"] >= 0 for a in attempts)
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
    # The 429's retry-after cooled openai's one key for 30 s: for that long a chain headed by an
    # openai target starts after its head (test_fallback_cooldown.py). The module's later tests
    # fail the head themselves, so the cooldown is removed here (and checked to exist).
    client = redis.Redis.from_url(gw.stack.redis_url)
    try:
        cooling = list(client.scan_iter(match="*:keycool:openai:*"))
        assert len(cooling) == 1
        client.delete(*cooling)
    finally:
        client.close()


def test_a_stall_before_the_first_byte_falls_over_after_the_timeout(gw: Chained) -> None:
    started = time.monotonic()
    raw = gw.ask("gpt-4o", "gpt-4o=stall@10000")
    took = time.monotonic() - started
    assert raw.status_code == 200 and raw.parse().model.startswith("gpt-4o-mini")
    assert FIRST_BYTE_TIMEOUT_S <= took < 5
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert record["served_by"] == "openai/gpt-4o-mini"
    # The stalled attempt never had response headers: no record of its own, reported as the
    # gap it left in the attempt numbers (its target unknown), charged nothing.
    assert [(a["attempt"], a["target"], a.get("outcome")) for a in record["attempts"]] == [
        (1, None, "no_response"),
        (2, "openai/gpt-4o-mini", None),
    ]
    assert [a["cost_micros"] for a in record["attempts"]] == [0, record["cost_micros"]]
    assert record["skipped"] == []  # the gap may have been the head: nothing said


def test_a_cut_after_the_first_byte_is_not_retried(gw: Chained) -> None:
    # The mock holds the body after its first event until the client has read it, then cuts at
    # 300 bytes: the headers reached the client before the cut. (A cut while the
    # per-attempt filter still holds the headers is retried: Envoy's router has not seen them,
    # docs/fallback.md fact 5.)
    gw.mock.clear()
    hold = f"cut-{uuid.uuid4().hex}"
    headers = {
        "x-mock-fault": "gpt-4o=cut@300",
        "x-mock-hold-after-events": f"{hold}@1",
    }
    with gw.oai.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=ASK, stream=True, extra_headers=headers
    ) as response:
        assert response.status_code == 200  # the headers reached the client: no other target now
        request_id = response.headers["x-gateway-request-id"]
        with contextlib.suppress(openai.APIError, httpx.HTTPError):  # cut: short or raises
            for n, _ in enumerate(response.parse()):
                if n == 0:
                    release(gw.mock_root, hold)
    record = gw.audit.wait_for(request_id)
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


def _attempts(record: dict[str, Any]) -> list[tuple[str, int]]:
    return [(a["target"], a["status"]) for a in record["attempts"]]


def test_a_target_the_callers_policy_forbids_is_skipped(gw: Chained) -> None:
    """The middle target is forbidden to group no-nano: after the first fails, the third answers
    (a cluster variant without it); the middle one never hears of the request."""
    raw = gw.ask("gpt-4.1-mini", "gpt-4.1-mini=500", client=gw.member("no-nano"))
    reply = raw.parse()
    assert raw.status_code == 200 and reply.model.startswith("gpt-4.1")
    assert gw.sent() == ["gpt-4.1-mini", "gpt-4.1"]
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert _attempts(record) == [("openai/gpt-4.1-mini", 500), ("openai/gpt-4.1", 200)]
    assert record["served_by"] == "openai/gpt-4.1" and record["served_model"] == "gpt-4.1"
    assert [a["cost_micros"] for a in record["attempts"]] == [0, record["cost_micros"]]
    usage = reply.usage
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert record["cost_micros"] == expected_cost_micros("gpt-4.1", want)


def test_a_caller_allowed_everything_goes_through_all_three(gw: Chained) -> None:
    raw = gw.ask("gpt-4.1-mini", "gpt-4.1-mini=500,gpt-5-nano=500")
    assert raw.status_code == 200 and raw.parse().model.startswith("gpt-4.1")
    assert gw.sent() == ["gpt-4.1-mini", "gpt-5-nano", "gpt-4.1"]
    record = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert _attempts(record) == [
        ("openai/gpt-4.1-mini", 500),
        ("openai/gpt-5-nano", 500),
        ("openai/gpt-4.1", 200),
    ]


def test_a_forbidden_last_target_trims_the_chain(gw: Chained) -> None:
    """Group no-gpt-4.1 may not use the last target: the chain's own cluster, stopped after two
    attempts by x-envoy-max-retries (without it Envoy would go on to gpt-4.1 and answer 200)."""
    with pytest.raises(openai.InternalServerError) as err:
        gw.ask("gpt-4.1-mini", "gpt-4.1-mini=500,gpt-5-nano=500", client=gw.member("no-gpt-4.1"))
    # The last attempt's answer (a third attempt would get the per-attempt filter's final 503:
    # gpt-4.1 is not in the request's admitted targets).
    assert err.value.status_code == 500
    assert gw.sent() == ["gpt-4.1-mini", "gpt-5-nano"]
    record = gw.audit.wait_for(err.value.response.headers["x-gateway-request-id"])
    assert _attempts(record) == [("openai/gpt-4.1-mini", 500), ("openai/gpt-5-nano", 500)]
    assert record["cost_micros"] == 0


def test_a_budget_covering_only_the_first_target_refuses_the_chain(gw: Chained) -> None:
    """The reservation covers the dearest target the chain can reach (gpt-4.1), not the first:
    a budget that covers only gpt-4.1-mini's bound refuses the request (429) before any target
    is asked; the chain is not trimmed to what the budget admits (docs/fallback.md)."""
    with pytest.raises(openai.RateLimitError) as err:
        gw.ask("gpt-4.1-mini", "", client=gw.member("thrifty"), max_tokens=1000)
    assert err.value.status_code == 429
    assert gw.sent() == []


def test_a_client_sent_envoy_header_cannot_change_the_attempts(gw: Chained) -> None:
    """The edge strips every client-sent x-envoy-* header: `x-envoy-max-retries: 0` does not
    stop the fallback (nor would a larger value extend a trimmed chain)."""
    raw = gw.ask(
        "gpt-4o",
        "gpt-4o=500",
        extra={"x-envoy-max-retries": "0", "x-envoy-retry-on": "retriable-headers"},
    )
    assert raw.status_code == 200 and raw.parse().model.startswith("gpt-4o-mini")
    _served_by_fallback(gw, raw, 500)
