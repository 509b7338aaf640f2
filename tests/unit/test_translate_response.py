"""Anthropic Messages answers -> chat completions: JSON, errors and streams split at every byte
(translate/messages_to_chat, translate/stream)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway_extproc.translate.messages_to_chat import chat_completion, chat_error
from gateway_extproc.translate.pairs import CHAT_TO_MESSAGES, translation_for
from gateway_extproc.translate.stream import MessagesToChatStream
from tests.paths import REPO

FIXTURE = REPO / "tests" / "fixtures" / "streams" / "anthropic_messages.sse"
USAGE = {
    "input_tokens": 10,
    "cache_read_input_tokens": 100,
    "cache_creation_input_tokens": 20,
    "output_tokens": 7,
}


def message(**fields: Any) -> bytes:
    doc = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " world"}],
        "stop_reason": "end_turn",
        "usage": USAGE,
    }
    return orjson.dumps({**doc, **fields})


def test_json_text_and_usage() -> None:
    out = orjson.loads(chat_completion(message(), created=1700000000))
    assert out == {
        "id": "chatcmpl-msg_1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "claude-haiku-4-5",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 130,  # input + cache reads + cache writes
            "completion_tokens": 7,
            "total_tokens": 137,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }


@pytest.mark.parametrize(
    ("stop", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
def test_json_finish_reasons(stop: str | None, finish: str) -> None:
    out = orjson.loads(chat_completion(message(stop_reason=stop), created=0))
    assert out["choices"][0]["finish_reason"] == finish


def test_json_tool_use() -> None:
    content = [
        {"type": "thinking", "thinking": "hidden"},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": "x"}},
    ]
    out = orjson.loads(chat_completion(message(content=content, stop_reason="tool_use"), created=0))
    reply = out["choices"][0]["message"]
    assert reply["content"] is None
    assert reply["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"q":"x"}'}}
    ]


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"type": "error"}'])
def test_json_garbage_becomes_an_error(raw: bytes) -> None:
    assert orjson.loads(chat_completion(raw, created=0))["error"]["type"] == "server_error"


def test_json_without_usage_or_content() -> None:
    out = orjson.loads(chat_completion(message(content=[], usage=None), created=0))
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"]["prompt_tokens"] == 0
    out = orjson.loads(chat_completion(message(usage="junk"), created=0))
    assert out["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize(
    ("kind", "openai_type"),
    [
        ("invalid_request_error", "invalid_request_error"),
        ("authentication_error", "authentication_error"),
        ("rate_limit_error", "rate_limit_error"),
        ("overloaded_error", "server_error"),
        ("api_error", "server_error"),
    ],
)
def test_errors(kind: str, openai_type: str) -> None:
    raw = orjson.dumps({"type": "error", "error": {"type": kind, "message": "boom"}})
    assert orjson.loads(chat_error(raw, 400)) == {
        "error": {"message": "boom", "type": openai_type, "param": None, "code": kind}
    }


def test_unreadable_error() -> None:
    doc = orjson.loads(chat_error(b"<html>bad gateway</html>", 502))
    assert doc["error"]["message"] == "the provider answered with status 502"


def _events(*objs: dict[str, Any]) -> bytes:
    return b"".join(
        b"event: " + o["type"].encode() + b"\ndata: " + orjson.dumps(o) + b"\n\n" for o in objs
    )


TOOL_STREAM = _events(
    {"type": "message_start", "message": {"id": "msg_9", "model": "claude-x",
                                          "usage": {"input_tokens": 5, "output_tokens": 1}}},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Héllo"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1,
     "content_block": {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '{"q": '}},
    {"type": "content_block_delta", "index": 1,
     "delta": {"type": "input_json_delta", "partial_json": '"x"}'}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2,
     "content_block": {"type": "tool_use", "id": "toolu_b", "name": "g", "input": {}}},
    {"type": "content_block_delta", "index": 2,
     "delta": {"type": "input_json_delta", "partial_json": "{}"}},
    {"type": "content_block_stop", "index": 2},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
     "usage": {"output_tokens": 9, "cache_read_input_tokens": 3}},
    {"type": "message_stop"},
)  # fmt: skip


def _chunks(out: bytes) -> list[Any]:
    events = [e for e in out.split(b"\n\n") if e]
    assert all(e.startswith(b"data: ") for e in events)
    return [e[6:].decode() if e == b"data: [DONE]" else orjson.loads(e[6:]) for e in events]


def _translate(raw: bytes, pieces: list[bytes], include_usage: bool = True) -> bytes:
    t = MessagesToChatStream(created=42, include_usage=include_usage)
    return b"".join(t.feed(p) for p in pieces) + t.flush()


def test_stream_tool_calls_finish_and_usage() -> None:
    chunks = _chunks(_translate(TOOL_STREAM, [TOOL_STREAM]))
    assert chunks[-1] == "[DONE]"
    docs = chunks[:-1]
    assert all(d["id"] == "chatcmpl-msg_9" and d["created"] == 42 for d in docs)
    assert all(d["object"] == "chat.completion.chunk" and d["model"] == "claude-x" for d in docs)
    deltas = [d["choices"][0]["delta"] for d in docs if d["choices"]]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert deltas[1] == {"content": "Héllo"}
    assert deltas[2] == {"tool_calls": [{"index": 0, "id": "toolu_a", "type": "function",
                                         "function": {"name": "f", "arguments": ""}}]}  # fmt: skip
    assert deltas[3] == {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": '}}]}
    assert deltas[4] == {"tool_calls": [{"index": 0, "function": {"arguments": '"x"}'}}]}
    assert (
        deltas[5]["tool_calls"][0]["index"] == 1 and deltas[5]["tool_calls"][0]["id"] == "toolu_b"
    )
    assert deltas[6] == {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]}
    assert deltas[7] == {}
    finishes = [d["choices"][0]["finish_reason"] for d in docs if d["choices"]]
    assert finishes == [None] * 7 + ["tool_calls"]
    assert docs[-1]["choices"] == [] and docs[-1]["usage"] == {
        "prompt_tokens": 8,  # input 5 + cache read 3 (the latest report wins)
        "completion_tokens": 9,
        "total_tokens": 17,
        "prompt_tokens_details": {"cached_tokens": 3},
    }


def test_stream_without_include_usage_has_no_usage_chunk() -> None:
    docs = _chunks(_translate(TOOL_STREAM, [TOOL_STREAM], include_usage=False))
    assert docs[-1] == "[DONE]" and all("usage" not in d for d in docs[:-1])


@pytest.mark.parametrize("raw", [TOOL_STREAM, FIXTURE.read_bytes()], ids=["tools", "recorded"])
def test_stream_split_at_every_byte_is_the_same(raw: bytes) -> None:
    whole = _translate(raw, [raw])
    assert whole.endswith(b"data: [DONE]\n\n")
    for cut in range(1, len(raw)):
        assert _translate(raw, [raw[:cut], raw[cut:]]) == whole, cut
    assert _translate(raw, [raw[i : i + 1] for i in range(len(raw))]) == whole


def test_stream_crlf_and_final_event_without_blank_line() -> None:
    crlf = TOOL_STREAM.replace(b"\n", b"\r\n")
    assert _translate(crlf, [crlf]) == _translate(TOOL_STREAM, [TOOL_STREAM])
    cut = TOOL_STREAM.rstrip(b"\n")  # the stop event lacks its blank line: flushed
    assert _translate(cut, [cut]).endswith(b"data: [DONE]\n\n")


def test_stream_cut_short_has_no_done() -> None:
    head = TOOL_STREAM[: TOOL_STREAM.index(b"event: message_delta")]
    out = _translate(head, [head])
    assert b"[DONE]" not in out and b'"finish_reason":"tool_calls"' not in out


def test_stream_error_event() -> None:
    raw = _events(
        {"type": "message_start", "message": {"id": "m", "model": "c", "usage": {}}},
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
        {"type": "message_stop"},
    )
    docs = _chunks(_translate(raw, [raw]))
    assert docs[-1] == {
        "error": {
            "message": "Overloaded",
            "type": "server_error",
            "param": None,
            "code": "overloaded_error",
        }
    }
    assert "[DONE]" not in docs  # nothing after the error


@pytest.mark.parametrize(
    "junk",
    [b"data: not json\n\n", b"data: [1]\n\n", b'event: content_block_delta\ndata: {"delta": 3}\n\n',
     b': comment\n\n', b'data: {"type": "content_block_start", "content_block": 5}\n\n'],
)  # fmt: skip
def test_stream_junk_is_ignored(junk: bytes) -> None:
    raw = junk + TOOL_STREAM
    assert _translate(raw, [raw]) == _translate(TOOL_STREAM, [TOOL_STREAM])


def test_registry() -> None:
    from gateway_extproc.apis import Api, Schema

    assert translation_for(Api.OPENAI_CHAT, Schema.ANTHROPIC) is CHAT_TO_MESSAGES
    assert translation_for(Api.OPENAI_CHAT, Schema.OPENAI) is None
    assert translation_for(Api.OPENAI_RESPONSES, Schema.ANTHROPIC) is None
    assert CHAT_TO_MESSAGES.name == "openai_chat>anthropic_messages"
