"""The mock provider on an ephemeral port, driven by the official openai and anthropic SDKs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.mock.content import estimate_input_tokens, output_words
from gateway_extproc.mock.testing import RunningMock, running_mock

MESSAGES: list[Any] = [{"role": "user", "content": "Hello!"}]
INPUT_TOKENS = estimate_input_tokens(MESSAGES)
TEXT_12 = "".join(output_words(12))


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


def openai_client(mock: RunningMock, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=api_key, max_retries=0)


def anthropic_client(mock: RunningMock, api_key: str = "sk-ant-test") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=mock.url, api_key=api_key, max_retries=0)


async def post_json(
    mock: RunningMock, path: str, body: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        return await client.post(path, json=body, headers=headers)


# --- OpenAI SDK -------------------------------------------------------------------------------


async def test_chat_non_stream(mock: RunningMock) -> None:
    async with openai_client(mock) as client:
        reply = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES
        )
        completion = reply.parse()
    assert reply.headers["x-request-id"].startswith("req_")
    assert reply.headers["content-type"] == "application/json"
    assert completion.choices[0].message.content == TEXT_12
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        INPUT_TOKENS,
        12,
    )


async def test_chat_stream_usage_only_when_requested(mock: RunningMock) -> None:
    async with openai_client(mock) as client:
        with_usage = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        ]
        without = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True
            )
        ]
    last = with_usage[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 12 and last.usage.prompt_tokens == INPUT_TOKENS
    assert all(chunk.usage is None for chunk in with_usage[:-1])
    assert all(chunk.usage is None and chunk.choices for chunk in without)
    text = "".join(c.choices[0].delta.content or "" for c in without)
    assert text == TEXT_12


async def test_chat_cached_reasoning_and_capping(mock: RunningMock) -> None:
    headers = {
        "x-mock-output-tokens": "30",
        "x-mock-cached-tokens": "10",
        "x-mock-reasoning-tokens": "4",
    }
    async with openai_client(mock) as client:
        completion = await client.chat.completions.create(
            model="m", messages=MESSAGES, max_completion_tokens=9, extra_headers=headers
        )
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.completion_tokens_details is not None
    assert completion.choices[0].finish_reason == "length"
    assert usage.prompt_tokens == INPUT_TOKENS + 10
    assert usage.prompt_tokens_details.cached_tokens == 10
    assert usage.completion_tokens == 9
    assert usage.completion_tokens_details.reasoning_tokens == 4
    assert completion.choices[0].message.content == "".join(output_words(5))


async def test_responses_non_stream_and_stream(mock: RunningMock) -> None:
    headers = {"x-mock-cached-tokens": "2", "x-mock-reasoning-tokens": "3"}
    async with openai_client(mock) as client:
        response = await client.responses.create(model="m", input="Hello!", extra_headers=headers)
        raw_events = [
            event
            async for event in await client.responses.create(
                model="m", input="Hello!", stream=True, extra_headers=headers
            )
        ]
        async with client.responses.stream(model="m", input="Hello!") as stream:
            final = await stream.get_final_response()
    assert response.output_text == TEXT_12
    assert response.usage is not None
    assert response.usage.input_tokens == estimate_input_tokens("Hello!") + 2
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens == 15
    assert response.usage.output_tokens_details.reasoning_tokens == 3
    assert raw_events[0].type == "response.created"
    completed = raw_events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == response.usage
    assert final.output_text == TEXT_12 and final.usage is not None
    assert final.usage.output_tokens == 12


async def test_embeddings_and_completions(mock: RunningMock) -> None:
    async with openai_client(mock) as client:
        embedded = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
        floats = await client.embeddings.create(
            model="e", input="a", encoding_format="float", dimensions=4
        )
        completion = await client.completions.create(model="m", prompt="abcdefgh", max_tokens=3)
        streamed = [
            chunk
            async for chunk in await client.completions.create(
                model="m", prompt="abcdefgh", stream=True, stream_options={"include_usage": True}
            )
        ]
    assert [d.index for d in embedded.data] == [0, 1]
    assert embedded.usage.prompt_tokens == estimate_input_tokens(["a", "b"])
    assert len(floats.data[0].embedding) == 4
    assert embedded.data[0].embedding[:4] != floats.data[0].embedding
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 3
    assert streamed[-1].usage is not None and streamed[-1].usage.completion_tokens == 12
    assert "".join(c.choices[0].text for c in streamed[:-1]) == TEXT_12


@pytest.mark.parametrize(
    ("status", "error"),
    [
        ("400", openai.BadRequestError),
        ("401", openai.AuthenticationError),
        ("429", openai.RateLimitError),
        ("500", openai.InternalServerError),
        ("503", openai.InternalServerError),
    ],
)
async def test_openai_error_injection(
    mock: RunningMock, status: str, error: type[Exception]
) -> None:
    async with openai_client(mock) as client:
        with pytest.raises(error) as caught:
            await client.chat.completions.create(
                model="m", messages=MESSAGES, extra_headers={"x-mock-status": status}
            )
    assert isinstance(caught.value, openai.APIStatusError)
    if status == "429":
        assert caught.value.response.headers["retry-after"] == "1"


async def test_openai_request_errors(mock: RunningMock) -> None:
    async with openai_client(mock) as client:
        with pytest.raises(openai.NotFoundError) as unknown:
            await client.chat.completions.create(model="unknown-model", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="", messages=MESSAGES)
        with pytest.raises(openai.BadRequestError) as bad_control:
            await client.chat.completions.create(
                model="m", messages=MESSAGES, extra_headers={"x-mock-status": "abc"}
            )
    assert unknown.value.code == "model_not_found"
    assert "x-mock-status" in bad_control.value.message
    malformed = await post_json(mock, "/v1/chat/completions", {})
    assert malformed.status_code == 400
    async with httpx.AsyncClient() as raw:
        response = await raw.post(f"{mock.url}/v1/chat/completions", content=b"{not json")
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- Anthropic SDK ----------------------------------------------------------------------------


async def test_messages_non_stream(mock: RunningMock) -> None:
    headers = {
        "x-mock-cached-tokens": "7",
        "x-mock-cache-write-tokens": "3",
        "x-mock-cache-write-1h-tokens": "5",
    }
    async with anthropic_client(mock) as client:
        raw = await client.messages.with_raw_response.create(
            model="claude-x", max_tokens=100, messages=MESSAGES, extra_headers=headers
        )
        message = await raw.parse()
    assert raw.headers["request-id"].startswith("req_")
    assert message.content[0].type == "text" and message.content[0].text == TEXT_12
    assert message.stop_reason == "end_turn"
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (INPUT_TOKENS, 12)
    assert (usage.cache_read_input_tokens, usage.cache_creation_input_tokens) == (7, 8)
    assert usage.cache_creation is not None
    assert usage.cache_creation.ephemeral_5m_input_tokens == 3
    assert usage.cache_creation.ephemeral_1h_input_tokens == 5


async def test_messages_stream_helper_and_raw_events(mock: RunningMock) -> None:
    async with anthropic_client(mock) as client:
        async with client.messages.stream(
            model="claude-x", max_tokens=5, messages=MESSAGES
        ) as stream:
            texts = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        events = [
            event
            async for event in await client.messages.create(
                model="claude-x", max_tokens=100, messages=MESSAGES, stream=True
            )
        ]
    assert texts == list(output_words(5))
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 5
    assert final.usage.input_tokens == INPUT_TOKENS
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_delta") == 12
    delta = events[-2]
    assert delta.type == "message_delta" and delta.usage.output_tokens == 12


async def test_anthropic_errors(mock: RunningMock) -> None:
    async with anthropic_client(mock) as client:
        with pytest.raises(anthropic.RateLimitError) as limited:
            await client.messages.create(
                model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-mock-status": "429"}
            )
        with pytest.raises(anthropic.InternalServerError):
            await client.messages.create(
                model="c", max_tokens=5, messages=MESSAGES, extra_headers={"x-mock-status": "500"}
            )
        with pytest.raises(anthropic.NotFoundError) as unknown:
            await client.messages.create(model="does-not-exist", max_tokens=5, messages=MESSAGES)
    assert limited.value.body is not None and limited.value.response.headers["retry-after"] == "1"
    assert isinstance(unknown.value.body, dict)
    assert unknown.value.body["error"]["type"] == "not_found_error"
    missing = await post_json(mock, "/v1/messages", {"model": "c", "messages": MESSAGES})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"


async def test_auth_when_keys_configured() -> None:
    async with running_mock(None, "sk-right", "ant-right") as mock:
        async with (
            openai_client(mock, "sk-wrong-key") as bad,
            openai_client(mock, "sk-right") as good,
        ):
            with pytest.raises(openai.AuthenticationError) as denied:
                await bad.chat.completions.create(model="m", messages=MESSAGES)
            assert (await good.chat.completions.create(model="m", messages=MESSAGES)).choices
        async with (
            anthropic_client(mock, "ant-wrong") as bad_a,
            anthropic_client(mock, "ant-right") as good_a,
        ):
            with pytest.raises(anthropic.AuthenticationError) as denied_a:
                await bad_a.messages.create(model="c", max_tokens=5, messages=MESSAGES)
            assert (await good_a.messages.create(model="c", max_tokens=5, messages=MESSAGES)).id
        body = {"model": "c", "max_tokens": 5, "messages": MESSAGES}
        by_header = await post_json(mock, "/v1/messages", body, {"x-api-key": "ant-right"})
        no_key = await post_json(mock, "/v1/messages", body)
        openai_no_key = await post_json(mock, "/v1/embeddings", {"model": "e", "input": "x"})
    statuses = (by_header.status_code, no_key.status_code, openai_no_key.status_code)
    assert statuses == (200, 401, 401)
    assert denied.value.code == "invalid_api_key"
    assert "sk-right" not in str(denied.value) and "sk-wrong-key" not in str(denied.value)
    assert isinstance(denied_a.value.body, dict)
    assert denied_a.value.body["error"]["type"] == "authentication_error"


async def test_omit_usage(mock: RunningMock) -> None:
    headers = {"x-mock-omit-usage": "1"}
    async with openai_client(mock) as client:
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="m",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers,
            )
        ]
        completion = await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers=headers
        )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert completion.usage is None
