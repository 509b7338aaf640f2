"""What the mock provider bills, as a provider does: for the input, and for every token it
generated - including what it generated after the client went away, before it noticed.

Pure. A builder attaches a `Bill` to its reply (the input by kind as the gateway normalises it,
the hidden reasoning, the visible words it would generate in all). The server then bills:

- a JSON reply: all of it (a non-streamed answer is generated whole before it is sent);
- a stream: the reasoning (generated before the first word), the words of every event it wrote
  or tried to write (`words_in`), and when a write failed - the client is gone - up to
  `x-mock-generates-after-cut` more words it generates before it notices; never more than the
  whole reply.

`GET /_mock/bills` lists the bills by the request's `x-request-id` (the gateway's request id).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import orjson

# Event types of a word: one per streamed delta, one word = one token (content.py).
_WORD_TYPES = frozenset({"response.output_text.delta", "content_block_delta"})


@dataclasses.dataclass(frozen=True, slots=True)
class Bill:
    """What a complete reply costs; input kinds as the gateway normalises them."""

    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0
    cache_write_1h_input_tokens: int = 0
    reasoning_tokens: int = 0
    words: int = 0

    def charged(self, words: int) -> dict[str, int]:
        """The bill for `words` of the visible words (at most all of them) and all reasoning."""
        output = self.reasoning_tokens + min(max(words, 0), self.words)
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_input_tokens": self.cache_write_input_tokens,
            "cache_write_1h_input_tokens": self.cache_write_1h_input_tokens,
            "output_tokens": output,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclasses.dataclass
class Progress:
    """How far a reply got on the wire (the server fills it in as it writes)."""

    attempted: int = 0  # writes of the reply's plan attempted (the last one may have failed)
    cut: bool = False  # a write failed: the client is gone


def billed(
    bill: Bill, writes: Sequence[bytes] | None, progress: Progress, after_cut: int
) -> dict[str, int]:
    """What a reply is billed: all of it, unless it is a stream that was cut short (`writes`:
    its raw writes, as planned) - then the words up to the write that failed (or the last one
    the mock chose to send), and `after_cut` more if a write failed."""
    if writes is None:
        return bill.charged(bill.words)
    words = words_in(b"".join(writes[: progress.attempted]))
    return bill.charged(words + (after_cut if progress.cut else 0))


def words_in(stream: bytes) -> int:
    """The words in the whole SSE events of `stream` (a trailing partial event is not one)."""
    words = 0
    for event in stream.split(b"\n\n")[:-1]:
        for line in event.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                words += _is_word(line[6:])
    return words


def _is_word(data: bytes) -> bool:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(obj, dict):
        return False
    if obj.get("type") in _WORD_TYPES:
        return True
    choices = obj.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        first: dict[str, Any] = choices[0]
        delta = first.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else first.get("text")
        return isinstance(text, str) and bool(text)
    return False
