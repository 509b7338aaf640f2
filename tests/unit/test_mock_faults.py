"""`x-mock-fault` on the in-process mock, seen from a bare socket (what the gateway's Envoy sees)
for each API family, and from boto3 for Bedrock: the target model named fails as asked, any
other answers, and the mock counts what each model got."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
import httpx
import orjson
import pytest
import urllib3.exceptions

from gateway_extproc.mock.bedrock_api import MOCK_ACCESS_KEY, MOCK_SECRET_KEY
from gateway_extproc.mock.testing import RunningMock, running_mock

MESSAGES: list[Any] = [{"role": "user", "content": "Hello!"}]


@dataclasses.dataclass(frozen=True)
class Api:
    """One API family: where a request for `model` goes, its body, and its error's shape."""

    name: str
    path: str  # `{model}` is replaced
    body: dict[str, Any]  # `{model}` values are replaced
    error_type: tuple[str, ...]  # the keys leading to the error's type/status in the body

    def request(self, model: str) -> tuple[str, dict[str, Any]]:
        body = {k: (model if v == "{model}" else v) for k, v in self.body.items()}
        return self.path.replace("{model}", model), body


APIS = [
    Api(
        "openai-chat",
        "/v1/chat/completions",
        {"model": "{model}", "messages": MESSAGES, "stream": True},
        ("error", "type"),
    ),
    Api(
        "anthropic-messages",
        "/v1/messages",
        {"model": "{model}", "max_tokens": 50, "messages": MESSAGES, "stream": True},
        ("error", "type"),
    ),
    Api(
        "gemini",
        "/v1beta/models/{model}:streamGenerateContent?alt=sse",
        {"contents": [{"role": "user", "parts": [{"text": "Hello!"}]}]},
        ("error", "status"),
    ),
    Api(
        "azure-deployment",
        "/openai/deployments/{model}/chat/completions?api-version=2024-10-21",
        {"messages": MESSAGES, "stream": True},
        ("error", "type"),
    ),
]
ERROR_TYPES = {  # (500, 429) per family, as its SDK reads them
    "openai-chat": ("server_error", "requests"),
    "anthropic-messages": ("api_error", "rate_limit_error"),
    "gemini": ("INTERNAL", "RESOURCE_EXHAUSTED"),
    "azure-deployment": ("server_error", "requests"),
}


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


