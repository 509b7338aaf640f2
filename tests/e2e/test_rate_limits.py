"""Rate limits through real Envoy, the sidecar and redis-server, driven by the official openai
(and google-genai) SDK: a held burst of 200 against 20/minute, token limits settled at a stream's
real tokens and at Gemini's usageMetadata,
monitor mode, and rate limits and budgets refusing all or nothing."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest
import redis
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually
from tests.e2e.worst_case import held, input_bound, release

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Count the stars, please."}]
BURST = 200
RPM = 20
TPH = 100_000
GEMINI_TPH = 5_000
HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
TOKEN_HEADERS = (
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
)

CONFIG = f"""
identity: {{dev_issuer: true}}
sidecar: {{workers: 1}}
budgets:
  - name: combo-budget
    scope: {{kind: user}}
    match: {{groups: [combo]}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
  - name: broke
    scope: {{kind: user}}
    match: {{groups: [broke]}}
    limit_usd: 0.000001
    window: {{type: calendar, period: month}}
    action: block
rate_limits:
  - name: burst-rpm
    scope: {{kind: user}}
    match: {{groups: [burst]}}
    requests: {RPM}
    window: 60s
    action: block
  - name: tokens-hourly
    scope: {{kind: user}}
    match: {{groups: [tokens]}}
    tokens: {TPH}
    window: 1h
    action: block
  - name: watch
    scope: {{kind: user}}
    match: {{groups: [watched]}}
    requests: 1
    window: 1h
    action: monitor
  - name: combo-rpm
    scope: {{kind: user}}
    match: {{groups: [combo]}}
    requests: 1
    window: 1h
    action: block
  - name: claude-rpm
    scope: {{kind: user}}
    match: {{groups: [claude]}}
    requests: 1
    window: 1h
    action: block
  - name: gemini-tokens
    scope: {{kind: user}}
    match: {{groups: [gemini], models: ["gemini-*"]}}
    tokens: {GEMINI_TPH}
    window: 1h
    action: block
  - name: broke-rpm
    scope: {{kind: user}}
    match: {{groups: [broke]}}
    requests: 100
    tokens: 1000000
    window: 1h
    action: block
"""


class Limited:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock_base = stack.mock_url.removesuffix("/v1")
        self.redis = redis.Redis.from_url(stack.redis_url)

    def token(self, user: str, *groups: str) -> str:
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time())

    def client(self, token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.stack.gateway_url + "/v1", api_key=token, max_retries=0)

    def async_client(self, token: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.stack.gateway_url + "/v1", api_key=token, max_retries=0, timeout=120
        )

    def rate_counts(self, name: str, scope_value: str, window_s: int) -> tuple[int, int]:
        """(requests, tokens) in the rate limit's counter hash, over every bucket kept."""
        key = f"llmgw:{{gwb}}:rl:{name}:{scope_value}:{window_s}"
        fields = {k.decode(): int(v) for k, v in self.redis.hgetall(key).items()}
        requests = sum(v for k, v in fields.items() if k.startswith("r:"))
        return requests, sum(v for k, v in fields.items() if k.startswith("t:"))

    def budget(self, name: str, scope_value: str) -> tuple[int, int]:
        """(spent, held) of a calendar budget's counters for one scope value."""
        spent = held_ = 0
        for key in self.redis.scan_iter(f"llmgw:{{gwb}}:c:{name}:{scope_value}:*"):
            fields = {k.decode(): int(v) for k, v in self.redis.hgetall(key).items()}
            spent += fields.get("spent", 0)
            held_ += fields.get("held", 0)
        return spent, held_

    def close(self) -> None:
        self.redis.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Limited]:
    tmp_path = tmp_path_factory.mktemp("ratelimits")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    gateway = Limited(start_stack(run_dir, config_path=config), issuer)
    yield gateway
    gateway.close()
    gateway.stack.stop()


