"""The bench upstream's Anthropic Messages answers (`POST /v1/messages`): precomputed bytes in
the shapes of a recorded Anthropic stream (tests/fixtures/streams/anthropic_messages.sse):
`event:` + `data:` lines, `message_start` with the input usage, a text block of `CHUNKS`
`text_delta` events, `message_delta` with the cumulative `output_tokens`, `message_stop`.

What the gateway translates for an OpenAI client on a `claude-*` model (the bench's
`translated` setup, bench/streams_run.py). A paced stream's deltas carry the time they were
written in their text (`STAMP_MARK` + 20 digits of CLOCK_MONOTONIC ns): the text survives the
translation into the client's `"content":"…"`, so the stream timer measures each translated
chunk's latency the way it measures a native chunk's (whose stamp is in the chunk `id`, which
translation replaces).
"""

from __future__ import annotations

import json
from typing import Any

CHUNKS = 200  # both bench streams' length (bench.upstream's native one takes it from here)
MODEL = "claude-haiku-4-5-20251001"
PROMPT_TOKENS = 12
STAMP_DIGITS = 20
STAMP_MARK = "@"  # a text delta's text: "@" + 20 digits + " " + a word
# Where the stamp is in the upstream's event and in the client's translated chunk.
UPSTREAM_STAMP = b'"text":"' + STAMP_MARK.encode()
CLIENT_STAMP = b'"content":"' + STAMP_MARK.encode()
_WORDS = ("alpha", "beta", "gamma", "delta", "echo", "fox", "golf", "hotel")


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(doc: dict[str, Any]) -> bytes:
    data = json.dumps(doc, separators=(",", ":")).encode()
    return b"event: " + str(doc["type"]).encode() + b"\ndata: " + data + b"\n\n"


def _usage_start() -> dict[str, Any]:
    return {
        "input_tokens": PROMPT_TOKENS,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 1,
        "service_tier": "standard",
    }


_MESSAGE = {
    "id": "msg_bench",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [],
    "stop_reason": None,
    "stop_sequence": None,
}


def _text(i: int, stamped: bool) -> str:
    word = _WORDS[i % len(_WORDS)] + " "
    return STAMP_MARK + "0" * STAMP_DIGITS + " " + word if stamped else word


def _delta(i: int, stamped: bool) -> bytes:
    delta = {"type": "text_delta", "text": _text(i, stamped)}
    return _sse({"type": "content_block_delta", "index": 0, "delta": delta})


_TEXT_BLOCK = {"type": "text", "text": ""}
START = _chunked(
    _sse({"type": "message_start", "message": {**_MESSAGE, "usage": _usage_start()}})
    + _sse({"type": "content_block_start", "index": 0, "content_block": _TEXT_BLOCK})
    + _sse({"type": "ping"})
)
DELTAS = tuple(_chunked(_delta(i, stamped=False)) for i in range(CHUNKS))
PACED_DELTAS = tuple(_chunked(_delta(i, stamped=True)) for i in range(CHUNKS))
STAMP_AT = tuple(e.index(UPSTREAM_STAMP) + len(UPSTREAM_STAMP) for e in PACED_DELTAS)
END = (
    _chunked(
        _sse({"type": "content_block_stop", "index": 0})
        + _sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": CHUNKS},
            }
        )
        + _sse({"type": "message_stop"})
    )
    + b"0\r\n\r\n"
)

_MESSAGE_JSON = json.dumps(
    {
        **_MESSAGE,
        "content": [{"type": "text", "text": "alpha beta gamma delta"}],
        "stop_reason": "end_turn",
        "usage": {**_usage_start(), "output_tokens": CHUNKS},
    },
    separators=(",", ":"),
).encode()
JSON_RESPONSE = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_MESSAGE_JSON), _MESSAGE_JSON)
)


def stamped(i: int, ns: int) -> bytes:
    """Paced delta `i` with its write time `ns` in its text."""
    event, at = PACED_DELTAS[i], STAMP_AT[i]
    return event[:at] + b"%020d" % ns + event[at + STAMP_DIGITS :]


def stream_bytes(head: int, paced: bool) -> int:
    """Bytes of one whole stream on the wire, `head` the HTTP head's length."""
    return head + len(START) + sum(map(len, PACED_DELTAS if paced else DELTAS)) + len(END)
