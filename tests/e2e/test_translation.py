"""The official `openai` SDK calling a Claude model through the gateway: chat completions in,
Anthropic Messages to the (mock) provider, the answer back as chat completions - JSON and
streamed, with a system prompt, an image and tools - metered from Anthropic's own usage and
audited with both APIs (docs/translation.md)."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import Metered
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
MODEL = "claude-haiku-4-5"
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n-not-really").decode()
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": PNG}},
        ],
    },
]
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up.",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}},
        },
    }
]
CACHE = {"x-mock-cached-tokens": "2048", "x-mock-cache-write-tokens": "512"}


def _anthropic_tokens(prompt: int, completion: int) -> dict[str, int]:
    """The Anthropic usage behind a translated usage with CACHE's reads and writes."""
    return tokens(prompt - 2048 - 512, cached=2048, cache_write=512, output=completion)


def _translated_audit(rec: dict[str, Any], stream: bool) -> None:
    assert rec["api"] == "openai_chat" and rec["provider_api"] == "anthropic_messages"
    assert rec["provider"] == "anthropic" and rec["served_model"] == MODEL
    assert rec["stream"] is stream and rec["status"] == 200 and rec["completed"] is True
    assert rec["usage_source"] == "provider"


def test_json_with_system_image_and_tool(metered: Metered) -> None:
    raw = metered.oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        max_tokens=64,
        extra_headers={**CACHE, "x-mock-tool-use": "lookup"},
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.model == MODEL
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content and len(choice.message.content.split()) == 12
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.function.name == "lookup"
    assert json.loads(call.function.arguments) == {"query": "mock"}
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.completion_tokens == 12
    rec = metered.audit.wait_for(raw.headers["x-gateway-request-id"])
    _translated_audit(rec, stream=False)
    want = _anthropic_tokens(usage.prompt_tokens, usage.completion_tokens)
    assert rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want)
    metered.cost_header(raw.headers, rec["cost_micros"])


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_stream_with_tool_and_usage(metered: Metered, chunk_bytes: str) -> None:
    headers = {**CACHE, "x-mock-tool-use": "lookup", "x-mock-output-tokens": "5"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    with metered.oai.chat.completions.with_streaming_response.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers=headers,
    ) as response:
        request_id = response.headers["x-gateway-request-id"]
        assert "content-length" not in response.headers
        chunks = list(response.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 5
    calls = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "toolu_mock" + calls[0].id.removeprefix("toolu_mock")
    assert calls[0].function and calls[0].function.name == "lookup"
    arguments = "".join(tc.function.arguments or "" for tc in calls if tc.function)
    assert json.loads(arguments) == {"query": "mock"} and {tc.index for tc in calls} == {0}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 2048
    rec = metered.audit.wait_for(request_id)
    _translated_audit(rec, stream=True)
    want = _anthropic_tokens(usage.prompt_tokens, usage.completion_tokens)
    assert rec["tokens"] == want and want["output_tokens"] == 5
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want)


def test_stream_without_usage_ends_with_done(stack: Stack) -> None:
    """Raw bytes: role chunk, content, finish chunk, no usage chunk (not asked), [DONE]."""
    body = {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream(
        "POST",
        stack.gateway_url + "/v1/chat/completions",
        json=body,
        headers={"authorization": "Bearer client-key", "x-mock-output-tokens": "3"},
        timeout=30,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    docs = [json.loads(e[6:]) for e in events[:-1]]
    assert all(d["object"] == "chat.completion.chunk" for d in docs)
    assert docs[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("usage" in d for d in docs)


def test_provider_sees_messages_api(stack: Stack, mock: MockLog, audit: AuditLog) -> None:
    """What reaches the provider: /v1/messages, anthropic-version, the translated body with the
    model's default output limit (the client set none), no client credential; the cost equals
    the mock's own bill."""
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    mock.clear()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[*MESSAGES, {"role": "user", "content": "Be brief."}],
        tools=TOOLS,
        tool_choice="required",
        stop="END",
        temperature=0.5,
    )
    client.close()
    seen = mock.received()[-1]
    assert seen["path"] == "/v1/messages"
    assert seen["headers"]["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen["headers"]
    body = seen["body"]
    assert body["system"] == [{"type": "text", "text": "You are terse."}]
    assert [m["role"] for m in body["messages"]] == ["user"]  # two user turns merged
    image = body["messages"][0]["content"][1]
    assert image["type"] == "image" and image["source"]["media_type"] == "image/png"
    assert body["tools"][0]["input_schema"]["properties"] == {"query": {"type": "string"}}
    assert body["tool_choice"] == {"type": "any"} and body["stop_sequences"] == ["END"]
    assert isinstance(body["max_tokens"], int) and body["max_tokens"] > 0
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    bill = next(b for b in mock.bills() if b["request_id"] == seen["headers"]["x-request-id"])
    want = bill["tokens"]  # what the provider billed, as Anthropic reported it
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want)


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [({"n": 2}, "`n` other than 1"), ({"logprobs": True}, "`logprobs`"), ({"audio": {}}, "audio")],
)
def test_untranslatable_refused(
    stack: Stack, mock: MockLog, extra: dict[str, Any], fragment: str
) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    mock.clear()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body=extra
        )
    client.close()
    assert err.value.status_code == 400 and fragment in err.value.message
    assert isinstance(err.value.body, dict) and err.value.body.get("code") == "untranslatable"
    assert mock.received() == []


def test_provider_error_in_openai_format(metered: Metered) -> None:
    with pytest.raises(openai.RateLimitError) as err:
        metered.oai.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            extra_headers={"x-mock-status": "429"},
        )
    assert err.value.status_code == 429
    assert isinstance(err.value.body, dict) and err.value.body.get("type") == "rate_limit_error"
