"""Request side, pure: parse a provider request body and prepare what goes upstream.

No I/O. The body is parsed once; it is re-serialised only when the gateway changes it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson

from gateway_extproc.apis import Api, Schema
from gateway_extproc.cost.shape import Shape, shape_of
from gateway_extproc.errors import BadRequest, UnsupportedOption
from gateway_extproc.providers.bedrock import converse
from gateway_extproc.providers.gemini import texts as gemini_texts
from gateway_extproc.providers.gemini.paths import parse_path
from gateway_extproc.providers.gemini.request import gemini_request, gemini_shape, with_cap

# Characters per token for estimates (the usual rule of thumb for English text with BPE
# tokenizers), and the fixed estimate for one non-text part (image, audio, file).
CHARS_PER_TOKEN = 4
TOKENS_PER_MEDIA_PART = 1000
TOKENS_PER_MESSAGE = 4
_MEDIA_KEYS = frozenset({"image_url", "source", "input_audio", "file_data", "file", "image"})
_TEXT_FIELDS = ("messages", "system", "input", "prompt", "instructions", "tools", "suffix")


@dataclasses.dataclass(frozen=True, slots=True)
class ParsedRequest:
    api: Api
    body: dict[str, Any]
    model: str
    stream: bool
    max_output_tokens: int | None  # what the request allows; None when it does not say
    input_tokens_estimate: int
    wants_usage: bool  # OpenAI streams: the client itself asked for the usage chunk
    shape: Shape  # what bounds the request's worst case (see shape.py)


def _count(value: Any) -> tuple[int, int]:
    """(characters of text, media parts) in a JSON value, iteratively (no recursion limit)."""
    chars = media = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            chars += len(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                is_media = key in _MEDIA_KEYS and (
                    isinstance(sub, dict | list)
                    or (isinstance(sub, str) and sub.startswith("data:"))
                    or (key == "image_url" and isinstance(sub, str))  # Responses: a plain URL
                )
                if is_media:
                    media += 1
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
    return chars, media


def estimate_input_tokens(body: dict[str, Any], api: Api | None = None) -> int:
    if api is not None and api.schema is Schema.GEMINI:
        return _gemini_estimate(body)
    if api in (Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM):
        messages = body.get("messages")
        overhead = TOKENS_PER_MESSAGE * len(messages) if isinstance(messages, list) else 0
        return math.ceil(converse.input_chars(body) / CHARS_PER_TOKEN) + overhead
    chars = media = 0
    for field in _TEXT_FIELDS:
        if field in body:
            c, m = _count(body[field])
            chars += c
            media += m
    messages = body.get("messages")
    overhead = TOKENS_PER_MESSAGE * len(messages) if isinstance(messages, list) else 0
    return math.ceil(chars / CHARS_PER_TOKEN) + media * TOKENS_PER_MEDIA_PART + overhead


def _gemini_estimate(body: dict[str, Any]) -> int:
    """Gemini: the prompt text (system instruction, parts), media parts at the fixed estimate."""
    chars = 0
    for container, key in gemini_texts.text_slots(body):
        text = container[key]  # type: ignore[index]
        chars += len(text) if isinstance(text, str) else 0
    _, shape = gemini_shape(body)
    contents = body.get("contents")
    overhead = TOKENS_PER_MESSAGE * len(contents) if isinstance(contents, list) else 0
    parts = (shape.images + shape.files) * TOKENS_PER_MEDIA_PART
    return math.ceil(chars / CHARS_PER_TOKEN) + parts + overhead


def _int_field(body: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRequest(f"`{name}` must be a non-negative integer")
        return value
    return None


def parse_request(api: Api, raw: bytes, path: str = "") -> ParsedRequest:
    """Parse and check the fields the gateway relies on; raise BadRequest with a clear message.
    `path` is the request's path: Gemini names the model there."""
    return request_of(api, load_body(raw), path)


