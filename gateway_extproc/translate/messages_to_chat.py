"""Anthropic Messages response -> OpenAI chat completion, and an Anthropic error -> OpenAI's
error format. Pure: bytes and values in, bytes out; never raises on provider input.

`finish_reason` from `stop_reason`: end_turn, stop_sequence, pause_turn -> stop; max_tokens ->
length; tool_use -> tool_calls; refusal -> content_filter. Usage: `prompt_tokens` is input plus
cache reads plus cache writes (OpenAI counts cached input inside it; Anthropic beside it),
`prompt_tokens_details.cached_tokens` the cache reads, `completion_tokens` the output.
"""

from __future__ import annotations

from typing import Any

import orjson

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
# Anthropic error types -> OpenAI's (the openai SDK picks its exception class by status).
_ERROR_TYPES = {
    "invalid_request_error": "invalid_request_error",
    "authentication_error": "authentication_error",
    "permission_error": "permission_error",
    "not_found_error": "not_found_error",
    "request_too_large": "invalid_request_error",
    "rate_limit_error": "rate_limit_error",
    "api_error": "server_error",
    "overloaded_error": "server_error",
}


def _int(obj: object, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if type(value) is int and value >= 0 else 0


def finish_reason(stop_reason: object) -> str | None:
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def chat_usage(usage: object) -> dict[str, Any]:
    """OpenAI usage from an Anthropic usage object (cumulative, as the stream reports it)."""
    cached = _int(usage, "cache_read_input_tokens")
    prompt = _int(usage, "input_tokens") + cached + _int(usage, "cache_creation_input_tokens")
    completion = _int(usage, "output_tokens")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def chat_id(message_id: object) -> str:
    return f"chatcmpl-{message_id}" if isinstance(message_id, str) and message_id else "chatcmpl"


def tool_call(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": block.get("id") if isinstance(block.get("id"), str) else "",
        "type": "function",
        "function": {
            "name": block.get("name") if isinstance(block.get("name"), str) else "",
            "arguments": orjson.dumps(block.get("input") or {}).decode(),
        },
    }


def chat_completion(raw: bytes, *, created: int) -> bytes:
    """The chat completion for a Messages response body. A body that is not a Messages object
    becomes an OpenAI-format error (a provider answering 200 with garbage)."""
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        message = None
    if not isinstance(message, dict) or message.get("type") != "message":
        return error_json("the provider's answer is not an Anthropic message", "server_error")
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    content = message.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append(tool_call(block))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        reply["tool_calls"] = calls
    elif not text:
        reply["content"] = ""
    out = {
        "id": chat_id(message.get("id")),
        "object": "chat.completion",
        "created": created,
        "model": message.get("model") if isinstance(message.get("model"), str) else "",
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(message.get("stop_reason")) or "stop",
            }
        ],
    }
    if "usage" in message:
        out["usage"] = chat_usage(message["usage"])
    return orjson.dumps(out)


def error_json(message: str, kind: str, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}})


def error_payload(raw: bytes | dict[str, Any], status: int | None) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` object for an Anthropic error body (or its `error` event)."""
    try:
        doc = orjson.loads(raw) if isinstance(raw, bytes | bytearray) else raw
    except orjson.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"the provider answered with status {status}" if status else "provider error"
    openai_type = _ERROR_TYPES.get(kind, "server_error") if isinstance(kind, str) else "api_error"
    code = kind if isinstance(kind, str) else None
    return {"error": {"message": message, "type": openai_type, "param": None, "code": code}}


def chat_error(raw: bytes, status: int) -> bytes:
    """An Anthropic error response's body in OpenAI's format (the status is kept as it is)."""
    return orjson.dumps(error_payload(raw, status))
