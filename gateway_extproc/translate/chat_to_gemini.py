"""OpenAI chat completions request -> Gemini `GenerateContentRequest`. Pure: a dict in, a dict out.

What maps (docs/translation.md lists it for readers):
- `system` / `developer` messages -> `systemInstruction.parts`, in order;
- `user` / `assistant` turns -> `contents` with roles `user` / `model`, consecutive turns of one
  role merged; `tool` messages -> `functionResponse` parts in a user turn, named after the call
  they answer (`{"output": content}`);
- text parts -> text parts; `image_url` with a base64 data URL -> `inlineData`;
- assistant `tool_calls` -> `functionCall` parts (`arguments` must be a JSON object);
- `tools` (functions) -> one `functionDeclarations` tool; `tool_choice` none/auto/required/named
  -> `toolConfig.functionCallingConfig` NONE/AUTO/ANY/ANY with `allowedFunctionNames`;
- `max_completion_tokens` / `max_tokens` -> `generationConfig.maxOutputTokens` (set when the
  request is forwarded: the client's, else the budget's cap, else the model's limit);
- `stop` -> `stopSequences`; `temperature` (0-2) and `top_p` -> `temperature` / `topP`;
- `stream` and `stream_options` choose the method (the path), `user` is not sent.

Everything else is refused with `Untranslatable` (400, in the client's error format) rather than
dropped: `n > 1`, `logprobs`, audio, `response_format` other than text, penalties, `seed`, strict
tools, `parallel_tool_calls: false` (Gemini has no such switch), image URLs (Gemini reads only
its own file URIs) and any field this module does not know.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from gateway_extproc.errors import Untranslatable
from gateway_extproc.translate.chat_common import as_list

_KNOWN = frozenset(
    {
        "model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature",
        "top_p", "stream", "stream_options", "tools", "tool_choice", "parallel_tool_calls",
        "user", "n", "logprobs", "response_format", "store", "service_tier",
        "frequency_penalty", "presence_penalty",
    }
)  # fmt: skip
# The image types Gemini reads inline.
_DATA_URL = re.compile(r"data:(image/(?:jpeg|png|webp|heic|heif));base64,(.*)", re.DOTALL)
_SYSTEM_ROLES = ("system", "developer")
MAX_STOP_SEQUENCES = 5  # Gemini refuses more


def _refuse(what: str) -> Untranslatable:
    return Untranslatable(f"{what}: no faithful mapping to the Gemini API")


def gemini_request(body: dict[str, Any]) -> dict[str, Any]:
    """The Gemini body for a chat completions body (`body` is not modified); the model is not
    in it (Gemini names it in the path). Raises Untranslatable."""
    unknown = sorted(k for k in body if k not in _KNOWN)
    if unknown:
        raise _refuse(", ".join(f"`{k}`" for k in unknown))
    _check_options(body)
    system, contents = _conversation(body.get("messages"))
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config: dict[str, Any] = {}
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        config["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if isinstance(stop, list) and stop:
        if not all(isinstance(s, str) for s in stop) or len(stop) > MAX_STOP_SEQUENCES:
            raise Untranslatable(f"`stop` must be a string or up to {MAX_STOP_SEQUENCES} strings")
        config["stopSequences"] = stop
    elif stop is not None and stop != []:
        raise Untranslatable("`stop` must be a string or a list of strings")
    for name, gemini_name in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(name) is not None:
            config[gemini_name] = body[name]
    if config:
        out["generationConfig"] = config
    tools = body.get("tools")
    if tools:
        declarations = [_tool(t, i) for i, t in enumerate(as_list(tools, "tools"))]
        out["tools"] = [{"functionDeclarations": declarations}]
    choice = _tool_choice(body.get("tool_choice"))
    if choice is not None:
        out["toolConfig"] = {"functionCallingConfig": choice}
    return out


def with_overrides(
    gemini_body: dict[str, Any], *, model: str, max_tokens: int, beta: str = ""
) -> bytes:
    """The translated body as it goes upstream: `generationConfig.maxOutputTokens` when the
    client set none (the model is in the path, `upstream_path`; `beta`, Anthropic's header,
    means nothing to Gemini)."""
    config = dict(gemini_body.get("generationConfig") or {})
    config.setdefault("maxOutputTokens", max_tokens)
    return orjson.dumps({**gemini_body, "generationConfig": config})


def upstream_path(model: str, stream: bool) -> str:
    """The Gemini path for the served model: its method depends on `stream`."""
    if stream:
        return f"/v1beta/models/{model}:streamGenerateContent?alt=sse"
    return f"/v1beta/models/{model}:generateContent"


def _check_options(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1):
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
    if body.get("parallel_tool_calls") is False:
        raise _refuse("`parallel_tool_calls: false`")
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 2
    ):
        raise Untranslatable("`temperature` must be between 0 and 2 for a Gemini model")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise Untranslatable("`user` must be a string")


def _conversation(messages: object) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system parts, contents with merged turns)."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    calls: dict[str, str] = {}  # tool call id -> function name, for the results that answer it
    for i, message in enumerate(as_list(messages, "messages")):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise Untranslatable(f"`{where}` must be an object")
        role = message.get("role")
        if role in _SYSTEM_ROLES:
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            parts, role = _user_parts(message.get("content"), where), "user"
        elif role == "assistant":
            parts, role = _assistant_parts(message, where, calls), "model"
        elif role == "tool":
            parts, role = [_tool_result(message, where, calls)], "user"
        else:
            raise _refuse(f"`{where}.role` {role!r}")
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    if not contents:
        raise Untranslatable("`messages` has no user or assistant turn")
    return system, contents


def _text_parts(content: object, where: str) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, part in enumerate(as_list(content, f"{where}.content")):
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _refuse(f"`{where}.content[{j}]` of type {kind!r} here")
        text = part.get("text")
        if not isinstance(text, str):
            raise Untranslatable(f"`{where}.content[{j}].text` must be a string")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: object, where: str) -> list[dict[str, Any]]:
    if isinstance(content, str) or content is None:
        return _text_parts(content, where)
    parts = []
    for j, part in enumerate(as_list(content, f"{where}.content")):
        if isinstance(part, dict) and part.get("type") == "image_url":
            parts.append(_image(part.get("image_url"), f"{where}.content[{j}]"))
        else:
            parts.extend(_text_parts([part], where))
    return parts


def _image(image_url: object, where: str) -> dict[str, Any]:
    url = image_url.get("url") if isinstance(image_url, dict) else None
    if not isinstance(url, str):
        raise Untranslatable(f"`{where}.image_url.url` must be a string")
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise _refuse(f"`{where}`: an image that is not a base64 jpeg/png/webp/heic/heif data URL")
    if not match[2]:
        raise Untranslatable(f"`{where}`: the data URL is empty")
    return {"inlineData": {"mimeType": match[1], "data": match[2]}}


def _assistant_parts(
    message: dict[str, Any], where: str, calls: dict[str, str]
) -> list[dict[str, Any]]:
    if message.get("audio") is not None or message.get("function_call") is not None:
        raise _refuse(f"`{where}` with audio or a legacy function_call")
    parts = _text_parts(message.get("content"), where)
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
        calls[call_id] = name
        parts.append({"functionCall": {"name": name, "args": arguments}})
    return parts


def _tool_result(message: dict[str, Any], where: str, calls: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise Untranslatable(f"`{where}.tool_call_id` must be a string")
    name = calls.get(call_id)
    if name is None:  # Gemini pairs a result with its call by the function's name
        raise Untranslatable(f"`{where}.tool_call_id` answers no earlier assistant tool call")
    text = "".join(p["text"] for p in _text_parts(message.get("content"), where))
    return {"functionResponse": {"name": name, "response": {"output": text}}}


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
    out: dict[str, Any] = {"name": name}
    description = function.get("description")
    if isinstance(description, str) and description:
        out["description"] = description
    schema = function.get("parameters")
    if schema:  # JSON Schema as written: `parametersJsonSchema`, not the OpenAPI subset
        out["parametersJsonSchema"] = schema
    return out


def _tool_choice(choice: object) -> dict[str, Any] | None:
    if choice is None:
        return None
    if choice in ("none", "auto"):
        return {"mode": str(choice).upper()}
    if choice == "required":
        return {"mode": "ANY"}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise Untranslatable("`tool_choice.function.name` must be a string")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise _refuse(f"`tool_choice` {choice!r}")
