"""Cached answers: a stream assembled into the JSON answer, and a JSON answer replayed as a
stream that the official SDKs parse (through httpx.MockTransport, no network)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from gateway_extproc.apis import Api
from gateway_extproc.cache.replay import answer_from_json, answer_from_stream, replay
from gateway_extproc.mock.anthropic_api import anthropic_usage, message_events
from gateway_extproc.mock.content import plan_output
from gateway_extproc.mock.openai_api import chat_chunks, chat_usage

PLAN = plan_output(7, 0, None)
CHAT_USAGE = chat_usage(20, 4, PLAN)
CHAT: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": PLAN.text, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": CHAT_USAGE,
    "service_tier": "default",
    "system_fingerprint": "fp_1",
}
TOOL_CHAT: dict[str, Any] = {
    **CHAT,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "x"}'},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "other", "arguments": "{}"},
                    },
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "second", "refusal": None},
            "logprobs": {
                "content": [
                    {"token": "second", "logprob": -0.1, "bytes": None, "top_logprobs": []}
                ],
                "refusal": None,
            },
            "finish_reason": "stop",
        },
    ],
}
MESSAGE: dict[str, Any] = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": "claude-sonnet-5",
    "content": [
        {"type": "thinking", "thinking": "hmm", "signature": "sig"},
        {"type": "text", "text": "Hello there."},
        {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "x", "n": [1, 2]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": anthropic_usage(30, 5, 2, 40),
}


def _raw(events: Iterator[bytes]) -> bytes:
    return b"".join(events)


def test_chat_stream_assembles_into_the_json_answer() -> None:
    raw = _raw(chat_chunks("chatcmpl-1", 1700000000, "gpt-x", PLAN, True, CHAT_USAGE))
    answer = answer_from_stream(Api.OPENAI_CHAT, raw)
    assert answer is not None
    assert answer["choices"][0]["message"]["content"] == PLAN.text
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == CHAT_USAGE
    assert answer["object"] == "chat.completion" and answer["id"] == "chatcmpl-1"


@pytest.mark.parametrize(
    "raw",
    [
        _raw(chat_chunks("c", 1, "m", PLAN, False, CHAT_USAGE)),  # no usage chunk
        _raw(chat_chunks("c", 1, "m", PLAN, True, CHAT_USAGE))[:-60],  # cut short
        b"data: {not json}\n\n",
        b"",
    ],
    ids=["no-usage", "truncated", "garbage", "empty"],
)
def test_incomplete_chat_streams_are_not_cached(raw: bytes) -> None:
    assert answer_from_stream(Api.OPENAI_CHAT, raw) is None


def test_audio_deltas_are_not_cached() -> None:
    chunk = {"id": "c", "choices": [{"index": 0, "delta": {"audio": {"data": "AAA"}}}]}
    raw = b"data: " + orjson.dumps(chunk) + b"\n\n"
    assert answer_from_stream(Api.OPENAI_CHAT, raw) is None


@pytest.mark.parametrize("answer", [CHAT, TOOL_CHAT], ids=["text", "tools-n2-logprobs"])
def test_chat_json_to_stream_to_json_round_trips(answer: dict[str, Any]) -> None:
    body, content_type = replay(Api.OPENAI_CHAT, answer, stream=True, include_usage=True)
    assert content_type.startswith("text/event-stream")
    assert answer_from_stream(Api.OPENAI_CHAT, body) == answer


def test_chat_usage_chunk_only_when_asked() -> None:
    with_usage, _ = replay(Api.OPENAI_CHAT, CHAT, stream=True, include_usage=True)
    without, _ = replay(Api.OPENAI_CHAT, CHAT, stream=True, include_usage=False)
    assert b'"usage":null' in with_usage and b'"choices":[]' in with_usage
    assert b"usage" not in without
    assert without.endswith(b"data: [DONE]\n\n")


def _openai(body: bytes, content_type: str) -> openai.OpenAI:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    return openai.OpenAI(api_key="k", base_url="http://gw/v1", http_client=http, max_retries=0)


def test_openai_sdk_parses_the_replayed_stream() -> None:
    body, content_type = replay(Api.OPENAI_CHAT, TOOL_CHAT, stream=True, include_usage=True)
    with _openai(body, content_type) as client:
        chunks = list(
            client.chat.completions.create(
                model="m", messages=[], stream=True, stream_options={"include_usage": True}
            )
        )
        assert chunks[-1].usage is not None
        assert chunks[-1].usage.prompt_tokens == CHAT_USAGE["prompt_tokens"]
        with client.chat.completions.stream(model="m", messages=[]) as stream:
            final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("call_1", "lookup", '{"q": "x"}'),
        ("call_2", "other", "{}"),
    ]
    assert final.choices[1].message.content == "second"
    assert final.usage is not None and final.usage.completion_tokens == PLAN.output_tokens


def test_openai_sdk_parses_the_replayed_json() -> None:
    body, content_type = replay(Api.OPENAI_CHAT, CHAT, stream=False, include_usage=False)
    assert content_type == "application/json"
    with _openai(body, content_type) as client:
        completion = client.chat.completions.create(model="m", messages=[])
    assert completion.choices[0].message.content == PLAN.text
    assert completion.usage is not None and completion.usage.total_tokens > 0


def test_anthropic_stream_assembles_into_the_json_message() -> None:
    start = {k: v for k, v in MESSAGE.items() if k != "content"}
    start.update(content=[], stop_reason=None, usage=anthropic_usage(30, 5, 2, 1))
    raw = _raw(message_events(start, PLAN, {"output_tokens": PLAN.output_tokens}))
    answer = answer_from_stream(Api.ANTHROPIC_MESSAGES, raw)
    assert answer is not None
    assert answer["content"] == [{"type": "text", "text": PLAN.text}]
    assert answer["stop_reason"] == "end_turn"
    assert answer["usage"] == anthropic_usage(30, 5, 2, PLAN.output_tokens)


def test_anthropic_message_round_trips_and_the_sdk_parses_it() -> None:
    body, content_type = replay(Api.ANTHROPIC_MESSAGES, MESSAGE, stream=True, include_usage=False)
    assert answer_from_stream(Api.ANTHROPIC_MESSAGES, body) == MESSAGE

    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": content_type})

    http = httpx2.Client(transport=httpx2.MockTransport(handler))  # the anthropic SDK's httpx
    client = anthropic.Anthropic(api_key="k", base_url="http://gw", http_client=http)
    with client, client.messages.stream(model="m", max_tokens=9, messages=[]) as stream:
        final = stream.get_final_message()
    expected = copy.deepcopy(MESSAGE)
    got = final.model_dump(exclude_none=True)
    assert [b["type"] for b in got["content"]] == ["thinking", "text", "tool_use"]
    assert got["content"][2]["input"] == expected["content"][2]["input"]
    assert got["content"][1]["text"] == "Hello there."
    assert got["usage"]["output_tokens"] == 40 and got["usage"]["input_tokens"] == 30
    assert got["usage"]["cache_read_input_tokens"] == 5


def test_incomplete_anthropic_streams_are_not_cached() -> None:
    body, _ = replay(Api.ANTHROPIC_MESSAGES, MESSAGE, stream=True, include_usage=False)
    cut = body[: body.index(b"event: message_stop")]
    assert answer_from_stream(Api.ANTHROPIC_MESSAGES, cut) is None
    error = b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error"}}\n\n'
    assert (
        answer_from_stream(
            Api.ANTHROPIC_MESSAGES,
            body.replace(b"event: message_stop", error + b"event: message_stop"),
        )
        is None
    )


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (Api.OPENAI_CHAT, orjson.dumps(CHAT)),
        (Api.ANTHROPIC_MESSAGES, orjson.dumps(MESSAGE)),
    ],
)
def test_json_answers_are_kept_as_the_provider_sent_them(api: Api, body: bytes) -> None:
    assert answer_from_json(api, body) == orjson.loads(body)


@pytest.mark.parametrize(
    ("api", "body"),
    [
        (Api.OPENAI_CHAT, b"<html>oops</html>"),
        (Api.OPENAI_CHAT, orjson.dumps({**CHAT, "usage": None})),
        (
            Api.OPENAI_CHAT,
            orjson.dumps({**CHAT, "choices": [{"index": 0, "message": {"audio": {}}}]}),
        ),
        (Api.ANTHROPIC_MESSAGES, orjson.dumps({"type": "error"})),
        (Api.OPENAI_RESPONSES, orjson.dumps({"object": "response"})),
    ],
    ids=["not-json", "no-usage", "audio", "anthropic-error", "responses-without-status"],
)
def test_json_answers_that_cannot_be_replayed_are_not_cached(api: Api, body: bytes) -> None:
    assert answer_from_json(api, body) is None
