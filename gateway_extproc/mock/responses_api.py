"""OpenAI Responses API (POST /v1/responses), built as pure values.

Non-stream: a `response` object. Stream: the real event sequence (`response.created`,
`response.in_progress`, output item / content part added, one `response.output_text.delta` per
word, the matching `.done` events, then `response.completed` - or `response.incomplete` when
`max_output_tokens` cut the reply, as OpenAI does), each `event: <type>` with a JSON `data:`
carrying `type` and `sequence_number`. Usage rides on the final event's `response.usage`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.content import (
    OutputPlan,
    billed_input,
    max_tokens_of,
    plan_output,
    require_model,
    wants_stream,
)
from gateway_extproc.mock.wire import Reply, ReplyContext, StreamReply, json_reply, sse


def responses_usage(
    base_input: int, cached: int, plan: OutputPlan, writes: int = 0
) -> dict[str, Any]:
    input_tokens = base_input + cached + writes
    details: dict[str, Any] = {"cached_tokens": cached}
    if writes:
        details["cache_write_tokens"] = writes
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": details,
        "output_tokens": plan.output_tokens,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning_tokens},
        "total_tokens": input_tokens + plan.output_tokens,
    }


class _Builder:
    """Builds the response object and its items for one request."""

    def __init__(self, body: dict[str, Any], ctx: ReplyContext, model: str) -> None:
        controls = ctx.controls
        self.limit = max_tokens_of(body, "max_output_tokens")
        self.plan = plan_output(controls.output_tokens, controls.reasoning_tokens, self.limit)
        self.usage: dict[str, Any] | None = None
        base = billed_input(controls.input_tokens, body.get("input"))
        if not controls.omit_usage:
            writes = controls.cache_write_tokens
            self.usage = responses_usage(base, controls.cached_tokens, self.plan, writes)
        self.service_tier = controls.service_tier or "default"
        self.bill = Bill(
            input_tokens=base,
            cached_input_tokens=controls.cached_tokens,
            reasoning_tokens=self.plan.reasoning_tokens,
            words=len(self.plan.words),
        )
        self.body = body
        self.model = model
        self.created = ctx.created
        self.response_id = f"resp_mock{ctx.suffix}"
        self.message_id = f"msg_mock{ctx.suffix}"
        self.reasoning_id = f"rs_mock{ctx.suffix}"

    @property
    def final_status(self) -> str:
        return "incomplete" if self.plan.truncated else "completed"

    def reasoning_item(self) -> dict[str, Any] | None:
        if not self.plan.reasoning_tokens:
            return None
        return {"id": self.reasoning_id, "type": "reasoning", "summary": []}

    def text_part(self, text: str) -> dict[str, Any]:
        return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}

    def message_item(self, done: bool) -> dict[str, Any]:
        status = self.final_status if done else "in_progress"
        content = [self.text_part(self.plan.text)] if done else []
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "content": content,
            "role": "assistant",
        }

    def outputs(self) -> list[dict[str, Any]]:
        reasoning = self.reasoning_item()
        return ([reasoning] if reasoning else []) + [self.message_item(done=True)]

    def response(self, done: bool) -> dict[str, Any]:
        status = self.final_status if done else "in_progress"
        incomplete = None
        if done and self.plan.truncated:
            incomplete = {"reason": "max_output_tokens"}
        payload: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": incomplete,
            "instructions": self.body.get("instructions"),
            "max_output_tokens": self.limit,
            "model": self.model,
            "output": self.outputs() if done else [],
            "parallel_tool_calls": True,
            "previous_response_id": self.body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": self.service_tier,
            "store": self.body.get("store", True),
            "temperature": self.body.get("temperature", 1.0),
            "text": {"format": {"type": "text"}},
            "tool_choice": "auto",
            "tools": [],
            "top_p": self.body.get("top_p", 1.0),
            "truncation": "disabled",
            "user": None,
            "metadata": self.body.get("metadata") or {},
        }
        if done and self.usage is not None:
            payload["usage"] = self.usage
        elif not done:
            payload["usage"] = None
        return payload


def responses_reply(body: dict[str, Any], ctx: ReplyContext) -> Reply:
    model = require_model(body)
    stream = wants_stream(body)
    builder = _Builder(body, ctx, model)
    if stream:
        return StreamReply(tuple(_events(builder)), bill=builder.bill)
    return json_reply(builder.response(done=True), bill=builder.bill)


def _events(b: _Builder) -> Iterator[bytes]:
    sequence = 0

    def event(kind: str, **fields: Any) -> bytes:
        nonlocal sequence
        data = {"type": kind, "sequence_number": sequence, **fields}
        sequence += 1
        return sse(data, event=kind)

    yield event("response.created", response=b.response(done=False))
    yield event("response.in_progress", response=b.response(done=False))
    index = 0
    reasoning = b.reasoning_item()
    if reasoning is not None:
        yield event("response.output_item.added", output_index=0, item=reasoning)
        yield event("response.output_item.done", output_index=0, item=reasoning)
        index = 1
    where = {"item_id": b.message_id, "output_index": index, "content_index": 0}
    yield event("response.output_item.added", output_index=index, item=b.message_item(False))
    yield event("response.content_part.added", **where, part=b.text_part(""))
    for word in b.plan.words:
        yield event("response.output_text.delta", **where, delta=word, logprobs=[])
    yield event("response.output_text.done", **where, text=b.plan.text, logprobs=[])
    yield event("response.content_part.done", **where, part=b.text_part(b.plan.text))
    yield event("response.output_item.done", output_index=index, item=b.message_item(True))
    yield event(f"response.{b.final_status}", response=b.response(done=True))
