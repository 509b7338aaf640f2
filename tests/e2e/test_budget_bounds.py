"""The worst case is a real upper bound, through real Envoy, sidecar workers, redis-server and the
mock provider (which honours max-tokens caps and counts tokens as the providers do): no request
shape overruns its reservation, and bursts are answered with 200s and 429s only.

Every expected number is computed here from literal prices and the documented bound, never from
the gateway's own estimator."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import yaml

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import CATALOG, AuditLog, MockLog, eventually
from tests.e2e.worst_case import (
    EMBEDDING_3_SMALL,
    GPT4O,
    GPT4O_MINI,
    GPT4O_PRIORITY,
    cost_micros,
    estimate_micros,
    held_burst,
    input_bound,
    mock_input_tokens,
)

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
CONTEXT_WINDOW = 128_000  # set for the test models by the operator catalog below
IMAGE_TOKENS = 1_445  # gpt-4o: 85 + 8 x 170 (a 768 x 2048 high-detail image)

OPERATOR_CATALOG = f"""
models:
  gpt-4o: {{context_window: {CONTEXT_WINDOW}, image_input_tokens: {IMAGE_TOKENS}}}
  gpt-4o-mini: {{context_window: {CONTEXT_WINDOW}}}
  text-embedding-3-small: {{context_window: 8192}}
