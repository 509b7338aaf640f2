"""The bench's upstream: an instant OpenAI chat endpoint (and an Anthropic Messages one, for
translated streams) on raw asyncio (no framework).

`python -m bench.upstream --port-file F` listens on 127.0.0.1:<free port> and answers
`POST /v1/chat/completions` from precomputed bytes: a JSON chat completion with `usage`, or,
when the body says `"stream": true`, an SSE stream of `CHUNKS` chat chunk events (one write
each, chunked transfer encoding), the usage chunk when `include_usage` is set, and
`data: [DONE]`. `POST /v1/messages` answers the same in Anthropic's format
(bench/upstream_messages.py). HTTP/1.1 keep-alive, request bodies by content-length only
(what Envoy sends).

Paced streams: with a request header `x-bench-chunk-gap-ms: G` the events are written G ms
apart (the event loop's timer, ~1 ms resolution) and each event's `id` carries the time it was
written (`chatcmpl-` + 20 digits of CLOCK_MONOTONIC ns), so a client on this machine can
measure every chunk's latency through the proxy (an Anthropic stream's deltas carry it in their
text, which survives translation). An instant stream reaches Envoy as one or two
socket reads (one ext_proc body message); a paced one as one message per event, like a model's.

Failing on demand: with a request header `x-bench-fail-model: M` a request whose body asks for
model `M` is answered `500` (an OpenAI error body, FAIL_RESPONSE), so a fallback chain's first
target fails and Envoy retries the next one, whose rewritten body names another model.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any, cast

from bench import upstream_messages as messages
from bench.service import run_service

CHUNKS = messages.CHUNKS
MODEL = "gpt-4o-mini-2024-07-18"
PROMPT_TOKENS = 12
_WORDS = ("alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel")
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_GAP = re.compile(rb"\r\nx-bench-chunk-gap-ms:[ \t]*([0-9.]+)", re.IGNORECASE)
FAIL_HEADER = "x-bench-fail-model"
_FAIL = re.compile(rb"\r\nx-bench-fail-model:[ \t]*([^\r]+)", re.IGNORECASE)
_MODEL = re.compile(rb'"model"[ \t]*:[ \t]*"([^"]*)"')
STAMP_PREFIX = b'"id":"chatcmpl-'
STAMP_DIGITS = 20
_MAX_HEAD = 64 * 1024


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _event(doc: dict[str, Any]) -> bytes:
    return _chunked(b"data: " + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n")


def _chunk_doc(i: int, chunk_id: str = "chatcmpl-bench") -> dict[str, Any]:
    delta: dict[str, Any] = {"content": _WORDS[i % len(_WORDS)] + " "}
    if i == 0:
        delta["role"] = "assistant"
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "delta": delta,
                "logprobs": None,
                "finish_reason": "stop" if i == CHUNKS - 1 else None,
            }
        ],
    }


_USAGE = {
    "prompt_tokens": PROMPT_TOKENS,
    "completion_tokens": CHUNKS,
    "total_tokens": PROMPT_TOKENS + CHUNKS,
    "prompt_tokens_details": {"cached_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}
_COMPLETION = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": MODEL,
        "system_fingerprint": "fp_bench",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "alpha beta gamma delta"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _USAGE,
    },
    separators=(",", ":"),
).encode()

JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_COMPLETION), _COMPLETION)
)
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
SSE_EVENTS = tuple(_event(_chunk_doc(i)) for i in range(CHUNKS))
SSE_USAGE = _event(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": _USAGE,
    }
)
PACED_EVENTS = tuple(_event(_chunk_doc(i, "chatcmpl-" + "0" * STAMP_DIGITS)) for i in range(CHUNKS))
_STAMP_AT = tuple(e.index(STAMP_PREFIX) + len(STAMP_PREFIX) for e in PACED_EVENTS)
SSE_END = _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"


def response_bytes(
    stream: bool, paced: bool = False, usage: bool = True, anthropic: bool = False
) -> int:
    """Bytes of one whole response on the wire: upstream bytes / this = responses' worth.
    `anthropic`: the `/v1/messages` answer (a translated request's upstream response)."""
    if anthropic:
        if not stream:
            return len(messages.JSON_RESPONSE)
        return messages.stream_bytes(len(SSE_HEAD), paced)
    if not stream:
        return len(JSON_RESPONSE)
    events = PACED_EVENTS if paced else SSE_EVENTS
    return len(SSE_HEAD) + sum(map(len, events)) + (len(SSE_USAGE) if usage else 0) + len(SSE_END)


_ERROR = (
    b'{"error":{"message":"bench upstream: failing on x-bench-fail-model",'
    b'"type":"server_error","param":null,"code":null}}'
)
FAIL_RESPONSE = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_ERROR), _ERROR)
)


