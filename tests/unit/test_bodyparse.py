"""Request bodies are capped, and large ones parsed off the event loop."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from gateway_extproc.apis import Api
from gateway_extproc.config.gateway import Limits
from gateway_extproc.errors import BadRequest, PayloadTooLarge
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.request import bodyparse

LIMITS = Limits()


def chat(content: str) -> bytes:
    return json.dumps(
        {"model": "gpt-4o", "messages": [{"role": "user", "content": content}]}
    ).encode()


def record_thread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    threads: list[str] = []
    real = bodyparse.parse_checked

    def spy(api: Api, raw: bytes, limits: Limits, path: str = "") -> ParsedRequest:
        threads.append(threading.current_thread().name)
        return real(api, raw, limits, path)

    monkeypatch.setattr(bodyparse, "parse_checked", spy)
    return threads


async def test_small_bodies_are_parsed_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = record_thread(monkeypatch)
    request = await bodyparse.parse_off_loop(Api.OPENAI_CHAT, chat("hi"), LIMITS)
    assert request.model == "gpt-4o"
    assert threads == [threading.current_thread().name]


async def test_large_bodies_are_parsed_in_the_parser_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = record_thread(monkeypatch)
    raw = chat("x" * bodyparse.OFFLOAD_BYTES)
    request = await bodyparse.parse_off_loop(Api.OPENAI_CHAT, raw, LIMITS)
    assert request.input_tokens_estimate > 0
    assert len(threads) == 1 and threads[0].startswith("body-parse")


@pytest.mark.parametrize("size", [100, 2 * bodyparse.OFFLOAD_BYTES])
async def test_caps_answer_in_both_paths(size: int) -> None:
    many = b'{"model": "gpt-4o", "input": [' + b",".join([b"1"] * size) + b"]}"
    with pytest.raises(PayloadTooLarge, match=r"limits\.max_json_values"):
        await bodyparse.parse_off_loop(
            Api.OPENAI_EMBEDDINGS, many, Limits(max_json_values=size // 2)
        )
    deep = b'{"model": "gpt-4o", "pad": "' + b" " * size + b'", "x": ' + b"[" * 9 + b"]" * 9 + b"}"
    with pytest.raises(BadRequest, match=r"limits\.max_json_depth"):
        await bodyparse.parse_off_loop(Api.OPENAI_CHAT, deep, Limits(max_json_depth=8))


@pytest.mark.parametrize("size", [100, 2 * bodyparse.OFFLOAD_BYTES])
async def test_a_repeated_key_is_refused_in_both_paths(size: int) -> None:
    """The provider may read the first `content` (a secret) where the gateway read the last."""
    raw = (
        b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "sk-secret", '
        b'"content": "' + b"x" * size + b'"}]}'
    )
    with pytest.raises(BadRequest, match="repeats the key `content`"):
        await bodyparse.parse_off_loop(Api.OPENAI_CHAT, raw, LIMITS)


async def test_the_event_loop_runs_while_a_large_body_is_parsed() -> None:
    """Ordering, not timing: a task on the loop keeps ticking while the parse is in progress
    (inline, the same parse would let it tick not once)."""
    # ~16 MB of text with escapes and commas: tens of milliseconds to check and parse.
    raw = chat('a, "b" [c] {d} \\ ' * 1_000_000)
    ticks = 0
    parsing = True

    async def ticker() -> None:
        nonlocal ticks
        while parsing:
            await asyncio.sleep(0)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    try:
        request = await bodyparse.parse_off_loop(Api.OPENAI_CHAT, raw, LIMITS)
    finally:
        parsing = False
        await task
    assert request.model == "gpt-4o"
    assert ticks - before >= 10
