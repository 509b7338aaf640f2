"""The neutral form of a cached answer is the API's JSON response body. A streamed miss is
assembled into it; a hit is served as that JSON, or replayed as a stream in the client's API.
Pure: bytes in, bytes out."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.providers.anthropic.replay import (
    message_from_events,
    message_replayable,
    message_to_sse,
)
from gateway_extproc.providers.gemini.replay import (
    generate_from_events,
    generate_replayable,
    generate_to_sse,
)
from gateway_extproc.providers.openai.replay_chat import (
    chat_from_events,
    chat_replayable,
    chat_to_sse,
)
from gateway_extproc.providers.openai.replay_responses import (
    response_from_events,
    response_replayable,
    response_to_sse,
)
from gateway_extproc.providers.sse import SSEDecoder, SSEError, SSEEvent

JSON = "application/json"
EVENT_STREAM = "text/event-stream; charset=utf-8"
# generateContent and its stream answer with the same response: one entry serves both.
GEMINI = frozenset({Api.GEMINI_GENERATE, Api.GEMINI_STREAM})


def _events(raw: bytes) -> list[SSEEvent] | None:
    decoder = SSEDecoder()
    try:
        return decoder.feed(raw) + decoder.flush()
    except SSEError:
        return None


def answer_from_stream(api: Api, raw: bytes) -> dict[str, Any] | None:
    """The JSON answer a complete stream amounts to; None if it cannot be cached."""
    events = _events(raw)
    if events is None:
        return None
    parsed: list[tuple[str | None, dict[str, Any]]] = []
    for event in events:
        if event.data == "[DONE]":
            continue
        try:
            obj = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(obj, dict):
            return None
        parsed.append((event.event, obj))
    if api is Api.OPENAI_CHAT:
        return chat_from_events(obj for _, obj in parsed)
    if api is Api.ANTHROPIC_MESSAGES:
        return message_from_events(parsed)
    if api is Api.OPENAI_RESPONSES:
        return response_from_events(parsed)
    if api in GEMINI:
        return generate_from_events(obj for _, obj in parsed)
    return None


def answer_from_json(api: Api, raw: bytes) -> dict[str, Any] | None:
    """The provider's JSON answer, if it can be replayed in both forms."""
    try:
        answer = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if api is Api.OPENAI_CHAT and chat_replayable(answer):
        return answer
    if api is Api.ANTHROPIC_MESSAGES and message_replayable(answer):
        return answer
    if api is Api.OPENAI_RESPONSES and response_replayable(answer):
        return answer
    if api in GEMINI and generate_replayable(answer):
        return answer
    return None


def replay(
    api: Api, answer: dict[str, Any], *, stream: bool, include_usage: bool
) -> tuple[bytes, str]:
    """(body, content type) of a hit as the client asked for it."""
    if not stream:
        return orjson.dumps(answer), JSON
    if api is Api.ANTHROPIC_MESSAGES:
        return message_to_sse(answer), EVENT_STREAM
    if api is Api.OPENAI_RESPONSES:
        return response_to_sse(answer), EVENT_STREAM
    if api in GEMINI:
        return generate_to_sse(answer), EVENT_STREAM
    return chat_to_sse(answer, include_usage=include_usage), EVENT_STREAM
