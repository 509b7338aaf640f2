"""Anthropic Messages usage.

Normalisation (see `tokens.Usage`): Anthropic's `input_tokens` *excludes* cache reads and cache
writes, which it reports beside it, so the fields map one to one. Cache writes are priced by their
lifetime: `cache_creation_input_tokens` is the sum of `cache_creation.ephemeral_5m_input_tokens`
and `cache_creation.ephemeral_1h_input_tokens`; the 1-hour part becomes
`cache_write_1h_input_tokens` and the rest `cache_write_input_tokens` (without the breakdown, all
of it is 5-minute: the default TTL). Thinking tokens are part of `output_tokens` and not reported
separately: `reasoning_tokens` stays 0.

In a stream, usage is cumulative, never a delta: `message_start` carries `message.usage`, each
`message_delta` carries `usage` with the running `output_tokens` and possibly updated input
fields. Values are never summed. A cumulative count never goes down, so for every field the
latest value is also the largest: the largest wins, which is the same for Anthropic's own streams
and also ignores the `input_tokens: 0` placeholders some Anthropic-compatible servers put in
`message_delta` (the bug behind envoyproxy/ai-gateway#1631).
"""

from __future__ import annotations

import contextlib

import orjson

from gateway_extproc.metering_common import (
    JsonMeterResult,
    count,
    nonempty_str,
    text_len,
    usage_or_none,
)
from gateway_extproc.tokens import Usage

__all__ = ["AnthropicStream", "meter_anthropic_json", "usage_from_anthropic"]

_FIELDS = (
    "input_tokens",
    "cache_read_input_tokens",
    "cache_creation_input_tokens",
    "output_tokens",
)
_WRITE_5M, _WRITE_1H = "ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"


def _valid_fields(obj: object) -> dict[str, int]:
    """The valid counts of a `usage` object, the `cache_creation` breakdown flattened in."""
    fields: dict[str, int] = {}
    breakdown = obj.get("cache_creation") if isinstance(obj, dict) else None
    for source, names in ((obj, _FIELDS), (breakdown, (_WRITE_5M, _WRITE_1H))):
        for name in names:
            value = count(source, name)
            if value is not None:
                fields[name] = value
    return fields


def _usage(fields: dict[str, int]) -> Usage | None:
    writes = fields.get("cache_creation_input_tokens")
    if writes is None:  # only the breakdown was reported
        writes = fields.get(_WRITE_5M, 0) + fields.get(_WRITE_1H, 0)
    writes_1h = min(fields.get(_WRITE_1H, 0), writes)  # a part never exceeds its total
    return usage_or_none(
        bool(fields),
        input_tokens=fields.get("input_tokens", 0),
        cached_input_tokens=fields.get("cache_read_input_tokens", 0),
        cache_write_input_tokens=writes - writes_1h,
        cache_write_1h_input_tokens=writes_1h,
        output_tokens=fields.get("output_tokens", 0),
    )


def usage_from_anthropic(obj: object) -> Usage | None:
    """Usage from an Anthropic `usage` object. None when it holds no valid count."""
    return _usage(_valid_fields(obj))


def _block_chars(block: object) -> int:
    """Generated characters in a content block: text, thinking, tool input (as JSON)."""
    if not isinstance(block, dict):
        return 0
    n = text_len(block.get("text")) + text_len(block.get("thinking"))
    tool_input = block.get("input")
    if isinstance(tool_input, dict | list):
        # Nested deeper than orjson writes (254 levels): not worth a crash, count nothing.
        with contextlib.suppress(orjson.JSONEncodeError):
            n += len(orjson.dumps(tool_input))
    return n


def meter_anthropic_json(obj: dict[str, object]) -> JsonMeterResult:
    """A non-streamed Messages response."""
    content = obj.get("content")
    chars = sum(_block_chars(block) for block in content) if isinstance(content, list) else 0
    stop = nonempty_str(obj.get("stop_reason"))
    return JsonMeterResult(
        usage=usage_from_anthropic(obj.get("usage")),
        served_model=nonempty_str(obj.get("model")),
        output_chars=chars,
        response_id=nonempty_str(obj.get("id")),
        finish_reasons=(stop[:64],) if stop else (),
    )


class AnthropicStream:
    """Messages streams: `message_start`, `content_block_*`, `message_delta`, `message_stop`.

    Completed on `message_stop`, unless an `error` event came first (an overloaded or failed
    stream ends with `event: error`, or may be cut short).
    """

    __slots__ = (
        "_counts",
        "_errored",
        "_stop",
        "completed",
        "output_chars",
        "response_id",
        "served_model",
        "service_tier",
    )

    def __init__(self) -> None:
        self.served_model: str | None = None
        self.response_id: str | None = None
        # Not read: Anthropic's tiers bill the same per-token price (pricing.STANDARD_SERVICE_TIERS)
        self.service_tier: str | None = None
        self.output_chars = 0
        self.completed = False
        self._errored = False
        self._counts: dict[str, int] = {}
        self._stop: str | None = None

    def finish_reasons(self) -> tuple[str, ...]:
        return (self._stop[:64],) if self._stop else ()

    def on_json(self, event: str | None, obj: dict[str, object]) -> None:
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = event
        if kind == "content_block_delta":
            delta = obj.get("delta")
            if isinstance(delta, dict):  # text_delta, input_json_delta, thinking_delta
                self.output_chars += (
                    text_len(delta.get("text"))
                    + text_len(delta.get("partial_json"))
                    + text_len(delta.get("thinking"))
                )
        elif kind == "message_delta":
            self._merge(obj.get("usage"))
            delta = obj.get("delta")
            if isinstance(delta, dict):
                self._stop = nonempty_str(delta.get("stop_reason")) or self._stop
        elif kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                if self.served_model is None:
                    self.served_model = nonempty_str(message.get("model"))
                if self.response_id is None:
                    self.response_id = nonempty_str(message.get("id"))
                self._merge(message.get("usage"))
        elif kind == "message_stop":
            self.completed = not self._errored
        elif kind == "error":
            self._errored = True
            self.completed = False

    def on_done(self) -> None:
        pass  # not part of this protocol

    def usage(self) -> Usage | None:
        return _usage(self._counts)

    def _merge(self, usage: object) -> None:
        counts = self._counts
        for name, value in _valid_fields(usage).items():
            if value >= counts.get(name, 0):
                counts[name] = value
