"""What of a request body bounds its cost, whatever the model: its `Shape`. Pure: no I/O.

`bounds.py` turns a shape into a worst case for one model; this module only reads the body:

* **Text**: the UTF-8 bytes of every string and key (a byte-level BPE token covers at least one
  byte), token-id arrays one token per id, plus fixed margins per request, per message and when
  tools are declared, and each Anthropic-defined client tool's documented hidden tokens.
* **Media parts** are recognised by their `type` (`image_url`, `input_image`, `image`; `file`,
  `input_file`, `document`, `input_audio`, `audio`), and only where the APIs put content parts:
  in the content arrays of messages and input items (`content`, a Responses tool output's
  `output`, an Anthropic `tool_result`'s `content`). Anywhere else - a tool schema, a
  `tool_use.input`, metadata - every key and string is text, whatever the keys are called.
* **Input the gateway cannot see** (`unseen`): stored state the provider loads (Responses
  `previous_response_id`, `conversation`, a stored `prompt`, `item_reference` input items),
  hosted tools whose results become input, Anthropic server tools and MCP servers.
* **Options that change the price**: `service_tier`, Anthropic 1-hour cache writes, OpenAI
  prompt-cache retention beyond the default, and options no catalog prices (`unpriced`).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from gateway_extproc.apis import Api

# Margins (tokens) for what the provider adds around the text it is sent: the chat template's
# special tokens per request and per message (OpenAI documents 3-4), and the tool-use system
# prompt when tools are declared (Anthropic documents 313-346 tokens for its models).
PER_REQUEST_TOKENS = 16
PER_MESSAGE_TOKENS = 8
TOOLS_PROMPT_TOKENS = 512
# Anthropic-defined client tools carry a definition built into the model, which the provider
# bills as input beyond the request's bytes: per tool, by `type` prefix, Anthropic's published
# figures (computer use: its 466-499 token system prompt plus a 735-token definition; bash: 245;
# text editor: 700). A typed client tool not listed (memory, a newer kind) gets the largest.
ANTHROPIC_CLIENT_TOOL_TOKENS = {"computer_": 499 + 735, "bash_": 245, "text_editor_": 700}
ANTHROPIC_UNKNOWN_TOOL_TOKENS = max(ANTHROPIC_CLIENT_TOOL_TOKENS.values())
# Values of `n` / `best_of` the gateway accepts (OpenAI allows up to 128 choices).
MAX_CHOICES = 128

_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_FILE_TYPES = frozenset({"file", "input_file", "document", "input_audio", "audio"})
_MESSAGE_LISTS = ("messages", "input")
_TOKEN_ARRAY_FIELDS = ("input", "prompt")
# Keys of a message or input item whose list holds content parts (a Responses tool output's
# `output` may be a list of input_text / input_image / input_file parts).
_PART_LISTS = frozenset({"content", "output"})
_TOOL_RESULT_LISTS = frozenset({"content"})  # an Anthropic tool_result's parts
# Responses / chat tools the client runs itself: their definitions are text the gateway sees.
_VISIBLE_TOOL_TYPES = frozenset({"function", "custom", "local_shell", "apply_patch"})
# Anthropic server tools run by the provider: their results become input the gateway never sees.
_ANTHROPIC_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "tool_search")
# OpenAI prompt-cache retention at the default price: `prompt_cache_retention` (`in-memory` is
# the SDKs' old spelling) and the `ttl` of `prompt_cache_options` / `prompt_cache_breakpoint`.
_DEFAULT_RETENTION = (None, "in_memory", "in-memory")
_DEFAULT_TTL = (None, "30m")


class Retention(enum.StrEnum):
    """OpenAI prompt-cache retention beyond the default a request asks for (pricing differs)."""

    TTL_12H = "12h"  # `prompt_cache_options.ttl` / `prompt_cache_breakpoint.ttl` other than 30m
    EXTENDED_24H = "24h"  # `prompt_cache_retention` other than in_memory


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    """What of a request body bounds its cost, independent of the model (from `shape_of`)."""

    text_tokens: int  # UTF-8 bytes of every string and key, token ids, and the margins
    images: int  # image parts
    files: int  # file, document and audio parts
    unseen: tuple[str, ...]  # fields that bring in input the gateway cannot see
    choices: int  # output multiplier: n (x best_of)
    max_output: int | None  # the request's own output limit; None: it sets none
    cap_field: str | None  # where the gateway injects its cap when the request sets none
    service_tier: str | None = None  # OpenAI `service_tier` (prices differ per tier)
    cache_1h: bool = False  # some `cache_control` asks for a 1-hour TTL (Anthropic)
    unpriced: tuple[str, ...] = ()  # options present that change the price, which no catalog prices
    # OpenAI prompt-cache options asking for longer retention: (the option as written, its kind)
    retention: tuple[tuple[str, Retention], ...] = ()


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


_MEDIA_TYPES = _IMAGE_TYPES | _FILE_TYPES


def _asks_1h(part: dict[str, Any]) -> bool:
    control = part.get("cache_control")
    return isinstance(control, dict) and control.get("ttl") == "1h"


def _breakpoint_ttl(item: dict[str, Any]) -> str | None:
    """`prompt_cache_breakpoint.ttl=...` when `item` sets a breakpoint with a longer TTL."""
    point = item.get("prompt_cache_breakpoint")
    if isinstance(point, dict) and point.get("ttl") not in _DEFAULT_TTL:
        return f"prompt_cache_breakpoint.ttl={point.get('ttl')!r}"
    return None


@dataclasses.dataclass(slots=True)
class _Walk:
    """What a body's walk found: text bytes, media parts, cache TTLs asked for."""

    text: int = 0
    images: int = 0
    files: int = 0
    cache_1h: bool = False
    ttl_12h: str | None = None  # the first longer breakpoint TTL, as written

    def plain(self, value: Any) -> None:
        """Every key and string of `value` is text (no media parts here), iteratively."""
        text = 0
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                text += _utf8_len(item)
            elif isinstance(item, dict):
                if item.get("ttl") == "1h":
                    self.cache_1h = True
                if "prompt_cache_breakpoint" in item:
                    self.ttl_12h = self.ttl_12h or _breakpoint_ttl(item)
                for key, sub in item.items():
                    text += _utf8_len(key)
                    stack.append(sub)
            elif isinstance(item, list):
                stack.extend(item)
            elif item is not None:  # numbers and booleans: their text
                text += len(str(item))
        self.text += text

    def items(self, value: Any) -> None:
        """`messages` / `input`: a list of messages or input items, each holding content parts."""
        if not isinstance(value, list):
            self.plain(value)
            return
        for item in value:
            if isinstance(item, dict):
                self.holder(item, _PART_LISTS, nested=False)
            else:
                self.plain(item)

    def holder(self, item: dict[str, Any], part_lists: frozenset[str], *, nested: bool) -> None:
        """A message, an input item or an Anthropic tool_result: its `part_lists` hold parts."""
        text = 0
        for key, sub in item.items():
            text += _utf8_len(key)
            if key in part_lists and isinstance(sub, list):
                for part in sub:
                    self.part(part, nested=nested)
            else:
                self.plain(sub)
        self.text += text
        if item.get("ttl") == "1h":
            self.cache_1h = True
        if "prompt_cache_breakpoint" in item:
            self.ttl_12h = self.ttl_12h or _breakpoint_ttl(item)

    def part(self, part: Any, *, nested: bool) -> None:
        """One content part: a media part is counted by its type, not its bytes."""
        if not isinstance(part, dict):
            self.plain(part)
            return
        kind = part.get("type")
        if not isinstance(kind, str):  # a list or object here is the client's error: just text
            self.plain(part)
        elif kind in _MEDIA_TYPES:
            if kind in _IMAGE_TYPES:
                self.images += 1
            else:
                self.files += 1
            self.cache_1h = self.cache_1h or _asks_1h(part)
            self.ttl_12h = self.ttl_12h or _breakpoint_ttl(part)
        elif kind == "tool_result" and not nested:
            self.holder(part, _TOOL_RESULT_LISTS, nested=True)
        else:
            self.plain(part)


