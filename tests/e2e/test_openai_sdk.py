"""The official OpenAI SDK through Envoy + sidecar + mock: usage and cost metered exactly."""

from __future__ import annotations

import openai
import pytest

from tests.e2e.conftest import Metered
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Say hello to the gateway."}]


def test_chat_non_stream(metered: Metered) -> None:
    oai, audit = metered.oai, metered.audit
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    completion = raw.parse()
    assert completion.usage is not None
    rid = raw.headers["x-gateway-request-id"]
    record = audit.wait_for(rid)
    want = tokens(completion.usage.prompt_tokens, output=completion.usage.completion_tokens)
    assert record["tokens"] == want
    assert record["usage_source"] == "provider"
    assert record["stream"] is False and record["status"] == 200 and record["completed"] is True
    assert record["cost_micros"] == expected_cost_micros("gpt-4o-mini", want)
    metered.cost_header(raw.headers, record["cost_micros"])
    assert record["requested_model"] == record["served_model"] == "gpt-4o-mini"
    assert record["provider"] == "openai" and record["upstream_mocked"] is True


@pytest.mark.parametrize(
    "chunking",
    [
        {},
        {"x-mock-chunk-bytes": "1"},
        {"x-mock-chunk-bytes": "7"},
        {"x-mock-events-per-write": "5"},
    ],
    ids=["event-per-write", "1-byte-writes", "7-byte-writes", "5-events-per-write"],
)
def test_chat_stream_every_chunking(
    oai: openai.OpenAI, audit: AuditLog, mock: MockLog, chunking: dict[str, str]
) -> None:
    headers = {"x-mock-output-tokens": "40", **chunking}
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_headers=headers
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        chunks = list(response.parse())
    # The gateway asked for the usage chunk (the client did not), so the provider sent it.
    usage = next(c.usage for c in chunks if c.usage is not None)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 40
    assert mock.last()["body"]["stream_options"] == {"include_usage": True}
    record = audit.wait_for(rid)
    want = tokens(usage.prompt_tokens, output=usage.completion_tokens)
    assert usage.completion_tokens == 40
    assert record["tokens"] == want
    assert record["usage_source"] == "provider" and record["completed"] is True
    assert record["cost_micros"] == expected_cost_micros("gpt-4o", want)


def test_cached_and_reasoning_tokens_priced_separately(oai: openai.OpenAI, audit: AuditLog) -> None:
    headers = {
        "x-mock-cached-tokens": "1000",
        "x-mock-reasoning-tokens": "300",
        "x-mock-output-tokens": "20",
    }
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-6-luna",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        chunks = list(response.parse())
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    record = audit.wait_for(rid)
    cached = usage.prompt_tokens_details.cached_tokens or 0
    reasoning = usage.completion_tokens_details.reasoning_tokens or 0
    assert cached == 1000 and reasoning == 300
    # OpenAI counts cached tokens inside prompt_tokens: the gateway must not count them twice.
    want = tokens(
        usage.prompt_tokens - cached,
        cached=cached,
        output=usage.completion_tokens,
        reasoning=reasoning,
    )
    assert record["tokens"] == want
    assert record["cost_micros"] == expected_cost_micros("gpt-6-luna", want)


def test_responses_api_stream_and_json(oai: openai.OpenAI, audit: AuditLog) -> None:
    raw = oai.responses.with_raw_response.create(
        model="gpt-4.1", input="hello", extra_headers={"x-mock-cached-tokens": "64"}
    )
    resp = raw.parse()
    assert resp.usage is not None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    cached = resp.usage.input_tokens_details.cached_tokens
    want = tokens(resp.usage.input_tokens - cached, cached=cached, output=resp.usage.output_tokens)
    assert rec["tokens"] == want and rec["api"] == "openai_responses"
    assert rec["cost_micros"] == expected_cost_micros("gpt-4.1", want)

    with oai.responses.with_streaming_response.create(
        model="gpt-4.1", input="hello", stream=True, extra_headers={"x-mock-chunk-bytes": "13"}
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    completed = next(e for e in events if e.type == "response.completed")
    usage = completed.response.usage
    assert usage is not None
    rec = audit.wait_for(rid)
    cached = usage.input_tokens_details.cached_tokens
    reasoning = usage.output_tokens_details.reasoning_tokens
    want = tokens(
        usage.input_tokens - cached, cached=cached, output=usage.output_tokens, reasoning=reasoning
    )
    assert rec["tokens"] == want and usage.output_tokens > 0
    assert rec["stream"] is True and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros("gpt-4.1", want) > 0


def test_embeddings_and_legacy_completions(oai: openai.OpenAI, audit: AuditLog) -> None:
    raw = oai.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["a b c", "d e"]
    )
    emb = raw.parse()
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == tokens(emb.usage.prompt_tokens)
    assert rec["cost_micros"] == expected_cost_micros("text-embedding-3-small", rec["tokens"])

    with oai.completions.with_streaming_response.create(
        model="gpt-3.5-turbo-instruct", prompt="def fib(n):", stream=True, max_tokens=9
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        chunks = list(response.parse())
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert usage.completion_tokens == 9  # capped by max_tokens
    rec = audit.wait_for(rid)
    want = tokens(usage.prompt_tokens, output=9)
    assert rec["tokens"] == want
    assert rec["stream"] is True and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros("gpt-3.5-turbo-instruct", want) > 0


def test_models_list_from_catalog(oai: openai.OpenAI) -> None:
    ids = {m.id for m in oai.models.list()}
    assert {"gpt-4o", "gpt-4o-mini", "claude-haiku-4-5", "text-embedding-3-small"} <= ids
    assert oai.models.retrieve("gpt-4o").owned_by == "openai"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
