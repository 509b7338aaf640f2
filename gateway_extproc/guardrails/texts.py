"""Where the text a provider reads sits in a request body, per API. Pure.

`text_slots` yields `(container, key)` pairs with `container[key]` a string the provider reads
(the field list, from the API references, is in docs/security.md, "Guardrails see what the model
reads"):

- chat: every string in each message (content strings, text and refusal parts, `refusal`,
  `tool_calls[].function.arguments` and `.custom.input`, `function_call.arguments`) and in
  `prediction` (its content);
- Responses: `instructions`, `input` (a string, or every string in each item: message parts,
  call arguments and outputs, reasoning summaries, tool outputs), and `prompt.variables`;
- completions: `prompt` and `suffix`; embeddings: `input`;
- Anthropic: `system`, and every string in each message's content blocks (text; documents'
  text or content source, title and context; search results; tool results and what they nest;
  tool_use inputs; server tool results);
- Gemini and Bedrock Converse: their providers' `texts` modules say.

Inside a message, part, block or item, a string is text unless its key names something else:
an id, a name, a role, a status, a media type, a signature or encrypted data (`_NOT_TEXT`). Parts
and blocks the model reads as media, not as a string (images, audio, files, PDF and URL
sources), and Anthropic thinking blocks (signed by the provider: a changed byte and it refuses
the request) are skipped whole (`_NOT_TEXT_TYPES`). A tool call's input object is arbitrary
JSON: every string in it is text, whatever its key. A part or item type this module has never
heard of is read the same way, so what a provider adds is scanned by default. Tool definitions
and every other request parameter are not visited.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway_extproc.apis import Api, Schema
from gateway_extproc.providers.bedrock import texts as converse_texts
from gateway_extproc.providers.gemini import texts as gemini_texts

Slot = tuple[dict[str, Any] | list[Any], Any]  # container[key] is a str

# Keys whose string is not text the model reads: identifiers, names, enums, opaque data, media.
_NOT_TEXT = frozenset(
    {
        "type",
        "id",
        "role",
        "name",
        "status",
        "call_id",
        "tool_call_id",
        "tool_use_id",
        "approval_request_id",
        "server_label",
        "server_name",
        "tool_name",
        "caller",
        "cache_control",
        "media_type",
        "signature",
        "encrypted_content",
        "encrypted_index",
        "encrypted_stdout",
        "error_code",
        "logprobs",
        "file_id",
        "file_data",
        "file_url",
        "image_url",
    }
)
# Parts, blocks, items and sources skipped whole: media the model sees as an image, a sound or a
# document (base64, URLs, file ids), and reasoning the provider signed.
_NOT_TEXT_TYPES = frozenset(
    {
        "image",
        "image_url",
        "input_image",
        "input_audio",
        "input_file",
        "file",
        "base64",
        "url",
        "computer_screenshot",
        "image_generation_call",
        "thinking",
        "redacted_thinking",
    }
)
# Keys holding the arguments of a tool call as an object (Anthropic tool_use, server_tool_use,
# mcp_tool_use): arbitrary JSON, so every string in it is text.
_ARGUMENTS = frozenset({"input"})


def _strings(value: Any, *, arbitrary: bool = False) -> Iterator[Slot]:
    """The text strings inside a message, part, block or item (see the module docstring), or
    every string inside `value` when it is `arbitrary` JSON. Iterative (no recursion limit)."""
    stack = [(value, arbitrary)]
    while stack:
        item, arbitrary = stack.pop()
        if isinstance(item, dict):
            kind = item.get("type")
            if not arbitrary and isinstance(kind, str) and kind in _NOT_TEXT_TYPES:
                continue
            for key, sub in item.items():
                if isinstance(sub, str):
                    if arbitrary or key not in _NOT_TEXT:
                        yield item, key
                elif isinstance(sub, dict | list) and (arbitrary or key not in _NOT_TEXT):
                    stack.append((sub, arbitrary or key in _ARGUMENTS))
        elif isinstance(item, list):
            for i, sub in enumerate(item):
                if isinstance(sub, str):
                    yield item, i
                elif isinstance(sub, dict | list):
                    stack.append((sub, arbitrary))


def _field(container: dict[str, Any], key: str) -> Iterator[Slot]:
    """`container[key]` when it is a string, else the text strings inside it."""
    value = container.get(key)
    if isinstance(value, str):
        yield container, key
    elif isinstance(value, dict | list):
        yield from _strings(value)


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield item


def _chat(body: dict[str, Any]) -> Iterator[Slot]:
    for message in _dicts(body.get("messages")):
        yield from _strings(message)
    yield from _field(body, "prediction")


def _responses(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _field(body, "instructions")
    yield from _field(body, "input")
    prompt = body.get("prompt")
    variables = prompt.get("variables") if isinstance(prompt, dict) else None
    if isinstance(variables, dict):
        for name in variables:  # a variable's name is the template's, its value the caller's
            yield from _field(variables, name)


def _anthropic(body: dict[str, Any]) -> Iterator[Slot]:
    yield from _field(body, "system")
    for message in _dicts(body.get("messages")):
        yield from _field(message, "content")


def text_slots(api: Api, body: dict[str, Any]) -> Iterator[Slot]:
    """Every string the provider shows the model, as (container, key)."""
    if api is Api.OPENAI_CHAT:
        yield from _chat(body)
    elif api is Api.OPENAI_RESPONSES:
        yield from _responses(body)
    elif api is Api.ANTHROPIC_MESSAGES:
        yield from _anthropic(body)
    elif api is Api.OPENAI_COMPLETIONS:
        yield from _field(body, "prompt")  # token-id prompts hold no string
        yield from _field(body, "suffix")
    elif api is Api.OPENAI_EMBEDDINGS:
        yield from _field(body, "input")
    elif api.schema is Schema.GEMINI:
        yield from gemini_texts.text_slots(body)
    elif api in (Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM):
        yield from converse_texts.text_slots(body)
