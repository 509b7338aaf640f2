"""Streams that do not end well are still metered; long streams are not cut; idle ones are."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import anthropic
import httpx
import openai
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog, eventually, expected_cost_micros
from tests.e2e.worst_case import input_bound, release

pytestmark = pytest.mark.e2e
MESSAGES = [{"role": "user", "content": "Tell me a long story."}]
UNSEEN_OUTPUT_TOKENS = 1024  # metering.unseen_output_tokens (its default)
GPT4O_MINI_MAX_OUTPUT = 16_384  # catalog: the output limit when the request sets none


def _records_for(audit: AuditLog, predicate: object, timeout: float = 15) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in audit.records() if predicate(r)]  # type: ignore[operator]
        if found:
            return found[-1]
        time.sleep(0.05)
    raise AssertionError("no matching audit record")


def test_upstream_abort_mid_stream_is_charged_its_bound(
    oai: openai.OpenAI, audit: AuditLog, mock: MockLog
) -> None:
    """The upstream cut the stream: its bill is unknown. Charged the input bound, and what was
    streamed (UTF-8 bytes bound its tokens) plus what it may have generated unseen."""
    # The mock holds after its first event: the cut comes once the client has read it, so the
    # client has the 200's headers (a drop while a filter still held them would be a 502).
    hold = f"abort-{uuid.uuid4().hex}"
    headers = {
        "x-mock-output-tokens": "50",
        "x-mock-hold-after-events": f"{hold}@1",
        "x-mock-abort-after-events": "10",
    }
    received: list[str] = []
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for n, chunk in enumerate(response.parse()):
                received += [c.delta.content or "" for c in chunk.choices]
                if n == 0:
                    release(mock.base, hold)
    assert len(received) == 10  # the events before the cut, the first one held
    rec = audit.wait_for(rid)
    assert rec["completed"] is False and rec["usage_source"] == "bound"
    streamed = len("".join(received).encode())
    assert rec["tokens"]["output_tokens"] == streamed + UNSEEN_OUTPUT_TOKENS > 1024
    body = {"messages": MESSAGES, "model": "gpt-4o-mini", "stream": True}
    assert rec["tokens"]["input_tokens"] == input_bound(body)
    assert rec["cost_micros"] == expected_cost_micros("gpt-4o-mini", rec["tokens"])


def test_client_disconnect_mid_stream_is_charged_at_least_what_the_provider_bills(
    oai: openai.OpenAI, audit: AuditLog, mock: MockLog
) -> None:
    """The mock bills what it generated until it noticed the client was gone - the words it
    wrote, then 500 more (a provider noticing late): the charge is never below that bill."""
    headers = {
        "x-mock-output-tokens": "4000",
        "x-mock-chunk-delay-ms": "20",
        "x-mock-generates-after-cut": "500",
    }
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o", messages=MESSAGES, stream=True, extra_headers=headers
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        stream = response.parse()
        for n, _chunk in enumerate(stream):
            if n == 15:
                break
        stream.close()  # the SDK closes the stream: Envoy resets, the sidecar's stream ends
    rec = audit.wait_for(rid)
    assert rec["completed"] is False and rec["usage_source"] == "bound"
    eventually(lambda: any(b["request_id"] == rid for b in mock.bills()))
    (bill,) = [b for b in mock.bills() if b["request_id"] == rid]
    assert bill["cut"] is True and 15 + 500 <= bill["tokens"]["output_tokens"] < 4000
    assert rec["tokens"]["output_tokens"] >= bill["tokens"]["output_tokens"]
    assert rec["cost_micros"] >= expected_cost_micros("gpt-4o-mini", bill["tokens"])
    assert rec["tokens"]["output_tokens"] < GPT4O_MINI_MAX_OUTPUT  # not the whole limit


def test_omitted_usage_is_charged_its_bound(
    oai: openai.OpenAI, claude: anthropic.Anthropic, audit: AuditLog
) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=MESSAGES, extra_headers={"x-mock-omit-usage": "1"}
    )
    completion = raw.parse()
    assert completion.usage is None
    rec = audit.wait_for(raw.headers["x-gateway-request-id"])
    assert rec["usage_source"] == "bound" and rec["completed"] is True
    answer = completion.choices[0].message.content or ""
    assert rec["tokens"]["output_tokens"] == len(answer.encode()) + UNSEEN_OUTPUT_TOKENS

    with claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5",
        max_tokens=100,
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        extra_headers={"x-mock-omit-usage": "1"},
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        list(response.parse())
    rec = audit.wait_for(rid)
    assert rec["usage_source"] == "bound" and rec["tokens"]["output_tokens"] == 100  # max_tokens


def test_a_three_minute_stream_is_not_cut(oai: openai.OpenAI, audit: AuditLog) -> None:
    """Envoy's default 15 s route timeout would end this with a 504 after 15 s."""
    headers = {"x-mock-output-tokens": "61", "x-mock-chunk-delay-ms": "3000"}
    started = time.monotonic()
    with oai.chat.completions.with_streaming_response.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers, timeout=400
    ) as response:
        rid = response.headers["x-gateway-request-id"]
        chunks = list(response.parse())
    assert time.monotonic() - started >= 180
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 61
    rec = audit.wait_for(rid)
    assert rec["completed"] is True and rec["usage_source"] == "provider"
    assert rec["tokens"]["output_tokens"] == 61


@pytest.fixture(scope="module")
def impatient_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("impatient")
    config = run_dir / "gateway.yaml"
    config.write_text("limits:\n  stream_idle_timeout_s: 2\nidentity:\n  allow_anonymous: true\n")
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


def test_idle_streams_are_still_cut(impatient_stack: Stack) -> None:
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
    # The mock writes the first event, then waits 5 s before each next one; the stream goes idle
    # after 2 s and is cut there, so the client gets exactly one event and then an error.
    headers = {"content-type": "application/json", "x-mock-chunk-delay-ms": "5000"}
    received = bytearray()
    with (
        httpx.stream(
            "POST",
            impatient_stack.gateway_url + "/v1/chat/completions",
            content=body,
            headers=headers,
            timeout=30,
        ) as r,
        pytest.raises(httpx.HTTPError),
    ):
        for data in r.iter_raw():
            received.extend(data)
    assert received.count(b"data: ") == 1 and received.endswith(b"\n\n")
    audit = AuditLog(impatient_stack.run_dir / "audit.jsonl")
    rec = _records_for(audit, lambda r: r["stream"] is True)
    assert rec["completed"] is False and rec["usage_source"] == "bound"
