"""Google's Gemini API (POST /{v1beta|v1}/models/{model}:generateContent and
`:streamGenerateContent?alt=sse`), built as pure values.

The model is in the path, not the body. Usage as Google reports it in `usageMetadata`:
`promptTokenCount` *includes* `cachedContentTokenCount`; `candidatesTokenCount` *excludes*
`thoughtsTokenCount` (billed as output). A stream's events are whole `GenerateContentResponse`s
separated by CRLF blank lines, with no `[DONE]`; every event carries the running `usageMetadata`
(so a gateway that summed them would overcount), the last one the totals and the `finishReason`.
Thinking (`x-mock-reasoning-tokens`) counts against `maxOutputTokens`, as on Gemini 2.5.
`x-mock-tool-use: NAME` adds a `functionCall` part after the text (in a stream, to the last
event), with the arguments `{"query": "mock"}`; Gemini's finishReason stays STOP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.content import (
    UNKNOWN_MODEL_PREFIXES,
    OutputPlan,
    billed_input,
    plan_output,
)
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import Reply, ReplyContext, StreamReply, json_reply

TOOL_ARGS = {"query": "mock"}  # the arguments of the function a reply calls (x-mock-tool-use)


def gemini_sse(data: Any) -> bytes:
    """One event as Google writes it: a `data:` line and a CRLF blank line."""
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def _limit(body: dict[str, Any]) -> int | None:
    config = body.get("generationConfig")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise ApiError(400, "Invalid value at 'generation_config': expected an object")
    value = config.get("maxOutputTokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ApiError(400, "Invalid value at 'generation_config.max_output_tokens'")
    return value


def _usage(prompt: int, cached: int, plan: OutputPlan, words: int) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": words,
        "totalTokenCount": prompt + words + plan.reasoning_tokens,
    }
    if plan.reasoning_tokens:
        usage["thoughtsTokenCount"] = plan.reasoning_tokens
    if cached:
        usage["cachedContentTokenCount"] = cached
    return usage


def generate_reply(
    body: dict[str, Any], ctx: ReplyContext, *, model: str, stream: bool, version: str
) -> Reply:
    if model.startswith(UNKNOWN_MODEL_PREFIXES):
        raise ApiError(
            404,
            f"models/{model} is not found for API version {version}, or is not supported "
            "for generateContent.",
        )
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise ApiError(400, "* GenerateContentRequest.contents: contents is not specified")
    controls = ctx.controls
    plan = plan_output(controls.output_tokens, controls.reasoning_tokens, _limit(body))
    cached = controls.cached_tokens
    prompt = billed_input(controls.input_tokens, contents) + cached
    response_id = f"mock{ctx.suffix}"
    bill = Bill(
        input_tokens=prompt - cached,
        cached_input_tokens=cached,
        reasoning_tokens=plan.reasoning_tokens,
        words=len(plan.words),
    )
    finish = "MAX_TOKENS" if plan.truncated else "STOP"

    def response(text: str, words: int, finish_reason: str | None) -> dict[str, Any]:
        parts: list[dict[str, Any]] = [{"text": text}]
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish_reason is not None:
            candidate["finishReason"] = finish_reason
            if controls.tool_use is not None:
                parts.append({"functionCall": {"name": controls.tool_use, "args": TOOL_ARGS}})
        doc: dict[str, Any] = {"candidates": [candidate]}
        if not controls.omit_usage:
            doc["usageMetadata"] = _usage(prompt, cached, plan, words)
        doc["modelVersion"] = model
        doc["responseId"] = response_id
        return doc

    if stream:
        return StreamReply(tuple(_events(plan, response, finish)), bill=bill)
    return json_reply(response(plan.text, len(plan.words), finish), bill=bill)


def _events(plan: OutputPlan, response: Any, finish: str) -> Iterator[bytes]:
    words = plan.words or ("",)
    for i, word in enumerate(words):
        last = i == len(words) - 1
        yield gemini_sse(response(word, i + 1 if plan.words else 0, finish if last else None))
