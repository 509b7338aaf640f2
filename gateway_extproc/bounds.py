"""The worst case a request can cost: an upper bound the provider itself enforces.

Pure: no I/O. A budget admits a request only if its worst case fits, so every number here must be
a true upper bound on what the provider can bill, never a guess:

* **Output** is bounded by the request's own limit (`max_completion_tokens` / `max_tokens` /
  `max_output_tokens`), clamped to the model's `max_output_tokens`. A request without one gets the
  gateway's cap *injected* into the upstream body (chat: `max_completion_tokens`, Responses:
  `max_output_tokens`, legacy completions: `max_tokens`), so the provider enforces the bound.
  Anthropic requires `max_tokens`; a request without it is refused by the provider (nothing is
  billed), so the bound is the model's maximum and nothing is injected. `n` (chat, completions)
  and `best_of` (completions) multiply the output.
* **Input text** is bounded by its UTF-8 byte length: a byte-level BPE token (OpenAI's and
  Anthropic's tokenizers, byte-fallback tokenizers too) covers at least one byte, so a text of B
  bytes is at most B tokens. Every string and every key of the body is counted (keys stand in for
  the chat template's structure; response-format schemas and tool definitions are text the model
  sees), plus fixed margins per request, per message and when tools are present (the providers'
  tool-use system prompts: Anthropic documents ~350 tokens). Token-id arrays (`input` of
  embeddings, `prompt` of completions) count one token per id.
* **Images** cost at most the model's `image_input_tokens` each (catalog; from the provider's
  published formula), **files, documents and audio** at most the model's `context_window`.
* **All input** is at most the model's `context_window` (the provider refuses longer prompts).
* **Input the gateway cannot see** (Responses `previous_response_id`, `conversation`, a stored
  `prompt`, hosted tools such as web or file search whose results become input, Anthropic server
  tools and MCP servers) is bounded by the context window, or refused, per `unseen_input`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from gateway_extproc.apis import Api
from gateway_extproc.catalog import ModelEntry
from gateway_extproc.pricing import Price, price_for_tier

# Margins (tokens) for what the provider adds around the text it is sent: the chat template's
# special tokens per request and per message (OpenAI documents 3-4), and the tool-use system
# prompt when tools are declared (Anthropic documents 313-346 tokens for its models).
PER_REQUEST_TOKENS = 16
PER_MESSAGE_TOKENS = 8
TOOLS_PROMPT_TOKENS = 512
# Values of `n` / `best_of` the gateway accepts (OpenAI allows up to 128 choices).
MAX_CHOICES = 128

_IMAGE_TYPES = frozenset({"image_url", "input_image", "image"})
_FILE_TYPES = frozenset({"file", "input_file", "document", "input_audio", "audio"})
_IMAGE_KEYS = frozenset({"image_url", "image"})
_FILE_KEYS = frozenset({"file", "file_data", "input_audio"})
_MESSAGE_LISTS = ("messages", "input")
_TOKEN_ARRAY_FIELDS = ("input", "prompt")
# Responses / chat tools the client runs itself: their definitions are text the gateway sees.
_VISIBLE_TOOL_TYPES = frozenset({"function", "custom", "local_shell", "apply_patch"})
# Anthropic server tools run by the provider: their results become input the gateway never sees.
_ANTHROPIC_SERVER_TOOLS = ("web_search", "web_fetch", "code_execution", "tool_search")


class UnseenInput(enum.StrEnum):
    """What to do with a request whose input includes state the gateway cannot see."""

    RESERVE_CONTEXT_WINDOW = "reserve_context_window"
    REFUSE = "refuse"


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


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """A request's worst case for one model."""

    input_tokens: int
    output_tokens: int  # all choices together
    inject_max_output: int | None  # the cap to write into the upstream body, if any
    cap_field: str | None
    price: Price | None = None  # the model's price for this request (its service tier)
    reserve_price: Price | None = None  # `price` without rates the request cannot incur


class Unbounded(ValueError):
    """The request's cost has no upper bound for this model: the caller refuses it (400)."""


class Unpriced(ValueError):
    """The request asks for an option the catalog cannot price for this model (a service tier,
    a long-context beta): the caller refuses it (400) rather than bill it at standard rates."""


def request_price(
    entry: ModelEntry,
    tier: str | None,
    *,
    long_context_beta: bool = False,
    unpriced: tuple[str, ...] = (),
) -> Price:
    """The price a request for `entry` is billed at. Raises Unpriced."""
    if unpriced and not entry.free:
        raise Unpriced(
            f"{', '.join(unpriced)} changes the price of {entry.name}, and the catalog "
            "cannot price it"
        )
    price = price_for_tier(entry, tier)
    if price is None:
        raise Unpriced(
            f"service_tier {tier!r} cannot be priced for {entry.name}: the catalog has no "
            "price for that tier"
        )
    if long_context_beta and not entry.prices_long_context:
        raise Unpriced(
            f"the long-context beta cannot be priced for {entry.name}: the catalog has no "
            "long_context tier for it"
        )
    return price


