"""OpenAI Responses answers: the mock's (real-shaped) stream yields the same response as its JSON,
and a cached response replays as a stream the openai SDK's own stream helper accumulates."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import orjson
import pytest

from gateway_extproc.apis import Api
from gateway_extproc.cache.replay import answer_from_json, answer_from_stream, replay
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.wire import JsonReply, ReplyContext, StreamReply

CTX = ReplyContext(Controls(output_tokens=9, reasoning_tokens=3), "abc", 1700000000)
USAGE = {
    "input_tokens": 10,
    "input_tokens_details": {"cached_tokens": 0},
    "output_tokens": 20,
    "output_tokens_details": {"reasoning_tokens": 5},
    "total_tokens": 30,
}
RESPONSE: dict[str, Any] = {
    "id": "resp_1",
    "object": "response",
    "created_at": 1700000000,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "model": "gpt-5-mini",
    "output": [
        {"id": "rs_1", "type": "reasoning", "summary": []},
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "annotations": [], "logprobs": [], "text": "Hi!"}],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "lookup",
            "arguments": '{"q": 1}',
        },
    ],
    "parallel_tool_calls": True,
    "tool_choice": "auto",
    "tools": [],
    "usage": USAGE,
}


def test_the_mock_stream_and_json_give_the_same_answer() -> None:
    streamed = responses_reply({"model": "gpt-5-mini", "input": "hi", "stream": True}, CTX)
    plain = responses_reply({"model": "gpt-5-mini", "input": "hi"}, CTX)
    assert isinstance(streamed, StreamReply) and isinstance(plain, JsonReply)
    from_stream = answer_from_stream(Api.OPENAI_RESPONSES, b"".join(streamed.events))
    assert from_stream is not None
    assert from_stream == answer_from_json(Api.OPENAI_RESPONSES, plain.body)


def test_replayed_stream_round_trips() -> None:
    body, _ = replay(Api.OPENAI_RESPONSES, RESPONSE, stream=True, include_usage=False)
    assert answer_from_stream(Api.OPENAI_RESPONSES, body) == RESPONSE


def test_the_openai_sdk_accumulates_the_replayed_stream() -> None:
    body, content_type = replay(Api.OPENAI_RESPONSES, RESPONSE, stream=True, include_usage=False)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": content_type})

    http = httpx.Client(transport=httpx.MockTransport(handler))
    client = openai.OpenAI(api_key="k", base_url="http://gw/v1", http_client=http)
    with client, client.responses.stream(model="gpt-5-mini", input="hi") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == ["Hi!"]
    assert final.output_text == "Hi!"
    assert final.usage is not None and final.usage.output_tokens == 20
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.name, c.arguments) for c in calls] == [("lookup", '{"q": 1}')]


@pytest.mark.parametrize(
    "change",
    [
        {"status": "failed"},
        {"usage": None},
        {"output": [{"id": "ws_1", "type": "web_search_call", "status": "completed"}]},
    ],
    ids=["failed", "no-usage", "hosted-tool-item"],
)
def test_responses_that_are_not_cached(change: dict[str, Any]) -> None:
    assert answer_from_json(Api.OPENAI_RESPONSES, orjson.dumps({**RESPONSE, **change})) is None


def test_a_failed_stream_is_not_cached() -> None:
    body, _ = replay(Api.OPENAI_RESPONSES, RESPONSE, stream=True, include_usage=False)
    failed = body.replace(b"response.completed", b"response.failed")
    assert answer_from_stream(Api.OPENAI_RESPONSES, failed) is None
