"""A Gemini `GenerateContentRequest` body: what bounds its cost (a `Shape`) and what goes
upstream. Pure.

Google's JSON parser takes a field in lowerCamelCase or in its proto name (`generationConfig` or
`generation_config`): every field the gateway reads is read in both spellings, and a body that
spells one field both ways is refused (which one Google would use is not the gateway's guess).

* **Output**: `generationConfig.maxOutputTokens` (thinking tokens count against it, so it bounds
  them too), times `candidateCount`. Without it the gateway injects its cap there.
* **Text**: every key and string of the body, except inside media parts.
* **Media**: an `inlineData` / `fileData` part is an image (`mimeType` image/*) or a file
  (video, PDF, anything else), bounded like the other APIs' media. Audio is refused: Google bills
  audio input at a higher rate than text on the Flash models, which the catalog does not price.
* **Unseen input**: `cachedContent` (a cache the provider loads) and the hosted tools whose
  results become input (`googleSearch`, `codeExecution`, `urlContext`, ...: any tool other than
  `functionDeclarations`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gateway_extproc.apis import Api
from gateway_extproc.cost.shape import (
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    TOOLS_PROMPT_TOKENS,
    Shape,
)
from gateway_extproc.errors import BadRequest

MAX_CANDIDATES = 8
_CONFIG = ("generationConfig", "generation_config")
_MAX_OUT = ("maxOutputTokens", "max_output_tokens")
_CANDIDATES = ("candidateCount", "candidate_count")
_CACHED = ("cachedContent", "cached_content")
_MEDIA = frozenset({"inlineData", "inline_data", "fileData", "file_data"})
_MIME = ("mimeType", "mime_type")
_FUNCTIONS = frozenset({"functionDeclarations", "function_declarations"})


@dataclasses.dataclass(frozen=True, slots=True)
class GeminiRequest:
    model: str
    stream: bool
    max_output: int | None
    shape: Shape


def _one(obj: dict[str, Any], names: tuple[str, ...], where: str = "") -> tuple[str | None, Any]:
    """(the spelling used, its value) of a field that has two; 400 when both are present."""
    present = [n for n in names if n in obj]
    if len(present) > 1:
        raise BadRequest(f"`{where}{names[0]}` is given twice ({' and '.join(present)})")
    return (present[0], obj[present[0]]) if present else (None, None)


def _int(value: Any, name: str, low: int, high: int | None = None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadRequest(f"`{name}` must be an integer of at least {low}")
    if high is not None and value > high:
        raise BadRequest(f"`{name}` must be at most {high}")
    return value


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass(slots=True)
class _Walk:
    text: int = 0
    images: int = 0
    files: int = 0
    audio: str | None = None  # the first audio part, as written

    def value(self, root: Any) -> None:
        """Every key and string is text, except media parts, counted by their MIME type."""
        stack = [root]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                self.text += _utf8_len(item)
            elif isinstance(item, dict):
                for key, sub in item.items():
                    self.text += _utf8_len(key)
                    if key in _MEDIA and isinstance(sub, dict):
                        self._media(key, sub)
                    else:
                        stack.append(sub)
            elif isinstance(item, list):
                stack.extend(item)
            elif item is not None:
                self.text += len(str(item))

    def _media(self, key: str, part: dict[str, Any]) -> None:
        mime = next((part[m] for m in _MIME if isinstance(part.get(m), str)), "")
        mime = mime.strip().lower()
        if mime.startswith("image/"):
            self.images += 1
        else:  # video, PDF, text files, or no type given: bounded by the context window
            self.files += 1
        if mime.startswith("audio/") and self.audio is None:
            self.audio = f"{key}.mimeType={mime[:64]!r}"


def _unseen(body: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    name, cached = _one(body, _CACHED)
    if name is not None and cached not in (None, ""):
        found.append(name)
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            if isinstance(tool, dict):
                found += [f"tools[{i}].{k}" for k in tool if k not in _FUNCTIONS]
    return tuple(found)


def gemini_shape(body: dict[str, Any]) -> tuple[int | None, Shape]:
    """(the request's own output limit, its Shape). Raises BadRequest."""
    config_name, config = _one(body, _CONFIG)
    if config is None:
        config = {}
    elif not isinstance(config, dict):
        raise BadRequest(f"`{config_name}` must be an object")
    where = f"{config_name}."
    _, max_out_value = _one(config, _MAX_OUT, where)
    max_out = _int(max_out_value, f"{where}maxOutputTokens", 0)
    _, candidates = _one(config, _CANDIDATES, where)
    choices = _int(candidates, f"{where}candidateCount", 1, MAX_CANDIDATES) or 1
    w = _Walk()
    w.value(body)
    contents = body.get("contents")
    messages = sum(isinstance(c, dict) for c in contents) if isinstance(contents, list) else 0
    margins = PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS * messages
    if body.get("tools"):
        margins += TOOLS_PROMPT_TOKENS
    shape = Shape(
        text_tokens=w.text + margins,
        images=w.images,
        files=w.files,
        unseen=_unseen(body),
        choices=choices,
        max_output=max_out,
        # Written into the config object the client already uses, in either spelling.
        cap_field=f"{config_name or _CONFIG[0]}.{_MAX_OUT[0]}",
        unpriced=(w.audio,) if w.audio else (),
    )
    return max_out, shape


def gemini_request(api: Api, body: dict[str, Any], model: str) -> GeminiRequest:
    """The fields the gateway relies on; `model` comes from the path. Raises BadRequest."""
    if "model" in body:
        raise BadRequest(
            "a Gemini request names its model in the path (models/NAME:generateContent), "
            "not in the body: remove `model`"
        )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("`contents` is required and must be a non-empty list")
    max_out, shape = gemini_shape(body)
    return GeminiRequest(model, api is Api.GEMINI_STREAM, max_out, shape)


def with_cap(body: dict[str, Any], field: str, tokens: int) -> dict[str, Any]:
    """`body` with `field` (`config.maxOutputTokens`) set to `tokens`, the config copied."""
    config_name, _, name = field.partition(".")
    config = body.get(config_name)
    config = dict(config) if isinstance(config, dict) else {}
    config[name] = tokens
    return {**body, config_name: config}