"""


def budget(name: str, group: str, limit_micros: int, **extra: str) -> str:
    usd = f"{limit_micros // 10**6}.{limit_micros % 10**6:06d}"
    lines = [
        f"  - name: {name}",
        "    scope: {kind: user}",
        f"    match: {{groups: [{group}]}}",
        f"    limit_usd: {usd}",
        "    window: {type: calendar, period: month}",
        "    action: block",
    ]
    lines += [f"    {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


STORY = [{"role": "user", "content": "Write me a very long story about the sea."}]
CAPPED = {"model": "gpt-4o", "messages": STORY}
CAPPED_ESTIMATE = estimate_micros(input_bound(CAPPED), 8192, GPT4O)
CAPPED_LIMIT = 300_000  # $0.30: room for 3 worst cases
CHOICES_BODY = {"model": "gpt-4o", "messages": STORY, "max_tokens": 1000}


def choices_estimate(n: int) -> int:
    return estimate_micros(input_bound({**CHOICES_BODY, "n": n}), n * 1000, GPT4O)


BURST_BODY = {"model": "gpt-4o-mini", "messages": STORY, "max_tokens": 16_000}
BURST_ESTIMATE = estimate_micros(input_bound(BURST_BODY), 16_000, GPT4O_MINI)
BURST_LIMIT = 100_000  # $0.10


class Gateway:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock_base = stack.mock_url.removesuffix("/v1")
        self.mock = MockLog(self.mock_base)
        self.redis = redis.Redis.from_url(stack.redis_url)

    def token(self, user: str, *groups: str) -> str:
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time())

    def post(self, token: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + path,
            json=body,
            headers={"authorization": f"Bearer {token}", **headers},
            timeout=60,
        )

    def counters(self, budget: str, scope_value: str) -> tuple[int, int]:
        spent = held = 0
        for key in self.redis.scan_iter(f"llmgw:{{gwb}}:c:{budget}:{scope_value}:*"):
            fields = {k.decode(): int(v) for k, v in self.redis.hgetall(key).items()}
            spent += fields.get("spent", 0)
            held += fields.get("held", 0)
        return spent, held

    def settled(self, budget: str, scope_value: str) -> int:
        """Spent, once every hold is gone (settles run in the background)."""
        eventually(lambda: self.counters(budget, scope_value)[1] == 0)
        return self.counters(budget, scope_value)[0]


def _gateway(tmp: Any, config: str) -> Iterator[Gateway]:
    run_dir = tmp / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    catalog = tmp / "catalog.yaml"
    catalog.write_text(OPERATOR_CATALOG)
    path = tmp / "gateway.yaml"
    path.write_text(config.replace("CATALOG_FILE", str(catalog)))
    gw = Gateway(start_stack(run_dir, config_path=path), issuer)
    yield gw
    gw.redis.close()
    gw.stack.stop()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = (
        "identity: {dev_issuer: true}\n"
        "catalog: {files: [CATALOG_FILE]}\n"
        "sidecar: {workers: 2}\n"
        "providers: {anthropic: {forward_headers: [anthropic-beta]}}\n"
        "budgets:\n"
        + budget("capped", "capped", CAPPED_LIMIT)
        + budget("choices", "choices", choices_estimate(2))
        + budget("plenty", "plenty", 5_000_000)
        + budget("poor", "poor", 10_000)
    )
    yield from _gateway(tmp_path_factory.mktemp("bounds"), config)


@pytest.fixture(scope="module")
def burst_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """Two workers with the default Redis deadline, as `make run` has them; unseen input refused."""
    config = (
        "identity: {dev_issuer: true}\n"
        "catalog: {files: [CATALOG_FILE]}\n"
        "sidecar: {workers: 2}\n"
        "budget_store: {unseen_input: refuse}\n"
        "budgets:\n" + budget("burst", "burst", BURST_LIMIT) + budget("guarded", "guarded", 10**6)
    )
    yield from _gateway(tmp_path_factory.mktemp("burst"), config)


def test_the_literal_prices_are_the_catalogs() -> None:
    models = yaml.safe_load(CATALOG.read_text())["models"]
    for name, price in (
        ("gpt-4o", GPT4O),
        ("gpt-4o-mini", GPT4O_MINI),
        ("text-embedding-3-small", EMBEDDING_3_SMALL),
    ):
        entry = models[name]
        assert str(entry["input"]) == str(float(price["input"])), name
        assert max(entry.get("cache_write", 0), entry.get("cached_input", 0)) <= entry["input"]
        if price["output"]:
            assert str(entry["output"]) == str(float(price["output"])), name
    priority = models["gpt-4o"]["service_tiers"]["priority"]
    assert (priority["input"], priority["output"]) == (4.25, 17.0)


def overrun_free(gw: Gateway, response: httpx.Response) -> dict[str, Any]:
    rec = gw.audit.wait_for(response.headers["x-gateway-request-id"])
    assert rec["budget"]["overrun_micros"] == 0, rec
    assert rec["cost_micros"] <= rec["budget"]["estimate_micros"], rec
    return rec


# -- 1. no max-tokens field: the gateway's cap is injected and bounds the bill ---------------


def test_a_request_without_a_limit_gets_the_cap_and_the_budget_holds(gw: Gateway) -> None:
    """The issue's case: 8 concurrent gpt-4o requests with no max-tokens field, each answered with
    16,000 tokens, against $0.30. Before: 3 admitted, $0.48 spent. Now the 8,192-token cap is
    injected, the provider honours it, and exactly floor($0.30 / worst case) are admitted."""
    token = gw.token("cap@example.com", "capped")
    expected = CAPPED_LIMIT // CAPPED_ESTIMATE
    assert expected == 3
    gw.mock.clear()
    responses = held_burst(
        gw.stack.gateway_url + CHAT,
        CAPPED,
        {"authorization": f"Bearer {token}", "x-mock-output-tokens": "16000"},
        8,
        gw.mock_base,
        "capped",
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * expected + [429] * (8 - expected), statuses
    input_tokens = mock_input_tokens(STORY)
    each = cost_micros(input_tokens, 8192, GPT4O)
    for r in responses:
        if r.status_code != 200:
            continue
        assert r.json()["usage"]["completion_tokens"] == 8192  # the cap, not 16,000
        rec = overrun_free(gw, r)
        assert rec["output_cap_injected"] is True
        assert rec["cost_micros"] == each
        assert rec["budget"]["estimate_micros"] == CAPPED_ESTIMATE
    capped_bodies = [q["body"] for q in gw.mock.received() if q["body"].get("messages") == STORY]
    assert [b["max_completion_tokens"] for b in capped_bodies] == [8192] * expected
    spent = gw.settled("capped", "cap@example.com")
    assert spent == expected * each <= CAPPED_LIMIT


# -- 2. n choices multiply the reservation ----------------------------------------------------


def test_n_choices_multiply_the_reservation(gw: Gateway) -> None:
    token = gw.token("choosy@example.com", "choices")
    three = gw.post(token, CHAT, {**CHOICES_BODY, "n": 3}, **{"x-mock-output-tokens": "1000"})
    assert three.status_code == 429, three.text  # 3 x 1000 output tokens do not fit
    assert choices_estimate(3) > choices_estimate(2)
    two = gw.post(token, CHAT, {**CHOICES_BODY, "n": 2}, **{"x-mock-output-tokens": "1000"})
    assert two.status_code == 200, two.text
    assert len(two.json()["choices"]) == 2
    rec = overrun_free(gw, two)
    expected = cost_micros(mock_input_tokens(STORY), 2000, GPT4O)
    assert rec["cost_micros"] == expected
    assert rec["budget"]["estimate_micros"] == choices_estimate(2)
    assert gw.settled("choices", "choosy@example.com") == expected


# -- 3. input: CJK text, token-id arrays, images --------------------------------------------


def test_cjk_text_is_reserved_by_its_bytes(gw: Gateway) -> None:
    token = gw.token("cjk@example.com", "plenty")
    messages = [{"role": "user", "content": "请数一数天上的星星。" * 200}]
    body = {"model": "gpt-4o-mini", "messages": messages, "max_tokens": 10}
    r = gw.post(token, CHAT, body, **{"x-mock-output-tokens": "10"})
    assert r.status_code == 200, r.text
    rec = overrun_free(gw, r)
    reported = rec["tokens"]["input_tokens"]
    assert reported == mock_input_tokens(messages)
    assert len(messages[0]["content"]) / 4 < reported  # characters / 4 would have overrun
    assert rec["budget"]["bound"]["input_tokens"] == input_bound(body) >= reported


def test_token_id_arrays_are_reserved_one_token_per_id(gw: Gateway) -> None:
    token = gw.token("ids@example.com", "plenty")
    ids = [50_000 + i for i in range(3000)]
    r = gw.post(token, "/v1/embeddings", {"model": "text-embedding-3-small", "input": ids})
    assert r.status_code == 200, r.text
    rec = overrun_free(gw, r)
    assert rec["tokens"]["input_tokens"] == 3000
    assert rec["cost_micros"] == cost_micros(3000, 0, EMBEDDING_3_SMALL) == 60
    bound = rec["budget"]["bound"]["input_tokens"]
    assert bound == 3000 + len("input") + len("model") + len("text-embedding-3-small") + 16


def test_images_are_reserved_at_the_models_image_maximum(gw: Gateway) -> None:
    token = gw.token("pics@example.com", "plenty")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "iVBO" * 50_000}}
    content = [{"type": "text", "text": "What is in these pictures?"}, image, image]
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "max_tokens": 5}
    r = gw.post(token, CHAT, body, **{"x-mock-output-tokens": "5"})
    assert r.status_code == 200, r.text
    rec = overrun_free(gw, r)
    text_only = {**body, "messages": [{"role": "user", "content": content[:1]}]}
    assert rec["budget"]["bound"]["input_tokens"] == input_bound(text_only) + 2 * IMAGE_TOKENS
    assert (
        rec["tokens"]["input_tokens"]
        == mock_input_tokens([{"role": "user", "content": [content[0], None, None]}]) + 2 * 765
    )  # the mock counts an image as 765 tokens, as gpt-4o bills a 1024 px square


# -- 4. input the gateway cannot see ----------------------------------------------------------


def test_unseen_input_reserves_the_context_window(gw: Gateway) -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "and then?",
        "previous_response_id": "resp_earlier",
        "max_output_tokens": 100,
    }
    window_cost = estimate_micros(CONTEXT_WINDOW, 100, GPT4O_MINI)
    rich = gw.post(gw.token("rich@example.com", "plenty"), "/v1/responses", body)
    assert rich.status_code == 200, rich.text
    rec = overrun_free(gw, rich)
    assert rec["budget"]["bound"]["input_tokens"] == CONTEXT_WINDOW
    assert rec["budget"]["estimate_micros"] == window_cost
    poor = gw.post(gw.token("poor@example.com", "poor"), "/v1/responses", body)
    assert window_cost > 10_000 and poor.status_code == 429, poor.text


def test_unseen_input_is_refused_when_configured(burst_gw: Gateway) -> None:
    body = {
        "model": "gpt-4o-mini",
        "input": "search it",
        "tools": [{"type": "web_search"}],
        "max_output_tokens": 10,
    }
    burst_gw.mock.clear()
    r = burst_gw.post(burst_gw.token("g@example.com", "guarded"), "/v1/responses", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "cost_unbounded" and "tools[0].type=web_search" in err["message"]
    assert burst_gw.mock.received() == []  # never sent


def test_background_responses_without_stream_are_refused(gw: Gateway) -> None:
    body = {"model": "gpt-4o-mini", "input": "later", "background": True}
    r = gw.post(gw.token("bg@example.com", "plenty"), "/v1/responses", body)
    assert r.status_code == 400 and "background" in r.json()["error"]["message"], r.text


# -- 5. options that change the price: priced, or refused ------------------------------------


def test_a_priority_request_is_reserved_and_billed_at_priority_prices(gw: Gateway) -> None:
    token = gw.token("vip@example.com", "plenty")
    body = {"model": "gpt-4o", "messages": STORY, "max_tokens": 100, "service_tier": "priority"}
    r = gw.post(token, CHAT, body, **{"x-mock-output-tokens": "100"})
    assert r.status_code == 200, r.text
    rec = overrun_free(gw, r)
    assert rec["cost_micros"] == cost_micros(mock_input_tokens(STORY), 100, GPT4O_PRIORITY)
    assert rec["budget"]["estimate_micros"] == estimate_micros(
        input_bound(body), 100, GPT4O_PRIORITY
    )


@pytest.mark.parametrize(
    ("path", "body", "headers", "named"),
    [
        (CHAT, {"model": "gpt-4o", "service_tier": "flex"}, {}, "service_tier 'flex'"),
        (CHAT, {"model": "gpt-4o-mini", "service_tier": "scale"}, {}, "service_tier 'scale'"),
        (
            "/v1/messages",
            {"model": "claude-haiku-4-5"},
            {"anthropic-beta": "context-1m-2025-08-07", "anthropic-version": "2023-06-01"},
            "long-context beta",
        ),
        ("/v1/messages", {"model": "claude-haiku-4-5", "speed": "fast"}, {}, "speed='fast'"),
        (
            "/v1/messages",
            {"model": "claude-haiku-4-5", "inference_geo": "us"},
            {},
            "inference_geo='us'",
        ),
    ],
)
def test_an_option_the_catalog_cannot_price_is_refused(
    gw: Gateway, path: str, body: dict[str, Any], headers: dict[str, str], named: str
) -> None:
    full = {**body, "max_tokens": 10, "messages": STORY}
    gw.mock.clear()
    r = gw.post(gw.token("opt@example.com", "plenty"), path, full, **headers)
    assert r.status_code == 400, r.text
    payload = r.json()
    error = payload["error"]
    assert named in error["message"]
    if path == CHAT:
        assert error["code"] == "unsupported_option"
    assert gw.mock.received() == []  # never reached the provider


def test_the_long_context_beta_is_served_where_it_is_priced(gw: Gateway) -> None:
    headers = {"anthropic-beta": "context-1m-2025-08-07", "anthropic-version": "2023-06-01"}
    body = {"model": "claude-sonnet-4-6", "max_tokens": 10, "messages": STORY}
    r = gw.post(gw.token("long@example.com", "plenty"), "/v1/messages", body, **headers)
    assert r.status_code == 200, r.text
    assert gw.mock.last()["headers"]["anthropic-beta"] == "context-1m-2025-08-07"


# -- 6. a burst is answered with 200s and 429s, never 503s -----------------------------------


@pytest.mark.parametrize("count", [200, 1000])
def test_a_burst_gets_200s_and_429s_only(burst_gw: Gateway, count: int) -> None:
    user = f"burst-{count}@example.com"
    token = burst_gw.token(user, "burst")
    expected = BURST_LIMIT // BURST_ESTIMATE
    responses = held_burst(
        burst_gw.stack.gateway_url + CHAT,
        BURST_BODY,
        {"authorization": f"Bearer {token}", "x-mock-output-tokens": "200"},
        count,
        burst_gw.mock_base,
        f"burst-{count}",
    )
    statuses = [r.status_code for r in responses]
    codes = sorted({r.text[:300] for r in responses if r.status_code == 503})[:3]
    assert set(statuses) <= {200, 429}, ({s: statuses.count(s) for s in set(statuses)}, codes)
    assert statuses.count(200) == expected
    spent = burst_gw.settled("burst", user)
    each = cost_micros(mock_input_tokens(STORY), 200, GPT4O_MINI)
    assert spent == expected * each <= BURST_LIMIT


# -- 7. an overrun (the bound failed: here, a provider reporting a dearer model) -------------


def test_a_cost_above_the_worst_case_is_an_audited_overrun(gw: Gateway) -> None:
    token = gw.token("over@example.com", "plenty")
    body = {"model": "gpt-4o-mini", "messages": STORY, "max_tokens": 200}
    r = gw.post(
        token, CHAT, body, **{"x-mock-output-tokens": "200", "x-mock-response-model": "gpt-4o"}
    )
    assert r.status_code == 200, r.text
    rec = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    estimate = estimate_micros(input_bound(body), 200, GPT4O_MINI)
    cost = cost_micros(mock_input_tokens(STORY), 200, GPT4O)  # priced as the dearer model
    assert (rec["budget"]["estimate_micros"], rec["cost_micros"]) == (estimate, cost)
    assert rec["budget"]["overrun_micros"] == cost - estimate > 0
    log = (gw.stack.run_dir / "stack.log").read_text()
    assert any(
        "worst-case overrun" in line and rec["request_id"] in line for line in log.splitlines()
    )
    assert gw.settled("plenty", "over@example.com") == cost  # the real cost is still charged