def seconds(duration: str) -> float:
    """An OpenAI-style reset duration (`59m45s`, `1h0m0s`, `1.5s`, `20ms`) in seconds."""
    match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:([\d.]+)s)?(?:(\d+)ms)?", duration)
    assert match is not None and duration, duration
    h, m, s, ms = (float(g) if g else 0.0 for g in match.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def test_a_burst_of_200_against_20_per_minute_admits_exactly_20(gw: Limited) -> None:
    token = gw.token("bea@example.com", "burst")
    hold = "rl-burst"

    async def burst() -> list[Any]:
        async with gw.async_client(token) as oai:
            calls = [
                asyncio.ensure_future(
                    oai.chat.completions.with_raw_response.create(
                        model="gpt-4o-mini",
                        messages=MESSAGES,  # type: ignore[arg-type]
                        max_tokens=50,
                        extra_headers={"x-mock-hold": hold, "x-mock-output-tokens": "5"},
                    )
                )
                for _ in range(BURST)
            ]
            # Every admitted response is held at the mock until all 200 are decided, so every
            # admission is counted while the others arrive.
            deadline = time.monotonic() + 120
            while True:
                answered = sum(1 for c in calls if c.done())
                waiting = await asyncio.to_thread(held, gw.mock_base, hold)
                if answered + waiting == BURST:
                    break
                assert time.monotonic() < deadline, f"{answered} answered, {waiting} held"
                await asyncio.sleep(0.1)
            await asyncio.to_thread(release, gw.mock_base, hold)
            return list(await asyncio.gather(*calls, return_exceptions=True))

    outcomes = asyncio.run(burst())
    admitted = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(admitted) == RPM, [type(o).__name__ for o in refused[:5]]
    assert all(isinstance(o, openai.RateLimitError) for o in refused), {
        type(o).__name__ for o in refused
    }
    assert len(refused) == BURST - RPM  # never a 503
    for err in refused:
        assert isinstance(err, openai.RateLimitError)
        assert err.status_code == 429 and err.code == "rate_limited"
        assert "rate limit 'burst-rpm' for user bea@example.com" in err.message
        headers = err.response.headers
        assert 1 <= int(headers["retry-after"]) <= 60
        assert headers["x-ratelimit-limit-requests"] == str(RPM)
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert 0 < seconds(headers["x-ratelimit-reset-requests"]) <= 60
    remaining = sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in admitted)
    assert remaining == list(range(RPM))  # each admission saw the ones before it
    assert all(r.headers["x-ratelimit-limit-requests"] == str(RPM) for r in admitted)
    assert gw.rate_counts("burst-rpm", "bea@example.com", 60)[0] == RPM
    rid = refused[0].response.headers["x-gateway-request-id"]
    rec = gw.audit.wait_for(rid)
    assert rec["status"] == 429 and rec["error_code"] == "rate_limited"
    assert rec["rate_limits"] == [
        {
            "name": "burst-rpm",
            "scope_value": "bea@example.com",
            "action": "block",
            "window_s": 60,
            "limit_requests": RPM,
            "remaining_requests": 0,
            "limit_tokens": None,
            "remaining_tokens": None,
            "would_block": True,
            "blocked": True,
        }
    ]


