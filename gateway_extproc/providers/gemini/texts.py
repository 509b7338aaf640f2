"""The prompt text of a Gemini request, for the guardrails: where each string the model reads
sits, as (container, key). Pure.

Text is a part's `text`, in `systemInstruction` and in every `contents[].parts[]`; a function
response's `response` is arbitrary JSON the model reads (every string in it). Media parts
(`inlineData`, `fileData`), function calls the model made and thought signatures are not prompt
text the guardrails scan.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

Slot = tuple[dict[str, Any] | list[Any], str | int]
_SYSTEM = ("systemInstruction", "system_instruction")
_RESPONSES = ("functionResponse", "function_response")


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _arbitrary(value: Any) -> Iterator[Slot]:
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


def _parts(content: Any) -> Iterator[Slot]:
    if not isinstance(content, dict):
        return
    for part in _dicts(content.get("parts")):
        if isinstance(part.get("text"), str):
            yield part, "text"
        for name in _RESPONSES:
            response = part.get(name)
            if isinstance(response, dict):
                yield from _arbitrary(response.get("response"))


def text_slots(body: dict[str, Any]) -> Iterator[Slot]:
    """Every string of a Gemini request the model reads as prompt text."""
    for name in _SYSTEM:
        system = body.get(name)
        if isinstance(system, str):
            yield body, name
        else:
            yield from _parts(system)
    for content in _dicts(body.get("contents")):
        yield from _parts(content)
