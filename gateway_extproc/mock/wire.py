"""Wire-level helpers: reply values, SSE framing, splitting a body into writes, gzip.

Pure (the gzip encoder holds only its own zlib state). The aiohttp layer turns a `Reply` into
bytes on the socket by calling `plan_writes` and a `BodyEncoder`.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import orjson

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.controls import Controls

JSON_CONTENT_TYPE = "application/json"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
DONE_EVENT = b"data: [DONE]\n\n"


@dataclasses.dataclass(frozen=True, slots=True)
class ReplyContext:
    """Per-request values the I/O layer picks and the pure builders use."""

    controls: Controls
    suffix: str  # random hex, for response/message ids
    created: int  # unix seconds


@dataclasses.dataclass(frozen=True, slots=True)
class JsonReply:
    """A complete (non-streamed) body, sent with Content-Length."""

    body: bytes
    status: int = 200
    content_type: str = JSON_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    bill: Bill | None = None  # what the provider bills for it (billing.py)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamReply:
    """A streamed body: each element is one whole SSE event (the unit of events-per-write)."""

    events: tuple[bytes, ...]
    status: int = 200
    content_type: str = SSE_CONTENT_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    bill: Bill | None = None  # what the provider bills for all of it (billing.py)


Reply = JsonReply | StreamReply


def json_reply(payload: Any, status: int = 200, bill: Bill | None = None) -> JsonReply:
    return JsonReply(orjson.dumps(payload), status=status, bill=bill)


def sse(data: Any, event: str | None = None) -> bytes:
    """One SSE event: optional `event:` line, compact JSON `data:` line, blank line."""
    line = b"data: " + orjson.dumps(data) + b"\n\n"
    return line if event is None else b"event: " + event.encode() + b"\n" + line


def split_sse_events(body: bytes) -> tuple[bytes, ...]:
    """Split an SSE byte stream after each blank line; joining the parts gives `body` back."""
    parts = body.split(b"\n\n")
    events = [part + b"\n\n" for part in parts[:-1]]
    if parts[-1]:
        events.append(parts[-1])
    return tuple(events)


@dataclasses.dataclass(frozen=True, slots=True)
class WritePlan:
    writes: tuple[bytes, ...]
    abort: bool  # close the connection abruptly after the last write


def plan_writes(
    events: Sequence[bytes],
    *,
    chunk_bytes: int | None = None,
    events_per_write: int = 1,
    abort_after_events: int | None = None,
    cut_after_bytes: int | None = None,
) -> WritePlan:
    """How to put `events` on the wire.

    - `abort_after_events=N`: only the first N events are sent, then the connection is cut
      (even when there are N or fewer events: the body is never terminated properly);
    - `chunk_bytes=N`: the (kept) byte stream is cut into N-byte writes, ignoring event borders;
    - otherwise `events_per_write` whole events go in each write;
    - `cut_after_bytes=N`: only the first N bytes of the (kept) byte stream are sent, in one
      write or `chunk_bytes` pieces, then the connection is cut.
    """
    abort = abort_after_events is not None
    kept = list(events if abort_after_events is None else events[:abort_after_events])
    if cut_after_bytes is not None:
        stream = b"".join(kept)[:cut_after_bytes]
        size = chunk_bytes or max(len(stream), 1)
        return WritePlan(tuple(stream[i : i + size] for i in range(0, len(stream), size)), True)
    if chunk_bytes is not None:
        stream = b"".join(kept)
        writes = [stream[i : i + chunk_bytes] for i in range(0, len(stream), chunk_bytes)]
    else:
        per = max(1, events_per_write)
        writes = [b"".join(kept[i : i + per]) for i in range(0, len(kept), per)]
    return WritePlan(tuple(w for w in writes if w), abort)


def plan_for(events: Sequence[bytes], controls: Controls) -> WritePlan:
    return plan_writes(
        events,
        chunk_bytes=controls.chunk_bytes,
        events_per_write=controls.events_per_write,
        abort_after_events=controls.abort_after_events,
        cut_after_bytes=controls.cut_after_bytes,
    )


def accepts_gzip(accept_encoding: str | None) -> bool:
    """True when the client listed gzip (or `*`) with a non-zero q-value."""
    if not accept_encoding:
        return False
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            return True
    return False


class BodyEncoder(Protocol):
    content_encoding: str | None

    def encode(self, data: bytes) -> bytes: ...

    def flush(self) -> bytes: ...


class IdentityEncoder:
    content_encoding: str | None = None

    def encode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class GzipEncoder:
    """Incremental gzip: every `encode` ends with a sync flush so the client can decode it now."""

    content_encoding: str | None = "gzip"

    def __init__(self) -> None:
        self._zlib = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)

    def encode(self, data: bytes) -> bytes:
        return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)

    def flush(self) -> bytes:
        return self._zlib.flush(zlib.Z_FINISH)


def gzip_whole(data: bytes) -> bytes:
    encoder = GzipEncoder()
    return encoder.encode(data) + encoder.flush()


def encoder_for(accept_encoding: str | None) -> BodyEncoder:
    return GzipEncoder() if accepts_gzip(accept_encoding) else IdentityEncoder()
