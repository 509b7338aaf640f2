"""Pure tests of the reply builders: OpenAI chat, completions, embeddings, responses; Anthropic."""

from __future__ import annotations

import base64
import struct
from typing import Any

import orjson
import pytest

from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.content import estimate_input_tokens, output_words
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.openai_api import (
    chat_reply,
    completion_reply,
    embedding_vector,
    embeddings_reply,
)
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.wire import JsonReply, Reply, ReplyContext, StreamReply

MESSAGES = [{"role": "user", "content": "Hello!"}]
MESSAGES_TOKENS = estimate_input_tokens(MESSAGES)


def ctx(**controls: Any) -> ReplyContext:
    return ReplyContext(Controls(**controls), "abc123", 1_700_000_000)


def as_json(reply: Reply) -> dict[str, Any]:
    assert isinstance(reply, JsonReply)
    body = orjson.loads(reply.body)
    assert isinstance(body, dict)
    return body


def sse_data(reply: Reply) -> list[Any]:
    """The parsed `data:` payloads of a stream reply (`[DONE]` kept as the string)."""
    assert isinstance(reply, StreamReply)
    out: list[Any] = []
    for event in reply.events:
        assert event.endswith(b"\n\n")
        data = [line[6:] for line in event.split(b"\n") if line.startswith(b"data: ")]
        assert len(data) == 1
        out.append("[DONE]" if data[0] == b"[DONE]" else orjson.loads(data[0]))
    return out


def sse_names(reply: Reply) -> list[str]:
    assert isinstance(reply, StreamReply)
    return [event.split(b"\n", 1)[0].removeprefix(b"event: ").decode() for event in reply.events]


# --- OpenAI chat ------------------------------------------------------------------------------


def test_chat_non_stream_usage_counts_cached_and_reasoning_inside() -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES}
    reply = as_json(chat_reply(body, ctx(cached_tokens=5, reasoning_tokens=3)))
    assert reply["object"] == "chat.completion"
    assert reply["choices"][0]["message"]["content"] == "".join(output_words(12))
    assert reply["choices"][0]["finish_reason"] == "stop"
    usage = reply["usage"]
    assert usage["prompt_tokens"] == MESSAGES_TOKENS + 5
    assert usage["prompt_tokens_details"] == {"cached_tokens": 5, "audio_tokens": 0}
    assert usage["completion_tokens"] == 15
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 3
    assert usage["total_tokens"] == MESSAGES_TOKENS + 5 + 15


@pytest.mark.parametrize("stream", [False, True])
def test_openai_replies_bill_what_the_test_says(stream: bool) -> None:
    """x-mock-input-tokens replaces the mock's count of the request's text (a provider billing
    tool definitions or hidden prompts); cache writes sit inside the input total, as GPT-5.6
    reports them; x-mock-service-tier is the tier reported as served."""
    controls = {"input_tokens": 2_000, "cached_tokens": 5, "cache_write_tokens": 7}
    body = {"model": "m", "messages": MESSAGES, "stream": stream, "service_tier": "auto"}
    body["stream_options"] = {"include_usage": True}
    chat = chat_reply(
        body if stream else {**body, "stream": False}, ctx(service_tier="priority", **controls)
    )
    payloads = sse_data(chat) if stream else [as_json(chat)]
    usage = [p for p in payloads if isinstance(p, dict) and p.get("usage")][-1]["usage"]
    assert usage["prompt_tokens"] == 2_012
    assert usage["prompt_tokens_details"] == {
        "cached_tokens": 5, "audio_tokens": 0, "cache_write_tokens": 7
    }  # fmt: skip
    assert {p["service_tier"] for p in payloads if isinstance(p, dict)} == {"priority"}
    responses = responses_reply(
        {"model": "m", "input": "hi", "stream": stream}, ctx(service_tier="flex", **controls)
    )
    final = sse_data(responses)[-1]["response"] if stream else as_json(responses)
    assert final["usage"]["input_tokens"] == 2_012
    assert final["usage"]["input_tokens_details"] == {"cached_tokens": 5, "cache_write_tokens": 7}
    assert final["service_tier"] == "flex"
    claude = as_json(
        messages_reply(
            {"model": "c", "max_tokens": 5, "messages": MESSAGES}, ctx(input_tokens=2_000)
        )
    )
    assert claude["usage"]["input_tokens"] == 2_000


def test_chat_max_tokens_caps_with_length() -> None:
    body = {"model": "m", "messages": MESSAGES, "max_completion_tokens": 4}
    reply = as_json(chat_reply(body, ctx(output_tokens=50)))
    assert reply["choices"][0]["finish_reason"] == "length"
    assert reply["usage"]["completion_tokens"] == 4


def test_chat_stream_with_include_usage_copies_openai_shape() -> None:
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data = sse_data(chat_reply(body, ctx(output_tokens=3)))
    assert data[-1] == "[DONE]"
    first, *words, finish, usage_chunk, _ = data
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert [w["choices"][0]["delta"]["content"] for w in words] == list(output_words(3))
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}
    assert all(chunk["usage"] is None for chunk in data[:-2])
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 3
    assert len({chunk["id"] for chunk in data[:-1]}) == 1


def test_chat_stream_without_include_usage_has_no_usage_at_all() -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    data = sse_data(chat_reply(body, ctx()))
    assert all("usage" not in chunk for chunk in data[:-1])
    assert len(data) == 12 + 3


