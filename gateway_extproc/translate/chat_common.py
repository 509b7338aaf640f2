"""What the translators to and from OpenAI chat completions share, whatever the provider's API:
reading the client's lists, and writing `chat.completion.chunk` SSE lines. Pure."""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.errors import Untranslatable

DONE = b"data: [DONE]\n\n"


def as_list(value: object, where: str) -> list[Any]:
    """`value` if it is a list, else the client's 400 naming the field."""
    if not isinstance(value, list):
        raise Untranslatable(f"`{where}` must be a list")
    return value


def sse_line(obj: dict[str, Any]) -> bytes:
    """One `data:` line of a chat completions stream."""
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk_base(created: int) -> dict[str, Any]:
    """The fields every `chat.completion.chunk` of one translated stream carries (the model is
    filled in from the provider's first event)."""
    return {"id": "chatcmpl", "object": "chat.completion.chunk", "created": created, "model": ""}
