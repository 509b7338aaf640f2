"""AWS Bedrock's Converse API (`POST /model/{id}/converse` and `/model/{id}/converse-stream`),
built as pure values. The SigV4 check is bedrock_api.py's, as for InvokeModel.

The body is Converse's own: `messages` (required, each with a `content` list), no `modelId`
(it is in the path; Bedrock refuses unknown keys), `inferenceConfig.maxTokens` optional. The
answer is `output.message`, `stopReason` and `usage` (`inputTokens` beside the cache reads and
writes, as Bedrock counts them) and `metrics`; the stream is `messageStart`,
`contentBlockDelta` per word, `contentBlockStop`, `messageStop`, then `metadata` with the
usage, each an event-stream frame whose payload is the event's JSON. `x-mock-omit-usage` leaves
out `usage` (JSON) or the whole `metadata` event (stream).
"""

from __future__ import annotations

from typing import Any

from gateway_extproc.mock.billing import Bill
from gateway_extproc.mock.content import billed_input, plan_output
from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.eventstream import CONTENT_TYPE, event_frame
from gateway_extproc.mock.wire import Reply, ReplyContext, StreamReply, json_reply

_KEYS = frozenset(
    {
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "promptVariables",
        "requestMetadata",
        "performanceConfig",
    }
)


def _max_tokens(body: dict[str, Any]) -> int | None:
    config = body.get("inferenceConfig") or {}
    if not isinstance(config, dict):
        raise ApiError(400, "inferenceConfig: expected an object")
    value = config.get("maxTokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ApiError(400, "inferenceConfig.maxTokens: must be an integer of at least 1")
    return value


def converse_usage(input_tokens: int, cached: int, cache_write: int, output: int) -> dict[str, int]:
    return {
        "inputTokens": input_tokens,
        "outputTokens": output,
        "totalTokens": input_tokens + cached + cache_write + output,
        "cacheReadInputTokens": cached,
        "cacheWriteInputTokens": cache_write,
    }


def converse_reply(model_id: str, stream: bool, body: dict[str, Any], ctx: ReplyContext) -> Reply:
    """Converse (`stream` False) or ConverseStream for a parsed body; `model_id` from the path."""
    extra = sorted(set(body) - _KEYS)
    if extra:
        raise ApiError(400, f"extraneous key [{extra[0]}] is not permitted")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: must be a non-empty list")
    controls = ctx.controls
    plan = plan_output(controls.output_tokens, 0, _max_tokens(body))
    base_input = billed_input(controls.input_tokens, messages)
    usage = converse_usage(
        base_input, controls.cached_tokens, controls.cache_write_tokens, plan.output_tokens
    )
    bill = Bill(
        input_tokens=base_input,
        cached_input_tokens=controls.cached_tokens,
        cache_write_input_tokens=controls.cache_write_tokens,
        words=len(plan.words),
    )
    reason = "max_tokens" if plan.truncated else "end_turn"
    metrics = {"latencyMs": 100}
    if not stream:
        answer: dict[str, Any] = {
            "output": {"message": {"role": "assistant", "content": [{"text": plan.text}]}},
            "stopReason": reason,
            "metrics": metrics,
        }
        if not controls.omit_usage:
            answer["usage"] = usage
        return json_reply(answer, bill=bill)
    frames = [event_frame("messageStart", {"role": "assistant"})]
    for word in plan.words:
        delta = {"delta": {"text": word}, "contentBlockIndex": 0}
        frames.append(event_frame("contentBlockDelta", delta))
    frames.append(event_frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(event_frame("messageStop", {"stopReason": reason}))
    if not controls.omit_usage:
        frames.append(event_frame("metadata", {"usage": usage, "metrics": metrics}))
    return StreamReply(tuple(frames), content_type=CONTENT_TYPE, bill=bill)
