"""Azure OpenAI's shape of OpenAI's replies: the mock's OpenAI builders, plus what Azure adds.

* JSON: `prompt_filter_results` beside `choices`, `content_filter_results` in each choice;
* streams: a first chunk with empty `choices` and only the prompt's filter results (id, model
  and object empty, created 0), then OpenAI's chunks with `content_filter_results` in each choice;
* a prompt the content filter blocks: 400 `code: content_filter` (OpenAI's error format, with
  Azure's `innererror`), billed nothing.
Spelled out here, not imported from the gateway: the mock checks the gateway against the wire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

from gateway_extproc.mock.openai_api import chat_reply, completion_reply, embeddings_reply
from gateway_extproc.mock.responses_api import responses_reply
from gateway_extproc.mock.wire import JsonReply, Reply, ReplyContext, StreamReply, sse

Builder = Callable[[dict[str, Any], ReplyContext], Reply]
AZURE_METHODS: dict[str, Builder] = {
    "chat/completions": chat_reply,
    "completions": completion_reply,
    "embeddings": embeddings_reply,
    "responses": responses_reply,
}
CONTENT_FILTER_HEADER = "x-mock-content-filter"  # `prompt`: the prompt is filtered (400)

_SAFE = {"filtered": False, "severity": "safe"}
CONTENT_FILTER_RESULTS = {
    "hate": _SAFE,
    "self_harm": _SAFE,
    "sexual": _SAFE,
    "violence": _SAFE,
}
PROMPT_FILTER_RESULTS = [
    {
        "prompt_index": 0,
        "content_filter_results": {
            **CONTENT_FILTER_RESULTS,
            "jailbreak": {"filtered": False, "detected": False},
        },
    }
]
FILTERED_PROMPT = {
    "error": {
        "message": (
            "The response was filtered due to the prompt triggering Azure OpenAI's content "
            "management policy. Please modify your prompt and retry."
        ),
        "type": None,
        "param": "prompt",
        "code": "content_filter",
        "status": 400,
        "innererror": {
            "code": "ResponsibleAIPolicyViolation",
            "content_filter_result": {
                **CONTENT_FILTER_RESULTS,
                "violence": {"filtered": True, "severity": "medium"},
            },
        },
    }
}


def azure_reply(
    build: Builder,
    body: dict[str, Any],
    ctx: ReplyContext,
    *,
    deployment: str | None,
    filtered: bool,
) -> Reply:
    """`build`'s reply in Azure's shape. A deployment path's deployment is the model (Azure
    ignores the body's `model` there), unless `x-mock-response-model` names another."""
    if filtered:
        return JsonReply(orjson.dumps(FILTERED_PROMPT), status=400)
    if deployment is not None and ctx.controls.response_model is None:
        body = {**body, "model": deployment}
    reply = build(body, ctx)
    if reply.status != 200 or build not in (chat_reply, completion_reply):
        return reply
    if isinstance(reply, JsonReply):
        payload = orjson.loads(reply.body)
        payload["prompt_filter_results"] = PROMPT_FILTER_RESULTS
        for choice in payload.get("choices") or []:
            choice["content_filter_results"] = CONTENT_FILTER_RESULTS
        return JsonReply(orjson.dumps(payload), headers=reply.headers, bill=reply.bill)
    assert isinstance(reply, StreamReply)
    first = sse(
        {
            "choices": [],
            "created": 0,
            "id": "",
            "model": "",
            "object": "",
            "prompt_filter_results": PROMPT_FILTER_RESULTS,
        }
    )
    return StreamReply(
        (first, *(_with_filter_results(event) for event in reply.events)),
        headers=reply.headers,
        bill=reply.bill,
    )


def _with_filter_results(event: bytes) -> bytes:
    """A chunk whose choices carry `content_filter_results` (`[DONE]` as it is)."""
    prefix = b"data: "
    if not event.startswith(prefix) or event.startswith(b"data: [DONE]"):
        return event
    chunk = orjson.loads(event[len(prefix) :])
    for choice in chunk.get("choices") or []:
        choice["content_filter_results"] = CONTENT_FILTER_RESULTS
    return sse(chunk)
