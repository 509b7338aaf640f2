"""The official Anthropic SDK through Envoy + sidecar + mock."""

from __future__ import annotations

import time

import anthropic
import pytest

from tests.e2e.conftest import Metered
from tests.e2e.harness import AuditLog, MockLog, expected_cost_micros, tokens

pytestmark = pytest.mark.e2e
MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Say hello."}]


def test_messages_non_stream_with_cache_tokens(metered: Metered) -> None:
    claude, audit = metered.claude, metered.audit
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=MESSAGES,
        extra_headers={"x-mock-cached-tokens": "2048", "x-mock-cache-write-tokens": "512"},
    )
    msg = raw.parse()
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    # Anthropic reports cache reads and writes beside input_tokens, not inside it.
    want = tokens(
        msg.usage.input_tokens,
        cached=msg.usage.cache_read_input_tokens or 0,
        cache_write=msg.usage.cache_creation_input_tokens or 0,
        output=msg.usage.output_tokens,
    )
    assert want["cached_input_tokens"] == 2048 and want["cache_write_input_tokens"] == 512
    assert rec["tokens"] == want and rec["usage_source"] == "provider"
    assert rec["cost_micros"] == expected_cost_micros("claude-haiku-4-5", want)
    metered.cost_header(raw.headers, rec["cost_micros"])


@pytest.mark.parametrize("chunk_bytes", ["", "1", "5", "64"])
def test_messages_stream_every_chunking(
    claude: anthropic.Anthropic, audit: AuditLog, chunk_bytes: str
) -> None:
    headers = {"x-mock-output-tokens": "30", "x-mock-cached-tokens": "100"}
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    with claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=500,
        messages=MESSAGES,
        stream=True,
        extra_headers=headers,
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    start = next(e for e in events if e.type == "message_start")
    delta = next(e for e in events if e.type == "message_delta")
    want = tokens(
        start.message.usage.input_tokens,
        cached=start.message.usage.cache_read_input_tokens or 0,
        cache_write=start.message.usage.cache_creation_input_tokens or 0,
        output=delta.usage.output_tokens,
    )
    assert want["output_tokens"] == 30
    rec = audit.wait_for(rid)
    assert rec["tokens"] == want and rec["completed"] is True
    assert rec["cost_micros"] == expected_cost_micros("claude-haiku-4-5", want)


# claude-haiku-4-5 list prices (catalog.yaml), USD per 1M tokens = micro-dollars per token:
# input $1, cache read $0.10, 5-minute write $1.25, 1-hour write $2 (2x input), output $5.
ONE_HOUR_HEADERS = {
    "x-mock-cached-tokens": "1000",
    "x-mock-cache-write-tokens": "400",
    "x-mock-cache-write-1h-tokens": "3000",
    "x-mock-output-tokens": "20",
}
# 1,000 x $0.10 = 100 + 400 x $1.25 = 500 + 3,000 x $2 = 6,000 + 20 x $5 = 100
ONE_HOUR_COST_BESIDE_INPUT = 6_700


def test_one_hour_cache_writes_priced_at_their_rate(metered: Metered) -> None:
    claude, audit = metered.claude, metered.audit
    raw = claude.messages.with_raw_response.create(
        model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES, extra_headers=ONE_HOUR_HEADERS
    )
    msg = raw.parse()
    creation = msg.usage.cache_creation
    assert creation is not None and creation.ephemeral_1h_input_tokens == 3000
    assert msg.usage.cache_creation_input_tokens == 3400
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["tokens"] == tokens(
        msg.usage.input_tokens, cached=1000, cache_write=400, cache_write_1h=3000, output=20
    )
    # Exact, from the literal prices above: the 1-hour writes are not billed at the 5-minute rate.
    assert rec["cost_micros"] == msg.usage.input_tokens * 1 + ONE_HOUR_COST_BESIDE_INPUT
    assert rec["cost_micros"] == expected_cost_micros("claude-haiku-4-5", rec["tokens"])
    metered.cost_header(raw.headers, rec["cost_micros"])


@pytest.mark.parametrize("chunk_bytes", ["", "7"])
def test_one_hour_cache_writes_in_a_stream(
    claude: anthropic.Anthropic, audit: AuditLog, chunk_bytes: str
) -> None:
    headers = dict(ONE_HOUR_HEADERS)
    if chunk_bytes:
        headers["x-mock-chunk-bytes"] = chunk_bytes
    with claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=64,
        messages=MESSAGES,
        stream=True,
        extra_headers=headers,
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        events = list(response.parse())
    start = next(e for e in events if e.type == "message_start")
    rec = audit.wait_for(rid)
    assert rec["completed"] is True and rec["usage_source"] == "provider"
    assert rec["tokens"]["cache_write_1h_input_tokens"] == 3000
    assert rec["tokens"]["cache_write_input_tokens"] == 400
    assert rec["cost_micros"] == start.message.usage.input_tokens * 1 + ONE_HOUR_COST_BESIDE_INPUT


def test_stream_helper_and_dated_alias(
    claude: anthropic.Anthropic, audit: AuditLog, mock: MockLog
) -> None:
    with claude.messages.stream(
        model="claude-haiku-4-5-20251001", max_tokens=20, messages=MESSAGES
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == final.usage.output_tokens
    sent = mock.last()
    assert sent["body"]["model"] == "claude-haiku-4-5-20251001"  # the client's name goes upstream
    # The audit line is written once the response has been metered, just after the client has
    # it (observe mode): wait for the one with this response's id.
    deadline = time.monotonic() + 15
    while not (
        records := [
            r
            for r in audit.records()
            if r["requested_model"] == "claude-haiku-4-5-20251001"
            and r.get("completed")
            and r["tokens"]["output_tokens"] == final.usage.output_tokens
        ]
    ):
        assert time.monotonic() < deadline, "no audit record for the aliased stream"
        time.sleep(0.05)
    assert records[-1]["served_model"] == "claude-haiku-4-5"


def test_models_list_in_anthropic_format(claude: anthropic.Anthropic) -> None:
    ids = [m.id for m in claude.models.list()]
    assert "claude-haiku-4-5" in ids and "gpt-4o" in ids


def test_errors_in_anthropic_format(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        claude.messages.create(model="claude-unknown-9", max_tokens=5, messages=MESSAGES)
    assert bad.value.body["type"] == "error"  # type: ignore[index]
    assert "claude-unknown-9" in bad.value.message
    with pytest.raises(anthropic.BadRequestError) as wrong_api:
        claude.messages.create(model="gpt-4o", max_tokens=5, messages=MESSAGES)
    assert "/v1/chat/completions" in wrong_api.value.message or "openai" in wrong_api.value.message
