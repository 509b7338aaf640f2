"""Bedrock's streamed answer: AWS event-stream binary framing, decoded by botocore's decoder
(`botocore.eventstream.EventStreamBuffer`, never by hand), into the events it carries. Pure.

Each `chunk` event's payload is `{"bytes": "<base64 of one Anthropic stream event's JSON>"}`; an
exception arrives as a frame with `:message-type: exception` and `:exception-type` (for example
`throttlingException`), its payload `{"message": ...}`. Both become `SSEEvent`s, the shape the
Anthropic stream handler and the SSE writer take: a chunk as the Anthropic event it carries
(`event` = its `type`), an exception as Anthropic's `error` event. Frames may be split at any
byte and several may come in one chunk; a frame that fails its CRC or its JSON is counted in
`malformed` and the stream stops being decoded (its framing can no longer be trusted).
"""

from __future__ import annotations

import base64
import binascii
import struct

import orjson
from botocore.eventstream import EventStreamBuffer, ParserError

from gateway_extproc.providers.sse import SSEEvent

__all__ = ["CONTENT_TYPE", "EventStreamDecoder", "anthropic_error_type"]

CONTENT_TYPE = "application/vnd.amazon.eventstream"

# Bedrock's exception names -> Anthropic's error types (what the anthropic SDK raises on).
_ERROR_TYPES = {
    "validationexception": "invalid_request_error",
    "accessdeniedexception": "permission_error",
    "unrecognizedclientexception": "authentication_error",
    "resourcenotfoundexception": "not_found_error",
    "throttlingexception": "rate_limit_error",
    "servicequotaexceededexception": "rate_limit_error",
    "modelstreamerrorexception": "api_error",
    "modeltimeoutexception": "api_error",
    "modelerrorexception": "api_error",
    "internalserverexception": "api_error",
    "serviceunavailableexception": "overloaded_error",
    "modelnotreadyexception": "overloaded_error",
}


def anthropic_error_type(exception_name: str) -> str:
    """Anthropic's error type for a Bedrock exception name (any case; `api_error` if unknown)."""
    return _ERROR_TYPES.get(exception_name.split(":", 1)[0].strip().lower(), "api_error")


def _error_event(exception_name: str, payload: bytes) -> SSEEvent:
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        obj = None
    message = obj.get("message") if isinstance(obj, dict) else None
    if not isinstance(message, str):
        message = exception_name or "error"
    body = {
        "type": "error",
        "error": {"type": anthropic_error_type(exception_name), "message": message},
    }
    return SSEEvent("error", orjson.dumps(body).decode())


class EventStreamDecoder:
    """Feed it the body of one `invoke-with-response-stream` answer, chunk by chunk, then
    `flush()`. Same contract as `SSEDecoder` (events out), so the meter can use either."""

    __slots__ = ("_buffer", "_pending", "broken", "malformed")

    def __init__(self) -> None:
        self._buffer = EventStreamBuffer()
        self._pending = 0  # bytes fed that no complete frame has consumed yet
        self.malformed = 0  # frames whose payload was not a chunk of JSON, or broken framing
        self.broken = False  # the framing failed its checks: nothing more is decoded

    def feed(self, data: bytes) -> list[SSEEvent]:
        if self.broken or not data:
            return []
        self._buffer.add_data(data)
        self._pending += len(data)
        out: list[SSEEvent] = []
        try:
            for message in self._buffer:
                self._pending -= message.prelude.total_length
                event = self._event(message.headers, message.payload)
                if event is None:
                    self.malformed += 1
                else:
                    out.append(event)
        except (ParserError, ValueError, KeyError, IndexError, struct.error):
            # a CRC, length or header check failed: the rest is not framing we trust
            self.broken = True
            self.malformed += 1
        return out

    def flush(self) -> list[SSEEvent]:
        """End of the body: an incomplete trailing frame is lost (counted as malformed)."""
        if not self.broken and self._pending:
            self.malformed += 1
            self.broken = True
        return []

    @staticmethod
    def _event(headers: dict[str, object], payload: bytes) -> SSEEvent | None:
        kind = headers.get(":message-type")
        if kind == "exception" or kind == "error":
            name = headers.get(":exception-type") or headers.get(":error-code") or ""
            return _error_event(str(name), payload)
        if headers.get(":event-type") != "chunk":
            return None
        try:
            obj = orjson.loads(payload)
            inner = base64.b64decode(obj["bytes"], validate=True) if isinstance(obj, dict) else b""
            event = orjson.loads(inner)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, binascii.Error):
            return None
        if not isinstance(event, dict):
            return None
        kind_name = event.get("type")
        return SSEEvent(kind_name if isinstance(kind_name, str) else None, inner.decode())


def to_sse(events: list[SSEEvent]) -> bytes:
    """Anthropic's SSE for decoded events: `event: X\\ndata: {...}\\n\\n` each."""
    return b"".join(
        b"event: %s\ndata: %s\n\n" % ((e.event or "message").encode(), e.data.encode())
        for e in events
    )


class ConverseEventDecoder(EventStreamDecoder):
    """ConverseStream's frames: each event's payload is its JSON object itself (no base64
    `bytes` envelope), named by `:event-type` (`messageStart`, `contentBlockDelta`,
    `messageStop`, `metadata`, ...); an exception frame becomes an `error` event."""

    __slots__ = ()

    @staticmethod
    def _event(headers: dict[str, object], payload: bytes) -> SSEEvent | None:
        kind = headers.get(":message-type")
        if kind == "exception" or kind == "error":
            name = headers.get(":exception-type") or headers.get(":error-code") or ""
            return _error_event(str(name), payload)
        name = headers.get(":event-type")
        if not isinstance(name, str) or not name:
            return None
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return None
        return SSEEvent(name, payload.decode()) if isinstance(obj, dict) else None
