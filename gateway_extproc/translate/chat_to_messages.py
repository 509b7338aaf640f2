"""OpenAI chat completions request -> Anthropic Messages request. Pure: a dict in, a dict out.

What maps (docs/translation.md lists it for readers):
- `system` / `developer` messages -> `system` text blocks, in order;
- `user` / `assistant` turns -> Messages turns, consecutive turns of one role merged (Anthropic
  requires alternation); `tool` messages -> `tool_result` blocks in a user turn;
- text parts -> text blocks; `image_url` parts (a `data:` URL or an http(s) URL) -> image blocks;
- assistant `tool_calls` -> `tool_use` blocks (`arguments` must be a JSON object);
- `tools` (functions) -> `tools` with `input_schema`; `tool_choice` none/auto/required/named ->
  none/auto/any/tool; `parallel_tool_calls: false` -> `disable_parallel_tool_use`;
- `max_completion_tokens` / `max_tokens` -> `max_tokens` (left out when the client set none: the
  gateway writes its cap or the model's limit when it forwards, `with_overrides`);
- `stop` -> `stop_sequences`; `temperature` (0-1), `top_p`, `stream`; `user` -> `metadata.user_id`.

Everything else is refused with `Untranslatable` (400, in the client's error format) rather than
dropped: `n > 1`, `logprobs`, audio, `response_format` other than text, penalties, `seed`, strict
tools, and any field this module does not know.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway_extproc.errors import Untranslatable
from gateway_extproc.translate.chat_common import as_list

# Fields read below; any other top-level field is refused by name.
_KNOWN = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature",
        "top_p", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "user", "n", "logprobs", "response_format", "store", "service_tier",
        "frequency_penalty", "presence_penalty",
    }
)  # fmt: skip
_DATA_URL = re.compile(r"data:(image/(?:jpeg|png|gif|webp));base64,(.*)", re.DOTALL)
_SYSTEM_ROLES = ("system", "developer")


def _refuse(what: str) -> Untranslatable:
    return Untranslatable(f"{what}: no faithful mapping to the Anthropic Messages API")


def messages_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Messages body for a chat completions body (`body` is not modified). Raises
    Untranslatable for anything without a faithful mapping."""
    unknown = sorted(k for k in body if k not in _KNOWN)
    if unknown:
        raise _refuse(", ".join(f"`{k}`" for k in unknown))
    _check_options(body)
    system, turns = _conversation(body.get("messages"))
    out: dict[str, Any] = {"model": body["model"], "messages": turns}
    if system:
        out["system"] = system
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        out["max_tokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop):
            raise Untranslatable("`stop` must be a string or a list of strings")
        out["stop_sequences"] = stop
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = body[name]
    if body.get("stream") is True:
        out["stream"] = True
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools = body.get("tools")
    if tools:
        out["tools"] = [_tool(t, i) for i, t in enumerate(as_list(tools, "tools"))]
    choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    return out


def with_overrides(
    messages_body: dict[str, Any], *, model: str, max_tokens: int, beta: str = ""
) -> bytes:
    """The translated body as it goes upstream: the served model (a downgrade), and
    `max_tokens`, which Anthropic requires, when the client set none. (`beta`: an allowed
    `anthropic-beta` header travels as the header here, not in the body.)"""
    out = {**messages_body, "model": model}
    out.setdefault("max_tokens", max_tokens)
    return orjson.dumps(out)


def _check_options(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise _refuse("`n` other than 1")
    if body.get("logprobs") not in (None, False):
        raise _refuse("`logprobs`")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise _refuse("`response_format` other than text")
    if body.get("store") not in (None, False):
        raise _refuse("`store: true`")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise _refuse(f"`service_tier: {body.get('service_tier')}`")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) not in (None, 0, 0.0):
            raise _refuse(f"`{name}`")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise Untranslatable("`temperature` must be between 0 and 1 for an Anthropic model")


def _conversation(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, alternating turns)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(as_list(messages, "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Untranslatable(f"`{where}` must be an object")
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.extend(_text_blocks(message.get("content"), where))
            continue
        if role == "user":
            blocks = _user_blocks(message.get("content"), where)
        elif role == "assistant":
            blocks = _assistant_blocks(message, where)
            role = "assistant"
        elif role == "tool":
            blocks = [_tool_result(message, where)]
            role = "user"
        else:
            raise _refuse(f"`{where}.role` {role!r}")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    if not turns:
        raise Untranslatable("`messages` has no user or assistant turn")
    return system, turns


def _text_blocks(content: object, where: str) -> list[dict[str, Any]]:
    """Text only (system, developer, tool results, assistant text)."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(as_list(content, f"{where}.content")):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _refuse(f"`{where}.content[{j}]` of type {kind!r} here")
        text = part.get("text")
        if not isinstance(text, str):
            raise Untranslatable(f"`{where}.content[{j}].text` must be a string")
        if text:
            blocks.append({"type": "text", "text": text})
    return blocks


def _user_blocks(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_blocks(content, where)
    blocks = []
    for j, part in enumerate(as_list(content, f"{where}.content")):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            blocks.extend(_text_blocks([part], f"{where}"))
    return blocks


def _image(image_url: object, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise Untranslatable(f"`{where}.image_url.url` must be a string")
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise _refuse(f"`{where}`: an image that is not a base64 jpeg/png/gif/webp data URL")
    data = match.group(2)
    if not data:
        raise Untranslatable(f"`{where}`: the data URL is empty")
    return {"type": "image", "source": {"type": "base64", "media_type": match[1], "data": data}}


def _assistant_blocks(message: dict[str, Any], where: str) -> list[dict[str, Any]]:
    if message.get("audio") is not None or message.get("function_call") is not None:
        raise _refuse(f"`{where}` with audio or a legacy function_call")
    content = message.get("content")
    blocks = _text_blocks(content, where) if content is not None else []
    for k, call in enumerate(message.get("tool_calls") or []):
        at = f"{where}.tool_calls[{k}]"
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or call.get("type", "function") != "function":
            raise _refuse(f"`{at}` that is not a function call")
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except (orjson.JSONDecodeError, TypeError):
            raise Untranslatable(f"`{at}.function.arguments` is not JSON") from None
        if not isinstance(arguments, dict):
            raise Untranslatable(f"`{at}.function.arguments` must be a JSON object")
        call_id, name = call.get("id"), function.get("name")
        if not isinstance(call_id, str) or not isinstance(name, str):
            raise Untranslatable(f"`{at}` needs a string `id` and `function.name`")
        blocks.append({"type": "tool_use", "id": call_id, "name": name, "input": arguments})
    return blocks


def _tool_result(message: dict[str, Any], where: str) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise Untranslatable(f"`{where}.tool_call_id` must be a string")
    content = _text_blocks(message.get("content"), where)
    return {"type": "tool_result", "tool_use_id": call_id, "content": content}


def _tool(tool: object, i: int) -> dict[str, Any]:
    where = f"tools[{i}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise _refuse(f"`{where}` that is not a function")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise _refuse(f"`{where}` that is not a function")
    if function.get("strict") is True:
        raise _refuse(f"`{where}.function.strict`")
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise Untranslatable(f"`{where}.function.name` must be a non-empty string")
    schema = function.get("parameters") or {"type": "object", "properties": {}}
    out: dict[str, Any] = {"name": name, "input_schema": schema}
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    return out


def _tool_choice(choice: object, parallel: object) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None
    elif choice in ("none", "auto"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise Untranslatable("`tool_choice.function.name` must be a string")
        out = {"type": "tool", "name": name}
    else:
        raise _refuse(f"`tool_choice` {choice!r}")
    if parallel is False:
        if out is None:
            out = {"type": "auto"}
        if out["type"] != "none":
            out["disable_parallel_tool_use"] = True
    return out