@dataclasses.dataclass
class Exchange:
    head: bytes  # status line and headers ("" when none arrived)
    body: bytes  # as received (chunked framing kept)
    error: BaseException | None  # how the read ended, if not by a clean EOF
    seconds: float

    @property
    def status(self) -> int:
        return int(self.head.split(b" ")[1])

    def header(self, name: str) -> str | None:
        for line in self.head.decode().split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def exchange(
    mock: RunningMock, path: str, body: dict[str, Any], headers: dict[str, str]
) -> Exchange:
    """POST over a bare socket; read until EOF or a reset (bounded: 10 s)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    data = b""
    error: BaseException | None = None
    try:
        payload = orjson.dumps(body)
        lines = [f"POST {path} HTTP/1.1", "Host: mock", "Connection: close"]
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines += ["x-api-key: k", "Authorization: Bearer k"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        async with asyncio.timeout(10):
            while chunk := await reader.read(65536):
                data += chunk
    except ConnectionResetError as exc:
        error = exc
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, rest = data.partition(b"\r\n\r\n")
    return Exchange(head, rest, error, time.monotonic() - started)


async def counts(mock: RunningMock) -> Any:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(f"{mock.url}/_mock/counts")).json()


def dig(obj: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        obj = obj[key]
    return obj


# --- each fault, each family ---------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_500_in_the_family_format_for_the_named_model_only(
    mock: RunningMock, api: Api
) -> None:
    fault = {"x-mock-fault": "primary-model=500"}
    failed = await exchange(mock, *api.request("primary-model"), fault)
    answered = await exchange(mock, *api.request("fallback-model"), fault)
    assert failed.status == 500
    assert dig(failed.json(), api.error_type) == ERROR_TYPES[api.name][0]
    assert answered.status == 200 and answered.error is None
    assert await counts(mock) == {"primary-model": {"500": 1}, "fallback-model": {"none": 1}}


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_429_with_its_retry_after(mock: RunningMock, api: Api) -> None:
    got = await exchange(mock, *api.request("m"), {"x-mock-fault": "other=500,m=429@7"})
    assert got.status == 429
    assert got.header("retry-after") == "7"
    assert got.header("retry-after-ms") == "7000"
    assert dig(got.json(), api.error_type) == ERROR_TYPES[api.name][1]
    assert await counts(mock) == {"m": {"429@7": 1}}


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_reset_before_any_header(mock: RunningMock, api: Api) -> None:
    got = await exchange(mock, *api.request("m"), {"x-mock-fault": "*=reset"})
    assert got.head == b"" and got.body == b""
    assert isinstance(got.error, ConnectionResetError)  # an RST, not a clean close
    assert await counts(mock) == {"m": {"reset": 1}}
    assert (await exchange(mock, *api.request("m"), {})).status == 200  # the mock lives on


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_stall_then_the_normal_answer(mock: RunningMock, api: Api) -> None:
    got = await exchange(mock, *api.request("m"), {"x-mock-fault": "m=stall@400"})
    plain = await exchange(mock, *api.request("n"), {"x-mock-fault": "m=stall@400"})
    assert got.status == 200 and got.error is None and got.body.endswith(b"0\r\n\r\n")
    assert got.seconds >= 0.4 > plain.seconds
    assert await counts(mock) == {"m": {"stall@400": 1}, "n": {"none": 1}}


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_a_stall_longer_than_the_client_waits_is_a_timeout(
    mock: RunningMock, api: Api
) -> None:
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await exchange(mock, *api.request("m"), {"x-mock-fault": "m=stall@3600000"})


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
@pytest.mark.parametrize("cut", [0, 25])
async def test_cut_after_bytes_of_the_body(mock: RunningMock, api: Api, cut: int) -> None:
    whole = await exchange(mock, *api.request("m"), {})
    got = await exchange(mock, *api.request("m"), {"x-mock-fault": f"m=cut@{cut}"})
    assert got.status == 200  # the headers went out
    # chunked: one frame of `cut` bytes, no terminating chunk; the full body is longer
    expected = f"{cut:x}\r\n".encode() + whole_payload(whole)[:cut] + b"\r\n" if cut else b""
    assert got.body == expected
    assert len(whole_payload(whole)) > cut
    assert await counts(mock) == {"m": {"none": 1, f"cut@{cut}": 1}}


def whole_payload(got: Exchange) -> bytes:
    """The body of a complete response, chunked framing removed."""
    if got.header("transfer-encoding") != "chunked":
        return got.body
    out, data = b"", got.body
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if not size:
            return out
        out, data = out + data[:size], data[size + 2 :]


async def test_a_json_reply_cut_falls_short_of_its_content_length(mock: RunningMock) -> None:
    body = {"model": "m", "messages": MESSAGES}
    got = await exchange(mock, "/v1/chat/completions", body, {"x-mock-fault": "m=cut@10"})
    assert got.status == 200 and len(got.body) == 10
    assert int(got.header("content-length") or 0) > 10


# --- the header itself ----------------------------------------------------------------------


@pytest.mark.parametrize("api", APIS, ids=lambda a: a.name)
async def test_a_bad_fault_header_is_a_400_naming_it(mock: RunningMock, api: Api) -> None:
    got = await exchange(mock, *api.request("m"), {"x-mock-fault": "m=502"})
    assert got.status == 400
    assert b"x-mock-fault[0]: '502' must be 500" in got.body
    assert await counts(mock) == {}


async def test_no_match_or_no_header_is_a_normal_answer(mock: RunningMock) -> None:
    api = APIS[0]
    assert (await exchange(mock, *api.request("m"), {"x-mock-fault": "n=500"})).status == 200
    assert (await exchange(mock, *api.request("m"), {})).status == 200
    assert await counts(mock) == {"m": {"none": 2}}


async def test_counts_are_cleared_with_the_request_log(mock: RunningMock) -> None:
    await exchange(mock, *APIS[0].request("m"), {"x-mock-fault": "m=500"})
    async with httpx.AsyncClient(timeout=5) as client:
        records = (await client.get(f"{mock.url}/_mock/requests")).json()
        assert (records[-1]["model"], records[-1]["fault"]) == ("m", "500")
        await client.delete(f"{mock.url}/_mock/requests")
    assert await counts(mock) == {}


# --- Bedrock, signed by boto3 -------------------------------------------------------------------

BEDROCK_MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"


def bedrock(mock: RunningMock, fault: str) -> Any:
    c = boto3.client(
        "bedrock-runtime",
        endpoint_url=mock.url,
        region_name="us-east-1",
        aws_access_key_id=MOCK_ACCESS_KEY,
        aws_secret_access_key=MOCK_SECRET_KEY,
        config=botocore.config.Config(retries={"total_max_attempts": 1}, read_timeout=5),
    )

    def add(request: Any, **_: Any) -> None:
        request.headers["x-mock-fault"] = fault

    c.meta.events.register("before-sign.bedrock-runtime.*", add)
    return c


def converse(mock: RunningMock, fault: str, model: str = BEDROCK_MODEL) -> Any:
    messages = [{"role": "user", "content": [{"text": "Hello!"}]}]
    return bedrock(mock, fault).converse(modelId=model, messages=messages)


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [("500", 500, "InternalServerException"), ("429@3", 429, "ThrottlingException")],
)
async def test_bedrock_errors_by_model_id(
    mock: RunningMock, fault: str, status: int, code: str
) -> None:
    header = f"{BEDROCK_MODEL}={fault}"
    with pytest.raises(botocore.exceptions.ClientError) as info:
        await asyncio.to_thread(converse, mock, header)
    meta = info.value.response["ResponseMetadata"]
    assert (meta["HTTPStatusCode"], info.value.response["Error"]["Code"]) == (status, code)
    if status == 429:
        assert meta["HTTPHeaders"]["retry-after"] == "3"
    other = await asyncio.to_thread(converse, mock, header, "amazon.nova-lite-v1:0")
    assert other["output"]["message"]["content"]
    assert await counts(mock) == {BEDROCK_MODEL: {fault: 1}, "amazon.nova-lite-v1:0": {"none": 1}}


async def test_bedrock_reset_and_cut(mock: RunningMock) -> None:
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        await asyncio.to_thread(converse, mock, "*=reset")
    assert await asyncio.to_thread(converse_stream, mock, "*=cut@40") == "cut short"
    assert await asyncio.to_thread(converse_stream, mock, "other=cut@40") == "whole"
    assert await counts(mock) == {BEDROCK_MODEL: {"reset": 1, "cut@40": 1, "none": 1}}


def converse_stream(mock: RunningMock, fault: str) -> str:
    messages = [{"role": "user", "content": [{"text": "Hello!"}]}]
    reply = bedrock(mock, fault).converse_stream(modelId=BEDROCK_MODEL, messages=messages)
    try:
        events = list(reply["stream"])
    except urllib3.exceptions.ProtocolError:  # the event stream ended mid-message
        return "cut short"
    return "whole" if "messageStop" in str(events) else "incomplete"
