"""Metering against real OpenAI transcripts (shared/fixtures/recorded-openai, byte for byte).

The expected numbers are computed here independently - plain `json` over the raw body, the
normalisation rule written out - and a few are checked against literals read from the files.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway_extproc.apis import Api
from gateway_extproc.providers.metering import StreamMeter, StreamMeterResult, usage_from_json
from gateway_extproc.tokens import Usage
from tests.recorded import Interaction, load_cassettes

CASSETTES = load_cassettes()  # raises, naming what is missing, if the recordings are absent

EVERY_SPLIT_UP_TO = 2000  # bytes; longer bodies get SPREAD_SPLITS split points + byte-at-a-time
SPREAD_SPLITS = 200


def utf8(text: str) -> int:
    """What the meters count: UTF-8 bytes (a token covers at least one byte)."""
    return len(text.encode())


def _select(status_ok: bool, stream: bool | None = None) -> list[Any]:
    return [
        pytest.param(it, id=f"{name}#{i}")
        for name, its in CASSETTES.items()
        for i, it in enumerate(its)
        if (it.status == 200) is status_ok and (stream is None or it.is_stream is stream)
    ]


def _one(name: str) -> Interaction:
    (interaction,) = CASSETTES[name]
    return interaction


def expected_usage(usage: dict[str, Any] | None) -> Usage | None:
    """OpenAI's prompt_tokens include cached tokens; completion_tokens include reasoning."""
    if usage is None:
        return None
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return Usage(
        input_tokens=usage["prompt_tokens"] - cached,
        cached_input_tokens=cached,
        output_tokens=usage.get("completion_tokens", 0),
        reasoning_tokens=reasoning,
    )


def _message_bytes(message: dict[str, Any]) -> int:
    n = utf8(message.get("content") or "") + utf8(message.get("refusal") or "")
    for call in message.get("tool_calls") or []:
        n += utf8(call["function"].get("arguments") or "")
    n += utf8((message.get("audio") or {}).get("transcript") or "")
    return n


def _chunks(body: bytes) -> list[dict[str, Any]]:
    """The JSON chunks of an OpenAI SSE body: one `data: ` line per event, LF line ends."""
    return [
        json.loads(line[len("data: ") :])
        for line in body.decode().split("\n")
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


def expected_stream(body: bytes) -> StreamMeterResult:
    chunks = _chunks(body)
    usage = None
    chars = 0
    for chunk in chunks:
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            chars += _message_bytes(choice.get("delta") or {}) + utf8(choice.get("text") or "")
    done = body.count(b"data: [DONE]")
    return StreamMeterResult(
        usage=expected_usage(usage),
        served_model=chunks[0]["model"],
        output_bytes=chars,
        completed=done == 1,
        events=len(chunks) + done,
        malformed_events=0,
    )


def meter_split(api: Api, body: bytes, *cuts: int) -> StreamMeterResult:
    meter = StreamMeter(api)
    for start, end in zip((0, *cuts), (*cuts, len(body)), strict=True):
        meter.feed(body[start:end])
    return meter.flush()


@pytest.mark.parametrize("it", _select(status_ok=True, stream=True))
def test_stream_matches_transcript_at_every_split(it: Interaction) -> None:
    expected = expected_stream(it.response_body)
    body = it.response_body
    assert meter_split(it.api, body) == expected
    if len(body) <= EVERY_SPLIT_UP_TO:
        cuts = range(len(body) + 1)
    else:
        cuts = range(0, len(body) + 1, len(body) // SPREAD_SPLITS)
        assert meter_split(it.api, body, *range(1, len(body))) == expected  # byte at a time
    for i in cuts:
        assert meter_split(it.api, body, i) == expected, i


@pytest.mark.parametrize("it", _select(status_ok=True, stream=False))
def test_json_matches_transcript(it: Interaction) -> None:
    obj = json.loads(it.response_body)
    result = usage_from_json(it.api, it.response_body)
    assert result.usage == expected_usage(obj["usage"])
    assert result.usage is not None
    assert result.served_model == obj["model"]
    chars = sum(
        _message_bytes(choice.get("message") or {}) + utf8(choice.get("text") or "")
        for choice in obj.get("choices", [])
    )
    assert result.output_bytes == chars
    assert (result.output_bytes == 0) is (it.api is Api.OPENAI_EMBEDDINGS or chars == 0)


@pytest.mark.parametrize("it", _select(status_ok=False))
def test_error_responses_carry_no_usage(it: Interaction) -> None:
    assert not it.is_stream
    assert "error" in json.loads(it.response_body)
    result = usage_from_json(it.api, it.response_body)
    assert (result.usage, result.served_model, result.output_bytes) == (None, None, 0)


def test_every_metered_endpoint_is_covered() -> None:
    kinds = {(it.api, it.is_stream) for its in CASSETTES.values() for it in its}
    assert kinds >= {
        (Api.OPENAI_CHAT, True),
        (Api.OPENAI_CHAT, False),
        (Api.OPENAI_COMPLETIONS, True),
        (Api.OPENAI_COMPLETIONS, False),
        (Api.OPENAI_EMBEDDINGS, False),
    }


# Literal numbers, read from the files by eye.


def test_chat_streaming_detailed_usage() -> None:
    it = _one("chat-streaming-detailed-usage")
    assert it.is_stream
    result = meter_split(it.api, it.response_body)
    # prompt_tokens 12, cached_tokens 0, completion_tokens 100 of which reasoning_tokens 100
    assert result == StreamMeterResult(
        usage=Usage(input_tokens=12, output_tokens=100, reasoning_tokens=100),
        served_model="gpt-5-nano-2025-08-07",
        output_bytes=0,
        completed=True,
        events=4,
        malformed_events=0,
    )


def test_chat_reasoning() -> None:
    result = usage_from_json(Api.OPENAI_CHAT, _one("chat-reasoning").response_body)
    # prompt_tokens 27, cached_tokens 0, completion_tokens 267 of which reasoning_tokens 192
    assert result.usage == Usage(input_tokens=27, output_tokens=267, reasoning_tokens=192)
    assert result.served_model == "gpt-5-nano-2025-08-07"
    assert result.output_bytes == 140  # UTF-8 bytes: 134 characters


def test_chat_detailed_usage() -> None:
    result = usage_from_json(Api.OPENAI_CHAT, _one("chat-detailed-usage").response_body)
    # prompt_tokens 12, cached_tokens 0, completion_tokens 100 (all reasoning), empty content
    assert result.usage == Usage(input_tokens=12, output_tokens=100, reasoning_tokens=100)
    assert result.output_bytes == 0


def test_chat_tools_counts_tool_call_arguments() -> None:
    result = usage_from_json(Api.OPENAI_CHAT, _one("chat-tools").response_body)
    assert result.usage == Usage(input_tokens=162, output_tokens=287, reasoning_tokens=256)
    assert result.output_bytes == len('{"location":"Boston, MA","unit":"fahrenheit"}')


def test_completion_streaming_usage() -> None:
    it = _one("completion-streaming-usage")
    result = meter_split(it.api, it.response_body)
    assert result.usage == Usage(input_tokens=31, output_tokens=25)
    assert result.served_model == "babbage:2023-07-21-v2"
    assert result.completed


def test_chat_streaming_without_include_usage_must_be_estimated() -> None:
    it = _one("chat-streaming")
    result = meter_split(it.api, it.response_body)
    assert result.usage is None
    assert result.completed
    # The deltas joined: "Hi there! How can I help today? I can answer questions, [...]"
    assert result.output_bytes == 213  # UTF-8 bytes: 209 characters
