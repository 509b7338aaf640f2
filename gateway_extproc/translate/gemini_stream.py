"""Gemini `streamGenerateContent?alt=sse` -> OpenAI `chat.completion.chunk` event stream. Pure.

`GeminiToChatStream` is fed the provider's bytes as they arrive, split anywhere, and returns the
client's bytes at once; `flush()` ends it. Every Gemini event is a whole
`GenerateContentResponse` (no event names, no end marker):

    the first event                   -> the role chunk (`delta: {role: assistant, content: ""}`)
    a text part (not a thought)       -> a content chunk
    a functionCall part               -> one tool-call chunk: index, id, type, name and the whole
                                         arguments (Gemini sends a call whole)
    finishReason, usageMetadata       -> remembered (the usage is a running total: latest wins)
    promptFeedback.blockReason        -> remembered as a content_filter finish
    {"error": {...}}                  -> `data: {"error": {...}}` (the openai SDK raises it), end
    the end of the stream (`flush`)   -> when a finish was seen: the finish chunk, the usage chunk
                                         (`choices: []`) if the client asked, `data: [DONE]`

A stream that ends without a finishReason was cut short: it ends without `[DONE]`, as OpenAI's
would.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.providers.sse import SSEDecoder, SSEError, SSEEvent
from gateway_extproc.translate.chat_common import DONE, chunk_base, sse_line
from gateway_extproc.translate.gemini_to_chat import (
    blocked,
    chat_id,
    chat_usage,
    error_payload,
    finish_reason,
    first_candidate,
    parts_of,
    text_of,
    tool_call,
)


class GeminiToChatStream:
    """One streamed response's translator: `feed(bytes) -> bytes`, then `flush() -> bytes`."""

    __slots__ = (
        "_base",
        "_calls",
        "_decoder",
        "_done",
        "_finish",
        "_include_usage",
        "_started",
        "_usage",
    )

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._base = chunk_base(created)
        self._calls = 0
        self._usage: object = None
        self._finish: object = None  # Gemini's finishReason, or "blocked"
        self._started = False
        self._done = False

    def feed(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except SSEError as exc:  # an over-long line: skip that event, keep the rest
            events = exc.events
        return self._translate(events)

    def flush(self) -> bytes:
        out = self._translate(self._decoder.flush())
        if self._done or self._finish is None:
            return out
        self._done = True
        reason = (
            "content_filter"
            if self._finish == "blocked"
            else finish_reason(self._finish, called=self._calls > 0)
        )
        out += self._chunk({}, reason)
        if self._include_usage:
            out += sse_line({**self._base, "choices": [], "usage": chat_usage(self._usage)})
        return out + DONE

    def _translate(self, events: list[SSEEvent]) -> bytes:
        out = bytearray()
        for event in events:
            try:
                obj = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict) and not self._done:
                out += self._on(obj)
        return bytes(out)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_line({**self._base, "choices": [choice]})

    def _on(self, obj: dict[str, Any]) -> bytes:
        if "error" in obj:
            self._done = True
            return sse_line(error_payload(obj, None))
        out = bytearray()
        if not self._started:
            self._started = True
            self._base["id"] = chat_id(obj.get("responseId"))
            model = obj.get("modelVersion")
            self._base["model"] = model if isinstance(model, str) else ""
            out += self._chunk({"role": "assistant", "content": ""})
        if "usageMetadata" in obj:
            self._usage = obj["usageMetadata"]
        candidate = first_candidate(obj)
        for part in parts_of(candidate):
            text = text_of(part)
            if text:
                out += self._chunk({"content": text})
            elif isinstance(part.get("functionCall"), dict):
                call = {"index": self._calls, **tool_call(part["functionCall"], self._calls)}
                self._calls += 1
                out += self._chunk({"tool_calls": [call]})
        if candidate is not None and candidate.get("finishReason") is not None:
            self._finish = candidate["finishReason"]
        elif candidate is None and blocked(obj):
            self._finish = "blocked"
        return bytes(out)
