"""Metering: what a provider response says it cost, streamed or not.

Pure: bytes in, `Usage` out - no I/O, no clock. The per-provider field rules live in
each provider's package (`openai/`, `anthropic/`); this module picks one by `Api` (registry.py)
and drives it.

`StreamMeter` runs for every chunk of every streamed response, so the per-chunk cost is one
incremental SSE decode (no re-scanning of earlier bytes) and one `orjson.loads` per event.
Nothing here raises on provider output: garbage is counted in `malformed_events` and ignored.
When usage is missing, the caller charges an upper bound from `output_bytes` (endings.py).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, cast

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.providers.base import JsonMeterResult, StreamHandler
from gateway_extproc.providers.registry import BY_API
from gateway_extproc.providers.sse import DEFAULT_MAX_LINE_BYTES, SSEDecoder, SSEError, SSEEvent
from gateway_extproc.tokens import Usage

__all__ = [
    "JsonMeterResult",
    "StreamMeter",
    "StreamMeterResult",
    "estimate_tokens",
    "meter_object",
    "usage_from_json",
]

CHARS_PER_TOKEN = 4


def estimate_tokens(chars: int) -> int:
    """Tokens for `chars` characters (or bytes) when nothing bounds them: ceil(chars / 4).

    The usual rule of thumb for English text with OpenAI and Anthropic tokenizers; code, CJK
    text and JSON run denser, so treat it as an estimate that may be low, and log it as one.
    """
    if chars <= 0:
        return 0
    return -(-chars // CHARS_PER_TOKEN)


_NOTHING = JsonMeterResult(usage=None, served_model=None, output_bytes=0)


def usage_from_json(api: Api, body: bytes) -> JsonMeterResult:
    """Meter a complete non-streamed response body of `api`. Never raises: a body that is not a
    JSON object (an HTML error page, a truncated body) yields no usage and no output."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOTHING
    if not isinstance(obj, dict):
        return _NOTHING
    return meter_object(api, obj)


def meter_object(api: Api, obj: dict[str, object]) -> JsonMeterResult:
    """Meter a parsed non-streamed response of `api` (or the members of one that are known)."""
    return BY_API[api].meter_json(api, obj)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamMeterResult:
    """What a streamed response said about its cost."""

    usage: Usage | None  # None: the stream reported none (omitted, cut short): estimate
    served_model: str | None  # the model the stream names, None if it names none
    output_bytes: int  # UTF-8 bytes generated: text, tool-call arguments, reasoning
    completed: bool  # the stream reached its protocol's end marker
    events: int  # SSE events decoded
    malformed_events: int  # events whose data was not a JSON object, plus over-long lines
    # For traces only, so not part of a result's value (equality).
    response_id: str | None = dataclasses.field(default=None, compare=False)  # the provider's id
    finish_reasons: tuple[str, ...] = dataclasses.field(default=(), compare=False)  # per choice
    service_tier: str | None = dataclasses.field(default=None, compare=False)  # reported (OpenAI)


def _handler(api: Api) -> StreamHandler:
    return BY_API[api].stream_handler(api)


class _Decoder(Protocol):
    def feed(self, data: bytes) -> list[SSEEvent]: ...

    def flush(self) -> list[SSEEvent]: ...


def _decoder(api: Api, max_line_bytes: int) -> _Decoder:
    """The stream's framing: SSE, unless the provider frames its streams otherwise (Bedrock's
    event-stream) and says so with a `stream_decoder(api)` (an optional `Provider` method)."""
    make = getattr(BY_API[api], "stream_decoder", None)
    return SSEDecoder(max_line_bytes) if make is None else cast(_Decoder, make(api))


class StreamMeter:
    """Meters one streamed (`text/event-stream`) response: `feed` every body chunk as it passes,
    then call `flush` once at end of stream (or when the stream is abandoned)."""

    __slots__ = ("_decoder", "_events", "_handler", "_malformed", "_result")

    def __init__(self, api: Api, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._decoder = _decoder(api, max_line_bytes)
        self._handler = _handler(api)
        self._events = 0
        self._malformed = 0
        self._result: StreamMeterResult | None = None

    def feed(self, chunk: bytes) -> None:
        try:
            events = self._decoder.feed(chunk)
        except SSEError as exc:  # an over-long line: that event is lost, the stream goes on
            self._malformed += 1
            events = exc.events
        self._consume(events)

    @property
    def usage_so_far(self) -> Usage | None:
        """The usage the stream reported until now (Anthropic's `message_start`), if any."""
        return self._handler.usage()

    @property
    def output_bytes_so_far(self) -> int:
        """UTF-8 bytes of generated output seen until now (for checkpoints of long streams)."""
        return self._handler.output_bytes

    def flush(self) -> StreamMeterResult:
        """Flush the decoder and return the result. Idempotent; feed nothing afterwards."""
        if self._result is None:
            self._consume(self._decoder.flush())
            self._malformed += getattr(self._decoder, "malformed", 0)  # framing (event-stream)
            handler = self._handler
            self._result = StreamMeterResult(
                usage=handler.usage(),
                served_model=handler.served_model,
                output_bytes=handler.output_bytes,
                completed=handler.completed,
                events=self._events,
                malformed_events=self._malformed,
                response_id=handler.response_id,
                finish_reasons=handler.finish_reasons(),
                service_tier=handler.service_tier,
            )
        return self._result

    def _consume(self, events: list[SSEEvent]) -> None:
        handler = self._handler
        for event in events:
            self._events += 1
            data = event.data
            if data == "[DONE]":
                handler.on_done()
                continue
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                self._malformed += 1
                continue
            if isinstance(obj, dict):
                handler.on_json(event.event, obj)
            else:
                self._malformed += 1
