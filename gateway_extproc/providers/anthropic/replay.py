"""Anthropic messages: a finished stream assembled into the JSON message, and a JSON message
replayed as the event stream Anthropic would have sent. Pure; None for what cannot be replayed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

_TOOL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})


def message_from_events(
    events: Iterable[tuple[str | None, dict[str, Any]]],
) -> dict[str, Any] | None:
    """The message a complete stream (`message_start` ... `message_stop`) amounts to."""
    message: dict[str, Any] | None = None
    blocks: dict[int, dict[str, Any]] = {}
    partial: dict[int, str] = {}
    stopped = False
    for _, obj in events:
        kind = obj.get("type")
        index = obj.get("index")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            message = {**obj["message"], "content": []}
            message["usage"] = dict(message.get("usage") or {})
        elif kind == "content_block_start" and type(index) is int:
            block = obj.get("content_block")
            if not isinstance(block, dict):
                return None
            blocks[index] = dict(block)
            if block.get("type") in _TOOL_BLOCKS:
                partial[index] = ""
        elif kind == "content_block_delta" and index in blocks:
            if not _apply_delta(blocks[index], partial, index, obj.get("delta")):
                return None
        elif kind == "content_block_stop" and index in partial:
            try:
                blocks[index]["input"] = orjson.loads(partial.pop(index) or "{}")
            except orjson.JSONDecodeError:
                return None
        elif kind == "message_delta" and message is not None:
            delta = obj.get("delta") or {}
            for field in ("stop_reason", "stop_sequence"):
                if field in delta:
                    message[field] = delta[field]
            for field, value in (obj.get("usage") or {}).items():
                if value is not None:  # cumulative: the latest value wins
                    message["usage"][field] = value
        elif kind == "message_stop":
            stopped = True
        elif kind == "error":
            return None
    if message is None or not stopped or "output_tokens" not in message["usage"]:
        return None
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


def _apply_delta(block: dict[str, Any], partial: dict[int, str], index: int, delta: object) -> bool:
    if not isinstance(delta, dict):
        return False
    kind = delta.get("type")
    if kind == "text_delta":
        block["text"] = block.get("text", "") + str(delta.get("text", ""))
    elif kind == "input_json_delta" and index in partial:
        partial[index] += str(delta.get("partial_json", ""))
    elif kind == "thinking_delta":
        block["thinking"] = block.get("thinking", "") + str(delta.get("thinking", ""))
    elif kind == "signature_delta":
        block["signature"] = str(delta.get("signature", ""))
    elif kind == "citations_delta":
        block.setdefault("citations", []).append(delta.get("citation"))
    else:
        return False
    return True


def message_replayable(message: dict[str, Any]) -> bool:
    content = message.get("content")
    return (
        message.get("type") == "message"
        and isinstance(content, list)
        and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)
        and isinstance(message.get("usage"), dict)
    )


def _sse(event: str, obj: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def _block_events(index: int, block: dict[str, Any]) -> list[bytes]:
    kind = block["type"]
    start = dict(block)
    deltas: list[dict[str, Any]] = []
    if kind == "text":
        start["text"] = ""
        if "citations" in block:
            start["citations"] = []
            deltas += [{"type": "citations_delta", "citation": c} for c in block["citations"] or []]
        if block.get("text"):
            deltas.append({"type": "text_delta", "text": block["text"]})
    elif kind in _TOOL_BLOCKS:
        start["input"] = {}
        deltas.append(
            {
                "type": "input_json_delta",
                "partial_json": orjson.dumps(block.get("input", {})).decode(),
            }
        )
    elif kind == "thinking":
        start.update(thinking="", signature="")
        deltas.append({"type": "thinking_delta", "thinking": block.get("thinking", "")})
        deltas.append({"type": "signature_delta", "signature": block.get("signature", "")})
    out = [
        _sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
    ]
    for delta in deltas:
        out.append(
            _sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        )
    out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    return out


def message_to_sse(message: dict[str, Any]) -> bytes:
    """`message_start` (input usage, `output_tokens: 1` as Anthropic sends it), each content
    block as start / delta / stop, `message_delta` (stop reason, final usage), `message_stop`."""
    usage = dict(message["usage"])
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": min(1, int(usage.get("output_tokens") or 0))}
    out = [_sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        out += _block_events(index, block)
    delta = {
        "stop_reason": message.get("stop_reason"),
        "stop_sequence": message.get("stop_sequence"),
    }
    out.append(_sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(_sse("message_stop", {"type": "message_stop"}))
    return b"".join(out)