def test_chat_stream_omit_usage_drops_usage_chunk_even_when_requested() -> None:
    body = {"model": "m", "messages": MESSAGES, "stream": True}
    body["stream_options"] = {"include_usage": True}
    data = sse_data(chat_reply(body, ctx(omit_usage=True)))
    assert all(chunk["choices"] for chunk in data[:-1])
    assert "usage" not in as_json(
        chat_reply({"model": "m", "messages": MESSAGES}, ctx(omit_usage=True))
    )


def test_chat_requires_messages() -> None:
    with pytest.raises(ApiError) as caught:
        chat_reply({"model": "m"}, ctx())
    assert caught.value.param == "messages"


# --- OpenAI legacy completions and embeddings -------------------------------------------------


def test_completion_stream_last_word_carries_finish_reason_then_usage() -> None:
    body = {
        "model": "m",
        "prompt": "abcdefgh",
        "max_tokens": 2,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    data = sse_data(completion_reply(body, ctx()))
    assert [c["choices"][0]["finish_reason"] for c in data[:2]] == [None, "length"]
    assert data[2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert data[2]["choices"] == [] and data[3] == "[DONE]"


def test_completion_non_stream() -> None:
    reply = as_json(completion_reply({"model": "m", "prompt": "abcdefgh"}, ctx(output_tokens=2)))
    assert reply["choices"][0]["text"] == "Hello from "
    assert reply["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


def test_embeddings_float_and_base64_agree() -> None:
    floats = as_json(embeddings_reply({"model": "e", "input": ["a", "b"]}, ctx()))
    encoded = as_json(
        embeddings_reply({"model": "e", "input": ["a", "b"], "encoding_format": "base64"}, ctx())
    )
    assert [d["index"] for d in floats["data"]] == [0, 1]
    for plain, packed in zip(floats["data"], encoded["data"], strict=True):
        raw = base64.b64decode(packed["embedding"])
        assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == plain["embedding"]
    assert floats["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    vector = embedding_vector("a", 16)
    assert vector == embedding_vector("a", 16) and vector != embedding_vector("b", 16)
    assert abs(sum(v * v for v in vector) - 1) < 1e-5
    with pytest.raises(ApiError):
        embeddings_reply({"model": "e", "input": []}, ctx())


# --- Responses API ----------------------------------------------------------------------------


def test_responses_stream_sequence() -> None:
    body = {"model": "m", "input": "abcdefgh", "stream": True}
    reply = responses_reply(body, ctx(output_tokens=2, cached_tokens=1, reasoning_tokens=2))
    names = sse_names(reply)
    data = sse_data(reply)
    assert [d["type"] for d in data] == names
    assert [d["sequence_number"] for d in data] == list(range(len(data)))
    assert names[:2] == ["response.created", "response.in_progress"]
    assert names.count("response.output_text.delta") == 2
    assert names[-1] == "response.completed"
    usage = data[-1]["response"]["usage"]
    assert usage == {
        "input_tokens": 4,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 4,
        "output_tokens_details": {"reasoning_tokens": 2},
        "total_tokens": 8,
    }
    assert [item["type"] for item in data[-1]["response"]["output"]] == ["reasoning", "message"]


def test_responses_capped_is_incomplete() -> None:
    body = {"model": "m", "input": "x", "max_output_tokens": 3}
    reply = as_json(responses_reply(body, ctx()))
    assert reply["status"] == "incomplete"
    assert reply["incomplete_details"] == {"reason": "max_output_tokens"}
    assert reply["usage"]["output_tokens"] == 3
    names = sse_names(responses_reply({**body, "stream": True}, ctx()))
    assert names[-1] == "response.incomplete"


# --- Anthropic Messages -----------------------------------------------------------------------


def test_messages_stream_events_and_usage() -> None:
    body = {"model": "claude", "max_tokens": 3, "messages": MESSAGES, "stream": True}
    controls = ctx(output_tokens=5, cached_tokens=4, cache_write_tokens=2, cache_write_1h_tokens=6)
    reply = messages_reply(body, controls)
    names = sse_names(reply)
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    data = sse_data(reply)
    assert data[0]["message"]["usage"] == {
        "input_tokens": MESSAGES_TOKENS,
        "cache_creation_input_tokens": 8,
        "cache_read_input_tokens": 4,
        "cache_creation": {"ephemeral_5m_input_tokens": 2, "ephemeral_1h_input_tokens": 6},
        "output_tokens": 1,
    }
    assert data[7]["delta"]["stop_reason"] == "max_tokens"
    assert data[7]["usage"] == {"output_tokens": 3}


def test_messages_non_stream_and_errors() -> None:
    body = {"model": "claude", "max_tokens": 100, "messages": MESSAGES}
    reply = as_json(messages_reply(body, ctx()))
    assert reply["stop_reason"] == "end_turn" and reply["stop_sequence"] is None
    assert reply["content"] == [{"type": "text", "text": "".join(output_words(12))}]
    assert reply["usage"]["output_tokens"] == 12
    assert "usage" not in as_json(messages_reply(body, ctx(omit_usage=True)))
    streamed = sse_data(messages_reply({**body, "stream": True}, ctx(omit_usage=True)))
    assert all("usage" not in d and "usage" not in d.get("message", {}) for d in streamed)
    with pytest.raises(ApiError) as missing:
        messages_reply({"model": "claude", "messages": MESSAGES}, ctx())
    assert missing.value.status == 400 and "max_tokens" in missing.value.message
    with pytest.raises(ApiError) as unknown:
        messages_reply({**body, "model": "unknown-claude"}, ctx())
    assert unknown.value.status == 404
