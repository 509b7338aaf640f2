"""Incremental Server-Sent-Events decoder (WHATWG HTML "event stream interpretation").

Pure: bytes in, events out. `SSEDecoder.feed` accepts chunks split at any byte - inside a
multi-byte UTF-8 character, between the `\\r` and `\\n` of a CRLF - and touches each byte a
constant number of times: lines are cut on bytes (`\\r` and `\\n` never occur inside a UTF-8
sequence) and only the unfinished last line is carried over to the next chunk, as a list of pieces
that is joined once when the line ends (the idea of httpx's `LineDecoder`).

Deviations from the spec, both deliberate:
- `flush()` dispatches a final event that lacks its terminating blank line (the spec discards it).
  A metering proxy must see the last event of a stream the upstream cut short.
- A line longer than `max_line_bytes` raises `SSEError`; the rest of that event is discarded and
  decoding resumes at the next event.
`retry:` fields are ignored (a proxy never reconnects).
"""

from __future__ import annotations

import dataclasses

__all__ = ["DEFAULT_MAX_LINE_BYTES", "SSEDecoder", "SSEError", "SSEEvent"]

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event. `event` is None for the default type ("message"); `id` is the
    stream's last event id at dispatch time (it persists across events, per spec), None if unset."""

    event: str | None
    data: str
    id: str | None = None


class SSEError(ValueError):
    """The stream broke a limit of the decoder. `events` holds the events the failing call had
    already decoded; the decoder stays usable (it skips the rest of the offending event)."""

    def __init__(self, message: str, events: list[SSEEvent]) -> None:
        super().__init__(message)
        self.events = events


class SSEDecoder:
    """Feed it the body of one `text/event-stream` response, chunk by chunk, then `flush()`."""

    __slots__ = (
        "_data",
        "_discard_event",
        "_discard_line",
        "_event",
        "_last_id",
        "_max_line_bytes",
        "_pending",
        "_pending_len",
        "_skip_lf",
        "_start",
    )

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max_line_bytes = max_line_bytes
        self._reset()

    def _reset(self) -> None:
        self._pending: list[bytes] = []  # pieces of the unfinished last line
        self._pending_len = 0
        self._skip_lf = False  # the previous chunk ended in "\r": a leading "\n" is its CRLF
        self._start = True  # no line finished yet: strip a BOM from the first one
        self._discard_line = False  # the unfinished line is over the limit: drop it
        self._discard_event = False  # drop lines up to the next blank line
        self._data: list[str] = []
        self._event = ""
        self._last_id = ""

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Decode one chunk; return the events it completed (possibly none)."""
        if not data:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if data[0] == 0x0A:
                data = data[1:]
        if b"\r" in data:
            self._skip_lf = data[-1] == 0x0D
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        tail = lines.pop()
        events: list[SSEEvent] = []
        overflow = False
        if lines:
            if self._discard_line:  # the over-long line ends here: drop its last piece
                self._discard_line = False
                del lines[0]
            elif self._pending:
                lines[0] = b"".join(self._pending) + lines[0]
                self._pending = []
                self._pending_len = 0
            for line in lines:
                if len(line) > self._max_line_bytes:
                    overflow = True
                    self._drop_event()
                else:
                    self._line(line, events)
        if tail:
            if self._discard_line:
                pass
            elif self._pending_len + len(tail) > self._max_line_bytes:
                overflow = True
                self._pending = []
                self._pending_len = 0
                self._discard_line = True
                self._drop_event()
            else:
                self._pending.append(tail)
                self._pending_len += len(tail)
        if overflow:
            raise SSEError(f"SSE line longer than {self._max_line_bytes} bytes", events)
        return events

    def flush(self) -> list[SSEEvent]:
        """End of stream: process an unfinished last line, dispatch an unterminated last event.

        The decoder is then reset and may decode another stream.
        """
        events: list[SSEEvent] = []
        if self._pending:
            self._line(b"".join(self._pending), events)
        self._dispatch(events)  # a no-op while discarding: the data buffer is empty then
        self._reset()
        return events

    def _drop_event(self) -> None:
        self._data = []
        self._event = ""
        self._discard_event = True

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if self._start:
            self._start = False
            if raw.startswith(_BOM):
                raw = raw[3:]
        if not raw:
            if self._discard_event:
                self._discard_event = False
            else:
                self._dispatch(events)
            return
        if self._discard_event or raw[0] == 0x3A:  # ":" starts a comment
            return
        field, _, value = raw.decode("utf-8", "replace").partition(":")
        if value[:1] == " ":
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:  # an id with NUL is ignored
            self._last_id = value

    def _dispatch(self, events: list[SSEEvent]) -> None:
        if self._data:
            data = self._data[0] if len(self._data) == 1 else "\n".join(self._data)
            events.append(SSEEvent(self._event or None, data, self._last_id or None))
            self._data = []
        self._event = ""
