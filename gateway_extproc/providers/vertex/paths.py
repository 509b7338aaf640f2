"""Vertex AI request paths and bodies: which publisher serves a model and how its request is
written. Pure.

Gemini: `/v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent` (or
`:streamGenerateContent?alt=sse`), the Gemini API's own body. Claude: `.../publishers/anthropic/
models/{m}:rawPredict` (JSON) or `:streamRawPredict` (Anthropic's SSE), the Messages body without
`model` (it is in the path) and with `anthropic_version: vertex-2023-10-16`.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway_extproc.apis import Schema

ANTHROPIC_VERSION = "vertex-2023-10-16"
_PUBLISHER = {Schema.GEMINI: "google", Schema.ANTHROPIC: "anthropic"}


def vertex_path(*, project: str, location: str, schema: Schema, model: str, stream: bool) -> str:
    """The Vertex path that serves `model` of a provider API `schema` (anthropic or gemini)."""
    publisher = _PUBLISHER[schema]
    if schema is Schema.GEMINI:
        method = ":streamGenerateContent?alt=sse" if stream else ":generateContent"
    else:
        method = ":streamRawPredict" if stream else ":rawPredict"
    return (
        f"/v1/projects/{project}/locations/{location}/publishers/{publisher}/models/{model}"
        + method
    )


def anthropic_body(body: dict[str, Any]) -> bytes:
    """A Messages body as Vertex's rawPredict takes it: no `model`, Vertex's API version."""
    out = {k: v for k, v in body.items() if k != "model"}
    out["anthropic_version"] = ANTHROPIC_VERSION
    return orjson.dumps(out)
