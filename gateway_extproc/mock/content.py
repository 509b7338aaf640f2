"""Deterministic reply content and token counts, and request-field checks shared by all APIs.

Pure. The invariants tests rely on:
- the reply is `output_words(n)`: n words, each with its trailing space, one per streamed delta;
  one word is one output token;
- input tokens are `estimate_input_tokens(field)` = ceil(len(compact UTF-8 JSON of the field) / 4),
  at least 1, where the field is `messages` (chat, Anthropic), `prompt` (completions) or `input`
  (embeddings, responses); as the providers count them, a token-id array is one token per id,
  and an image part (`image_url`, `input_image`, `image`) is IMAGE_PART_TOKENS (a 1024x1024
  high-detail image on gpt-4o: 85 + 4 x 170) instead of its JSON.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson

from gateway_extproc.mock.errors import ApiError, unknown_model

WORDS = (
    "Hello",
    "from",
    "the",
    "mock",
    "provider.",
    "This",
    "reply",
    "is",
    "deterministic,",
    "one",
    "token",
    "per",
    "word,",
    "so",
    "metering",
    "can",
    "be",
    "checked",
    "exactly.",
)
UNKNOWN_MODEL_PREFIXES = ("unknown-", "does-not-exist")


def output_words(count: int) -> tuple[str, ...]:
    """`count` words cycling through WORDS, each followed by one space."""
    return tuple(WORDS[i % len(WORDS)] + " " for i in range(count))


IMAGE_PART_TOKENS = 765
_IMAGE_TYPES = ("image_url", "input_image", "image")


def _token_ids(field: Any) -> int | None:
    if isinstance(field, list) and field:
        if all(isinstance(x, int) and not isinstance(x, bool) for x in field):
            return len(field)
        counts = [_token_ids(x) for x in field]
        if all(c is not None for c in counts):
            return sum(c for c in counts if c is not None)
    return None


def estimate_input_tokens(field: Any) -> int:
    """ceil(len(compact UTF-8 JSON of `field`) / 4), at least 1; 1 when the field is absent.
    Token-id arrays count one per id; image parts IMAGE_PART_TOKENS each."""
    if field is None:
        return 1
    ids = _token_ids(field)
    if ids is not None:
        return ids
    images = 0

    def without_images(value: Any) -> Any:
        nonlocal images
        if isinstance(value, dict):
            if value.get("type") in _IMAGE_TYPES:
                images += 1
                return None
            return {k: without_images(v) for k, v in value.items()}
        if isinstance(value, list):
            return [without_images(v) for v in value]
        return value

    text = orjson.dumps(without_images(field))
    return max(1, math.ceil(len(text) / 4)) + images * IMAGE_PART_TOKENS


def billed_input(override: int | None, field: Any) -> int:
    """The input tokens a reply reports: a test's `x-mock-input-tokens`, else the mock's count."""
    return estimate_input_tokens(field) if override is None else override


@dataclasses.dataclass(frozen=True, slots=True)
class OutputPlan:
    """What the mock will generate: visible words plus hidden reasoning tokens."""

    words: tuple[str, ...]
    reasoning_tokens: int
    truncated: bool  # the request's max-tokens limit cut the reply short

    @property
    def text(self) -> str:
        return "".join(self.words)

    @property
    def output_tokens(self) -> int:
        """All generated tokens, reasoning included (as OpenAI and Anthropic count them)."""
        return len(self.words) + self.reasoning_tokens


def plan_output(requested: int, reasoning: int, max_tokens: int | None) -> OutputPlan:
    """Reasoning is generated first, then words, until `max_tokens` (if any) is used up."""
    if max_tokens is None:
        return OutputPlan(output_words(requested), reasoning, truncated=False)
    kept_reasoning = min(reasoning, max_tokens)
    kept_words = min(requested, max_tokens - kept_reasoning)
    truncated = kept_reasoning + kept_words < reasoning + requested
    return OutputPlan(output_words(kept_words), kept_reasoning, truncated)


def require_model(body: dict[str, Any]) -> str:
    """The request's model; 400 when missing, 404 for names the mock treats as unknown."""
    model = body.get("model")
    if model is None or model == "":
        raise ApiError(400, "you must provide a model parameter", param="model")
    if not isinstance(model, str):
        raise ApiError(400, "model: expected a string", param="model", code="invalid_type")
    if model.startswith(UNKNOWN_MODEL_PREFIXES):
        raise unknown_model(model)
    return model


def require_field(body: dict[str, Any], name: str) -> Any:
    """A required request field; 400 `missing_required_parameter` when absent."""
    if body.get(name) is None:
        raise ApiError(
            400,
            f"Missing required parameter: '{name}'.",
            param=name,
            code="missing_required_parameter",
        )
    return body[name]


def max_tokens_of(body: dict[str, Any], *names: str) -> int | None:
    """The first present max-tokens field among `names`; 400 unless a positive integer."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(
                400,
                f"Invalid '{name}': expected an integer greater than or equal to 1.",
                param=name,
                code="integer_below_min_value",
            )
        return value
    return None


def wants_stream(body: dict[str, Any]) -> bool:
    value = body.get("stream", False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, "stream: expected a boolean", param="stream", code="invalid_type")
    return value


def include_usage(body: dict[str, Any]) -> bool:
    """OpenAI `stream_options.include_usage`."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; 400 otherwise."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body
