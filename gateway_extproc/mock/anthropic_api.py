"""Anthropic Messages API (POST /v1/messages), built as pure values.

Usage as Anthropic reports it: `input_tokens` excludes cache reads and writes, which are reported
beside it (`cache_read_input_tokens`, `cache_creation_input_tokens`, the latter the sum of the
`cache_creation` breakdown into 5-minute and 1-hour writes). A stream's `message_start`
carries the input side and `output_tokens: 1`; `message_delta` carries the final cumulative
`output_tokens`. With `x-mock-omit-usage` the `usage` keys are left out entirely (the SDK's
`messages.stream()` helper needs them; read such streams with `create(stream=True)`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.content import (
    UNKNOWN_MODEL_PREFIXES,
    OutputPlan,
    billed_input,
    max_tokens_of,
    plan_output,
    wants_stream,
)
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import Reply, ReplyContext, StreamReply, json_reply, sse


def anthropic_usage(
    input_tokens: int,
    cache_read: int,
    cache_write: int,
    output_tokens: int,
    cache_write_1h: int = 0,
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write + cache_write_1h,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": cache_write,
            "ephemeral_1h_input_tokens": cache_write_1h,
        },
        "output_tokens": output_tokens,
    }


def _require(body: dict[str, Any], name: str) -> Any:
    if body.get(name) is None:
        raise ApiError(400, f"{name}: Field required", param=name)
    return body[name]


def _model(body: dict[str, Any]) -> str:
    model = _require(body, "model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model: Input should be a valid string", param="model")
    if model.startswith(UNKNOWN_MODEL_PREFIXES):
        raise ApiError(404, f"model: {model}", code="model_not_found")
    return model


# The input of the tool a reply calls (x-mock-tool-use), and how its stream splits it.
TOOL_INPUT = {"query": "mock"}
_TOOL_JSON_PARTS = ('{"query": ', '"mock"}')


def _stop_reason(plan: OutputPlan, tool: str | None = None) -> str:
    if plan.truncated:
        return "max_tokens"
    return "end_turn" if tool is None else "tool_use"


def _tool_block(tool: str, suffix: str) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_mock{suffix}", "name": tool, "input": {}}


def messages_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    model = _model(body)
    messages = _require(body, "messages")
    limit = max_tokens_of(body, "max_tokens")
    if limit is None:
        raise ApiError(400, "max_tokens: Field required", param="max_tokens")
    stream = wants_stream(body)
    controls = ctx.controls
    plan = plan_output(controls.output_tokens, 0, limit)
    base_input = billed_input(controls.input_tokens, messages)
    message_id = f"msg_mock{ctx.suffix}"
    omit = controls.omit_usage

    def usage(output_tokens: int) -> dict[str, Any]:
        return anthropic_usage(
            base_input,
            controls.cached_tokens,
            controls.cache_write_tokens,
            output_tokens,
            controls.cache_write_1h_tokens,
        )

    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
    }
    bill = Bill(
        input_tokens=base_input,
        cached_input_tokens=controls.cached_tokens,
        cache_write_input_tokens=controls.cache_write_tokens,
        cache_write_1h_input_tokens=controls.cache_write_1h_tokens,
        words=len(plan.words),
    )
    if stream:
        if not omit:
            message["usage"] = usage(1)
        final_usage = None if omit else {"output_tokens": plan.output_tokens}
        tool = None if controls.tool_use is None else _tool_block(controls.tool_use, ctx.suffix)
        events = message_events(message, plan, final_usage, tool)
        return StreamReply(tuple(events), bill=bill)
    content: list[dict[str, Any]] = [{"type": "text", "text": plan.text}]
    if controls.tool_use is not None:
        content.append({**_tool_block(controls.tool_use, ctx.suffix), "input": TOOL_INPUT})
    message.update(content=content, stop_reason=_stop_reason(plan, controls.tool_use))
    if not omit:
        message["usage"] = usage(plan.output_tokens)
    return json_reply(message, bill=bill)


def message_events(
    start: dict[str, Any],
    plan: OutputPlan,
    final_usage: dict[str, Any] | None,
    tool: dict[str, Any] | None = None,
) -> Iterator[bytes]:
    """The SSE events of a streamed message, `message_start` to `message_stop`."""
    yield sse({"type": "message_start", "message": start}, event="message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    yield sse(block, event="content_block_start")
    yield sse({"type": "ping"}, event="ping")
    for word in plan.words:
        delta = {"type": "content_block_delta", "index": 0}
        yield sse({**delta, "delta": {"type": "text_delta", "text": word}}, "content_block_delta")
    yield sse({"type": "content_block_stop", "index": 0}, event="content_block_stop")
    if tool is not None:
        start_tool = {"type": "content_block_start", "index": 1, "content_block": tool}
        yield sse(start_tool, event="content_block_start")
        for part in _TOOL_JSON_PARTS:
            delta = {"type": "input_json_delta", "partial_json": part}
            yield sse(
                {"type": "content_block_delta", "index": 1, "delta": delta}, "content_block_delta"
            )
        yield sse({"type": "content_block_stop", "index": 1}, event="content_block_stop")
    end: dict[str, Any] = {
        "type": "message_delta",
        "delta": {
            "stop_reason": _stop_reason(plan, None if tool is None else tool["name"]),
            "stop_sequence": None,
        },
    }
    if final_usage is not None:
        end["usage"] = final_usage
    yield sse(end, event="message_delta")
    yield sse({"type": "message_stop"}, event="message_stop")
