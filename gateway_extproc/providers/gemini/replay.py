"""Gemini generateContent: a finished stream assembled into the JSON response, and a JSON response
replayed as the stream Gemini would have sent. Pure; None / False for what cannot be replayed.

Only finished plain-text answers are replayed: every part of every candidate a bare `text` (an
answer with a function call, inline data, executable code, a thought summary or a thought
signature is not cached), every candidate finished (`STOP`, or `MAX_TOKENS` - the cache key
holds the output limit), and `usageMetadata` present. A stream's events each carry a piece of
each candidate's text and the running `usageMetadata`: the pieces are joined per candidate
`index`, and the latest usage and `finishReason` win (never a sum).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

# The members of a response, and of a candidate, that a replay reproduces; any other: not cached.
_RESPONSE = frozenset({"candidates", "usageMetadata", "modelVersion", "responseId", "createTime"})
_CANDIDATE = frozenset({"content", "finishReason", "index", "safetyRatings", "avgLogprobs"})
_FINISHED = frozenset({"STOP", "MAX_TOKENS"})
# What the first event of a stream says about the whole response.
_FIRST = ("modelVersion", "responseId", "createTime")


def _texts(content: object) -> list[str] | None:
    """The texts of a candidate's content, or None when a part is anything but text."""
    if not isinstance(content, dict) or set(content) - {"parts", "role"}:
        return None
    parts = content.get("parts", [])
    if not isinstance(parts, list):
        return None
    texts: list[str] = []
    for part in parts:
        if not isinstance(part, dict) or set(part) != {"text"}:
            return None
        if not isinstance(part["text"], str):
            return None
        texts.append(part["text"])
    return texts


def generate_replayable(answer: dict[str, Any]) -> bool:
    """Whether a JSON `GenerateContentResponse` can be stored and replayed in both forms."""
    candidates = answer.get("candidates")
    if set(answer) - _RESPONSE or not isinstance(answer.get("usageMetadata"), dict):
        return False
    if not isinstance(candidates, list) or not candidates:
        return False
    for candidate in candidates:
        if not isinstance(candidate, dict) or set(candidate) - _CANDIDATE:
            return False
        if candidate.get("finishReason") not in _FINISHED:
            return False
        if _texts(candidate.get("content")) is None:
            return False
    return True


def generate_from_events(events: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
    """The JSON response a complete stream of `GenerateContentResponse` events amounts to."""
    first: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    ratings: dict[int, Any] = {}
    for obj in events:
        if set(obj) - _RESPONSE:
            return None  # an error event, prompt feedback, anything unknown
        first = obj if first is None else first
        if isinstance(obj.get("usageMetadata"), dict):
            usage = obj["usageMetadata"]  # running totals: the latest wins
        candidates = obj.get("candidates", [])
        if not isinstance(candidates, list):
            return None
        for candidate in candidates:
            if not isinstance(candidate, dict) or set(candidate) - _CANDIDATE:
                return None
            index = candidate.get("index", 0)
            if type(index) is not int:
                return None
            pieces = _texts(candidate["content"]) if "content" in candidate else []
            if pieces is None:
                return None
            texts.setdefault(index, []).extend(pieces)
            if "finishReason" in candidate:
                finish[index] = candidate["finishReason"]
            if "safetyRatings" in candidate:
                ratings[index] = candidate["safetyRatings"]
    if first is None or usage is None or not texts:
        return None
    answer: dict[str, Any] = {"candidates": [], "usageMetadata": usage}
    for index in sorted(texts):
        joined: dict[str, Any] = {
            "content": {"parts": [{"text": "".join(texts[index])}], "role": "model"},
            "index": index,
        }
        if index in finish:
            joined["finishReason"] = finish[index]
        if index in ratings:
            joined["safetyRatings"] = ratings[index]
        answer["candidates"].append(joined)
    answer.update((field, first[field]) for field in _FIRST if field in first)
    return answer if generate_replayable(answer) else None


def generate_to_sse(answer: dict[str, Any]) -> bytes:
    """The stream of a stored answer: one event holding all of it, its usage the total (a short
    answer streams as one event from Gemini too), in Gemini's CRLF framing."""
    return b"data: " + orjson.dumps(answer) + b"\r\n\r\n"
