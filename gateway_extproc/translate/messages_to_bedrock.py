"""Anthropic Messages (client) -> Claude on AWS Bedrock's InvokeModel (provider), and back.
Pure functions, the same rewrite the anthropic SDK's own Bedrock client makes
(anthropic-sdk-python `lib/bedrock/_client.py`):

- the body is the Messages body without `model` and `stream`, plus `anthropic_version:
  "bedrock-2023-05-31"`; the client's `anthropic-beta` header (comma-separated) becomes the
  body's `anthropic_beta` list (the header is not sent);
- the model goes into the path: `POST /model/{id}/invoke`, or
  `/model/{id}/invoke-with-response-stream` for a stream, the id percent-encoded (`:` of
  `...-v1:0` as `%3A`, as boto3 sends it);
- a JSON answer is Anthropic's message JSON already; a stream is event-stream framing whose
  `chunk` events carry Anthropic's stream events, rewritten to Anthropic's SSE; an error
  (`{"message": ...}`) becomes Anthropic's error format with the same status.
"""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson

from gateway_extproc.providers.bedrock.eventstream import EventStreamDecoder, to_sse

BEDROCK_ANTHROPIC_VERSION = "bedrock-2023-05-31"
STREAM_CONTENT_TYPE = "text/event-stream"

# Bedrock's statuses -> Anthropic's error types (the anthropic SDK picks its exception by status).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def invoke_request(body: dict[str, Any]) -> dict[str, Any]:
    """The client's Messages body, kept for `upstream_body` (`stream` chose the path, and is
    dropped there; `model` is the served one's Bedrock id, in the path)."""
    return {k: v for k, v in body.items() if k != "model"}


def invoke_body(
    translated: dict[str, Any], *, model: str, max_tokens: int, beta: str = ""
) -> bytes:
    """The body InvokeModel receives (`model` is in the path, not here)."""
    out = {k: v for k, v in translated.items() if k != "stream"}
    out["anthropic_version"] = BEDROCK_ANTHROPIC_VERSION
    out.setdefault("max_tokens", max_tokens)
    betas = [b.strip() for b in beta.split(",") if b.strip()]
    if betas:
        out["anthropic_beta"] = betas
    return orjson.dumps(out)


def invoke_path(model: str, stream: bool) -> str:
    """`/model/{id}/invoke`, or `.../invoke-with-response-stream` when the client streams."""
    action = "invoke-with-response-stream" if stream else "invoke"
    return f"/model/{urllib.parse.quote(model, safe='')}/{action}"


def same_message(raw: bytes, *, created: int) -> bytes:
    """A JSON answer: Anthropic's message JSON already."""
    return raw


def anthropic_error(raw: bytes, status: int) -> bytes:
    """Bedrock's `{"message": ...}` (or anything else) as Anthropic's error body."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        obj = None
    message = None
    if isinstance(obj, dict):
        message = obj.get("message", obj.get("Message"))
    if not isinstance(message, str) or not message:
        message = f"the provider answered HTTP {status}"
    kind = _ERROR_TYPES.get(status, "api_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": message}})


class EventStreamToSSE:
    """Bedrock's event-stream bytes (split anywhere) -> Anthropic's SSE bytes."""

    __slots__ = ("_decoder",)

    def __init__(self, *, created: int = 0, include_usage: bool = False) -> None:
        self._decoder = EventStreamDecoder()

    def feed(self, data: bytes) -> bytes:
        return to_sse(self._decoder.feed(data))

    def flush(self) -> bytes:
        return to_sse(self._decoder.flush())
