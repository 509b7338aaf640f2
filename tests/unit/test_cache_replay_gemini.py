"""Cached Gemini answers: a stream assembled into the JSON response the same request gets, a JSON
response replayed as a stream, both parsed by google-genai (through httpx.MockTransport, no
network), and the answers that are not cached."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
from google import genai
from google.genai import types

from gateway_extproc.apis import Api
from gateway_extproc.cache.key import cache_key, normalised
from gateway_extproc.cache.replay import answer_from_json, answer_from_stream, replay
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.gemini_api import gemini_sse, generate_reply
from gateway_extproc.mock.wire import JsonReply, ReplyContext, StreamReply

BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hello."}]}]}
CTX = ReplyContext(Controls(output_tokens=9, cached_tokens=4, reasoning_tokens=3), "ab12", 0)


def _json() -> dict[str, Any]:
    reply = generate_reply(BODY, CTX, model="gemini-2.5-flash", stream=False, version="v1beta")
    assert isinstance(reply, JsonReply)
    answer: dict[str, Any] = orjson.loads(reply.body)
    return answer


def _stream() -> bytes:
    reply = generate_reply(BODY, CTX, model="gemini-2.5-flash", stream=True, version="v1beta")
    assert isinstance(reply, StreamReply) and len(reply.events) == 9
    return b"".join(reply.events)


def test_a_stream_assembles_into_the_json_response_of_the_same_request() -> None:
    answer = answer_from_stream(Api.GEMINI_STREAM, _stream())
    assert answer == _json()  # text joined, the last running usage, finishReason, ids
    assert answer["usageMetadata"]["thoughtsTokenCount"] == 3


def test_a_json_response_is_kept_as_sent_and_replays_as_a_stream_that_assembles_back() -> None:
    raw = orjson.dumps(_json())
    answer = answer_from_json(Api.GEMINI_GENERATE, raw)
    assert answer == _json()
    body, content_type = replay(Api.GEMINI_STREAM, answer, stream=True, include_usage=False)
    assert content_type.startswith("text/event-stream") and body.endswith(b"\r\n\r\n")
    assert answer_from_stream(Api.GEMINI_STREAM, body) == answer
    body, content_type = replay(Api.GEMINI_GENERATE, answer, stream=False, include_usage=False)
    assert (orjson.loads(body), content_type) == (answer, "application/json")


def _client(body: bytes, content_type: str) -> genai.Client:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    options = types.HttpOptions(base_url="http://gw", httpx_client=http)
    return genai.Client(api_key="k", http_options=options)


def test_google_genai_parses_both_replays() -> None:
    answer = _json()
    body, content_type = replay(Api.GEMINI_GENERATE, answer, stream=False, include_usage=False)
    client = _client(body, content_type)
    response = client.models.generate_content(model="gemini-2.5-flash", contents="Say hello.")
    text = answer["candidates"][0]["content"]["parts"][0]["text"]
    assert response.text == text
    assert response.usage_metadata is not None
    assert response.usage_metadata.thoughts_token_count == 3
    body, content_type = replay(Api.GEMINI_STREAM, answer, stream=True, include_usage=False)
    client = _client(body, content_type)
    chunks = list(
        client.models.generate_content_stream(model="gemini-2.5-flash", contents="Say hello.")
    )
    assert "".join(c.text or "" for c in chunks) == text
    usage = chunks[-1].usage_metadata
    assert (
        usage is not None and usage.total_token_count == answer["usageMetadata"]["totalTokenCount"]
    )


def _with_candidate(**fields: Any) -> dict[str, Any]:
    answer = _json()
    answer["candidates"][0].update(fields)
    return answer


CALL = {"parts": [{"functionCall": {"name": "lookup", "args": {}}}], "role": "model"}
THOUGHT = {"parts": [{"text": "hmm", "thought": True}, {"text": "Hi."}], "role": "model"}
TEXT = {"parts": [{"text": "Hi."}], "role": "model"}
SIGNED = {"parts": [{"text": "Hi.", "thoughtSignature": "c2ln"}], "role": "model"}
NOT_CACHED = [
    ("function call", _with_candidate(content=CALL)),
    ("thought summary", _with_candidate(content=THOUGHT)),
    ("thought signature", _with_candidate(content=SIGNED)),
    ("blocked", _with_candidate(finishReason="SAFETY")),
    ("unfinished", {**_json(), "candidates": [{"content": TEXT, "index": 0}]}),
    ("no usage", {k: v for k, v in _json().items() if k != "usageMetadata"}),
    ("no candidate", {**_json(), "candidates": []}),
    ("prompt blocked", {**_json(), "promptFeedback": {"blockReason": "SAFETY"}}),
    ("error", {"error": {"code": 500, "message": "x", "status": "INTERNAL"}}),
]


@pytest.mark.parametrize("answer", [n[1] for n in NOT_CACHED], ids=[n[0] for n in NOT_CACHED])
def test_answers_that_cannot_be_replayed_are_not_cached(answer: dict[str, Any]) -> None:
    assert answer_from_json(Api.GEMINI_GENERATE, orjson.dumps(answer)) is None
    assert answer_from_stream(Api.GEMINI_STREAM, gemini_sse(answer)) is None


def test_cut_or_failed_streams_are_not_cached() -> None:
    raw = _stream()
    events = raw.split(b"\r\n\r\n")[:-1]
    cut = b"".join(e + b"\r\n\r\n" for e in events[:-1])  # the finishReason never came
    assert answer_from_stream(Api.GEMINI_STREAM, cut) is None
    error = gemini_sse({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}})
    assert answer_from_stream(Api.GEMINI_STREAM, cut + error + events[-1] + b"\r\n\r\n") is None
    assert answer_from_stream(Api.GEMINI_STREAM, b"data: {not json\r\n\r\n") is None


def test_the_stream_and_the_json_request_share_one_key() -> None:
    def key(api: Api) -> str:
        return cache_key(api, "gemini-2.5-flash", BODY, tenant=("user", "i", "u"))

    assert key(Api.GEMINI_STREAM) == key(Api.GEMINI_GENERATE)
    assert normalised(Api.GEMINI_STREAM, "m", BODY, "")["api"] == Api.GEMINI_GENERATE.value
    # The output cap the gateway writes into generationConfig is part of the key.
    cap = ("generationConfig.maxOutputTokens", 100)
    capped = cache_key(Api.GEMINI_GENERATE, "gemini-2.5-flash", BODY, tenant=("g",), output_cap=cap)
    assert capped != cache_key(Api.GEMINI_GENERATE, "gemini-2.5-flash", BODY, tenant=("g",))
