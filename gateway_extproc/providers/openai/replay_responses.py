"""OpenAI Responses: a finished stream's final `response.completed` (or `.incomplete`) event
carries the whole response, which is the cached answer; a cached response is replayed as the
event sequence OpenAI sends. Pure. Only message items (output_text / refusal parts), reasoning
items and function calls are replayed; a response with any other item is not cached."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

FINAL = ("completed", "incomplete")  # statuses whose response is cached
_PARTS = frozenset({"output_text", "refusal"})


def response_from_events(
    events: Iterable[tuple[str | None, dict[str, Any]]],
) -> dict[str, Any] | None:
    for _, obj in events:
        kind = obj.get("type")
        if kind in ("response.failed", "error"):
            return None
        if kind in ("response.completed", "response.incomplete"):
            response = obj.get("response")
            return (
                response if isinstance(response, dict) and response_replayable(response) else None
            )
    return None


def response_replayable(response: dict[str, Any]) -> bool:
    output = response.get("output")
    if response.get("status") not in FINAL or not isinstance(response.get("usage"), dict):
        return False
    if not isinstance(output, list):
        return False
    for item in output:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            return False
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            if not isinstance(content, list):
                return False
            if not all(isinstance(p, dict) and p.get("type") in _PARTS for p in content):
                return False
        elif kind not in ("reasoning", "function_call"):
            return False
    return True


def _sse(obj: dict[str, Any]) -> bytes:
    return b"event: " + str(obj["type"]).encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def response_to_sse(response: dict[str, Any]) -> bytes:
    """created, in_progress, per item added / deltas / done, then the final event."""
    out: list[bytes] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append(_sse({"type": kind, "sequence_number": len(out), **fields}))

    pending = {**response, "status": "in_progress", "output": [], "usage": None}
    pending["incomplete_details"] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for index, item in enumerate(response["output"]):
        _item_events(emit, index, item)
    emit(f"response.{response['status']}", response=response)
    return b"".join(out)


def _item_events(emit: Any, index: int, item: dict[str, Any]) -> None:
    kind, item_id = item["type"], item["id"]
    if kind == "reasoning":
        emit("response.output_item.added", output_index=index, item=item)
        emit("response.output_item.done", output_index=index, item=item)
        return
    if kind == "function_call":
        emit(
            "response.output_item.added",
            output_index=index,
            item={**item, "arguments": "", "status": "in_progress"},
        )
        where = {"item_id": item_id, "output_index": index}
        arguments = item.get("arguments", "")
        emit("response.function_call_arguments.delta", **where, delta=arguments)
        emit("response.function_call_arguments.done", **where, arguments=arguments)
        emit("response.output_item.done", output_index=index, item=item)
        return
    shell = {**item, "content": [], "status": "in_progress"}
    emit("response.output_item.added", output_index=index, item=shell)
    for part_index, part in enumerate(item["content"]):
        where = {"item_id": item_id, "output_index": index, "content_index": part_index}
        if part["type"] == "refusal":
            emit("response.content_part.added", **where, part={**part, "refusal": ""})
            emit("response.refusal.delta", **where, delta=part.get("refusal", ""))
            emit("response.refusal.done", **where, refusal=part.get("refusal", ""))
        else:
            text = part.get("text", "")
            logprobs = part.get("logprobs") or []
            emit("response.content_part.added", **where, part={**part, "text": ""})
            emit("response.output_text.delta", **where, delta=text, logprobs=logprobs)
            emit("response.output_text.done", **where, text=text, logprobs=logprobs)
        emit("response.content_part.done", **where, part=part)
    emit("response.output_item.done", output_index=index, item=item)
