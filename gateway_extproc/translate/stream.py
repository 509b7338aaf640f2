"""Anthropic Messages event stream -> OpenAI `chat.completion.chunk` event stream. Pure.

`MessagesToChatStream` is fed the provider's bytes as they arrive, split anywhere (inside an
event, a line, a UTF-8 character), and returns the client's bytes for them at once; `flush()`
ends it. Events map as:

    message_start                     -> the role chunk (`delta: {role: assistant, content: ""}`)
    content_block_start text          -> nothing (its deltas follow)
    content_block_start tool_use      -> a tool-call chunk: index, id, type, name, arguments ""
    content_block_delta text_delta    -> a content chunk
    content_block_delta input_json_delta -> a tool-call chunk with that part of the arguments
    message_delta                     -> remembered: stop_reason, the cumulative usage
    message_stop                      -> the finish chunk, the usage chunk (`choices: []`) when
                                         the client asked for it, `data: [DONE]`
    error                             -> `data: {"error": {...}}` (the openai SDK raises it)
    ping, thinking, anything else     -> nothing

A stream cut before `message_stop` ends without `[DONE]`, as OpenAI's would.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.providers.sse import SSEDecoder, SSEError, SSEEvent
from gateway_extproc.translate.chat_common import DONE, chunk_base, sse_line
from gateway_extproc.translate.messages_to_chat import (
    chat_id,
    chat_usage,
    error_payload,
    finish_reason,
)


def _index(obj: dict[str, Any]) -> int:
    index = obj.get("index")
    return index if type(index) is int else -1


class MessagesToChatStream:
    """One streamed response's translator: `feed(bytes) -> bytes`, then `flush() -> bytes`."""

    __slots__ = (
        "_base",
        "_decoder",
        "_done",
        "_include_usage",
        "_stop_reason",
        "_tools",
        "_usage",
    )

    def __init__(self, *, created: int, include_usage: bool) -> None:
        self._decoder = SSEDecoder()
        self._include_usage = include_usage
        self._base = chunk_base(created)
        self._tools: dict[int, int] = {}  # content block index -> tool call index
        self._usage: dict[str, Any] = {}
        self._stop_reason: object = None
        self._done = False

    def feed(self, data: bytes) -> bytes:
        try:
            events = self._decoder.feed(data)
        except SSEError as exc:  # an over-long line: skip that event, keep the rest
            events = exc.events
        return self._translate(events)

    def flush(self) -> bytes:
        return self._translate(self._decoder.flush())

    def _translate(self, events: list[SSEEvent]) -> bytes:
        if not events:
            return b""
        out = bytearray()
        for event in events:
            try:
                obj = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                out += self._on(event.event or obj.get("type"), obj)
        return bytes(out)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return sse_line({**self._base, "choices": [choice]})

    def _on(self, kind: object, obj: dict[str, Any]) -> bytes:
        if self._done:
            return b""
        if kind == "content_block_delta":
            return self._delta(obj)
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._base["id"] = chat_id(message.get("id"))
                model = message.get("model")
                self._base["model"] = model if isinstance(model, str) else ""
                self._note_usage(message.get("usage"))
            return self._chunk({"role": "assistant", "content": ""})
        if kind == "content_block_start":
            block = obj.get("content_block")
            if not isinstance(block, dict) or block.get("type") != "tool_use":
                return b""
            index = len(self._tools)
            self._tools[_index(obj)] = index
            name, call_id = block.get("name"), block.get("id")
            call = {
                "index": index,
                "id": call_id if isinstance(call_id, str) else "",
                "type": "function",
                "function": {"name": name if isinstance(name, str) else "", "arguments": ""},
            }
            return self._chunk({"tool_calls": [call]})
        if kind == "message_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict) and "stop_reason" in delta:
                self._stop_reason = delta["stop_reason"]
            self._note_usage(obj.get("usage"))
            return b""
        if kind == "message_stop":
            self._done = True
            out = self._chunk({}, finish_reason(self._stop_reason) or "stop")
            if self._include_usage:
                out += sse_line({**self._base, "choices": [], "usage": chat_usage(self._usage)})
            return out + DONE
        if kind == "error":
            self._done = True
            return sse_line(error_payload(obj, None))
        return b""

    def _delta(self, obj: dict[str, Any]) -> bytes:
        delta = obj.get("delta")
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return self._chunk({"content": text}) if isinstance(text, str) and text else b""
        if kind == "input_json_delta":
            part = delta.get("partial_json")
            index = self._tools.get(_index(obj))
            if index is None or not isinstance(part, str) or not part:
                return b""
            call = {"index": index, "function": {"arguments": part}}
            return self._chunk({"tool_calls": [call]})
        return b""

    def _note_usage(self, usage: object) -> None:
        """Anthropic usage is cumulative: the latest value of each field wins."""
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if type(v) is int})
