"""OpenAI usage: chat completions, legacy completions, embeddings and the Responses API.

Normalisation (see `tokens.Usage`): OpenAI's input total *includes* cache reads and cache writes
(`cached_tokens`, `cache_write_tokens`, GPT-5.6 and later), so `input_tokens = prompt_tokens -
cached_tokens - cache_write_tokens`; its output total includes reasoning tokens, which `Usage`
keeps the same way (`output_tokens = completion_tokens`, `reasoning_tokens = reasoning`). Audio
and prediction tokens stay inside the totals they are part of. The `service_tier` a response
reports (the tier it was served and billed at) is read too.
"""

from __future__ import annotations

from gateway_extproc.metering_common import (
    JsonMeterResult,
    count,
    nonempty_str,
    note_finish_reasons,
    ordered,
    text_len,
    total_and_part,
    usage_or_none,
)
from gateway_extproc.tokens import Usage

__all__ = [
    "OpenAIChatStream",
    "OpenAIResponsesStream",
    "meter_openai_chat_json",
    "meter_openai_responses_json",
    "usage_from_openai",
    "usage_from_openai_responses",
]


def usage_from_openai(obj: object) -> Usage | None:
    """Usage of a chat completion, legacy completion or embedding (`prompt_tokens`,
    `completion_tokens` and their `*_details`). None when `obj` holds no valid count."""
    if not isinstance(obj, dict):
        return None
    details = obj.get("prompt_tokens_details")
    return _normalise(
        count(obj, "prompt_tokens"),
        count(details, "cached_tokens"),
        count(obj, "completion_tokens"),
        count(obj.get("completion_tokens_details"), "reasoning_tokens"),
        count(details, "cache_write_tokens"),
    )


def usage_from_openai_responses(obj: object) -> Usage | None:
    """Usage of a Responses API response (`input_tokens`, `output_tokens` and their `*_details`).
    None when `obj` holds no valid count."""
    if not isinstance(obj, dict):
        return None
    details = obj.get("input_tokens_details")
    return _normalise(
        count(obj, "input_tokens"),
        count(details, "cached_tokens"),
        count(obj, "output_tokens"),
        count(obj.get("output_tokens_details"), "reasoning_tokens"),
        count(details, "cache_write_tokens"),
    )


def _normalise(
    prompt: int | None,
    cached: int | None,
    completion: int | None,
    reasoning: int | None,
    writes: int | None = None,
) -> Usage | None:
    seen = not (prompt is None and cached is None and completion is None and reasoning is None)
    prompt_total, cached = total_and_part(prompt, cached)
    _, written = total_and_part(prompt_total - cached, writes)  # the rest of the input total
    completion_total, reasoning = total_and_part(completion, reasoning)
    return usage_or_none(
        seen,
        input_tokens=prompt_total - cached - written,
        cached_input_tokens=cached,
        cache_write_input_tokens=written,
        output_tokens=completion_total,
        reasoning_tokens=reasoning,
    )


def _message_chars(message: object) -> int:
    """Generated characters in a chat `message` or streamed `delta`: text, refusal, reasoning
    (OpenAI-compatible providers stream `reasoning_content` / `reasoning`), tool-call arguments
    and audio transcripts (not the audio itself)."""
    if not isinstance(message, dict):
        return 0
    n = (
        text_len(message.get("content"))
        + text_len(message.get("refusal"))
        + text_len(message.get("reasoning_content"))
        + text_len(message.get("reasoning"))
    )
    tool_calls = message.get("tool_calls")
    if isinstance(tool_calls, list):
        for call in tool_calls:
            if isinstance(call, dict):
                function = call.get("function")
                if isinstance(function, dict):
                    n += text_len(function.get("arguments"))
    function_call = message.get("function_call")  # deprecated single-function form
    if isinstance(function_call, dict):
        n += text_len(function_call.get("arguments"))
    audio = message.get("audio")
    if isinstance(audio, dict):
        n += text_len(audio.get("transcript"))
    return n


def _choices_chars(choices: object, key: str) -> int:
    """Generated characters over `choices[]`: `choice[key]` (chat) plus `choice.text` (legacy)."""
    if not isinstance(choices, list):
        return 0
    n = 0
    for choice in choices:
        if isinstance(choice, dict):
            n += _message_chars(choice.get(key)) + text_len(choice.get("text"))
    return n


def meter_openai_chat_json(obj: dict[str, object]) -> JsonMeterResult:
    """A non-streamed chat completion, legacy completion or embeddings response."""
    reasons: dict[int, str] = {}
    note_finish_reasons(obj.get("choices"), reasons)
    return JsonMeterResult(
        usage=usage_from_openai(obj.get("usage")),
        served_model=nonempty_str(obj.get("model")),
        output_chars=_choices_chars(obj.get("choices"), "message"),
        response_id=nonempty_str(obj.get("id")),
        finish_reasons=ordered(reasons),
        service_tier=nonempty_str(obj.get("service_tier")),
    )


