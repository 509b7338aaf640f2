"""The official `openai` SDK calling a Gemini model through the gateway: chat completions in,
generateContent / streamGenerateContent to the (mock) provider, the answer back as chat
completions - JSON and streamed, with a system prompt, an image and tools - metered from
Gemini's own usage and audited with both APIs (docs/translation.md). And a budget on a Claude
model downgrading an OpenAI client to a Gemini model (issue 25 item 4)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import Metered, start_stack
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
MODEL = "gemini-2.5-flash"
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
USAGE = {"x-mock-cached-tokens": "2048", "x-mock-reasoning-tokens": "7"}


def _gemini_tokens(prompt: int, completion: int) -> dict[str, int]:
    """The Gemini usage behind a translated usage with USAGE's cache reads and thoughts."""
    return tokens(prompt - 2048, cached=2048, output=completion, reasoning=7)


def _translated_audit(rec: dict[str, Any], stream: bool) -> None:
    provider_api = "gemini_stream" if stream else "gemini_generate"
    assert rec["api"] == "openai_chat" and rec["provider_api"] == provider_api
    assert rec["provider"] == "gemini" and rec["served_model"] == MODEL
    assert rec["stream"] is stream and rec["status"] == 200 and rec["completed"] is True
    assert rec["usage_source"] == "provider"


def test_json_with_system_image_and_tool(metered: Metered) -> None:
    raw = metered.oai.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=MESSAGES,
        tools=TOOLS,
        max_tokens=64,
        extra_headers={**USAGE, "x-mock-tool-use": "lookup"},
    )
    answer = raw.parse()
    assert answer.object == "chat.completion" and answer.model == MODEL
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content and len(choice.message.content.split()) == 12
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.type == "function" and call.function.name == "lookup" and call.id
    assert json.loads(call.function.arguments) == {"query": "mock"}
    usage = answer.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 7
    rec = metered.audit.wait_for(raw.headers["x-gateway-request-id"])
    _translated_audit(rec, stream=False)
    want = _gemini_tokens(usage.prompt_tokens, usage.completion_tokens)
    assert rec["tokens"] == want
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want) > 0
    metered.cost_header(raw.headers, rec["cost_micros"])


@pytest.mark.parametrize("chunk_bytes", ["", "1", "7"])
def test_stream_with_tool_and_usage(metered: Metered, chunk_bytes: str) -> None:
    headers = {**USAGE, "x-mock-tool-use": "lookup", "x-mock-output-tokens": "5"}
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
    assert len(calls) == 1 and calls[0].index == 0 and calls[0].id
    assert calls[0].function and calls[0].function.name == "lookup"
    assert json.loads(calls[0].function.arguments or "") == {"query": "mock"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls" and finishes.count("tool_calls") == 1
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 2048
    assert usage.completion_tokens_details
    assert usage.completion_tokens_details.reasoning_tokens == 7
    rec = metered.audit.wait_for(request_id)
    _translated_audit(rec, stream=True)
    want = _gemini_tokens(usage.prompt_tokens, usage.completion_tokens)
    assert rec["tokens"] == want and want["output_tokens"] == 5 + 7
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want)


def test_provider_sees_gemini_api(stack: Stack, mock: MockLog, audit: AuditLog) -> None:
    """What reaches the provider: the served model's generateContent path, the translated body
    with the model's default output limit (the client set none), no client credential; the
    cost equals the mock's own bill."""
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    mock.clear()
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[*MESSAGES, {"role": "user", "content": "Be brief."}],
        tools=TOOLS,
        tool_choice="required",
        stop="END",
        temperature=1.5,
    )
    client.close()
    seen = mock.received()[-1]
    assert seen["path"] == f"/v1beta/models/{MODEL}:generateContent"
    assert "authorization" not in seen["headers"]
    body = seen["body"]
    assert "model" not in body
    assert body["systemInstruction"] == {"parts": [{"text": "You are terse."}]}
    assert [c["role"] for c in body["contents"]] == ["user"]  # two user turns merged
    image = body["contents"][0]["parts"][1]["inlineData"]
    assert image["mimeType"] == "image/png"
    declaration = body["tools"][0]["functionDeclarations"][0]
    assert declaration["name"] == "lookup"
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    config = body["generationConfig"]
    assert config["stopSequences"] == ["END"] and config["temperature"] == 1.5
    assert isinstance(config["maxOutputTokens"], int) and config["maxOutputTokens"] > 0
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    bill = next(b for b in mock.bills() if b["request_id"] == seen["headers"]["x-request-id"])
    want = bill["tokens"]  # what the provider billed, as Gemini reported it
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros(MODEL, want)


