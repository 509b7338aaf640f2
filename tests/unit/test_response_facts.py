"""The response id and finish reasons the meters read for traces (`gen_ai.response.id`,
`gen_ai.response.finish_reasons`): every API, JSON and streamed, the streams whole and fed one
byte at a time (every split point at once), and hostile values ignored."""

from __future__ import annotations

import orjson
import pytest

from gateway_extproc.apis import Api
from gateway_extproc.providers.base import MAX_FINISH_REASONS
from gateway_extproc.providers.metering import StreamMeter, StreamMeterResult, usage_from_json
from tests.paths import STREAMS

STREAM_CASES = [
    (
        Api.OPENAI_CHAT,
        "openai_chat_include_usage.sse",
        "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        ("tool_calls",),
    ),
    (
        Api.ANTHROPIC_MESSAGES,
        "anthropic_messages.sse",
        "msg_01XFDUDYJgAACzvnptvVoYEL",
        ("tool_use",),
    ),
    (
        Api.OPENAI_RESPONSES,
        "openai_responses.sse",
        "resp_67c9fdcecf488190bdd9a0409de3a1ec07b8b0ad4e5eb654",
        ("completed",),
    ),
    (Api.OPENAI_RESPONSES, "openai_responses_incomplete.sse", "resp_2", ("max_output_tokens",)),
]


def fed(api: Api, data: bytes, step: int) -> StreamMeterResult:
    meter = StreamMeter(api)
    for i in range(0, len(data), step):
        meter.feed(data[i : i + step])
    return meter.flush()


@pytest.mark.parametrize(("api", "name", "response_id", "reasons"), STREAM_CASES)
@pytest.mark.parametrize("step", [1 << 30, 1])
def test_streams(
    api: Api, name: str, response_id: str, reasons: tuple[str, ...], step: int
) -> None:
    result = fed(api, (STREAMS / name).read_bytes(), step)
    assert (result.response_id, result.finish_reasons) == (response_id, reasons)


def sse(*objs: object) -> bytes:
    return b"".join(b"data: " + orjson.dumps(o) + b"\n\n" for o in objs) + b"data: [DONE]\n\n"


def test_chat_stream_with_several_choices_orders_reasons_by_index() -> None:
    data = sse(
        {"id": "c1", "choices": [{"index": 1, "delta": {"content": "a"}, "finish_reason": None}]},
        {"id": "c1", "choices": [{"index": 1, "delta": {}, "finish_reason": "length"}]},
        {"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )
    result = fed(Api.OPENAI_CHAT, data, 7)
    assert (result.response_id, result.finish_reasons) == ("c1", ("stop", "length"))


@pytest.mark.parametrize(
    ("api", "body", "response_id", "reasons"),
    [
        (
            Api.OPENAI_CHAT,
            {"id": "chatcmpl-1", "choices": [{"index": 0, "finish_reason": "stop"}]},
            "chatcmpl-1",
            ("stop",),
        ),
        (Api.OPENAI_EMBEDDINGS, {"object": "list", "data": []}, None, ()),
        (
            Api.ANTHROPIC_MESSAGES,
            {"id": "msg_1", "stop_reason": "end_turn"},
            "msg_1",
            ("end_turn",),
        ),
        (Api.OPENAI_RESPONSES, {"id": "resp_1", "status": "completed"}, "resp_1", ("completed",)),
        (
            Api.OPENAI_RESPONSES,
            {"id": "r", "status": "incomplete", "incomplete_details": {"reason": "content_filter"}},
            "r",
            ("content_filter",),
        ),
        # Hostile or broken values are ignored, never raised on.
        (Api.OPENAI_CHAT, {"id": 5, "choices": [{"finish_reason": ["x"]}, "junk"]}, None, ()),
        (Api.ANTHROPIC_MESSAGES, {"id": "", "stop_reason": {"a": 1}}, None, ()),
    ],
)
def test_json(api: Api, body: object, response_id: str | None, reasons: tuple[str, ...]) -> None:
    result = usage_from_json(api, orjson.dumps(body))
    assert (result.response_id, result.finish_reasons) == (response_id, reasons)


def test_reasons_are_bounded() -> None:
    choices = [{"index": i, "finish_reason": "stop" + "x" * 100} for i in range(100)]
    result = usage_from_json(Api.OPENAI_CHAT, orjson.dumps({"choices": choices}))
    assert len(result.finish_reasons) == MAX_FINISH_REASONS
    assert all(len(r) == 64 for r in result.finish_reasons)
