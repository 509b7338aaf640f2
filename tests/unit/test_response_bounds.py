"""The response side within memory and time bounds, through the observer: a JSON body far over
`metering.max_json_body_bytes` and a gzip bomb leave the worker's memory flat (tracemalloc) and
are charged as documented; a large body is parsed off the event loop in both metering modes."""

from __future__ import annotations

import asyncio
import json
import threading
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_extproc.config.gateway import GatewayConfig, load_document, merge, parse_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.response import json_body as metering_bounded
from gateway_extproc.response.stream_observer import StreamObserver
from tests.unit.test_observer import handed_over, observed
from tests.unit.test_processor import (
    CHAT,
    CHAT_INPUT_BOUND,
    CHAT_PATH,
    Gateway,
    _gateway,
    forward,
    gpt_test_cost,
    handle,
    req_headers,
    resp_body,
    resp_headers,
    set_headers,
)

CAP = 256 * 1024
CHUNK = 64 * 1024
USAGE = {"prompt_tokens": 4000, "completion_tokens": 9000, "total_tokens": 13000}
COST = 4000 * 2.5 + 9000 * 10  # micro-dollars at the test catalog's gpt-test prices


def config_for(mode: str) -> GatewayConfig:
    doc = {
        "identity": {"allow_anonymous": True},
        "metering": {"mode": mode, "max_json_body_bytes": CAP},
    }
    return parse_config(merge(load_document(None), doc), {})


@pytest.fixture
def observe(tmp_path: Path) -> Iterator[Gateway]:
    yield from _gateway(tmp_path, config_for("observe"), {})


@pytest.fixture
def synchronous(tmp_path: Path) -> Iterator[Gateway]:
    yield from _gateway(tmp_path, config_for("synchronous"), {})


