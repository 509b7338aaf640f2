"""Bedrock's Converse API inbound (providers/bedrock/converse.py): path, request bound, the
output cap, usage from the JSON answer and from the ConverseStream event stream (frames encoded
by the mock's encoder, decoded by botocore's), at every split point."""

from __future__ import annotations

import botocore.parsers
import orjson
import pytest

from gateway_extproc.apis import Api, Schema, api_for_path, schema_for_path
from gateway_extproc.budgets.refusals import BudgetExceeded
from gateway_extproc.errors import BadRequest, ClientError, Unauthenticated, UnknownModel
from gateway_extproc.providers.bedrock import converse
from gateway_extproc.providers.inbound import parse_request, upstream_body
from gateway_extproc.providers.metering import StreamMeter, usage_from_json
from gateway_extproc.providers.registry import error_body
from gateway_extproc.tokens import Usage

MODEL = "global.anthropic.claude-haiku-4-5-20251001-v1:0"
PATH = "/model/global.anthropic.claude-haiku-4-5-20251001-v1%3A0/converse"
BODY = {
    "messages": [{"role": "user", "content": [{"text": "Hello there"}]}],
    "system": [{"text": "Be brief."}],
}


def test_paths_map_to_the_converse_apis() -> None:
    assert api_for_path(PATH) is Api.BEDROCK_CONVERSE
    assert api_for_path(PATH + "-stream") is Api.BEDROCK_CONVERSE_STREAM
    assert api_for_path("/model/x/invoke") is None  # InvokeModel is not a gateway path
    assert schema_for_path("/model/x/whatever") is Schema.BEDROCK
    assert converse.parse_model(PATH) == MODEL
    assert converse.converse_path(MODEL, True) == PATH + "-stream"
    with pytest.raises(BadRequest):
        converse.parse_model("/model/a%2Fb/converse")


def test_request_model_from_path_and_cap_injected() -> None:
    request = parse_request(Api.BEDROCK_CONVERSE, orjson.dumps(BODY), PATH)
    assert (request.model, request.stream, request.max_output_tokens) == (MODEL, False, None)
    assert request.shape.cap_field == "inferenceConfig.maxTokens"
    sent = upstream_body(request, MODEL, ("inferenceConfig.maxTokens", 321))
    assert sent is not None and orjson.loads(sent)["inferenceConfig"] == {"maxTokens": 321}
    # prompt text: messages' and system's text only (4 chars a token) + 4 per message
    assert request.input_tokens_estimate == -(-len("Hello thereBe brief.") // 4) + 4
    capped = {**BODY, "inferenceConfig": {"maxTokens": 50, "temperature": 0.5}}
    request = parse_request(Api.BEDROCK_CONVERSE, orjson.dumps(capped), PATH)
    assert request.max_output_tokens == 50 and request.shape.max_output == 50
    with pytest.raises(BadRequest):
        parse_request(Api.BEDROCK_CONVERSE, orjson.dumps({**BODY, "modelId": "x"}), PATH)
    with pytest.raises(BadRequest):
        parse_request(
            Api.BEDROCK_CONVERSE, orjson.dumps({**BODY, "inferenceConfig": {"maxTokens": 0}}), PATH
        )


ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hi!"}]}},
    "stopReason": "end_turn",
    "usage": {
        "inputTokens": 12,
        "outputTokens": 3,
        "totalTokens": 15,
        "cacheReadInputTokens": 2048,
        "cacheWriteInputTokens": 512,
    },
    "metrics": {"latencyMs": 100},
}
USAGE = Usage(
    input_tokens=12, output_tokens=3, cached_input_tokens=2048, cache_write_input_tokens=512
)


def test_json_usage_exact() -> None:
    result = usage_from_json(Api.BEDROCK_CONVERSE, orjson.dumps(ANSWER))
    assert result.usage == USAGE
    assert result.output_bytes == 3
    assert result.finish_reasons == ("end_turn",)


def _frames() -> bytes:
    from gateway_extproc.mock.eventstream import event_frame

    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "!"}}),
        ("contentBlockStop", {"contentBlockIndex": 0}),
        ("messageStop", {"stopReason": "end_turn"}),
        ("metadata", {"usage": ANSWER["usage"], "metrics": {"latencyMs": 100}}),
    ]
    return b"".join(event_frame(name, obj) for name, obj in events)


@pytest.mark.parametrize("split", range(0, 400, 7))
def test_stream_usage_from_metadata_event_at_every_split(split: int) -> None:
    raw = _frames()
    split = min(split, len(raw))
    meter = StreamMeter(Api.BEDROCK_CONVERSE_STREAM)
    meter.feed(raw[:split])
    meter.feed(raw[split:])
    result = meter.flush()
    assert result.usage == USAGE
    assert result.output_bytes == 3
    assert result.completed


def test_gateway_errors_in_bedrock_format() -> None:
    body = orjson.loads(error_body(Schema.BEDROCK, BudgetExceeded("over budget"), "req1"))
    assert body["__type"] == "ThrottlingException" and body["message"] == "over budget"


@pytest.mark.parametrize(
    ("err", "status", "kind"),
    [
        (BudgetExceeded("over budget"), 429, "ThrottlingException"),
        (Unauthenticated("bad token"), 401, "UnrecognizedClientException"),
        (UnknownModel("no such model"), 400, "ValidationException"),  # as Bedrock says it
        (BadRequest("bad"), 400, "ValidationException"),
    ],
)
def test_botocore_reads_the_exception_name_as_the_error_code(
    err: ClientError, status: int, kind: str
) -> None:
    """botocore's own rest-json parser (what boto3's bedrock-runtime client raises from) reads
    the code from `__type`, unless a body key `code` overrides it: the gateway sends none."""
    body = error_body(Schema.BEDROCK, err, "req1")
    parser = botocore.parsers.create_parser("rest-json")
    parsed = parser.parse({"status_code": status, "headers": {}, "body": body}, None)
    assert parsed["Error"] == {"Code": kind, "Message": err.message}
    assert orjson.loads(body)["gatewayCode"] == err.code
