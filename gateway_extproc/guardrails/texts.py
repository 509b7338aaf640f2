"""Where the text a provider reads sits in a request body, per API. Pure.

`text_slots` yields `(container, key)` pairs with `container[key]` a string the model will
read: chat messages (string content and text parts, tool messages, function-call arguments),
Responses `instructions` and `input` (a string, or items with input_text / output_text parts,
function-call arguments and outputs), completions `prompt`, embeddings `input`, Anthropic
`system` and content blocks (text, tool_result, and the strings inside tool_use inputs).
Non-text parts (images, files, audio, documents: base64 or URLs) are never visited, nor are
names, ids, roles or any parameter.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway_extproc.apis import Api

Slot = tuple[dict[str, Any] | list[Any], Any]  # container[key] is a str

_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _str(container: dict[str, Any] | list[Any], key: Any) -> Iterator[Slot]:
    try:
        value = container[key]
    except (KeyError, IndexError, TypeError):
        return
    if isinstance(value, str):
        yield container, key


def _strings_or_parts(container: dict[str, Any], key: str) -> Iterator[Slot]:
    """`container[key]` is a string, or a list of strings / text parts."""
    value = container.get(key)
    if isinstance(value, str):
        yield container, key
    elif isinstance(value, list):
        for i, part in enumerate(value):
            if isinstance(part, str):
                yield value, i
            elif isinstance(part, dict) and part.get("type") in _TEXT_PARTS:
                yield from _str(part, "text")


def _all_strings(value: Any) -> Iterator[Slot]:
    """Every string inside a JSON value (a tool_use input the model wrote), iteratively."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, sub in item.items():
                if isinstance(sub, str):
                    yield item, key
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            for i, sub in enumerate(item):
                if isinstance(sub, str):
                    yield item, i
                else:
                    stack.append(sub)


def _chat(body: dict[str, Any]) -> Iterator[Slot]:
    for message in _dicts(body.get("messages")):
        yield from _strings_or_parts(message, "content")
        for call in _dicts(message.get("tool_calls")):
            function = call.get("function")
            if isinstance(function, dict):
                yield from _str(function, "arguments")
        function_call = message.get("function_call")
        if isinstance(function_call, dict):
            yield from _str(function_call, "arguments")


def _responses(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _str(body, "instructions")
    value = body.get("input")
    if isinstance(value, str):
        yield body, "input"
        return
    for item in _dicts(value):
        yield from _strings_or_parts(item, "content")
        kind = item.get("type")
        if kind == "function_call":
            yield from _str(item, "arguments")
        elif kind in ("function_call_output", "custom_tool_call_output"):
            yield from _strings_or_parts(item, "output")
        elif kind == "custom_tool_call":
            yield from _str(item, "input")


def _anthropic(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _strings_or_parts(body, "system")
    for message in _dicts(body.get("messages")):
        content = message.get("content")
        if isinstance(content, str):
            yield message, "content"
            continue
        for block in _dicts(content):
            kind = block.get("type")
            if kind == "text":
                yield from _str(block, "text")
            elif kind == "tool_result":
                yield from _strings_or_parts(block, "content")
            elif kind == "tool_use":
                yield from _all_strings(block.get("input"))


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def text_slots(api: Api, body: dict[str, Any]) -> Iterator[Slot]:
    """Every string the provider shows the model, as (container, key)."""
    if api is Api.OPENAI_CHAT:
        yield from _chat(body)
    elif api is Api.OPENAI_RESPONSES:
        yield from _responses(body)
    elif api is Api.ANTHROPIC_MESSAGES:
        yield from _anthropic(body)
    elif api is Api.OPENAI_COMPLETIONS:
        yield from _strings_or_parts(body, "prompt")
    elif api is Api.OPENAI_EMBEDDINGS:
        yield from _strings_or_parts(body, "input")
