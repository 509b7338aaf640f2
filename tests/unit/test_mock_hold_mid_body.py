"""`x-mock-hold-after-events: NAME@N` on the in-process mock: the first N writes go out, the
reply waits (counted by `GET /_mock/held/NAME`) until `POST /_mock/release/NAME`, then the rest
goes out, or the cut that `x-mock-abort-after-events` asked for. Each step is driven by what the
client has read, never by a delay."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway_extproc.mock.controls import ControlError, parse_controls
from gateway_extproc.mock.testing import RunningMock, running_mock

CHAT = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "Hello!"}]}
KEY = {"Authorization": "Bearer k"}


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


async def held(client: httpx.AsyncClient, name: str) -> Any:
    return (await client.get(f"/_mock/held/{name}")).json()["held"]


async def until_held(client: httpx.AsyncClient, name: str, count: int) -> None:
    """Poll the mock's count of waiting replies (bounded: 200 polls on the mock's own loop)."""
    for _ in range(200):
        if await held(client, name) == count:
            return
    raise AssertionError(f"{name}: never {count} held")


def test_the_header_names_a_hold_and_a_count() -> None:
    assert parse_controls({"x-mock-hold-after-events": "cut-1@3"}).hold_after == ("cut-1", 3)
    assert parse_controls({}).hold_after is None
    for bad in ("cut@0", "@3", "cut", "cut@x", "a b@2", "../x@1"):
        with pytest.raises(ControlError, match="x-mock-hold-after-events"):
            parse_controls({"x-mock-hold-after-events": bad})


async def test_a_stream_waits_after_n_events_until_released(mock: RunningMock) -> None:
    headers = {**KEY, "x-mock-output-tokens": "5", "x-mock-hold-after-events": "mid@2"}
    async with (
        httpx.AsyncClient(base_url=mock.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT, headers=headers) as response,
    ):
        assert response.status_code == 200  # the headers came with the first event
        lines = response.aiter_lines()
        events = []
        while len(events) < 2:
            line = await anext(lines)
            if line.startswith("data: "):
                events.append(line)
        await until_held(client, "mid", 1)  # the reply waits after its second event
        assert (await client.post("/_mock/release/mid")).status_code == 200
        events += [line async for line in lines if line.startswith("data: ")]
        assert await held(client, "mid") == 0
    assert events[-1] == "data: [DONE]" and len(events) > 2 + 5  # role, 5 words, usage, DONE


async def test_a_cut_asked_for_comes_after_the_release(mock: RunningMock) -> None:
    headers = {
        **KEY,
        "x-mock-output-tokens": "5",
        "x-mock-hold-after-events": "cut@1",
        "x-mock-abort-after-events": "3",
    }
    seen: list[str] = []
    async with (
        httpx.AsyncClient(base_url=mock.url, timeout=10) as client,
        client.stream("POST", "/v1/chat/completions", json=CHAT, headers=headers) as response,
    ):
        lines = response.aiter_lines()
        while not seen:
            line = await anext(lines)
            seen += [line] if line.startswith("data: ") else []
        await until_held(client, "cut", 1)
        await client.post("/_mock/release/cut")
        with pytest.raises(httpx.RemoteProtocolError):  # cut: no terminating chunk
            async for line in lines:
                seen += [line] if line.startswith("data: ") else []
    assert len(seen) == 3 and "[DONE]" not in seen[-1]
