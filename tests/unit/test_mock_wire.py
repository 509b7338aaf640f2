"""The mock provider's wire behaviour seen from a bare socket: writes, gzip, aborts, replay."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import shutil
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import orjson
import pytest

from gateway_extproc.mock.content import output_words
from gateway_extproc.mock.replay import parse_cassette
from gateway_extproc.mock.testing import RunningMock, running_mock
from tests.paths import recorded_openai

MESSAGES: list[Any] = [{"role": "user", "content": "Hello!"}]
TEXT_12 = "".join(output_words(12))
JSON_CASSETTE = """version: 2
interactions:
- id: 0
  response:
    body: '{"error": {"message": "recorded", "type": "invalid_request_error", "param": null}}'
    headers:
      Content-Type:
      - application/json; charset=utf-8
      X-Request-Id:
      - req_recorded
    status: 418 I'm a teapot
    code: 418
"""


@pytest.fixture
def fixtures_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "fixtures"
    directory.mkdir()
    (directory / "teapot.yaml").write_text(JSON_CASSETTE)
    shutil.copy(recorded_openai() / "chat-streaming.yaml", directory)  # a real OpenAI stream
    return directory


@pytest.fixture
async def mock(fixtures_dir: Path) -> AsyncIterator[RunningMock]:
    async with running_mock(fixtures_dir) as server:
        yield server


def openai_client(mock: RunningMock, api_key: str = "sk-test") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=mock.openai_base_url, api_key=api_key, max_retries=0)


def anthropic_client(mock: RunningMock) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=mock.url, api_key="sk-ant-test", max_retries=0)


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    chunks: list[bytes]  # chunked-encoding frames, one per server write
    complete: bool  # the terminating zero-length chunk arrived

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


def _parse_chunked(data: bytes) -> tuple[list[bytes], bool]:
    chunks: list[bytes] = []
    while data:
        size_line, sep, rest = data.partition(b"\r\n")
        if not sep:
            return chunks, False
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return chunks, True
        if len(rest) < size + 2:
            return chunks, False
        chunks.append(rest[:size])
        data = rest[size + 2 :]
    return chunks, False


async def raw_post(
    mock: RunningMock, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
) -> RawResponse:
    """POST over a bare socket, so every server write stays visible as one chunk."""
    reader, writer = await asyncio.open_connection("127.0.0.1", mock.port)
    try:
        payload = orjson.dumps(body)
        lines = [f"POST {path} HTTP/1.1", "Host: mock", "Connection: close"]
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    parsed = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    if parsed.get("transfer-encoding") == "chunked":
        chunks, complete = _parse_chunked(rest)
    else:
        complete = len(rest) == int(parsed.get("content-length", len(rest)))
        chunks = [rest]
    return RawResponse(int(status_line.split()[1]), parsed, chunks, complete)


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}


# --- wire behaviour ---------------------------------------------------------------------------


async def test_gzip_when_accepted(mock: RunningMock) -> None:
    async with httpx.AsyncClient() as client:
        plain = await client.post(f"{mock.url}/v1/chat/completions", json=chat())
        async with client.stream(
            "POST",
            f"{mock.url}/v1/chat/completions",
            json=chat(stream=True),
            headers={"Accept-Encoding": "gzip"},
        ) as streamed:
            compressed = b"".join([part async for part in streamed.aiter_raw()])
    assert plain.headers["content-encoding"] == "gzip"
    assert plain.json()["choices"][0]["message"]["content"] == TEXT_12
    assert streamed.headers["content-encoding"] == "gzip"
    assert streamed.headers["content-type"] == "text/event-stream; charset=utf-8"
    decoded = gzip.decompress(compressed)
    assert decoded.startswith(b"data: {") and decoded.endswith(b"data: [DONE]\n\n")
    identity = await raw_post(mock, "/v1/chat/completions", chat(stream=True))
    assert "content-encoding" not in identity.headers
    assert identity.body.startswith(b"data: {") and identity.body.endswith(b"data: [DONE]\n\n")
    assert len(identity.body) == len(decoded)


async def test_gzip_stream_is_decodable_per_write(mock: RunningMock) -> None:
    result = await raw_post(
        mock, "/v1/chat/completions", chat(stream=True), {"Accept-Encoding": "gzip"}
    )
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    for chunk in result.chunks[:-1]:
        assert decoder.decompress(chunk).endswith(b"\n\n")
    decoder.decompress(result.chunks[-1])
    assert decoder.eof and result.complete


async def test_one_write_per_event_by_default(mock: RunningMock) -> None:
    result = await raw_post(mock, "/v1/chat/completions", chat(stream=True))
    assert result.complete
    assert len(result.chunks) == 12 + 3
    assert all(chunk.startswith(b"data: ") and chunk.endswith(b"\n\n") for chunk in result.chunks)


async def test_chunk_bytes_and_events_per_write(mock: RunningMock) -> None:
    whole = await raw_post(mock, "/v1/chat/completions", chat(stream=True))
    split = await raw_post(
        mock, "/v1/chat/completions", chat(stream=True), {"x-mock-chunk-bytes": "7"}
    )
    grouped = await raw_post(
        mock, "/v1/chat/completions", chat(stream=True), {"x-mock-events-per-write": "4"}
    )
    assert split.complete and grouped.complete
    assert all(len(chunk) == 7 for chunk in split.chunks[:-1])
    assert len(split.body) == len(whole.body)
    assert any(not chunk.endswith(b"\n\n") for chunk in split.chunks)
    assert [chunk.count(b"data: ") for chunk in grouped.chunks] == [4, 4, 4, 3]


async def test_abort_after_events(mock: RunningMock) -> None:
    headers = {"x-mock-abort-after-events": "3"}
    result = await raw_post(mock, "/v1/chat/completions", chat(stream=True), headers)
    assert not result.complete and len(result.chunks) == 3
    async with openai_client(mock) as client:
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, extra_headers=headers
            )
            async for _ in stream:
                pass
    async with anthropic_client(mock) as client_a:
        with pytest.raises((anthropic.APIConnectionError, httpx2.TransportError)):
            stream_a = await client_a.messages.create(
                model="c", max_tokens=50, messages=MESSAGES, stream=True, extra_headers=headers
            )
            async for _ in stream_a:
                pass


async def test_latency_and_chunk_delay(mock: RunningMock) -> None:
    started = time.monotonic()
    await raw_post(mock, "/v1/chat/completions", chat(), {"x-mock-latency-ms": "150"})
    assert time.monotonic() - started >= 0.15
    started = time.monotonic()
    headers = {"x-mock-output-tokens": "2", "x-mock-chunk-delay-ms": "50"}
    result = await raw_post(mock, "/v1/chat/completions", chat(stream=True), headers)
    assert len(result.chunks) == 5 and time.monotonic() - started >= 0.2


async def test_false_content_encoding_label(mock: RunningMock) -> None:
    plain = await raw_post(mock, "/v1/chat/completions", chat(stream=True))
    labelled = await raw_post(
        mock, "/v1/chat/completions", chat(stream=True), {"x-mock-content-encoding": "gzip"}
    )
    assert "content-encoding" not in plain.headers
    assert labelled.headers["content-encoding"] == "gzip"  # but the bytes are not gzip
    assert labelled.body.startswith(b"data: {") and labelled.body.endswith(b"data: [DONE]\n\n")


# --- replay -----------------------------------------------------------------------------------


async def test_replay_recorded_stream_byte_for_byte(mock: RunningMock, fixtures_dir: Path) -> None:
    recording = parse_cassette((fixtures_dir / "chat-streaming.yaml").read_text())
    replay = {"x-mock-replay": "chat-streaming"}
    result = await raw_post(mock, "/v1/chat/completions", chat(stream=True), replay)
    assert result.status == 200 and result.complete
    assert result.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert result.headers["x-request-id"] == "req_cce54d2033034299a777db6f8ce812cf"
    assert result.body == recording.body
    split = await raw_post(
        mock, "/v1/chat/completions", {}, {**replay, "x-mock-chunk-bytes": "100"}
    )
    assert split.body == recording.body and len(split.chunks) > 100
    zipped = await raw_post(mock, "/v1/chat/completions", {}, {**replay, "Accept-Encoding": "gzip"})
    assert gzip.decompress(zipped.body) == recording.body
    async with openai_client(mock) as client:
        stream = await client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers=replay
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text.startswith("Hi there! How can I help")


async def test_replay_json_and_unknown(mock: RunningMock) -> None:
    teapot = await raw_post(mock, "/v1/embeddings", {}, {"x-mock-replay": "teapot"})
    assert teapot.status == 418
    assert teapot.headers["content-type"] == "application/json; charset=utf-8"
    assert teapot.headers["x-request-id"] == "req_recorded"
    assert orjson.loads(teapot.body)["error"]["message"] == "recorded"
    missing = await raw_post(mock, "/v1/chat/completions", {}, {"x-mock-replay": "nope"})
    assert missing.status == 404
    assert "nope.yaml" in orjson.loads(missing.body)["error"]["message"]


# --- recording and health ---------------------------------------------------------------------


async def test_request_recording(mock: RunningMock) -> None:
    async with openai_client(mock, "sk-recorded") as client:
        await client.chat.completions.create(
            model="m", messages=MESSAGES, extra_headers={"X-Custom": "yes"}
        )
    async with httpx.AsyncClient(base_url=mock.url) as raw:
        await raw.post("/v1/messages", content=b"not json")
        assert (await raw.get("/_mock/health")).status_code == 200
        records = (await raw.get("/_mock/requests")).json()
        cleared = await raw.delete("/_mock/requests")
        after = (await raw.get("/_mock/requests")).json()
    first, second = records
    assert (first["method"], first["path"]) == ("POST", "/v1/chat/completions")
    assert first["headers"]["authorization"] == "Bearer sk-recorded"
    assert first["headers"]["x-custom"] == "yes"
    assert first["body"] == {"model": "m", "messages": MESSAGES}
    assert second["path"] == "/v1/messages" and second["body"] is None
    assert cleared.status_code == 200 and after == []


async def test_recording_keeps_last_hundred(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as raw:
        for index in range(105):
            await raw.post("/v1/embeddings", json={"model": "e", "input": str(index)})
        records = (await raw.get("/_mock/requests")).json()
    assert len(records) == 100
    assert records[0]["body"]["input"] == "5" and records[-1]["body"]["input"] == "104"
