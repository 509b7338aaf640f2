"""Bedrock's native Converse API as an inbound API: `POST /model/{modelId}/converse` and
`/model/{modelId}/converse-stream` (boto3's `bedrock-runtime` client). Pure.

The model is in the path (percent-encoded by botocore: `:` is `%3A`), never in the body; it
names a catalog entry (a Bedrock id, or an alias). The output limit is
`inferenceConfig.maxTokens`; the gateway injects its cap there when absent. Usage is
`usage.{inputTokens, outputTokens, cacheReadInputTokens, cacheWriteInputTokens}` of the JSON
answer, and of the stream's `metadata` event. Bedrock's `inputTokens` excludes the cache reads
and writes (as Anthropic's `input_tokens` does), so the three are never double counted.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from typing import Any

import orjson

from gateway_extproc.apis import Api
from gateway_extproc.cost.shape import (
    PER_MESSAGE_TOKENS,
    PER_REQUEST_TOKENS,
    TOOLS_PROMPT_TOKENS,
    Shape,
)
from gateway_extproc.errors import BadRequest, ClientError
from gateway_extproc.providers.base import (
    JsonMeterResult,
    count,
    nonempty_str,
    usage_or_none,
    utf8_len,
)
from gateway_extproc.tokens import Usage

__all__ = [
    "CAP_FIELD",
    "ConverseStream",
    "converse_error_body",
    "converse_path",
    "converse_request",
    "meter_converse_json",
    "parse_model",
    "with_cap",
]

CAP_FIELD = "inferenceConfig.maxTokens"
_PATH = re.compile(r"/model/([^/?]+)/(converse|converse-stream)")
# A Bedrock model id, inference-profile id or alias (ARNs are not accepted: they name
# resources the catalog does not).
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
_IMAGE_KEYS = frozenset({"image"})
_FILE_KEYS = frozenset({"document", "video"})
# Bedrock's exception names by status, for the gateway's own errors (botocore reads the code
# from `x-amzn-errortype` or the body's `__type`).
_ERROR_TYPES = {
    400: "ValidationException",
    401: "UnrecognizedClientException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "RequestTimeoutException",  # not modeled: botocore's ClientError carries the name
    413: "ValidationException",
    429: "ThrottlingException",
    503: "ServiceUnavailableException",
}


def parse_model(path: str) -> str:
    """The model id a Converse path names (percent-decoded); BadRequest for anything else."""
    match = _PATH.fullmatch(path.split("?", 1)[0].rstrip("/"))
    if match is None:
        raise BadRequest("not a Converse path: expected /model/{modelId}/converse[-stream]")
    model = urllib.parse.unquote(match.group(1))
    if _MODEL.fullmatch(model) is None:
        raise BadRequest(
            f"the model id in the path must be letters, digits, '.', '_', ':' and '-' "
            f"(got {model[:140]!r})"
        )
    return model


def converse_path(model: str, stream: bool) -> str:
    """Bedrock's path for `model` (its id percent-encoded, as botocore sends and signs it)."""
    action = "converse-stream" if stream else "converse"
    return f"/model/{urllib.parse.quote(model, safe='')}/{action}"


@dataclasses.dataclass(frozen=True, slots=True)
class ConverseRequest:
    model: str
    stream: bool
    max_output: int | None
    shape: Shape


def _walk(value: Any) -> tuple[int, int, int]:
    """(UTF-8 bytes of every key and string, image blocks, document/video blocks)."""
    text = images = files = 0
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            text += utf8_len(item)
        elif isinstance(item, dict):
            for key, sub in item.items():
                text += utf8_len(key)
                if key in _IMAGE_KEYS and isinstance(sub, dict):
                    images += 1
                elif key in _FILE_KEYS and isinstance(sub, dict):
                    files += 1
                else:
                    stack.append(sub)
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None:
            text += len(str(item))
    return text, images, files


def _max_tokens(body: dict[str, Any]) -> int | None:
    config = body.get("inferenceConfig")
    if config is None:
        return None
    if not isinstance(config, dict):
        raise BadRequest("`inferenceConfig` must be an object")
    value = config.get("maxTokens")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("`inferenceConfig.maxTokens` must be an integer of at least 1")
    return value


def converse_request(api: Api, body: dict[str, Any], model: str) -> ConverseRequest:
    """The fields the gateway relies on; `model` comes from the path. Raises BadRequest."""
    if "modelId" in body or "model" in body:
        raise BadRequest("a Converse request names its model in the path, not in the body")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("`messages` is required and must be a non-empty list")
    max_out = _max_tokens(body)
    unseen = tuple(f"{name}" for name in ("promptVariables", "guardrailConfig") if body.get(name))
    text, images, files = _walk(body)
    margins = PER_REQUEST_TOKENS + PER_MESSAGE_TOKENS * sum(isinstance(m, dict) for m in messages)
    if body.get("toolConfig"):
        margins += TOOLS_PROMPT_TOKENS
    shape = Shape(
        text_tokens=text + margins,
        images=images,
        files=files,
        unseen=unseen,
        choices=1,
        max_output=max_out,
        cap_field=CAP_FIELD,
    )
    return ConverseRequest(model, api is Api.BEDROCK_CONVERSE_STREAM, max_out, shape)