def test_untranslatable_refused(stack: Stack, mock: MockLog) -> None:
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key="client-key", max_retries=0)
    mock.clear()
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"seed": 1}
        )
    client.close()
    assert err.value.status_code == 400 and "`seed`" in err.value.message
    assert "Gemini" in err.value.message
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
    assert err.value.body.get("code") == "RESOURCE_EXHAUSTED"


DOWNGRADE_CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 1}
policies:
  default: {allow: ["*"]}
budgets:
  - name: claude-to-gemini  # any claude request is over it
    scope: {kind: user}
    match: {groups: [thrifty], models: [claude-sonnet-4-5]}
    limit_usd: 0.000001
    window: {type: calendar, period: month}
    action: downgrade
    downgrade_to: gemini-2.5-flash
  - name: everyone
    scope: {kind: user}
    match: {groups: [thrifty]}
    limit_usd: 100
    window: {type: calendar, period: month}
    action: block
"""


@pytest.fixture(scope="module")
def downgrade_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, str]]:
    tmp_path = tmp_path_factory.mktemp("claude-to-gemini")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(DOWNGRADE_CONFIG)
    stack = start_stack(run_dir, config_path=config)
    user = f"{uuid.uuid4().hex[:8]}@example.com"
    token = issuer.mint(user, ["thrifty"], None, 3600, {}, time.time())
    yield stack, token
    stack.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_budget_downgrades_claude_to_gemini(
    downgrade_stack: tuple[Stack, str], stream: bool
) -> None:
    """An OpenAI client asks for a Claude model; its budget downgrades it to a Gemini model:
    the request crosses to the Gemini API, the answer comes back as chat completions, metered
    at the Gemini model's price and charged to the budgets."""
    stack, token = downgrade_stack
    assert stack.mock_url is not None
    mock = MockLog(stack.mock_url.removesuffix("/v1"))
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    client = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=token, max_retries=0)
    mock.clear()
    ask: dict[str, Any] = {"model": "claude-sonnet-4-5", "messages": MESSAGES}
    if stream:
        with client.chat.completions.with_streaming_response.create(
            **ask, stream=True, stream_options={"include_usage": True}
        ) as response:
            headers = response.headers
            chunks = list(response.parse())
        assert chunks[-1].usage is not None and chunks[-2].choices[0].finish_reason == "stop"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(**ask)
        headers = raw.headers
        text = raw.parse().choices[0].message.content or ""
    client.close()
    assert text and headers["x-gateway-downgraded-from"] == "claude-sonnet-4-5"
    seen = mock.received()[-1]
    method = "streamGenerateContent" if stream else "generateContent"  # the mock logs no query
    assert seen["path"] == f"/v1beta/models/{MODEL}:{method}"
    rec = audit.wait_for(headers["x-gateway-request-id"])
    assert rec["requested_model"] == "claude-sonnet-4-5" and rec["served_model"] == MODEL
    assert rec["provider"] == "gemini" and rec["api"] == "openai_chat"
    assert rec["provider_api"] == ("gemini_stream" if stream else "gemini_generate")
    assert rec["budget"]["decision"] == "downgraded"
    bill = next(b for b in mock.bills() if b["request_id"] == seen["headers"]["x-request-id"])
    assert rec["tokens"] == bill["tokens"]
    assert rec["cost_micros"] == expected_cost_micros(MODEL, bill["tokens"]) > 0
    charged = {b["name"]: b for b in rec["budget"]["budgets"]}
    assert "everyone" in charged
