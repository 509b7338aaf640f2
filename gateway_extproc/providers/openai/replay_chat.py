"""OpenAI chat completions: a finished stream assembled into the JSON answer, and a JSON answer
replayed as the stream OpenAI would have sent. Pure; returns None for shapes it cannot replay
faithfully (audio, annotations, legacy function calls): such answers are not cached."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

_HEAD = ("id", "created", "model", "service_tier", "system_fingerprint")
_DELTA_KEYS = frozenset({"role", "content", "refusal", "tool_calls"})
_MESSAGE_KEYS = frozenset({"role", "content", "refusal", "tool_calls", "annotations"})


def _choice(choices: dict[int, dict[str, Any]], index: int) -> dict[str, Any]:
    if index not in choices:
        choices[index] = {
            "index": index,
            "message": {"role": "assistant", "content": None, "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    return choices[index]


def _add_tool_calls(message: dict[str, Any], deltas: list[Any]) -> bool:
    calls: list[dict[str, Any]] = message.setdefault("tool_calls", [])
    for tc in deltas:
        if not isinstance(tc, dict) or type(tc.get("index", 0)) is not int:
            return False
        i = tc.get("index", 0)
        while len(calls) <= i:
            calls.append({"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call = calls[i]
        if isinstance(tc.get("id"), str):
            call["id"] = tc["id"]
        if isinstance(tc.get("type"), str):
            call["type"] = tc["type"]
        fn = tc.get("function") or {}
        for part in ("name", "arguments"):
            if isinstance(fn.get(part), str):
                call["function"][part] += fn[part]
    return True


def _add_logprobs(choice: dict[str, Any], logprobs: object) -> None:
    if not isinstance(logprobs, dict):
        return
    acc = choice["logprobs"] or {"content": None, "refusal": None}
    for part in ("content", "refusal"):
        if isinstance(logprobs.get(part), list):
            acc[part] = (acc[part] or []) + logprobs[part]
    choice["logprobs"] = acc


def chat_from_events(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The chat.completion a complete stream amounts to; None without usage or a finish."""
    head: dict[str, Any] | None = None
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for obj in events:
        if head is None:
            head = {k: obj[k] for k in _HEAD if k in obj}
        if isinstance(obj.get("usage"), dict):
            usage = obj["usage"]
        for ch in obj.get("choices") or []:
            index = ch.get("index", 0) if isinstance(ch, dict) else None
            if type(index) is not int:
                return None
            choice = _choice(choices, index)
            message = choice["message"]
            delta = ch.get("delta") or {}
            if not isinstance(delta, dict) or set(delta) - _DELTA_KEYS:
                return None
            if isinstance(delta.get("role"), str):
                message["role"] = delta["role"]
            for part in ("content", "refusal"):
                if isinstance(delta.get(part), str):
                    message[part] = (message[part] or "") + delta[part]
            if delta.get("tool_calls") and not _add_tool_calls(message, delta["tool_calls"]):
                return None
            _add_logprobs(choice, ch.get("logprobs"))
            if isinstance(ch.get("finish_reason"), str):
                choice["finish_reason"] = ch["finish_reason"]
    if head is None or usage is None or not choices:
        return None
    if any(c["finish_reason"] is None for c in choices.values()):
        return None
    answer = {**head, "object": "chat.completion"}
    answer["choices"] = [choices[i] for i in sorted(choices)]
    answer["usage"] = usage
    return answer


def chat_replayable(answer: dict[str, Any]) -> bool:
    """Whether `chat_to_sse` reproduces this answer (a JSON answer is checked before storing)."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(answer.get("usage"), dict):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or type(choice.get("index")) is not int:
            return False
        message = choice.get("message")
        if not isinstance(message, dict) or set(message) - _MESSAGE_KEYS:
            return False
        if message.get("annotations"):
            return False
        calls = message.get("tool_calls") or []
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            return False
    return True


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_to_sse(answer: dict[str, Any], *, include_usage: bool) -> bytes:
    """The stream of `answer` as OpenAI sends it: per choice a role chunk, the content, the tool
    calls, a finish chunk; the usage chunk (`choices: []`) only when the client asked for it
    (`stream_options.include_usage`), then `data: [DONE]`."""
    head = {k: answer[k] for k in _HEAD if k in answer}
    head["object"] = "chat.completion.chunk"
    tail: dict[str, Any] = {"usage": None} if include_usage else {}
    out: list[bytes] = []

    def emit(index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None) -> None:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        out.append(_sse({**head, "choices": [choice], **tail}))

    for choice in answer["choices"]:
        index, message = choice["index"], choice["message"]
        content = message.get("content")
        first: dict[str, Any] = {"role": message.get("role", "assistant")}
        first["content"] = "" if isinstance(content, str) else None
        if "refusal" in message:
            first["refusal"] = None
        emit(index, first)
        logprobs = choice.get("logprobs")
        if isinstance(content, str) and content:
            lp = {"content": logprobs.get("content"), "refusal": None} if logprobs else None
            emit(index, {"content": content}, lp=lp)
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            lp = {"content": None, "refusal": logprobs.get("refusal")} if logprobs else None
            emit(index, {"refusal": message["refusal"]}, lp=lp)
        for i, call in enumerate(message.get("tool_calls") or []):
            fn = call.get("function") or {}
            delta = {
                "index": i,
                "id": call.get("id"),
                "type": call.get("type", "function"),
                "function": {"name": fn.get("name", ""), "arguments": fn.get("arguments", "")},
            }
            emit(index, {"tool_calls": [delta]})
        emit(index, {}, choice.get("finish_reason") or "stop")
    if include_usage:
        out.append(_sse({**head, "choices": [], "usage": answer["usage"]}))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
