"""OpenAI chat completions, legacy completions and embeddings, built as pure values.

Shapes copy real OpenAI output (the recorded transcripts in `shared/fixtures/recorded-openai`,
beside the repository): chat streams carry `"usage": null` on every chunk and a final
`"choices": []` usage chunk only when the request set `stream_options.include_usage`; cached
tokens are inside `prompt_tokens`, reasoning tokens inside `completion_tokens`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from collections.abc import Iterator
from typing import Any

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.content import (
    OutputPlan,
    billed_input,
    estimate_input_tokens,
    include_usage,
    max_tokens_of,
    plan_output,
    require_field,
    require_model,
    wants_stream,
)
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import DONE_EVENT, Reply, ReplyContext, StreamReply, json_reply, sse

DEFAULT_EMBEDDING_DIMENSIONS = 8
MAX_EMBEDDING_DIMENSIONS = 4096


def chat_usage(
    base_input: int, cached: int, plan: OutputPlan, choices: int = 1, writes: int = 0
) -> dict[str, Any]:
    """Usage of a chat completion; `choices` (n) each generate the plan's output. Cache writes
    (GPT-5.6 and later) are inside `prompt_tokens` like cache reads."""
    prompt = base_input + cached + writes
    output = plan.output_tokens * choices
    details: dict[str, Any] = {"cached_tokens": cached, "audio_tokens": 0}
    if writes:
        details["cache_write_tokens"] = writes
    return {
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": details,
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning_tokens * choices,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion_usage(base_input: int, plan: OutputPlan) -> dict[str, Any]:
    return {
        "prompt_tokens": base_input,
        "completion_tokens": plan.output_tokens,
        "total_tokens": base_input + plan.output_tokens,
    }


def _finish_reason(plan: OutputPlan) -> str:
    return "length" if plan.truncated else "stop"


def chat_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """POST /v1/chat/completions. JSON replies honour `n` (each choice generates the plan)."""
    model = require_model(body)
    messages = require_field(body, "messages")
    stream = wants_stream(body)
    controls = ctx.controls
    limit = max_tokens_of(body, "max_completion_tokens", "max_tokens")
    plan = plan_output(controls.output_tokens, controls.reasoning_tokens, limit)
    requested_n = body.get("n")
    n = requested_n if isinstance(requested_n, int) and requested_n > 0 and not stream else 1
    usage = None
    base_input = billed_input(controls.input_tokens, messages)
    if not controls.omit_usage:
        writes = controls.cache_write_tokens
        usage = chat_usage(base_input, controls.cached_tokens, plan, n, writes)
    bill = Bill(
        input_tokens=base_input,
        cached_input_tokens=controls.cached_tokens,
        reasoning_tokens=plan.reasoning_tokens * n,
        words=len(plan.words) * n,
    )
    response_id = f"chatcmpl-mock{ctx.suffix}"
    tier = controls.service_tier or "default"
    if stream:
        events = chat_chunks(
            response_id, ctx.created, model, plan, include_usage(body), usage, tier
        )
        return StreamReply(tuple(events), bill=bill)
    payload: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": model,
        "choices": [
            {
                "index": index,
                "message": {
                    "role": "assistant",
                    "content": plan.text,
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": _finish_reason(plan),
            }
            for index in range(n)
        ],
    }
    if usage is not None:
        payload["usage"] = usage
    payload.update(service_tier=tier, system_fingerprint=None)
    return json_reply(payload, bill=bill)


def chat_chunks(
    response_id: str,
    created: int,
    model: str,
    plan: OutputPlan,
    with_usage: bool,
    usage: dict[str, Any] | None,
    service_tier: str = "default",
) -> Iterator[bytes]:
    """The SSE events of a streamed chat completion, `data: [DONE]` included."""
    head = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": service_tier,
        "system_fingerprint": None,
    }
    tail = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return sse({**head, "choices": [choice], **tail})

    yield chunk({"role": "assistant", "content": "", "refusal": None}, None)
    for word in plan.words:
        yield chunk({"content": word}, None)
    yield chunk({}, _finish_reason(plan))
    if with_usage and usage is not None:
        yield sse({**head, "choices": [], "usage": usage})
    yield DONE_EVENT


def completion_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """POST /v1/completions (legacy). One choice; reasoning and cache headers do not apply."""
    model = require_model(body)
    stream = wants_stream(body)
    controls = ctx.controls
    plan = plan_output(controls.output_tokens, 0, max_tokens_of(body, "max_tokens"))
    usage = None
    base_input = estimate_input_tokens(body.get("prompt"))
    if not controls.omit_usage:
        usage = completion_usage(base_input, plan)
    bill = Bill(input_tokens=base_input, words=len(plan.words))
    response_id = f"cmpl-mock{ctx.suffix}"
    if stream:
        events = completion_chunks(
            response_id, ctx.created, model, plan, include_usage(body), usage
        )
        return StreamReply(tuple(events), bill=bill)
    payload: dict[str, Any] = {
        "id": response_id,
        "object": "text_completion",
        "created": ctx.created,
        "model": model,
        "choices": [
            {
                "text": plan.text,
                "index": 0,
                "logprobs": None,
                "finish_reason": _finish_reason(plan),
            }
        ],
    }
    if usage is not None:
        payload["usage"] = usage
    return json_reply(payload, bill=bill)


def completion_chunks(
    response_id: str,
    created: int,
    model: str,
    plan: OutputPlan,
    with_usage: bool,
    usage: dict[str, Any] | None,
) -> Iterator[bytes]:
    """Legacy completion stream: one chunk per word, the last one carrying finish_reason."""
    head = {"id": response_id, "object": "text_completion", "created": created}
    tail = {"usage": None} if with_usage else {}
    words = plan.words or ("",)
    for i, word in enumerate(words):
        finish = _finish_reason(plan) if i == len(words) - 1 else None
        choice = {"text": word, "index": 0, "logprobs": None, "finish_reason": finish}
        yield sse({**head, "choices": [choice], "model": model, **tail})
    if with_usage and usage is not None:
        yield sse({**head, "model": model, "usage": usage, "choices": []})
    yield DONE_EVENT


def _embedding_items(value: Any) -> list[Any]:
    """The separate inputs of an embeddings request: a string, a token list, or a list of those."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return [value]
    if isinstance(value, list) and value:
        return list(value)
    raise ApiError(400, "'input' must be a non-empty string or array", param="input")


