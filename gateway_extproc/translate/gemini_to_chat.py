"""Gemini `GenerateContentResponse` -> OpenAI chat completion, and a Gemini error -> OpenAI's
error format. Pure: bytes and values in, bytes out; never raises on provider input.

Only the first candidate is read (the request asked for one). Text parts are the content
(`thought` parts are dropped), `functionCall` parts the tool calls (Gemini gives no call id
unless it sends one: `call_{n}`). `finish_reason` from `finishReason`: STOP -> stop (tool_calls
when the answer calls a function), MAX_TOKENS -> length, the safety family -> content_filter,
anything else -> stop; a prompt blocked before any candidate (`promptFeedback.blockReason`) ->
content_filter. Usage: `prompt_tokens` = prompt (cached included) + tool-use prompt,
`cached_tokens` = cached content, `completion_tokens` = candidates + thoughts,
`reasoning_tokens` = thoughts.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.translate.messages_to_chat import error_json

_FILTERED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY"}
)
# google.rpc status -> OpenAI error type (the openai SDK picks its exception by HTTP status).
_ERROR_TYPES = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
}


def _int(obj: object, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    return value if type(value) is int and value >= 0 else 0


def finish_reason(reason: object, *, called: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in _FILTERED:
        return "content_filter"
    return "tool_calls" if called else "stop"


def chat_usage(usage: object) -> dict[str, Any]:
    """OpenAI usage from a Gemini `usageMetadata` (a running total)."""
    prompt = _int(usage, "promptTokenCount") + _int(usage, "toolUsePromptTokenCount")
    cached = min(_int(usage, "cachedContentTokenCount"), prompt)
    thoughts = _int(usage, "thoughtsTokenCount")
    completion = _int(usage, "candidatesTokenCount") + thoughts
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
        "completion_tokens_details": {"reasoning_tokens": thoughts},
    }


def chat_id(response_id: object) -> str:
    return f"chatcmpl-{response_id}" if isinstance(response_id, str) and response_id else "chatcmpl"


def first_candidate(doc: dict[str, Any]) -> dict[str, Any] | None:
    candidates = doc.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0]
    return None


def parts_of(candidate: dict[str, Any] | None) -> list[dict[str, Any]]:
    content = candidate.get("content") if candidate is not None else None
    parts = content.get("parts") if isinstance(content, dict) else None
    return [p for p in parts if isinstance(p, dict)] if isinstance(parts, list) else []


def text_of(part: dict[str, Any]) -> str | None:
    """A part's answer text; None for a thought or a part that is not text."""
    text = part.get("text")
    return text if isinstance(text, str) and part.get("thought") is not True else None


def tool_call(call: dict[str, Any], index: int) -> dict[str, Any]:
    call_id = call.get("id")
    name = call.get("name")
    args = call.get("args")
    return {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{index}",
        "type": "function",
        "function": {
            "name": name if isinstance(name, str) else "",
            "arguments": orjson.dumps(args if isinstance(args, dict) else {}).decode(),
        },
    }


def blocked(doc: dict[str, Any]) -> bool:
    feedback = doc.get("promptFeedback")
    return isinstance(feedback, dict) and feedback.get("blockReason") is not None


def chat_completion(raw: bytes, *, created: int) -> bytes:
    """The chat completion for a `GenerateContentResponse`; a body that is not one becomes an
    OpenAI-format error (a provider answering 200 with garbage)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not ("candidates" in doc or "promptFeedback" in doc):
        return error_json("the provider's answer is not a Gemini response", "server_error")
    candidate = first_candidate(doc)
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in parts_of(candidate):
        piece = text_of(part)
        if piece is not None:
            text.append(piece)
        elif isinstance(part.get("functionCall"), dict):
            calls.append(tool_call(part["functionCall"], len(calls)))
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        reply["tool_calls"] = calls
    elif not text:
        reply["content"] = ""
    if candidate is None:
        finish = "content_filter" if blocked(doc) else "stop"
    else:
        finish = finish_reason(candidate.get("finishReason"), called=bool(calls))
    model = doc.get("modelVersion")
    out = {
        "id": chat_id(doc.get("responseId")),
        "object": "chat.completion",
        "created": created,
        "model": model if isinstance(model, str) else "",
        "choices": [{"index": 0, "message": reply, "logprobs": None, "finish_reason": finish}],
    }
    if "usageMetadata" in doc:
        out["usage"] = chat_usage(doc["usageMetadata"])
    return orjson.dumps(out)


def error_payload(raw: bytes | dict[str, Any], status: int | None) -> dict[str, Any]:
    """OpenAI's `{"error": {...}}` for a Gemini error body `{"error": {code, message, status}}`
    (or a stream's error event); `code` is Google's status name."""
    try:
        doc = orjson.loads(raw) if isinstance(raw, bytes | bytearray) else raw
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, list) and doc:  # some Google front ends wrap the error in a list
        doc = doc[0]
    error = doc.get("error") if isinstance(doc, dict) else None
    rpc = error.get("status") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"the provider answered with status {status}" if status else "provider error"
    kind = _ERROR_TYPES.get(rpc, "server_error") if isinstance(rpc, str) else "api_error"
    code = rpc if isinstance(rpc, str) else None
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def chat_error(raw: bytes, status: int) -> bytes:
    """A Gemini error response's body in OpenAI's format (the status is kept as it is)."""
    return orjson.dumps(error_payload(raw, status))
