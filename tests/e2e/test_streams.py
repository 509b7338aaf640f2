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
from tests.e2e.conftest import start_stack, static_tokens_yaml
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


# The stack whose timers a long stream crosses, each lowered from its default to seconds, so that
# one stream of LONG_STREAM_S crosses them all - and Envoy's own 15 s default route timeout, which
# the generated routes switch off: no configuration lowers that one, a stream can only outlast it.
IDLE_S = 2  # limits.stream_idle_timeout_s (default 600): the silence allowed between chunks
CONNECTION_IDLE_S = 2  # limits.connection_idle_timeout_s (default 75)
REQUEST_S = 3  # limits.request_timeout_s (default 300)
LEASE_S = 5  # budget_store.lease_s (default 120; 5 is the smallest allowed)
ENVOY_ROUTE_TIMEOUT_S = 15  # Envoy's default route `timeout` (the generated routes set "0s")
LONG_STREAM_S = ENVOY_ROUTE_TIMEOUT_S + 2
CHUNK_GAP_MS = 500  # a quarter of IDLE_S: the stream is never idle


@pytest.fixture(scope="module")
def short_limits(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("short-limits")
    config = run_dir / "gateway.yaml"
    config.write_text(
        f"identity:\n  allow_anonymous: true\n  static_tokens:\n{static_tokens_yaml()}"
        "limits:\n"
        f"  stream_idle_timeout_s: {IDLE_S}\n"
        f"  connection_idle_timeout_s: {CONNECTION_IDLE_S}\n"
        f"  request_timeout_s: {REQUEST_S}\n"
        # A reaper that looks often: a lease that ran out is charged within half a second.
        f"budget_store: {{lease_s: {LEASE_S}, reap_interval_s: 0.5}}\n"
        "budgets:\n"
        "  - name: everyone\n"
        "    scope: {kind: global}\n"
        "    limit_usd: 1000\n"
        "    window: {type: calendar, period: month}\n"
        "    action: block\n"
    )
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


def test_a_stream_longer_than_every_timer_is_not_cut(short_limits: Stack) -> None:
    """A stream of LONG_STREAM_S (a chunk every CHUNK_GAP_MS) runs to its end and is metered
    from the provider's usage, in exactly one audit record. It outlasts every timer on its path
    that could end or charge it early, each lowered from its default on this stack
    (tests/unit/test_long_stream_limits.py pins the generated defaults):
    - Envoy's default route timeout, 15 s: the generated routes set `timeout: 0s` (else a 504
      at 15 s - the one default no configuration lowers, so the stream is just past it);
    - `stream_idle_timeout_s` (the listener's and the route's idle timeout) times the silence
      between chunks, never the stream's length;
    - `connection_idle_timeout_s` never closes a connection with a request in flight;
    - `request_timeout_s` ends once the request has gone upstream;
    - `ext_proc_message_timeout_ms` (5 s) bounds one ext_proc message, not the observer's stream;
    - the budget reservation's lease (`lease_s`): the sidecar renews it while the response runs;
      a lease left to run out is reaped mid-stream - charged and audited by the reaper, a second
      record for the request.
    This stream replaced a 3-minute one on the default stack, which had no budget (so no lease)
    and crossed, of the defaults above, only the route timeout."""
    tokens = LONG_STREAM_S * 1000 // CHUNK_GAP_MS + 1  # the first event comes at once
    headers = {"x-mock-output-tokens": str(tokens), "x-mock-chunk-delay-ms": str(CHUNK_GAP_MS)}
    client = openai.OpenAI(
        base_url=short_limits.gateway_url + "/v1", api_key="client-key", max_retries=0
    )
    started = time.monotonic()
    with (
        client,
        client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers, timeout=60
        ) as response,
    ):
        rid = response.headers["x-gateway-request-id"]
        chunks = list(response.parse())
    assert time.monotonic() - started >= LONG_STREAM_S
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == tokens
    rec = AuditLog(short_limits.run_dir / "audit.jsonl").wait_for(rid)
    assert rec["completed"] is True and rec["usage_source"] == "provider"
    assert rec["tokens"]["output_tokens"] == tokens
    assert rec["budget"]["decision"] == "admitted"  # it held a reservation, and so a lease


def test_idle_streams_are_still_cut(short_limits: Stack) -> None:
    body = b'{"model": "gpt-4o-mini", "stream": true, "messages": []}'
    # The mock writes the first event, then waits 5 s before each next one; the stream goes idle
    # after IDLE_S and is cut there, so the client gets exactly one event and then an error.
    headers = {"content-type": "application/json", "x-mock-chunk-delay-ms": "5000"}
    received = bytearray()
    with (
        httpx.stream(
            "POST",
            short_limits.gateway_url + "/v1/chat/completions",
            content=body,
            headers=headers,
            timeout=30,
        ) as r,
        pytest.raises(httpx.HTTPError),
    ):
        for data in r.iter_raw():
            received.extend(data)
    assert received.count(b"data: ") == 1 and received.endswith(b"\n\n")
    audit = AuditLog(short_limits.run_dir / "audit.jsonl")
    rec = _records_for(audit, lambda r: r["stream"] is True and not r["completed"])
    assert rec["completed"] is False and rec["usage_source"] == "bound"
