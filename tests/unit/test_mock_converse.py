"""The mock's Converse and ConverseStream, driven by boto3's real `bedrock-runtime` client signed
with the mock's test credentials: botocore parses its JSON, decodes its event-stream frames
and reads its errors as Bedrock's; a request signed by anyone else is refused."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import pytest

from gateway_extproc.mock.bedrock_api import MOCK_ACCESS_KEY, MOCK_SECRET_KEY
from gateway_extproc.mock.content import estimate_input_tokens, output_words
from gateway_extproc.mock.testing import RunningMock, running_mock

MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
MESSAGES: list[Any] = [{"role": "user", "content": [{"text": "Hello!"}]}]


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


def client(mock: RunningMock, secret: str = MOCK_SECRET_KEY, **headers: str) -> Any:
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=mock.url,
        region_name="us-east-1",
        aws_access_key_id=MOCK_ACCESS_KEY,
        aws_secret_access_key=secret,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )

    def add(request: Any, **_: Any) -> None:  # the mock's controls, signed like the rest
        for name, value in headers.items():
            request.headers[name] = value

    c.meta.events.register("before-sign.bedrock-runtime.*", add)
    return c


async def test_converse_json(mock: RunningMock) -> None:
    c = client(mock, **{"x-mock-output-tokens": "5", "x-mock-cached-tokens": "7"})
    answer = await asyncio.to_thread(c.converse, modelId=MODEL, messages=MESSAGES)
    assert answer["output"]["message"]["content"][0]["text"] == "".join(output_words(5))
    assert answer["stopReason"] == "end_turn"
    usage = answer["usage"]
    inputs = estimate_input_tokens(MESSAGES)
    assert (usage["inputTokens"], usage["outputTokens"]) == (inputs, 5)
    assert usage["cacheReadInputTokens"] == 7 and usage["totalTokens"] == inputs + 7 + 5


async def test_converse_capped_by_max_tokens(mock: RunningMock) -> None:
    c = client(mock, **{"x-mock-output-tokens": "9"})
    answer = await asyncio.to_thread(
        c.converse, modelId=MODEL, messages=MESSAGES, inferenceConfig={"maxTokens": 3}
    )
    assert answer["stopReason"] == "max_tokens" and answer["usage"]["outputTokens"] == 3


def _events(c: Any) -> list[dict[str, Any]]:
    return list(c.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"])


@pytest.mark.parametrize("chunk_bytes", [None, "1", "13"])
async def test_converse_stream(mock: RunningMock, chunk_bytes: str | None) -> None:
    headers = {"x-mock-output-tokens": "4"}
    if chunk_bytes is not None:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    events = await asyncio.to_thread(_events, client(mock, **headers))
    kinds = [next(iter(e)) for e in events]
    assert kinds == ["messageStart"] + ["contentBlockDelta"] * 4 + [
        "contentBlockStop",
        "messageStop",
        "metadata",
    ]
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events[1:5])
    assert text == "".join(output_words(4))
    assert events[-2]["messageStop"]["stopReason"] == "end_turn"
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 4


async def test_stream_without_usage_has_no_metadata_event(mock: RunningMock) -> None:
    events = await asyncio.to_thread(_events, client(mock, **{"x-mock-omit-usage": "1"}))
    assert "metadata" not in [next(iter(e)) for e in events]


async def test_a_foreign_signature_is_refused(mock: RunningMock) -> None:
    c = client(mock, secret="not-the-mock-secret")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        await asyncio.to_thread(c.converse, modelId=MODEL, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "InvalidSignatureException"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_an_unknown_body_key_is_a_validation_exception(mock: RunningMock) -> None:
    c = client(mock)

    def inject(params: Any, **_: Any) -> None:  # before signing: the signature still holds
        params["body"] = params["body"][:-1] + b',"modelId":"x"}'

    c.meta.events.register_first("before-call.bedrock-runtime.Converse", inject)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        await asyncio.to_thread(c.converse, modelId=MODEL, messages=MESSAGES)
    assert err.value.response["Error"]["Code"] == "ValidationException"
    assert "modelId" in err.value.response["Error"]["Message"]
