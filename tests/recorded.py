"""Recorded real OpenAI transcripts (go-vcr v2 cassettes) in the repo's sibling `shared/` tree
(`tests.paths.RECORDED_OPENAI`).

`load_cassettes()` maps each cassette's name to its interactions on endpoints the gateway meters
(`apis.api_for_path` of the URL path); others (audio, images, Azure deployment paths) are left out.
Bodies are returned as the bytes the provider sent (SSE bodies are stored verbatim).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import yaml

from gateway_extproc.apis import Api, api_for_path
from tests.paths import recorded_openai

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class Interaction(NamedTuple):
    api: Api
    request_body: bytes
    status: int
    response_body: bytes
    is_stream: bool


def _header(headers: dict[str, list[str]] | None, name: str) -> str:
    for key, values in (headers or {}).items():
        if key.lower() == name and values:
            return values[0]
    return ""


@functools.cache
def load_cassettes() -> dict[str, list[Interaction]]:
    """{cassette stem: metered interactions}; raises MissingTestData if the recordings are not
    checked out (see tests/paths.py)."""
    cassettes: dict[str, list[Interaction]] = {}
    for path in sorted(recorded_openai().glob("*.yaml")):
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
        interactions = []
        for item in doc.get("interactions") or []:
            request, response = item["request"], item["response"]
            api = api_for_path(urlsplit(request["url"]).path)
            if api is None:
                continue
            content_type = _header(response.get("headers"), "content-type")
            interactions.append(
                Interaction(
                    api=api,
                    request_body=(request.get("body") or "").encode(),
                    status=int(response["code"]),
                    response_body=(response.get("body") or "").encode(),
                    is_stream=content_type.startswith("text/event-stream"),
                )
            )
        if interactions:
            cassettes[path.stem] = interactions
    return cassettes
