"""The mock provider's controls for the response-side bounds, on an ephemeral port: a body
gzipped though the request did not ask, a JSON body padded to any size written without being
held, and the two together: a decompression bomb."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from gateway_extproc.mock.controls import ControlError, Controls, parse_controls
from gateway_extproc.mock.testing import RunningMock, running_mock

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


async def raw_post(mock: RunningMock, headers: dict[str, str]) -> tuple[httpx.Headers, bytes]:
    """The reply's headers and its bytes as sent (not decoded); the request asks for identity."""
    async with httpx.AsyncClient(base_url=mock.url) as client:
        request = client.build_request(
            "POST",
            "/v1/chat/completions",
            json=CHAT,
            headers={"accept-encoding": "identity", **headers},
        )
        response = await client.send(request, stream=True)
        raw = b"".join([part async for part in response.aiter_raw()])
        await response.aclose()
        return response.headers, raw


def test_the_controls_parse() -> None:
    assert parse_controls({"x-mock-gzip": "1", "x-mock-pad-bytes": "10"}) == Controls(
        gzip=True, pad_bytes=10
    )
    with pytest.raises(ControlError, match="x-mock-pad-bytes"):
        parse_controls({"x-mock-pad-bytes": "-1"})


async def test_gzip_whatever_the_request_asked(mock: RunningMock) -> None:
    headers, raw = await raw_post(mock, {"x-mock-gzip": "1"})
    assert headers["content-encoding"] == "gzip"
    body = json.loads(zlib.decompress(raw, 16 + zlib.MAX_WBITS))
    assert body["usage"]["completion_tokens"] == 12


async def test_padding_keeps_the_json_whole(mock: RunningMock) -> None:
    _, plain = await raw_post(mock, {})
    headers, padded = await raw_post(mock, {"x-mock-pad-bytes": str(3 * 1024 * 1024 + 5)})
    assert "content-encoding" not in headers
    assert len(padded) == len(plain) + 3 * 1024 * 1024 + 5
    assert padded.startswith(b"{    ")
    assert json.loads(padded)["usage"] == json.loads(plain)["usage"]


async def test_gzip_and_padding_make_a_bomb(mock: RunningMock) -> None:
    _, wire = await raw_post(mock, {"x-mock-gzip": "1", "x-mock-pad-bytes": str(64 << 20)})
    assert len(wire) < (64 << 20) // 200  # over 200:1
    decoded = zlib.decompress(wire, 16 + zlib.MAX_WBITS)
    assert len(decoded) > 64 << 20 and json.loads(decoded)["object"] == "chat.completion"