def fails(head: bytes, body: bytes) -> bool:
    """Whether the request asks to fail (`x-bench-fail-model`) and names that model."""
    fail = _FAIL.search(head)
    if fail is None:
        return False
    model = _MODEL.search(body)
    return model is not None and model.group(1) == fail.group(1).strip()


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
LENGTH_REQUIRED = b"HTTP/1.1 411 Length Required\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class Http(asyncio.Protocol):
    """One connection: parse requests as bytes arrive, answer each from the precomputed bytes."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > _MAX_HEAD:
                    self.transport.close()
                return
            head = bytes(self.buffer[: end + 2])
            match = _CONTENT_LENGTH.search(head)
            if match is None and b"chunked" in head.lower():
                self.transport.write(LENGTH_REQUIRED)
                self.transport.close()
                return
            length = int(match.group(1)) if match else 0
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body = bytes(self.buffer[end + 4 : total])
            del self.buffer[:total]
            self.respond(head, body)

    def respond(self, head: bytes, body: bytes) -> None:
        transport = self.transport
        assert transport is not None
        anthropic = head.startswith(b"POST /v1/messages ")
        if not anthropic and not head.startswith(b"POST /v1/chat/completions "):
            transport.write(NOT_FOUND)
            return
        if fails(head, body):
            transport.write(FAIL_RESPONSE)
            return
        if b'"stream": true' not in body and b'"stream":true' not in body:
            transport.write(messages.JSON_RESPONSE if anthropic else JSON_RESPONSE)
            return
        gap = _GAP.search(head)
        if anthropic:
            self.messages(None if gap is None else float(gap.group(1)) / 1000)
            return
        usage = b"include_usage" in body  # the gateway and the bench both send `true` with it
        if gap is not None:
            self.paced(float(gap.group(1)) / 1000, usage)
            return
        write = transport.write
        write(SSE_HEAD)
        for event in SSE_EVENTS:
            write(event)
        if usage:
            write(SSE_USAGE)
        write(SSE_END)

    def paced(self, gap_s: float, usage: bool) -> None:
        transport = self.transport
        assert transport is not None
        loop = asyncio.get_running_loop()
        transport.write(SSE_HEAD)

        def send(i: int) -> None:
            if transport.is_closing():
                return
            event, at = PACED_EVENTS[i], _STAMP_AT[i]
            stamp = b"%020d" % time.monotonic_ns()
            transport.write(event[:at] + stamp + event[at + STAMP_DIGITS :])
            if i + 1 < CHUNKS:
                loop.call_later(gap_s, send, i + 1)
                return
            if usage:
                transport.write(SSE_USAGE)
            transport.write(SSE_END)

        send(0)

    def messages(self, gap_s: float | None) -> None:
        """An Anthropic stream: at once, or its deltas `gap_s` apart, each stamped."""
        transport = self.transport
        assert transport is not None
        transport.write(SSE_HEAD)
        transport.write(messages.START)
        if gap_s is None:
            for event in messages.DELTAS:
                transport.write(event)
            transport.write(messages.END)
            return
        loop = asyncio.get_running_loop()

        def send(i: int) -> None:
            if transport.is_closing():
                return
            transport.write(messages.stamped(i, time.monotonic_ns()))
            if i + 1 < CHUNKS:
                loop.call_later(gap_s, send, i + 1)
                return
            transport.write(messages.END)

        send(0)


async def serve(port_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Http, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(port))
        tmp.replace(port_file)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> None:
    run_service("bench.upstream", __doc__, serve, argv)


if __name__ == "__main__":
    main()