def test_token_limits_count_a_streams_real_tokens_at_settle(gw: Limited) -> None:
    token = gw.token("tom@example.com", "tokens")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000, "stream": True}
    hold_tokens = input_bound(body) + 1000  # the worst case held at admission
    hold = "rl-stream"

    def stream() -> tuple[Any, list[Any]]:
        with (
            gw.client(token) as oai,
            oai.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=1000,
                stream=True,
                extra_headers={"x-mock-output-tokens": "37", "x-mock-hold": hold},
            ) as response,
        ):
            return response.headers, list(response.parse())

    async def run() -> tuple[Any, list[Any]]:
        call = asyncio.ensure_future(asyncio.to_thread(stream))
        await asyncio.to_thread(eventually, lambda: held(gw.mock_base, hold) == 1)
        # Admitted and held at the mock: the counter holds the worst case.
        assert gw.rate_counts("tokens-hourly", "tom@example.com", 3600) == (1, hold_tokens)
        await asyncio.to_thread(release, gw.mock_base, hold)
        return await call

    headers, chunks = asyncio.run(run())
    assert chunks
    assert headers["x-ratelimit-limit-tokens"] == str(TPH)
    assert headers["x-ratelimit-remaining-tokens"] == str(TPH - hold_tokens)
    # Back to full when this request's bucket (3 minutes of an hour's window) leaves the window.
    assert 57 * 60 <= seconds(headers["x-ratelimit-reset-tokens"]) <= 60 * 60
    assert "x-ratelimit-limit-requests" not in headers  # this limit counts tokens only
    rec = gw.audit.wait_for(headers["x-gateway-request-id"])
    used = rec["tokens"]
    real = used["input_tokens"] + used["cached_input_tokens"] + used["output_tokens"]
    assert used["output_tokens"] == 37 and rec["usage_source"] == "provider"
    assert real < hold_tokens
    eventually(lambda: gw.rate_counts("tokens-hourly", "tom@example.com", 3600) == (1, real))
    assert rec["rate_limits"][0]["remaining_tokens"] == TPH - hold_tokens


def test_a_gemini_token_limit_counts_usage_metadata_and_refuses_in_geminis_format(
    gw: Limited,
) -> None:
    token = gw.token("gil@example.com", "gemini")
    options = genai_types.HttpOptions(base_url=gw.stack.gateway_url)
    client = genai.Client(api_key=token, http_options=options)
    config = genai_types.GenerateContentConfig(
        max_output_tokens=200,
        http_options=genai_types.HttpOptions(headers={"x-mock-output-tokens": "12"}),
    )
    first = client.models.generate_content(
        model="gemini-2.5-flash", contents="Count the stars.", config=config
    )
    usage = first.usage_metadata
    assert usage is not None and usage.total_token_count
    raw = first.sdk_http_response
    assert raw is not None and raw.headers is not None
    assert raw.headers["x-ratelimit-limit-tokens"] == str(GEMINI_TPH)
    rec = gw.audit.wait_for(raw.headers["x-gateway-request-id"])
    used = rec["tokens"]
    real = used["input_tokens"] + used["cached_input_tokens"] + used["output_tokens"]
    assert real == usage.total_token_count  # settled at what usageMetadata reported
    eventually(lambda: gw.rate_counts("gemini-tokens", "gil@example.com", 3600) == (1, real))
    # A request whose worst case no longer fits: refused before the provider, Gemini's 429.
    big = genai_types.GenerateContentConfig(max_output_tokens=GEMINI_TPH)
    with pytest.raises(genai_errors.ClientError) as caught:
        client.models.generate_content(model="gemini-2.5-flash", contents="More.", config=big)
    err = caught.value
    assert err.code == 429 and err.status == "RESOURCE_EXHAUSTED"
    assert "rate limit 'gemini-tokens' for user gil@example.com" in str(err.message)
    assert isinstance(err.details, dict)
    (info,) = err.details["error"]["details"]
    assert info["reason"] == "rate_limited"
    refused = gw.audit.wait_for(info["metadata"]["request_id"])
    assert refused["status"] == 429 and refused["api"] == "gemini_generate"
    assert refused["rate_limits"][0]["blocked"] is True
    assert gw.rate_counts("gemini-tokens", "gil@example.com", 3600) == (1, real)  # not counted


