"""The client's side of a translated response (translate/): the provider's answer, already
metered as the provider sent it, rewritten into the client's API before it goes on.

A rewritten body has another length and is never compressed (the observer hands over decoded
bytes), so the provider's `content-length` and `content-encoding` are removed from the response
headers: Envoy then sends the new body chunked. Pure: bytes in, bytes out.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway_extproc.handoff import RequestState
from gateway_extproc.translate.messages_to_chat import error_json
from gateway_extproc.translate.pairs import BY_APIS, StreamTranslator, Translation

# Response headers that describe the provider's bytes, not the client's.
REMOVED_HEADERS = ("content-length", "content-encoding")
# The content types of streamed answers: SSE, and Bedrock's event-stream framing.
STREAM_CONTENT_TYPES = ("text/event-stream", "application/vnd.amazon.eventstream")


def is_stream(content_type: str) -> bool:
    """Whether a response of this content type is a stream (metered as it passes)."""
    return content_type.startswith(STREAM_CONTENT_TYPES)


class TranslatedResponse:
    """One translated response: its stream translator (an event stream) or its JSON body."""

    __slots__ = ("created", "include_usage", "stream", "translation")

    def __init__(self, translation: Translation, *, created: int, include_usage: bool) -> None:
        self.translation = translation
        self.created = created
        self.include_usage = include_usage
        self.stream: StreamTranslator | None = None

    @classmethod
    def of(cls, state: RequestState) -> TranslatedResponse | None:
        """The translation a request's state names; None when it was not translated."""
        if state.client_api is None:
            return None
        translation = BY_APIS[(state.client_api, state.api)]
        return cls(translation, created=int(state.arrived), include_usage=state.wants_usage)

    def start(self, *, status: int, streaming: bool) -> dict[str, str]:
        """The response's headers: a successful event stream is translated as it passes. The
        headers to set on the client's response (the stream's content type, when the client's
        differs from the provider's)."""
        if streaming and status < 400:
            self.stream = self.translation.stream(
                created=self.created, include_usage=self.include_usage
            )
            content_type = self.translation.stream_content_type
            if content_type is not None:
                return {"content-type": content_type}
        return {}

    def chunk(self, pieces: Sequence[bytes], end: bool) -> bytes:
        """The client's bytes for the decoded bytes of one streamed chunk."""
        stream = self.stream
        if stream is None:  # an error's event stream: nothing the client's SDK could read
            return b""
        out = b"".join(stream.feed(piece) for piece in pieces) if pieces else b""
        return out + stream.flush() if end else out

    def whole(self, raw: bytes | None, status: int) -> bytes:
        """The client's body for a whole (buffered) provider body."""
        if status >= 400:
            return self.translation.error(raw or b"", status)
        if raw is None:  # not kept whole (over metering.max_json_body_bytes): not translatable
            return error_json(
                "the provider's answer is too large to translate (metering.max_json_body_bytes)",
                "server_error",
                "translation_failed",
            )
        return self.translation.response(raw, created=self.created)