def embedding_vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic unit-length vector for one input (float32-exact values)."""
    seed = repr(item).encode()
    raw = b""
    counter = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.sha256(seed + counter.to_bytes(4, "big")).digest()
        counter += 1
    ints = struct.unpack(f">{dimensions}I", raw[: 4 * dimensions])
    values = [i / 0xFFFFFFFF * 2 - 1 for i in ints]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    unit = [v / norm for v in values]
    return list(struct.unpack(f"<{dimensions}f", struct.pack(f"<{dimensions}f", *unit)))


def embeddings_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """POST /v1/embeddings; `encoding_format: base64` gives little-endian float32 as base64."""
    model = require_model(body)
    items = _embedding_items(require_field(body, "input"))
    dimensions = body.get("dimensions", DEFAULT_EMBEDDING_DIMENSIONS)
    if (
        isinstance(dimensions, bool)
        or not isinstance(dimensions, int)
        or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS
    ):
        raise ApiError(400, "Invalid 'dimensions'.", param="dimensions")
    as_base64 = body.get("encoding_format") == "base64"
    data = []
    for index, item in enumerate(items):
        vector = embedding_vector(item, dimensions)
        encoded: Any = vector
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{dimensions}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    payload: dict[str, Any] = {"object": "list", "data": data, "model": model}
    tokens = estimate_input_tokens(body["input"])
    if not ctx.controls.omit_usage:
        payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
    return json_reply(payload, bill=Bill(input_tokens=tokens))