def _token_ids(value: Any) -> int | None:
    """The number of token ids when `value` is a token array (or a list of them), else None."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        return len(value)
    if all(isinstance(x, list) for x in value):
        counts = [_token_ids(x) for x in value]
        if all(c is not None for c in counts):
            return sum(c for c in counts if c is not None)
    return None


def _references(items: object) -> list[str]:
    """Responses input items that load a stored item by id (`item_reference`, whose `type` is
    optional): the first is named, with how many there are."""
    if not isinstance(items, list):
        return []
    found = [
        i
        for i, item in enumerate(items)
        if isinstance(item, dict)
        and (
            item.get("type") == "item_reference"
            or ("id" in item and "type" not in item and "role" not in item)
        )
    ]
    if not found:
        return []
    more = f" ({len(found)} items)" if len(found) > 1 else ""
    return [f"input[{found[0]}].type=item_reference{more}"]


def _unseen(api: Api, body: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    if api is Api.OPENAI_RESPONSES:
        for field in ("previous_response_id", "conversation", "prompt"):
            if body.get(field) not in (None, "", {}):
                found.append(field)
        found += _references(body.get("input"))
    if api is Api.OPENAI_CHAT and body.get("web_search_options") is not None:
        found.append("web_search_options")
    tools = body.get("tools")
    if isinstance(tools, list):
        for i, tool in enumerate(tools):
            kind = tool.get("type") if isinstance(tool, dict) else None
            if not isinstance(kind, str):
                continue
            if api is Api.ANTHROPIC_MESSAGES:
                hosted = kind.startswith(_ANTHROPIC_SERVER_TOOLS)
            else:
                hosted = kind not in _VISIBLE_TOOL_TYPES
            if hosted:
                found.append(f"tools[{i}].type={kind}")
    if api is Api.ANTHROPIC_MESSAGES:
        for field in ("mcp_servers", "container"):
            if body.get(field) not in (None, "", [], {}):
                found.append(field)
    return tuple(found)


def _client_tool_tokens(api: Api, tools: object) -> int:
    """The hidden input tokens of the Anthropic-defined client tools a request declares."""
    if api is not Api.ANTHROPIC_MESSAGES or not isinstance(tools, list):
        return 0
    total = 0
    for tool in tools:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if (
            not isinstance(kind, str)
            or kind == "custom"
            or kind.startswith(_ANTHROPIC_SERVER_TOOLS)
        ):
            continue  # custom tools are all text; server tools are unseen input
        total += next(
            (n for prefix, n in ANTHROPIC_CLIENT_TOOL_TOKENS.items() if kind.startswith(prefix)),
            ANTHROPIC_UNKNOWN_TOOL_TOKENS,
        )
    return total


def _retention(
    api: Api, body: dict[str, Any], ttl_12h: str | None
) -> tuple[tuple[str, Retention], ...]:
    if api not in (Api.OPENAI_CHAT, Api.OPENAI_RESPONSES):
        return ()
    found: list[tuple[str, Retention]] = []
    value = body.get("prompt_cache_retention")
    if value not in _DEFAULT_RETENTION:
        found.append((f"prompt_cache_retention={value!r}", Retention.EXTENDED_24H))
    options = body.get("prompt_cache_options")
    if isinstance(options, dict) and options.get("ttl") not in _DEFAULT_TTL:
        found.append((f"prompt_cache_options.ttl={options.get('ttl')!r}", Retention.TTL_12H))
    if ttl_12h is not None:
        found.append((ttl_12h, Retention.TTL_12H))
    return tuple(found)


def _choices(api: Api, body: dict[str, Any]) -> int:
    """The output multiplier; raises ValueError naming the bad field."""
    names = {Api.OPENAI_CHAT: ("n",), Api.OPENAI_COMPLETIONS: ("n", "best_of")}.get(api, ())
    result = 1
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CHOICES:
            raise ValueError(f"`{name}` must be an integer from 1 to {MAX_CHOICES}")
        result = max(result, value)
    return result


# Body options that change the per-token price and that the catalog does not price, with the
# values that leave it standard: Anthropic fast mode and US-only inference (1.1x).
_UNPRICED_OPTIONS: dict[Api, dict[str, tuple[object, ...]]] = {
    Api.ANTHROPIC_MESSAGES: {"speed": (None, "standard"), "inference_geo": (None, "global")},
}

_CAP_FIELD = {
    Api.OPENAI_CHAT: "max_completion_tokens",
    Api.OPENAI_RESPONSES: "max_output_tokens",
    Api.OPENAI_COMPLETIONS: "max_tokens",
}


def shape_of(api: Api, body: dict[str, Any], max_output: int | None) -> Shape:
    """The model-independent part of the bound. Raises ValueError (a 400) for a bad `n`."""
    w = _Walk()
    for key, value in body.items():
        ids = _token_ids(value) if key in _TOKEN_ARRAY_FIELDS else None
        if ids is not None:
            w.text += ids + _utf8_len(key)
            continue
        w.text += _utf8_len(key)
        if key in _MESSAGE_LISTS:
            w.items(value)
        else:
            w.plain(value)
    tier = body.get("service_tier")
    if tier is not None and not isinstance(tier, str):
        raise ValueError("`service_tier` must be a string")
    unpriced = tuple(
        f"{field}={body[field]!r}"
        for field, standard in _UNPRICED_OPTIONS.get(api, {}).items()
        if body.get(field) not in standard
    )
    messages = sum(  # chat messages, Responses input items, Anthropic messages
        isinstance(item, dict)
        for key in _MESSAGE_LISTS
        if isinstance(body.get(key), list)
        for item in body[key]
    )
    tools = body.get("tools") or body.get("functions")
    margins = PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS * messages
    if tools:
        margins += TOOLS_PROMPT_TOKENS + _client_tool_tokens(api, tools)
    return Shape(
        text_tokens=w.text + margins,
        images=w.images,
        files=w.files,
        unseen=_unseen(api, body),
        choices=_choices(api, body),
        max_output=max_output,
        cap_field=_CAP_FIELD.get(api),
        service_tier=tier,
        cache_1h=w.cache_1h,
        unpriced=unpriced,
        retention=_retention(api, body, w.ttl_12h),
    )
