"""Real OpenAI transcripts replayed byte for byte through the gateway: the metered usage equals
what the provider reported, and the cost equals the catalog price to the micro-dollar."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from gateway_extproc.apis import API_PREFIX, Api
from gateway_extproc.stack import Stack
from tests.e2e.harness import AuditLog, catalog_model, expected_cost_micros, raw_catalog, tokens
from tests.e2e.worst_case import input_bound
from tests.recorded import load_cassettes

pytestmark = pytest.mark.e2e

# Audio chat models bill audio tokens at other rates, which the catalog does not model yet:
# the gateway refuses them as unknown models rather than mis-price them.
UNPRICED = {"chat-audio-to-text", "chat-text-to-audio"}
CASES = [
    (name, i, chunk_bytes)
    for name, interactions in sorted(load_cassettes().items())
    for i, x in enumerate(interactions)
    if x.status == 200 and name not in UNPRICED
    # Streams also split into 1-byte and 13-byte writes, so events cross every boundary.
    for chunk_bytes in (["", "1", "13"] if x.is_stream else [""])
]


def _reported(api: Api, body: bytes, stream: bool) -> dict[str, int] | None:
    """The provider's own usage report, normalised by hand (cached inside prompt_tokens);
    None for streams recorded without `include_usage`."""
    if stream:
        usage = None
        for line in body.decode().splitlines():
            if line.startswith("data: {"):
                doc = json.loads(line[6:])
                usage = doc.get("usage") or usage
        if usage is None:
            return None
    else:
        usage = json.loads(body)["usage"]
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    output = usage.get("completion_tokens", 0)
    return tokens(
        usage["prompt_tokens"] - cached, cached=cached, output=output, reasoning=reasoning
    )


def _string_chars(value: Any) -> int:
    """Characters in every string value (not key) of a JSON value."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(_string_chars(item) for item in value)
    if isinstance(value, dict):
        return sum(_string_chars(item) for item in value.values())
    return 0


def _estimated(request: dict[str, Any], stream_body: bytes) -> dict[str, int]:
    """The documented estimate for a response without usage, worked out by hand: input is
    ceil(prompt characters / 4) + 4 per message (+ 1,000 per media part: these requests have
    none), output is ceil(generated characters / 4)."""
    assert not any(key in request for key in ("system", "input", "instructions", "tools"))
    prompt_chars = _string_chars(request.get("messages", [])) + _string_chars(
        request.get("prompt", "")
    )
    generated = 0
    for line in stream_body.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                delta = choice.get("delta") or {}
                assert not delta.get("tool_calls")
                generated += len(delta.get("content") or "") + len(delta.get("refusal") or "")
                generated += len(choice.get("text") or "")
    assert generated > 0
    input_tokens = -(-prompt_chars // 4) + 4 * len(request.get("messages", []))
    return tokens(input_tokens, output=-(-generated // 4))


# metering.unseen_output_tokens (its default): output charged beyond the bytes seen.
UNSEEN_OUTPUT_TOKENS = 1024


def _bounded(request: dict[str, Any], stream_body: bytes) -> tuple[dict[str, int], str]:
    """The documented charge for a response whose usage is not read ("How each ending is
    charged"), worked out by hand: the input bound (the context window for input the gateway
    cannot see) and the output's UTF-8 bytes + UNSEEN_OUTPUT_TOKENS within the output limit -
    the whole limit for a model that hides its reasoning. Estimated where nothing bounds the
    input (input it cannot see, no context window)."""
    entry = raw_catalog()[catalog_model(request["model"])]
    window = entry.get("context_window")
    if "web_search_options" in request and window is None:
        return _estimated(request, stream_body), "estimated"
    assert "web_search_options" not in request and "n" not in request
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    limit = min(limit or entry["max_output_tokens"], entry["max_output_tokens"])
    generated = 0
    for line in stream_body.decode().splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                delta = choice.get("delta") or {}
                text = (delta.get("content") or "") + (choice.get("text") or "")
                generated += len(text.encode())
    hidden = entry.get("hidden_reasoning") and request.get("reasoning_effort") != "none"
    output = limit if hidden else min(limit, generated + UNSEEN_OUTPUT_TOKENS)
    bound = input_bound(request) if window is None else min(input_bound(request), window)
    return tokens(bound, output=output), "bound"


@pytest.mark.parametrize(
    "name, index, chunk_bytes", CASES, ids=[f"{n}#{i}-{c or 'as-recorded'}" for n, i, c in CASES]
)
def test_replay_meters_exactly(
    stack: Stack, audit: AuditLog, name: str, index: int, chunk_bytes: str
) -> None:
    x = load_cassettes()[name][index]
    headers = {"content-type": "application/json", "x-mock-replay": name}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    r = httpx.post(
        f"{stack.gateway_url}{API_PREFIX}{x.api.value}",
        content=x.request_body,
        headers=headers,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.content == x.response_body  # the client gets the provider's bytes, unchanged
    rec = audit.wait_for(r.headers["x-gateway-request-id"])
    request = json.loads(x.request_body)
    want = _reported(x.api, x.response_body, x.is_stream)
    if want is None:
        # Recorded without include_usage, so the replay carries no usage: the bill is unknown,
        # charged its upper bound, and said so.
        want, source = _bounded(request, x.response_body)
        assert rec["usage_source"] == source
    else:
        assert rec["usage_source"] == "provider"
    assert rec["tokens"] == want and rec["completed"] is True
    assert rec["requested_model"] == request["model"]
    model = catalog_model(request["model"])  # from the request, never from the record
    assert rec["served_model"] == model
    assert rec["cost_micros"] == expected_cost_micros(model, want)


# (requested, the catalog model): names, aliases (the operator file's too), dated snapshots
RESOLVED = [
    ("gpt-5-nano", "gpt-5-nano"),
    ("gpt-4o-2024-08-06", "gpt-4o"),
    ("gpt-4o-mini-search-preview-2025-03-11", "gpt-4o-mini-search-preview"),
    ("gpt-5-nano-2031-01-30", "gpt-5-nano"),
    ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
]


@pytest.mark.parametrize(("requested", "model"), RESOLVED)
def test_the_oracle_resolves_the_model_from_the_catalog_files(requested: str, model: str) -> None:
    assert catalog_model(requested) == model
