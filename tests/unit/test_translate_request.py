"""OpenAI chat completions request -> Anthropic Messages request (translate/chat_to_messages)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway_extproc.errors import Untranslatable
from gateway_extproc.translate.chat_to_messages import messages_request, with_overrides

USER = {"role": "user", "content": "hi"}
TEXT_R1 = {"type": "text", "text": "r1"}
TEXT_R2 = {"type": "text", "text": "r2"}


def translate(**fields: Any) -> dict[str, Any]:
    return messages_request({"model": "claude-haiku-4-5", "messages": [USER], **fields})


def test_minimal() -> None:
    assert translate() == {
        "model": "claude-haiku-4-5",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }


def test_system_and_developer_become_system_blocks_in_order() -> None:
    body = messages_request(
        {
            "model": "m",
            "messages": [
                {"role": "system", "content": "one"},
                {"role": "developer", "content": [{"type": "text", "text": "two"}]},
                USER,
                {"role": "system", "content": "three"},
            ],
        }
    )
    assert body["system"] == [{"type": "text", "text": t} for t in ("one", "two", "three")]
    assert [m["role"] for m in body["messages"]] == ["user"]


def test_consecutive_turns_merge_and_tool_results_join_the_user_turn() -> None:
    body = messages_request(
        {
            "model": "m",
            "messages": [
                USER,
                {"role": "user", "content": "again"},
                {
                    "role": "assistant",
                    "content": "calling",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "f", "arguments": '{"a": 1}'},
                        },
                        {"id": "call_2", "function": {"name": "g", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "r1"},
                {"role": "tool", "tool_call_id": "call_2", "content": [TEXT_R2]},
                {"role": "user", "content": "thanks"},
            ],
        }
    )  # fmt: skip
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert [b["text"] for b in body["messages"][0]["content"]] == ["hi", "again"]
    assert body["messages"][1]["content"] == [
        {"type": "text", "text": "calling"},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
    ]
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": [TEXT_R1]},
        {"type": "tool_result", "tool_use_id": "call_2", "content": [TEXT_R2]},
        {"type": "text", "text": "thanks"},
    ]  # fmt: skip


def test_assistant_with_only_tool_calls_has_no_empty_text() -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    body = translate(messages=[USER, {"role": "assistant", "content": "", "tool_calls": [call]}])
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "c", "name": "f", "input": {}}
    ]


@pytest.mark.parametrize(
    ("url", "source"),
    [
        (
            "data:image/png;base64,iVBORw0KGgo=",
            {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
        ),
        (
            "data:image/jpeg;base64,/9j/4AAQ",
            {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQ"},
        ),
        ("https://example.com/cat.webp", {"type": "url", "url": "https://example.com/cat.webp"}),
    ],
)
def test_images(url: str, source: dict[str, str]) -> None:
    content = [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": url}}]
    body = translate(messages=[{"role": "user", "content": content}])
    assert body["messages"][0]["content"][1] == {"type": "image", "source": source}


@pytest.mark.parametrize(
    "url",
    ["data:image/bmp;base64,AAAA", "data:image/png,raw", "ftp://x/y.png", "data:image/png;base64,"],
)
def test_unsupported_images_refused(url: str) -> None:
    content = [{"type": "image_url", "image_url": {"url": url}}]
    with pytest.raises(Untranslatable):
        translate(messages=[{"role": "user", "content": content}])


def test_limits_stop_sampling_stream_user() -> None:
    body = translate(
        max_tokens=10, stop=["a", "b"], temperature=0.3, top_p=0.9, stream=True, user="u1",
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert body["max_tokens"] == 10 and body["stop_sequences"] == ["a", "b"]
    assert body["temperature"] == 0.3 and body["top_p"] == 0.9 and body["stream"] is True
    assert body["metadata"] == {"user_id": "u1"} and "stream_options" not in body
    assert translate(max_completion_tokens=7, max_tokens=10)["max_tokens"] == 7
    assert translate(stop="x")["stop_sequences"] == ["x"]
    assert "stream" not in translate(stream=False)


def test_tools_and_tool_choice() -> None:
    tool = {
        "type": "function",
        "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
    }
    bare = {"type": "function", "function": {"name": "g"}}
    body = translate(tools=[tool, bare], tool_choice="required", parallel_tool_calls=False)
    assert body["tools"] == [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}},
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    assert translate(tools=[tool], tool_choice="auto")["tool_choice"] == {"type": "auto"}
    assert translate(tools=[tool], tool_choice="none")["tool_choice"] == {"type": "none"}
    named = {"type": "function", "function": {"name": "f"}}
    assert translate(tools=[tool], tool_choice=named)["tool_choice"] == {
        "type": "tool",
        "name": "f",
    }
    assert translate(tools=[tool], parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True,
    }  # fmt: skip
    assert "tool_choice" not in translate(tools=[tool], parallel_tool_calls=True)


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"n": 2}, "`n`"),
        ({"logprobs": True}, "`logprobs`"),
        ({"top_logprobs": 2}, "`top_logprobs`"),
        ({"audio": {"voice": "x"}}, "`audio`"),
        ({"modalities": ["text", "audio"]}, "`modalities`"),
        ({"response_format": {"type": "json_object"}}, "`response_format`"),
        ({"seed": 1}, "`seed`"),
        ({"logit_bias": {"1": 2}}, "`logit_bias`"),
        ({"frequency_penalty": 0.5}, "`frequency_penalty`"),
        ({"presence_penalty": 1}, "`presence_penalty`"),
        ({"store": True}, "`store: true`"),
        ({"service_tier": "flex"}, "`service_tier: flex`"),
        ({"temperature": 1.5}, "`temperature`"),
        ({"stop": ["a", 1]}, "`stop`"),
        ({"tools": [{"type": "custom", "custom": {}}]}, "`tools[0]`"),
        ({"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]}, "strict"),
        ({"tool_choice": "sometimes"}, "`tool_choice`"),
        ({"messages": [{"role": "function", "content": "x"}]}, "'function'"),
        ({"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input_audio"),
        ({"messages": [{"role": "user", "content": [{"type": "file"}]}]}, "'file'"),
        ({"messages": [{"role": "assistant", "content": "x", "audio": {"id": "a"}}]}, "audio"),
        ({"messages": [{"role": "system", "content": "only"}]}, "no user or assistant"),
        ({"messages": "hi"}, "`messages` must be a list"),
    ],
)
def test_refused(fields: dict[str, Any], fragment: str) -> None:
    with pytest.raises(Untranslatable) as err:
        translate(**fields)
    assert fragment in err.value.message
    assert err.value.status == 400 and err.value.code == "untranslatable"


@pytest.mark.parametrize("arguments", ["not json", "[1, 2]", "3"])
def test_tool_call_arguments_must_be_an_object(arguments: str) -> None:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
    with pytest.raises(Untranslatable):
        translate(messages=[USER, {"role": "assistant", "tool_calls": [call]}])


def test_allowed_defaults_pass() -> None:
    body = translate(
        n=1, logprobs=False, response_format={"type": "text"}, store=False, service_tier="auto",
        frequency_penalty=0, presence_penalty=0.0,
    )  # fmt: skip
    assert set(body) == {"model", "messages"}


def test_with_overrides_sets_model_and_a_missing_limit_only() -> None:
    body = translate()
    out = orjson.loads(with_overrides(body, model="claude-sonnet-4-5", max_tokens=4096))
    assert out["model"] == "claude-sonnet-4-5" and out["max_tokens"] == 4096
    assert body["model"] == "claude-haiku-4-5" and "max_tokens" not in body  # not modified
    kept = orjson.loads(with_overrides(translate(max_tokens=5), model="m", max_tokens=4096))
    assert kept["max_tokens"] == 5


def test_input_is_not_modified() -> None:
    messages = [{"role": "system", "content": "s"}, USER, {"role": "user", "content": "b"}]
    original = {"model": "m", "messages": messages, "stop": "x"}
    snapshot = orjson.dumps(original)
    messages_request(original)
    assert orjson.dumps(original) == snapshot
