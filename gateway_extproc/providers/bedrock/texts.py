"""The prompt text of a Bedrock Converse request, for the guardrails: where each string the model
reads sits, as (container, key). Pure.

Text is a content block's `text`, in `system[]` and in every `messages[].content[]`, and a
guard-content block's `guardContent.text.text`. A tool result's `content[]` holds text blocks
and `json` blocks (arbitrary JSON the model reads: every string in it), and a tool use's `input`
is arbitrary JSON too. Media blocks (`image`, `document`, `video`: bytes or S3 locations),
`reasoningContent` (signed by the provider: a changed byte and it refuses the request) and
`cachePoint` are not prompt text the guardrails scan; neither are ids, names and statuses.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Slot = tuple[dict[str, Any] | list[Any], str | int]


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _arbitrary(value: Any) -> Iterator[Slot]:
    """Every string inside `value` (iterative: no recursion limit)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(sub, str):
                    yield item, key
                elif isinstance(sub, dict | list):
                    stack.append(sub)
        elif isinstance(item, list):
            for i, sub in enumerate(item):
                if isinstance(sub, str):
                    yield item, i
                elif isinstance(sub, dict | list):
                    stack.append(sub)


def _block(block: dict[str, Any]) -> Iterator[Slot]:
    if isinstance(block.get("text"), str):
        yield block, "text"
    guard = block.get("guardContent")
    text = guard.get("text") if isinstance(guard, dict) else None
    if isinstance(text, dict) and isinstance(text.get("text"), str):
        yield text, "text"
    tool_use = block.get("toolUse")
    if isinstance(tool_use, dict):
        yield from _arbitrary(tool_use.get("input"))
    tool_result = block.get("toolResult")
    if isinstance(tool_result, dict):
        for part in _dicts(tool_result.get("content")):
            if isinstance(part.get("text"), str):
                yield part, "text"
            if "json" in part:
                yield from _arbitrary(part.get("json"))


def text_slots(body: dict[str, Any]) -> Iterator[Slot]:
    """Every string of a Converse request the model reads as prompt text."""
    for block in _dicts(body.get("system")):
        yield from _block(block)
    for message in _dicts(body.get("messages")):
        for block in _dicts(message.get("content")):
            yield from _block(block)