def _responses_finish(response: dict[str, object]) -> tuple[str, ...]:
    """A Responses API response's end: `incomplete_details.reason`, else its `status`."""
    details = response.get("incomplete_details")
    reason = nonempty_str(details.get("reason")) if isinstance(details, dict) else None
    reason = reason or nonempty_str(response.get("status"))
    return (reason[:64],) if reason else ()


def meter_openai_responses_json(obj: dict[str, object]) -> JsonMeterResult:
    """A non-streamed Responses API response (the response object itself)."""
    return JsonMeterResult(
        usage=usage_from_openai_responses(obj.get("usage")),
        served_model=nonempty_str(obj.get("model")),
        output_chars=_output_items_chars(obj.get("output")),
        response_id=nonempty_str(obj.get("id")),
        finish_reasons=_responses_finish(obj),
        service_tier=nonempty_str(obj.get("service_tier")),
    )


def _output_items_chars(output: object) -> int:
    """Generated characters in a response's `output[]`: message text and refusals, reasoning
    summaries and text, function-call arguments, custom-tool input."""
    if not isinstance(output, list):
        return 0
    n = 0
    for item in output:
        if not isinstance(item, dict):
            continue
        n += text_len(item.get("arguments")) + text_len(item.get("input"))
        for key in ("content", "summary"):
            parts = item.get(key)
            if isinstance(parts, list):
                for part in parts:
                    if isinstance(part, dict):
                        n += text_len(part.get("text")) + text_len(part.get("refusal"))
    return n


class OpenAIChatStream:
    """Chat completions and legacy completions streams (`data:` chunks, then `data: [DONE]`).

    Usage arrives in a chunk with a non-null `usage` (with `stream_options.include_usage`, the
    last chunk, whose `choices` is empty); the latest valid one wins.
    """

    __slots__ = (
        "_reasons",
        "_usage",
        "completed",
        "output_chars",
        "response_id",
        "served_model",
        "service_tier",
    )

    def __init__(self) -> None:
        self.served_model: str | None = None
        self.response_id: str | None = None
        self.service_tier: str | None = None
        self.output_chars = 0
        self.completed = False
        self._usage: Usage | None = None
        self._reasons: dict[int, str] = {}

    def on_json(self, event: str | None, obj: dict[str, object]) -> None:
        if self.served_model is None:
            self.served_model = nonempty_str(obj.get("model"))  # Azure's first chunk has ""
        if self.response_id is None:
            self.response_id = nonempty_str(obj.get("id"))
        self.service_tier = nonempty_str(obj.get("service_tier")) or self.service_tier
        raw_usage = obj.get("usage")
        if raw_usage is not None:
            usage = usage_from_openai(raw_usage)
            if usage is not None:
                self._usage = usage
        choices = obj.get("choices")
        self.output_chars += _choices_chars(choices, "delta")
        note_finish_reasons(choices, self._reasons)

    def finish_reasons(self) -> tuple[str, ...]:
        return ordered(self._reasons)

    def on_done(self) -> None:
        self.completed = True

    def usage(self) -> Usage | None:
        return self._usage


# Terminal events of a Responses stream; each carries the final response with its usage.
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


class OpenAIResponsesStream:
    """Responses API streams (`event: response.created` ... `event: response.completed`).

    Usage comes from the terminal event's `response.usage`. Generated characters are the `delta`
    strings of every `*.delta` event (text, refusal, reasoning, function-call arguments, ...)
    except `response.audio.delta`, which is base64 audio.
    """

    __slots__ = (
        "_finish",
        "_usage",
        "completed",
        "output_chars",
        "response_id",
        "served_model",
        "service_tier",
    )

    def __init__(self) -> None:
        self.served_model: str | None = None
        self.response_id: str | None = None
        self.service_tier: str | None = None  # the latest event's (the terminal one's at the end)
        self.output_chars = 0
        self.completed = False
        self._usage: Usage | None = None
        self._finish: tuple[str, ...] = ()

    def finish_reasons(self) -> tuple[str, ...]:
        return self._finish

    def on_json(self, event: str | None, obj: dict[str, object]) -> None:
        kind = obj.get("type")
        if not isinstance(kind, str):
            kind = event or ""
        if kind.endswith(".delta"):
            if kind != "response.audio.delta":
                self.output_chars += text_len(obj.get("delta"))
            return
        response = obj.get("response")
        if not isinstance(response, dict):
            return
        if self.served_model is None:
            self.served_model = nonempty_str(response.get("model"))
        if self.response_id is None:
            self.response_id = nonempty_str(response.get("id"))
        self.service_tier = nonempty_str(response.get("service_tier")) or self.service_tier
        if kind in _RESPONSES_TERMINAL:
            self.completed = True
            self._finish = _responses_finish(response)
            usage = usage_from_openai_responses(response.get("usage"))
            if usage is not None:
                self._usage = usage

    def on_done(self) -> None:
        pass  # not part of this protocol

    def usage(self) -> Usage | None:
        return self._usage
