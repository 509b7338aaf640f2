"""Pure-function tests of the mock provider: controls, content, errors, write plans, replay."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.mock.content import (
    WORDS,
    estimate_input_tokens,
    max_tokens_of,
    output_words,
    parse_body,
    plan_output,
    require_model,
)
from gateway_extproc.mock.controls import ControlError, Controls, parse_controls
from gateway_extproc.mock.errors import ApiError, Family, error_payload, injected_error
from gateway_extproc.mock.replay import CassetteError, load_recording, parse_cassette
from gateway_extproc.mock.wire import (
    DONE_EVENT,
    GzipEncoder,
    StreamReply,
    accepts_gzip,
    plan_writes,
    split_sse_events,
    sse,
)

# --- controls ---------------------------------------------------------------------------------


def test_controls_default_when_no_headers() -> None:
    assert parse_controls({"content-type": "application/json"}) == Controls()
    assert Controls().output_tokens == 12


def test_controls_parse_every_header_case_insensitively() -> None:
    controls = parse_controls(
        {
            "X-Mock-Output-Tokens": "40",
            "x-mock-cached-tokens": "5",
            "x-mock-cache-write-tokens": "6",
            "x-mock-cache-write-1h-tokens": "8",
            "x-mock-reasoning-tokens": "7",
            "x-mock-latency-ms": "10",
            "x-mock-chunk-delay-ms": "20",
            "x-mock-chunk-bytes": "3",
            "x-mock-events-per-write": "4",
            "x-mock-status": "429",
            "x-mock-abort-after-events": "2",
            "x-mock-omit-usage": "1",
            "x-mock-replay": "chat-streaming.yaml",
            "x-mock-content-encoding": "br",
        }
    )
    assert controls == Controls(
        output_tokens=40,
        cached_tokens=5,
        cache_write_tokens=6,
        cache_write_1h_tokens=8,
        reasoning_tokens=7,
        latency_ms=10,
        chunk_delay_ms=20,
        chunk_bytes=3,
        events_per_write=4,
        status=429,
        abort_after_events=2,
        omit_usage=True,
        replay="chat-streaming",
        content_encoding="br",
    )


def test_controls_report_every_problem_at_once() -> None:
    with pytest.raises(ControlError) as caught:
        parse_controls(
            {
                "x-mock-output-tokens": "100001",
                "x-mock-status": "200",
                "x-mock-chunk-bytes": "zero",
                "x-mock-omit-usage": "maybe",
                "x-mock-replay": "../etc/passwd",
                "x-mock-content-encoding": "gzip, br",
                "x-mock-typo": "1",
            }
        )
    problems = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 7
    names = ("output-tokens", "status", "chunk-bytes", "omit-usage", "replay", "content-encoding")
    for name in (*names, "x-mock-typo"):
        assert name in problems


@pytest.mark.parametrize("value", ["0", "false", "no", ""])
def test_controls_false_flags(value: str) -> None:
    assert parse_controls({"x-mock-omit-usage": value}).omit_usage is False


# --- content ----------------------------------------------------------------------------------


def test_output_words_cycle_with_trailing_spaces() -> None:
    words = output_words(len(WORDS) + 2)
    assert words[:5] == ("Hello ", "from ", "the ", "mock ", "provider. ")
    assert words[len(WORDS)] == "Hello "
    assert all(w.endswith(" ") and w.count(" ") == 1 for w in words)
    assert output_words(0) == ()


@pytest.mark.parametrize(
    ("requested", "reasoning", "limit", "words", "kept_reasoning", "truncated"),
    [
        (12, 0, None, 12, 0, False),
        (12, 0, 12, 12, 0, False),
        (12, 0, 5, 5, 0, True),
        (12, 4, None, 12, 4, False),
        (12, 4, 10, 6, 4, True),
        (12, 100, 100, 0, 100, True),
        (0, 0, 1, 0, 0, False),
    ],
)
def test_plan_output(
    requested: int,
    reasoning: int,
    limit: int | None,
    words: int,
    kept_reasoning: int,
    truncated: bool,
) -> None:
    plan = plan_output(requested, reasoning, limit)
    assert len(plan.words) == words
    assert plan.reasoning_tokens == kept_reasoning
    assert plan.truncated is truncated
    assert plan.output_tokens == words + kept_reasoning


@pytest.mark.parametrize(
    ("field", "tokens"),
    [(None, 1), ("", 1), ("abcdefgh", 3), ([{"role": "user", "content": "Hello!"}], 9), ("é", 1)],
)
def test_estimate_input_tokens(field: Any, tokens: int) -> None:
    assert estimate_input_tokens(field) == tokens


def test_request_field_checks() -> None:
    assert require_model({"model": "gpt-4o"}) == "gpt-4o"
    with pytest.raises(ApiError) as missing:
        require_model({})
    assert missing.value.status == 400
    for name in ("unknown-model", "does-not-exist-7"):
        with pytest.raises(ApiError) as unknown:
            require_model({"model": name})
        assert (unknown.value.status, unknown.value.code) == (404, "model_not_found")
    assert (
        max_tokens_of({"max_tokens": 5, "max_completion_tokens": 3}, "max_completion_tokens") == 3
    )
    assert max_tokens_of({}, "max_tokens") is None
    for bad in (0, -1, "5", True, 1.5):
        with pytest.raises(ApiError):
            max_tokens_of({"max_tokens": bad}, "max_tokens")
    for raw in (b"{", b"[1]", b""):
        with pytest.raises(ApiError) as malformed:
            parse_body(raw)
        assert malformed.value.status == 400


# --- errors -----------------------------------------------------------------------------------


def test_error_payloads_in_provider_formats() -> None:
    err = ApiError(401, "bad key", code="invalid_api_key")
    assert error_payload(Family.OPENAI, err, "req_1") == {
        "error": {
            "message": "bad key",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert error_payload(Family.ANTHROPIC, err, "req_1") == {
        "type": "error",
        "error": {"type": "authentication_error", "message": "bad key"},
        "request_id": "req_1",
    }
    assert injected_error(429).headers()["retry-after"] == "1"
    assert error_payload(Family.ANTHROPIC, injected_error(500), "r")["error"]["type"] == "api_error"
    assert error_payload(Family.OPENAI, injected_error(503), "r")["error"]["type"] == "server_error"
    not_found = error_payload(Family.ANTHROPIC, ApiError(404, "model: x"), "r")
    assert not_found["error"]["type"] == "not_found_error"


# --- wire -------------------------------------------------------------------------------------


def test_sse_framing() -> None:
    assert sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse({"a": 1}, event="x") == b'event: x\ndata: {"a":1}\n\n'


EVENTS = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n", DONE_EVENT]


def test_plan_writes_whole_events_grouped() -> None:
    assert plan_writes(EVENTS).writes == tuple(EVENTS)
    grouped = plan_writes(EVENTS, events_per_write=3)
    assert grouped.writes == (b"".join(EVENTS[:3]), DONE_EVENT)
    assert grouped.abort is False


@pytest.mark.parametrize("size", [1, 2, 3, 7, 11, 1000])
def test_plan_writes_chunk_bytes_split_anywhere(size: int) -> None:
    plan = plan_writes(EVENTS, chunk_bytes=size)
    assert b"".join(plan.writes) == b"".join(EVENTS)
    assert all(len(w) == size for w in plan.writes[:-1])
    assert 0 < len(plan.writes[-1]) <= size


def test_plan_writes_abort_after_events() -> None:
    plan = plan_writes(EVENTS, abort_after_events=2, chunk_bytes=5)
    assert b"".join(plan.writes) == b"".join(EVENTS[:2])
    assert plan.abort is True
    assert plan_writes(EVENTS, abort_after_events=0).writes == ()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, False),
        ("", False),
        ("identity", False),
        ("gzip", True),
        ("gzip, deflate", True),
        ("deflate, GZIP;q=0.5", True),
        ("gzip;q=0", False),
        ("br, *", True),
    ],
)
def test_accepts_gzip(header: str | None, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_gzip_encoder_flushes_every_write() -> None:
    encoder = GzipEncoder()
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    seen = b""
    for event in EVENTS:
        seen += decoder.decompress(encoder.encode(event))
        assert seen.endswith(event)  # decodable as soon as written: nothing held back
    seen += decoder.decompress(encoder.flush())
    assert seen == b"".join(EVENTS) and decoder.eof


def test_split_sse_events_round_trips() -> None:
    body = b"".join(EVENTS) + b"data: trailing"
    events = split_sse_events(body)
    assert events == (*EVENTS, b"data: trailing")
    assert split_sse_events(b"") == ()


# --- replay -----------------------------------------------------------------------------------

CASSETTE = """---
version: 2
interactions:
- id: 0
  request:
    body: "{}"
    url: https://api.openai.com/v1/chat/completions
    method: POST
  response:
    body: |+
      data: {"a":1}

      data: [DONE]

    headers:
      Content-Type:
      - text/event-stream; charset=utf-8
      Content-Length:
      - "99"
      X-Request-Id:
      - req_recorded
    status: 200 OK
    code: 200
"""


def test_parse_cassette() -> None:
    recording = parse_cassette(CASSETTE)
    assert recording.status == 200
    assert recording.is_sse
    assert recording.body == b'data: {"a":1}\n\ndata: [DONE]\n\n'
    assert recording.headers == (("X-Request-Id", "req_recorded"),)
    reply = recording.reply()
    assert isinstance(reply, StreamReply)
    assert reply.events == (b'data: {"a":1}\n\n', DONE_EVENT)
    status_only = CASSETTE.replace("    code: 200\n", "").replace("200 OK", "404 Not Found")
    assert parse_cassette(status_only).status == 404
    with pytest.raises(CassetteError):
        parse_cassette("version: 2\ninteractions: []\n")


def test_load_recording_errors(tmp_path: Path) -> None:
    with pytest.raises(ApiError) as no_dir:
        load_recording(None, "x")
    assert no_dir.value.status == 404
    with pytest.raises(ApiError) as missing:
        load_recording(tmp_path, "nope")
    assert missing.value.status == 404 and "nope.yaml" in missing.value.message
    (tmp_path / "broken.yaml").write_text("interactions: 3\n")
    with pytest.raises(ApiError) as broken:
        load_recording(tmp_path, "broken")
    assert broken.value.status == 500