def load_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object; BadRequest when it is empty, not JSON or not an object."""
    if not raw.strip():
        raise BadRequest("request body is empty: expected a JSON object")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def request_of(api: Api, body: dict[str, Any], path: str = "") -> ParsedRequest:
    """Check the fields of a parsed body the gateway relies on (and of the path, for Gemini)."""
    if api.schema is Schema.GEMINI:
        gemini = gemini_request(api, body, parse_path(path).model)
        return ParsedRequest(
            api=api,
            body=body,
            model=gemini.model,
            stream=gemini.stream,
            max_output_tokens=gemini.max_output,
            input_tokens_estimate=estimate_input_tokens(body, api),
            wants_usage=False,
            shape=gemini.shape,
        )
    if api in (Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM):
        native = converse.converse_request(api, body, converse.parse_model(path))
        return ParsedRequest(
            api=api,
            body=body,
            model=native.model,
            stream=native.stream,
            max_output_tokens=native.max_output,
            input_tokens_estimate=estimate_input_tokens(body, api),
            wants_usage=False,
            shape=native.shape,
        )
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("`model` is required and must be a non-empty string")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("`stream` must be a boolean")
    if api is Api.OPENAI_EMBEDDINGS and stream:
        raise BadRequest("embeddings do not support `stream`")

    if api is Api.OPENAI_CHAT:
        max_out = _int_field(body, "max_completion_tokens", "max_tokens")
    elif api is Api.OPENAI_RESPONSES:
        max_out = _int_field(body, "max_output_tokens")
    elif api is Api.OPENAI_EMBEDDINGS:
        max_out = 0
    else:  # legacy completions and Anthropic messages
        max_out = _int_field(body, "max_tokens")

    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequest("`stream_options` must be an object")
    wants_usage = bool(options and options.get("include_usage") is True)
    if api is Api.OPENAI_RESPONSES and body.get("background") not in (None, False):
        # Streamed too: the provider finishes a background response after the client leaves,
        # and bills all of it; the gateway, metering what passes, would see only the start.
        # Anything but false is refused (a provider may read "true" or 1 as true).
        raise UnsupportedOption(
            "`background: true` is not supported: a background response runs on at the "
            "provider after the client leaves, and the gateway, which meters a response as it "
            "passes, would never see what it was billed"
        )
    try:
        shape = shape_of(api, body, max_out)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    return ParsedRequest(
        api=api,
        body=body,
        model=model,
        stream=stream,
        max_output_tokens=max_out,
        input_tokens_estimate=estimate_input_tokens(body, api),
        wants_usage=wants_usage,
        shape=shape,
    )


def with_body(request: ParsedRequest, body: dict[str, Any]) -> ParsedRequest:
    """The request with another body of the same structure (the guardrails' redacted copy): its
    worst case and estimate are computed again, since a redaction marker can be longer than
    what it replaces."""
    if request.api.schema is Schema.GEMINI:
        _, shape = gemini_shape(body)
    elif request.api.schema is Schema.BEDROCK:
        shape = converse.converse_request(request.api, body, request.model).shape
    else:
        shape = shape_of(request.api, body, request.max_output_tokens)
    return dataclasses.replace(
        request,
        body=body,
        input_tokens_estimate=estimate_input_tokens(body, request.api),
        shape=shape,
    )


def upstream_body(
    request: ParsedRequest,
    served_model: str,
    output_cap: tuple[str, int] | None = None,
    redacted: dict[str, Any] | None = None,
) -> bytes | None:
    """The body to send upstream, or None when the client's bytes can go unchanged.

    Changes: the served model (downgrades); the output cap `(field, tokens)` a budgeted request
    without a limit gets, so the provider enforces the reservation's bound; and, for OpenAI
    chat/completions streams, `stream_options.include_usage` so the provider reports usage at
    the end of the stream; and the guardrails' `redacted` copy of the body, when they redacted.
    """
    body = request.body if redacted is None else redacted
    changed = redacted is not None
    if request.api.schema is Schema.BEDROCK:  # Converse: the model in the path, the cap nested
        if output_cap is not None:
            body = converse.with_cap(body, output_cap[1])
            changed = True
        return orjson.dumps(body) if changed else None
    if request.api.schema is Schema.GEMINI:  # the model is in the path (route.py), the cap nested
        if output_cap is not None:
            body = with_cap(body, *output_cap)
            changed = True
        return orjson.dumps(body) if changed else None
    if body.get("model") != served_model:  # a downgrade, or the model an Azure path named
        body = {**body, "model": served_model}
        changed = True
    if output_cap is not None:
        field, tokens = output_cap
        body = {**body, field: tokens}
        changed = True
    needs_usage = request.api in (Api.OPENAI_CHAT, Api.OPENAI_COMPLETIONS) and request.stream
    if needs_usage and not request.wants_usage:
        options = dict(body.get("stream_options") or {})
        options["include_usage"] = True
        body = {**body, "stream_options": options}
        changed = True
    return orjson.dumps(body) if changed else None
