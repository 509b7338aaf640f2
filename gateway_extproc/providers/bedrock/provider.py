"""Bedrock's InvokeModel for Anthropic models as the gateway's `Provider`.

Claude on Bedrock speaks Anthropic's Messages format inside AWS's envelope: a JSON answer is
Anthropic's message JSON, a stream's `chunk` events carry Anthropic's stream events. So the
usage is read by Anthropic's own meter (providers/anthropic/), cache reads and writes
included. Bedrock adds `amazon-bedrock-invocationMetrics` to the last event (`message_stop`):
its token counts are the fallback, used only when the Anthropic usage is missing (a stream cut
before `message_start` reached us cannot have it, and then has no `message_stop` either; in
practice the fallback covers a model build that omits `usage`). They are not summed with it.
"""

from __future__ import annotations

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.providers.anthropic.metering import AnthropicStream, meter_anthropic_json
from gateway_extproc.providers.base import JsonMeterResult, StreamHandler, count, usage_or_none
from gateway_extproc.providers.bedrock.converse import (
    ConverseStream,
    converse_error_body,
    meter_converse_json,
)
from gateway_extproc.providers.bedrock.eventstream import ConverseEventDecoder, EventStreamDecoder
from gateway_extproc.tokens import Usage

METRICS_KEY = "amazon-bedrock-invocationMetrics"


def usage_from_metrics(metrics: object) -> Usage | None:
    """`amazon-bedrock-invocationMetrics` as a `Usage` (None when it holds no valid count)."""
    fields = ("inputTokenCount", "outputTokenCount", "cacheReadInputTokenCount")
    counts = {k: count(metrics, k) for k in (*fields, "cacheWriteInputTokenCount")}
    return usage_or_none(
        any(counts[k] is not None for k in fields[:2]),
        input_tokens=counts["inputTokenCount"] or 0,
        output_tokens=counts["outputTokenCount"] or 0,
        cached_input_tokens=counts["cacheReadInputTokenCount"] or 0,
        cache_write_input_tokens=counts["cacheWriteInputTokenCount"] or 0,
    )


class BedrockStream(AnthropicStream):
    """Anthropic's stream handler, plus Bedrock's invocation metrics as the fallback usage."""

    __slots__ = ("_metrics",)

    def __init__(self) -> None:
        super().__init__()
        self._metrics: Usage | None = None

    def on_json(self, event: str | None, obj: dict[str, object]) -> None:
        super().on_json(event, obj)
        metrics = obj.get(METRICS_KEY)
        if metrics is not None:
            self._metrics = usage_from_metrics(metrics)

    def usage(self) -> Usage | None:
        usage = super().usage()
        return usage if usage is not None else self._metrics


class BedrockProvider:
    schema = Schema.BEDROCK
    apis = frozenset({Api.BEDROCK_INVOKE, Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM})

    def meter_json(self, api: Api, obj: dict[str, object]) -> JsonMeterResult:
        if api is Api.BEDROCK_INVOKE:
            return meter_anthropic_json(obj)
        return meter_converse_json(obj)

    def stream_handler(self, api: Api) -> StreamHandler:
        return BedrockStream() if api is Api.BEDROCK_INVOKE else ConverseStream()

    def stream_decoder(self, api: Api) -> EventStreamDecoder:
        """Its streams are event-stream frames, not SSE (providers/metering.py asks for this)."""
        return EventStreamDecoder() if api is Api.BEDROCK_INVOKE else ConverseEventDecoder()

    def error_body(self, err: ClientError, request_id: str) -> bytes:
        """A client of this schema is boto3's `bedrock-runtime` (Converse): Bedrock's JSON
        error. (Messages clients reaching Bedrock get Anthropic's: their schema is that.)"""
        return converse_error_body(err, request_id)


PROVIDER = BedrockProvider()