def test_monitor_mode_admits_and_reports_would_block(gw: Limited) -> None:
    token = gw.token("mo@example.com", "watched")
    with gw.client(token) as oai:
        first = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=10,
        )
        second = oai.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=10,
        )
    assert first.http_response.status_code == second.http_response.status_code == 200
    assert "x-gateway-ratelimit-would-block" not in first.headers
    assert second.headers["x-gateway-ratelimit-would-block"] == "true"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    rec = gw.audit.wait_for(second.headers["x-gateway-request-id"])
    assert rec["status"] == 200 and rec["error_code"] is None
    (state,) = rec["rate_limits"]
    assert (state["name"], state["action"], state["would_block"], state["blocked"]) == (
        "watch",
        "monitor",
        True,
        False,
    )
    assert (
        gw.audit.wait_for(first.headers["x-gateway-request-id"])["rate_limits"][0]["would_block"]
        is False
    )
    log = (gw.stack.run_dir / "stack.log").read_text(errors="replace")
    assert "rate limit 'watch' (monitor) would block user mo@example.com" in log


def test_a_request_refused_by_a_rate_limit_holds_nothing_on_budgets(gw: Limited) -> None:
    token = gw.token("cy@example.com", "combo")
    hold = "rl-combo"
    with gw.client(token) as oai:

        def first() -> Any:
            return oai.chat.completions.with_raw_response.create(
                model="gpt-4o-mini",
                messages=MESSAGES,  # type: ignore[arg-type]
                max_tokens=100,
                extra_headers={"x-mock-hold": hold, "x-mock-output-tokens": "3"},
            )

        async def run() -> Any:
            held_call = asyncio.ensure_future(asyncio.to_thread(first))
            # The first request is admitted and held at the mock: its budget hold is in place.
            await asyncio.to_thread(eventually, lambda: held(gw.mock_base, hold) == 1)
            spent, held_before = gw.budget("combo-budget", "cy@example.com")
            assert spent == 0 and held_before > 0
            with pytest.raises(openai.RateLimitError) as refused:
                await asyncio.to_thread(first)
            assert refused.value.code == "rate_limited"
            # The refused request held nothing: the budget still holds the first one only.
            assert gw.budget("combo-budget", "cy@example.com") == (0, held_before)
            await asyncio.to_thread(release, gw.mock_base, hold)
            return await held_call

        ok = asyncio.run(run())
    assert ok.http_response.status_code == 200
    rec = gw.audit.wait_for(ok.headers["x-gateway-request-id"])
    eventually(lambda: gw.budget("combo-budget", "cy@example.com") == (rec["cost_micros"], 0))
    assert gw.rate_counts("combo-rpm", "cy@example.com", 3600)[0] == 1


def test_a_request_refused_by_a_budget_counts_nothing_in_rate_limits(gw: Limited) -> None:
    token = gw.token("bo@example.com", "broke")
    with gw.client(token) as oai, pytest.raises(openai.RateLimitError) as refused:
        oai.chat.completions.create(
            model="gpt-4o-mini",
            messages=MESSAGES,  # type: ignore[arg-type]
            max_tokens=100,
        )
    assert refused.value.code == "budget_exceeded"
    assert gw.rate_counts("broke-rpm", "bo@example.com", 3600) == (0, 0)
    assert gw.budget("broke", "bo@example.com") == (0, 0)
    rid = refused.value.response.headers["x-gateway-request-id"]
    assert gw.audit.wait_for(rid)["error_code"] == "budget_exceeded"


def test_an_anthropic_client_gets_its_own_error_format(gw: Limited) -> None:
    token = gw.token("ann@example.com", "claude")
    claude = anthropic.Anthropic(base_url=gw.stack.gateway_url, api_key=token, max_retries=0)
    messages: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi."}]
    with claude:
        first = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=5, messages=messages
        )
        assert first.headers["x-ratelimit-remaining-requests"] == "0"
        with pytest.raises(anthropic.RateLimitError) as refused:
            claude.messages.create(model="claude-haiku-4-5", max_tokens=5, messages=messages)
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["type"] == "rate_limit_error"
    assert "rate limit 'claude-rpm'" in body["error"]["message"]
    headers = refused.value.response.headers
    assert int(headers["retry-after"]) > 0 and headers["x-ratelimit-limit-requests"] == "1"