def big_answer(megabytes: int) -> Iterator[bytes]:
    """A chat completion of `megabytes` MB in wire order, chunk by chunk: never whole in memory
    (tracemalloc would count the test's own copy)."""
    yield b'{"id":"chatcmpl-big","object":"chat.completion","model":"gpt-test","choices":['
    yield b'{"index":0,"message":{"role":"assistant","content":"'
    text = b"All work and no play. " * (CHUNK // 22)
    for _ in range(megabytes * 16):
        yield text
    yield b'"},"finish_reason":"stop"}],"usage":' + json.dumps(USAGE).encode() + b"}"


def gzip_bomb(decoded_mib: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = c.compress(b'{"id":"chatcmpl-bomb","model":"gpt-test",')
    spaces = b" " * (1 << 20)
    body = b"".join(c.compress(spaces) for _ in range(decoded_mib))
    return head + body + c.compress(b'"usage":' + json.dumps(USAGE).encode() + b"}") + c.flush()


def peak_while(fn: Any) -> int:
    """Bytes allocated at the peak while `fn()` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - before


def test_a_body_far_over_the_cap_keeps_memory_flat_and_is_charged_exactly(
    observe: Gateway,
) -> None:
    metadata = handed_over(observe, CHAT)
    observer = StreamObserver(observe.ctx)
    observer.handle(observed(req_headers(CHAT_PATH), metadata))
    observer.handle(observed(resp_headers(), metadata))

    def feed() -> None:
        for part in big_answer(40):  # 40 MB, ~160 times the cap
            assert observer.handle(observed(resp_body(part), metadata)) is False
        assert observer.handle(observed(resp_body(b"", end=True), metadata)) is True

    # The body kept up to the cap, copied once when it is cut to its ends, and the messages in
    # flight: flat, whatever the body's size (the 40 MB before).
    assert peak_while(feed) < 2 * CAP + 4 * CHUNK
    record = observe.record()
    assert record["usage_source"] == "provider"
    assert (record["tokens"]["input_tokens"], record["tokens"]["output_tokens"]) == (4000, 9000)
    assert record["cost_micros"] == COST
    assert record["provider_model"] == "gpt-test"
    assert record["limits_reached"] == ["response_body_cap"]


@pytest.mark.parametrize("max_tokens", [None, 50])
def test_a_gzip_bomb_stops_at_the_ratio_and_is_charged_its_whole_bound(
    observe: Gateway, max_tokens: int | None
) -> None:
    """Its output cannot be counted: the input bound and the whole output limit (the request's,
    else gpt-test's 1,000)."""
    wire = gzip_bomb(256)  # 256 MiB from ~260 KB
    body = {**CHAT, "max_tokens": max_tokens} if max_tokens else CHAT
    metadata = handed_over(observe, body)
    observer = StreamObserver(observe.ctx)
    observer.handle(observed(req_headers(CHAT_PATH), metadata))
    observer.handle(observed(resp_headers(extra={"content-encoding": "gzip"}), metadata))
    parts = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]

    def feed() -> None:
        for part in parts:
            observer.handle(observed(resp_body(part), metadata))
        observer.handle(observed(resp_body(b"", end=True), metadata))

    assert peak_while(feed) < CAP + 4 * (1 << 20)  # the cap, and a 1 MiB inflate slice or two
    record = observe.record()
    assert record["usage_source"] == "bound"
    assert record["limits_reached"] == ["response_inflate_ratio", "response_body_cap"]
    output = 1_000 if max_tokens is None else max_tokens
    input_bound = CHAT_INPUT_BOUND + (len("max_tokens50") if max_tokens else 0)
    assert record["tokens"]["input_tokens"] == input_bound
    assert record["tokens"]["output_tokens"] == output
    assert record["cost_micros"] == gpt_test_cost(input_bound, output)


def test_synchronous_mode_parses_a_large_body_off_the_loop_and_sends_its_cost(
    synchronous: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []
    real = metering_bounded.usage_from_json

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(metering_bounded, "usage_from_json", spy)
    p = synchronous.processor()
    forward(p, CHAT_PATH, CHAT)
    handle(p, resp_headers())
    answer = json.dumps(
        {
            "id": "c",
            "model": "gpt-test",
            "choices": [{"message": {"content": "x" * 200_000}}],
            "usage": USAGE,
        }
    ).encode()
    handle(p, resp_body(answer[:100_000]))
    reply = handle(p, resp_body(answer[100_000:], end=True))
    assert set_headers(reply.response_body.response.header_mutation)["x-gateway-cost-usd"] == (
        f"{COST / 1e6:.6f}"
    )
    assert threads == ["body-parse_0"]  # the body-parsing thread, not the event loop's
    assert synchronous.record()["usage_source"] == "provider"


def test_observe_mode_ends_a_large_body_from_the_parsing_thread(observe: Gateway) -> None:
    """With a running loop the stream may close at once; the request ends when the parse is
    done, and the context waits for it before closing."""
    metadata = handed_over(observe, CHAT)
    answer = json.dumps(
        {"model": "gpt-test", "choices": [{"message": {"content": "y" * 100_000}}], "usage": USAGE}
    ).encode()

    async def run() -> None:
        observer = StreamObserver(observe.ctx)
        observer.handle(observed(req_headers(CHAT_PATH), metadata))
        observer.handle(observed(resp_headers(), metadata))
        assert observer.handle(observed(resp_body(answer, end=True), metadata)) is True
        observer.close()  # the stream ends before the parse: nothing is written twice
        assert len(observe.ctx.pending_ends) == 1
        await observe.ctx.pending_ends.drain()
        assert len(observe.ctx.pending_ends) == 0

    asyncio.run(run())
    record = observe.record()  # exactly one
    assert (record["usage_source"], record["cost_micros"]) == ("provider", COST)
    assert record["limits_reached"] == []


def test_a_small_body_is_ended_at_once(observe: Gateway) -> None:
    metadata = handed_over(observe, CHAT)
    answer = json.dumps({"model": "gpt-test", "usage": USAGE}).encode()

    async def run() -> None:
        observer = StreamObserver(observe.ctx)
        observer.handle(observed(resp_headers(), metadata))
        assert observer.handle(observed(resp_body(answer, end=True), metadata)) is True
        assert len(observe.ctx.pending_ends) == 0

    asyncio.run(run())
    assert observe.record()["cost_micros"] == COST


def test_the_cap_is_configured_and_checked() -> None:
    assert config_for("observe").metering.max_json_body_bytes == CAP
    doc = merge(load_document(None), {"metering": {"max_json_body_bytes": 1000}})
    with pytest.raises(ConfigError, match=r"metering\.max_json_body_bytes"):
        parse_config(doc, {})


def test_synchronous_mode_stops_a_bomb_too_and_still_sends_the_cost(synchronous: Gateway) -> None:
    wire = gzip_bomb(64)
    p = synchronous.processor()
    forward(p, CHAT_PATH, {**CHAT, "max_tokens": 50})
    handle(p, resp_headers(extra={"content-encoding": "gzip"}))
    parts = [wire[i : i + 16384] for i in range(0, len(wire), 16384)]

    def feed() -> Any:
        for part in parts:
            handle(p, resp_body(part))
        return handle(p, resp_body(b"", end=True))

    replies: list[Any] = []
    assert peak_while(lambda: replies.append(feed())) < CAP + 4 * (1 << 20)
    cost = gpt_test_cost(CHAT_INPUT_BOUND + len("max_tokens50"), 50)  # the whole bound
    headers = set_headers(replies[0].response_body.response.header_mutation)
    assert headers["x-gateway-cost-usd"] == f"{cost / 1e6:.6f}"
    record = synchronous.record()
    assert record["usage_source"] == "bound" and record["cost_micros"] == cost
    assert record["limits_reached"][0] == "response_inflate_ratio"