def input_chars(body: dict[str, Any]) -> int:
    """Characters of prompt text: `messages[].content[].text`, `system[].text`, `toolConfig`."""
    chars = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else []:
            if isinstance(block, dict) and isinstance(block.get("text"), str):
                chars += len(block["text"])
    system = body.get("system")
    for block in system if isinstance(system, list) else []:
        if isinstance(block, dict) and isinstance(block.get("text"), str):
            chars += len(block["text"])
    tools = body.get("toolConfig")
    if tools:
        chars += len(orjson.dumps(tools))
    return chars


def with_cap(body: dict[str, Any], tokens: int) -> dict[str, Any]:
    """`body` with `inferenceConfig.maxTokens` set to `tokens` (the config copied)."""
    config = body.get("inferenceConfig")
    config = dict(config) if isinstance(config, dict) else {}
    config["maxTokens"] = tokens
    return {**body, "inferenceConfig": config}


def usage_from_converse(usage: object) -> Usage | None:
    """Converse's `usage` object as a `Usage` (None when it holds no valid count)."""
    counts = {
        k: count(usage, k)
        for k in ("inputTokens", "outputTokens", "cacheReadInputTokens", "cacheWriteInputTokens")
    }
    return usage_or_none(
        counts["inputTokens"] is not None or counts["outputTokens"] is not None,
        input_tokens=counts["inputTokens"] or 0,
        output_tokens=counts["outputTokens"] or 0,
        cached_input_tokens=counts["cacheReadInputTokens"] or 0,
        cache_write_input_tokens=counts["cacheWriteInputTokens"] or 0,
    )


def _block_bytes(block: object) -> int:
    if not isinstance(block, dict):
        return 0
    n = utf8_len(block.get("text"))
    tool = block.get("toolUse")
    if isinstance(tool, dict):
        n += utf8_len(tool.get("input")) if isinstance(tool.get("input"), str) else 0
        if isinstance(tool.get("input"), dict | list):
            n += len(orjson.dumps(tool["input"]))
    reasoning = block.get("reasoningContent")
    if isinstance(reasoning, dict):
        n += utf8_len(reasoning.get("text"))
        inner = reasoning.get("reasoningText")
        if isinstance(inner, dict):
            n += utf8_len(inner.get("text"))
    return n


def meter_converse_json(obj: dict[str, object]) -> JsonMeterResult:
    """A Converse JSON answer: `output.message.content[]`, `usage`, `stopReason`."""
    output = obj.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    out_bytes = sum(_block_bytes(b) for b in content) if isinstance(content, list) else 0
    reason = nonempty_str(obj.get("stopReason"))
    return JsonMeterResult(
        usage=usage_from_converse(obj.get("usage")),
        served_model=None,  # Converse names no model in its answer
        output_bytes=out_bytes,
        finish_reasons=(reason[:64],) if reason else (),
    )


class ConverseStream:
    """ConverseStream's events (`messageStart`, `contentBlockDelta`, `messageStop`, `metadata`),
    each decoded from its event-stream frame: the `metadata` event carries the usage."""

    __slots__ = (
        "_reason",
        "_usage",
        "completed",
        "output_bytes",
        "response_id",
        "served_model",
        "service_tier",
    )

    def __init__(self) -> None:
        self.served_model: str | None = None
        self.response_id: str | None = None
        self.service_tier: str | None = None
        self.output_bytes = 0
        self.completed = False
        self._usage: Usage | None = None
        self._reason: str | None = None

    def finish_reasons(self) -> tuple[str, ...]:
        return (self._reason,) if self._reason else ()

    def on_json(self, event: str | None, obj: dict[str, object]) -> None:
        if event == "contentBlockDelta":
            self.output_bytes += _block_bytes(obj.get("delta"))
        elif event == "messageStop":
            reason = nonempty_str(obj.get("stopReason"))
            self._reason = reason[:64] if reason else None
        elif event == "metadata":
            usage = usage_from_converse(obj.get("usage"))
            if usage is not None:
                self._usage = usage
                self.completed = self._reason is not None
        elif event == "error":
            self.completed = False

    def on_done(self) -> None:
        pass

    def usage(self) -> Usage | None:
        return self._usage


def converse_error_body(err: ClientError, request_id: str) -> bytes:
    """Bedrock's JSON error: `message`, and the exception name as `__type`, which botocore
    reads the error code from when no `x-amzn-errortype` header says it. The gateway's stable
    code is `gatewayCode`: a body key `code` would win over `__type` in botocore's rest-json
    parser (the `ClientError` would say `budget_exceeded`, not `ThrottlingException`)."""
    kind = _ERROR_TYPES.get(err.status, "InternalServerException")
    return orjson.dumps(
        {"__type": kind, "message": err.message, "gatewayCode": err.code, "requestId": request_id}
    )


def error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "InternalServerException")