def _without_1h(price: Price) -> Price:
    """`price` where a 1-hour cache write costs a 5-minute one (no 1-hour TTL was asked for)."""
    tier = price.long_context
    if tier is not None:
        tier = dataclasses.replace(tier, price=_without_1h(tier.price))
    return dataclasses.replace(price, cache_write_1h=price.cache_write, long_context=tier)


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _part_kind(item: dict[str, Any]) -> str | None:
    """'image' or 'file' when this JSON object is a media part, else None."""
    kind = item.get("type")
    if isinstance(kind, str):
        if kind in _IMAGE_TYPES:
            return "image"
        if kind in _FILE_TYPES:
            return "file"
    for key in item:
        sub = item[key]
        if not isinstance(sub, dict | list | str):
            continue
        if key in _IMAGE_KEYS and (not isinstance(sub, str) or key == "image_url"):
            return "image"
        if key in _FILE_KEYS and (not isinstance(sub, str) or sub.startswith("data:")):
            return "file"
        if key == "source" and isinstance(sub, dict):  # Anthropic: typed by its parent
            return "image" if kind == "image" else "file"
    return None


def _walk(value: Any) -> tuple[int, int, int, bool]:
    """(text bytes, image parts, file parts, a 1-hour cache TTL asked for) of a JSON value,
    iteratively (no recursion)."""
    text = images = files = 0
    ttl_1h = False
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            text += _utf8_len(item)
        elif isinstance(item, dict):
            kind = _part_kind(item)
            if kind == "image":
                images += 1
                continue
            if kind == "file":
                files += 1
                continue
            if item.get("ttl") == "1h":
                ttl_1h = True
            for key, sub in item.items():
                text += _utf8_len(key)
                stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None:  # numbers and booleans: their text
            text += len(str(item))
    return text, images, files, ttl_1h


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


def _unseen(api: Api, body: dict[str, Any]) -> tuple[str, ...]:
    found: list[str] = []
    if api is Api.OPENAI_RESPONSES:
        for field in ("previous_response_id", "conversation", "prompt"):
            if body.get(field) not in (None, "", {}):
                found.append(field)
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
    text, images, files, cache_1h = 0, 0, 0, False
    for key, value in body.items():
        ids = _token_ids(value) if key in _TOKEN_ARRAY_FIELDS else None
        if ids is not None:
            text += ids + _utf8_len(key)
            continue
        t, i, f, h = _walk(value)
        text += t + _utf8_len(key)
        images += i
        files += f
        cache_1h = cache_1h or h
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
        margins += TOOLS_PROMPT_TOKENS
    return Shape(
        text_tokens=text + margins,
        images=images,
        files=files,
        unseen=_unseen(api, body),
        choices=_choices(api, body),
        max_output=max_output,
        cap_field=_CAP_FIELD.get(api),
        service_tier=tier,
        cache_1h=cache_1h,
        unpriced=unpriced,
    )


def bound(
    shape: Shape,
    entry: ModelEntry,
    *,
    default_max_output: int,
    unseen_input: UnseenInput,
    long_context_beta: bool = False,
) -> Bound:
    """The request's worst case on `entry`. Raises Unbounded when there is none (the caller
    answers 400): input it cannot see under `refuse`, or a part no catalog field bounds; and
    Unpriced for an option the catalog cannot price."""
    price = request_price(
        entry, shape.service_tier, long_context_beta=long_context_beta, unpriced=shape.unpriced
    )
    window = entry.context_window
    if shape.unseen and not entry.free and (unseen_input is UnseenInput.REFUSE or window is None):
        why = (
            "the gateway is configured to refuse such requests"
            if unseen_input is UnseenInput.REFUSE
            else f"the catalog has no context_window for {entry.name}"
        )
        raise Unbounded(
            f"this request brings in input the gateway cannot see "
            f"({', '.join(shape.unseen)}), so its cost has no upper bound: {why}"
        )
    if shape.files and window is None and not entry.free:
        raise Unbounded(
            f"file, document and audio parts cannot be bounded for {entry.name}: "
            "the catalog has no context_window for it"
        )
    image_each = entry.image_input_tokens or window
    if shape.images and image_each is None and not entry.free:
        raise Unbounded(
            f"image parts cannot be bounded for {entry.name}: the catalog has neither "
            "image_input_tokens nor context_window for it"
        )
    input_tokens = shape.text_tokens + shape.images * (image_each or 0)
    input_tokens += shape.files * (window or 0)
    if window is not None:
        input_tokens = window if shape.unseen else min(input_tokens, window)

    model_max = entry.max_output_tokens
    inject: int | None = None
    if entry.embedding:
        per_choice = 0
    elif shape.max_output is not None:
        per_choice = min(shape.max_output, model_max)
    elif shape.cap_field is not None:
        per_choice = inject = min(entry.default_max_output_tokens or default_max_output, model_max)
    else:  # Anthropic: max_tokens is required, the provider refuses (and bills) nothing
        per_choice = model_max
    return Bound(
        input_tokens=input_tokens,
        output_tokens=per_choice * shape.choices,
        inject_max_output=inject,
        cap_field=shape.cap_field if inject is not None else None,
        price=price,
        reserve_price=price if shape.cache_1h else _without_1h(price),
    )
