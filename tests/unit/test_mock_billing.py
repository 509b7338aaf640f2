"""The mock provider bills what it generated (gateway_extproc/mock/billing.py): pure rules, then the
mock on an ephemeral port with a client that leaves mid-stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway_extproc.mock.anthropic_api import messages_reply
from gateway_extproc.mock.billing import Bill, Progress, billed, words_in
from gateway_extproc.mock.content import estimate_input_tokens
from gateway_extproc.mock.controls import Controls
from gateway_extproc.mock.openai_api import chat_reply, completion_reply
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.testing import RunningMock, running_mock
from gateway_extproc.mock.wire import ReplyContext, StreamReply, plan_writes

MESSAGES: list[Any] = [{"role": "user", "content": "Hello!"}]
CONTROLS = Controls(output_tokens=5, reasoning_tokens=40, cached_tokens=3)


def _stream(build: Any, body: dict[str, Any], controls: Controls = CONTROLS) -> StreamReply:
    reply = build({**body, "stream": True}, ReplyContext(controls, "abc", 1))
    assert isinstance(reply, StreamReply) and reply.bill is not None
    return reply


STREAMS = {
    "chat": (chat_reply, {"model": "m", "messages": MESSAGES}),
    "completions": (completion_reply, {"model": "m", "prompt": "Hi"}),
    "responses": (responses_reply, {"model": "m", "input": "Hi"}),
    "messages": (messages_reply, {"model": "m", "max_tokens": 99, "messages": MESSAGES}),
}


@pytest.mark.parametrize("api", sorted(STREAMS))
def test_every_stream_carries_one_word_per_word_event(api: str) -> None:
    reply = _stream(*STREAMS[api])
    assert reply.bill is not None
    assert words_in(b"".join(reply.events)) == reply.bill.words == 5
    # Only whole events count: a word cut mid-event was not sent whole.
    assert words_in(b"".join(reply.events)[:-1]) <= 5


def test_a_bill_has_the_input_by_kind_and_the_hidden_reasoning() -> None:
    reply = _stream(*STREAMS["chat"])
    assert reply.bill == Bill(
        input_tokens=estimate_input_tokens(MESSAGES),
        cached_input_tokens=3,
        reasoning_tokens=40,
        words=5,
    )
    anthropic = _stream(*STREAMS["messages"], controls=Controls(cache_write_1h_tokens=7))
    assert anthropic.bill is not None and anthropic.bill.cache_write_1h_input_tokens == 7
    assert anthropic.bill.reasoning_tokens == 0  # the mock's Anthropic replies do not reason


@pytest.mark.parametrize(
    ("writes", "progress", "after_cut", "output"),
    [
        (None, Progress(), 0, 45),  # a JSON reply or a stream written whole: all of it
        (None, Progress(attempted=1, cut=True), 500, 45),  # JSON: generated whole before sent
        ("events", Progress(attempted=3, cut=True), 0, 40 + 2),  # role chunk, 2 words
        ("events", Progress(attempted=3, cut=True), 2, 40 + 4),  # then 2 words after the cut
        ("events", Progress(attempted=3, cut=True), 500, 45),  # never more than the reply
        ("events", Progress(attempted=0, cut=True), 1, 40 + 1),  # cut before its first write
        ("events", Progress(attempted=3, cut=False), 9, 40 + 2),  # the mock aborted itself
    ],
)
def test_billed(writes: str | None, progress: Progress, after_cut: int, output: int) -> None:
    reply = _stream(*STREAMS["chat"])
    assert reply.bill is not None
    planned = None if writes is None else plan_writes(reply.events).writes
    tokens = billed(reply.bill, planned, progress, after_cut)
    assert (tokens["output_tokens"], tokens["reasoning_tokens"]) == (output, 40)
    assert (tokens["input_tokens"], tokens["cached_input_tokens"]) == (reply.bill.input_tokens, 3)


# -- the running mock: a client that leaves ------------------------------------------------------


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as server:
        yield server


async def _bills(mock: RunningMock) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        return list((await client.get("/_mock/bills")).json())


async def test_a_whole_answer_is_billed_whole_and_a_failed_one_not_at_all(
    mock: RunningMock,
) -> None:
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    async with httpx.AsyncClient(base_url=mock.url) as client:
        ok = await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "a"})
        headers = {"x-request-id": "b", "x-mock-status": "500"}
        failed = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert (ok.status_code, failed.status_code) == (200, 500)
    (bill,) = await _bills(mock)
    assert (bill["request_id"], bill["streamed"], bill["cut"]) == ("a", False, False)
    assert bill["tokens"]["output_tokens"] == ok.json()["usage"]["completion_tokens"] == 12


async def test_a_client_that_leaves_mid_stream_is_billed_what_was_generated(
    mock: RunningMock,
) -> None:
    """The client reads 4 words and leaves; the mock notices at its next write, then bills the
    words it wrote and the 30 it generates before noticing - not the whole 500-word reply."""
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    headers = {
        "x-request-id": "leaver",
        "x-mock-output-tokens": "500",
        "x-mock-chunk-delay-ms": "20",
        "x-mock-generates-after-cut": "30",
    }
    async with (
        httpx.AsyncClient(base_url=mock.url) as client,
        client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response,
    ):
        words = 0
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                words += bool(delta.get("content"))
            if words == 4:
                break
    for _ in range(100):  # the mock notices at its next write, 20 ms later
        bills = await _bills(mock)
        if bills:
            break
        await asyncio.sleep(0.05)
    (bill,) = bills
    assert (bill["request_id"], bill["streamed"], bill["cut"]) == ("leaver", True, True)
    # Written before it noticed: the 4 words read, those in flight, then 30 after the cut.
    assert 4 + 30 <= bill["tokens"]["output_tokens"] < 500
