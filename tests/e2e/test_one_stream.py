"""Observe mode meters a non-streamed answer on the request's own ext_proc stream: Envoy opens
no observer stream for it (four messages on one stream), the answer carries
`x-gateway-cost-usd`, and every ending is charged once. Event streams and embeddings keep the
observer. Counted from Envoy's own ext_proc counters (both filters share them)."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually

pytestmark = pytest.mark.e2e

STREAMS = "http.gateway.ext_proc.streams_started"
MESSAGES = "http.gateway.ext_proc.stream_msgs_sent"
CHAT = {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "Hi"}]}


def counter(stack: Stack, name: str) -> int:
    url = f"{stack.admin_url}/stats?filter=^{name.replace('.', '[.]')}$"
    with urllib.request.urlopen(url, timeout=5) as r:
        stat, _, value = r.read().decode().strip().partition(": ")
    assert stat == name, stat
    return int(value)


def ext_proc_use(
    stack: Stack, send: Callable[[], str], audit: AuditLog
) -> tuple[int, int, dict[str, Any]]:
    """The ext_proc streams and messages one request cost, once its audit record is written
    (after which no stream of it is still opening), and that record."""
    streams, messages = counter(stack, STREAMS), counter(stack, MESSAGES)
    record = audit.wait_for(send())
    return counter(stack, STREAMS) - streams, counter(stack, MESSAGES) - messages, record


def post(stack: Stack, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(stack.gateway_url + path, json=body, headers=headers, timeout=30)


def test_a_json_answer_takes_one_stream_and_carries_its_cost(stack: Stack, audit: AuditLog) -> None:
    answers: list[httpx.Response] = []

    def send() -> str:
        answers.append(post(stack, "/v1/chat/completions", CHAT))
        return answers[-1].headers["x-gateway-request-id"]

    streams, messages, record = ext_proc_use(stack, send, audit)
    assert (streams, messages) == (1, 4)  # request headers + body, response headers + body
    assert answers[0].status_code == 200 and record["usage_source"] == "provider"
    assert answers[0].headers["x-gateway-cost-usd"] == f"{record['cost_micros'] / 1e6:.6f}"
    assert record["cost_micros"] > 0


def test_event_streams_and_embeddings_keep_the_observer(stack: Stack, audit: AuditLog) -> None:
    def stream() -> str:
        url = stack.gateway_url + "/v1/chat/completions"
        with httpx.stream("POST", url, json={**CHAT, "stream": True}, timeout=30) as r:
            r.read()
            assert "x-gateway-cost-usd" not in r.headers  # the headers left before the end
            return r.headers["x-gateway-request-id"]

    streams, _, record = ext_proc_use(stack, stream, audit)
    assert streams == 2 and record["usage_source"] == "provider"

    def embed() -> str:
        body = {"model": "text-embedding-3-small", "input": ["one", "two"]}
        return post(stack, "/v1/embeddings", body).headers["x-gateway-request-id"]

    streams, _, record = ext_proc_use(stack, embed, audit)
    assert streams == 2 and record["usage_source"] == "provider"


def test_an_upstream_error_is_released_once_with_a_zero_cost(stack: Stack, audit: AuditLog) -> None:
    r = post(stack, "/v1/chat/completions", CHAT, **{"x-mock-status": "503"})
    assert r.status_code == 503
    record = audit.wait_for(r.headers["x-gateway-request-id"])  # exactly one record
    assert record["status"] == 503 and record["usage_source"] == "none"
    assert record["cost_micros"] == 0 and r.headers["x-gateway-cost-usd"] == "0.000000"


def test_a_client_that_leaves_before_the_json_answer_is_charged_its_bound_once(
    stack: Stack, audit: AuditLog
) -> None:
    """The request stream is cancelled with the request: the processor meters what it saw
    (nothing) and charges the request's bound; no observer exists to charge it twice."""
    before = {r["request_id"] for r in audit.records()}
    with pytest.raises(httpx.ReadTimeout):
        slow = {"x-mock-latency-ms": "3000"}
        httpx.post(stack.gateway_url + "/v1/chat/completions", json=CHAT, headers=slow, timeout=0.5)

    def left() -> list[dict[str, Any]]:
        return [
            r
            for r in audit.records()
            if r["request_id"] not in before and r["usage_source"] == "bound"
        ]

    eventually(lambda: bool(left()), what="the record of the request whose client left")
    (record,) = left()
    assert audit.wait_for(record["request_id"]) == record  # exactly one record
    assert record["stream"] is False and record["completed"] is False
    assert record["tokens"]["output_tokens"] == 20  # its output limit: nothing was seen
    assert record["cost_micros"] > 0


@pytest.fixture(scope="module")
def small_buffer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Envoy's buffer limit (limits.max_request_body_bytes) at 256 KiB."""
    run_dir: Path = tmp_path_factory.mktemp("small-buffer")
    config = run_dir / "gateway.yaml"
    config.write_text(
        "identity: {allow_anonymous: true}\n"
        "limits: {max_request_body_bytes: 262144}\n"
        "sidecar: {workers: 1}\n"
    )
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


def test_an_answer_over_envoys_buffer_reaches_the_client_and_is_charged_its_bound(
    small_buffer: Stack,
) -> None:
    """Buffered, Envoy would answer 500 response_payload_too_large; partially buffered, the
    sidecar meters the first 256 KiB and the answer goes on. Its usage, at the end, was not
    seen: the request is charged its bound, once, and says no cost in its headers."""
    audit = AuditLog(small_buffer.run_dir / "audit.jsonl")
    small = post(small_buffer, "/v1/chat/completions", CHAT, **{"x-mock-pad-bytes": "100000"})
    record = audit.wait_for(small.headers["x-gateway-request-id"])
    assert record["usage_source"] == "provider"
    assert small.headers["x-gateway-cost-usd"] == f"{record['cost_micros'] / 1e6:.6f}"
    big = post(small_buffer, "/v1/chat/completions", CHAT, **{"x-mock-pad-bytes": "2000000"})
    assert big.status_code == 200 and len(big.content) > 2_000_000
    assert big.json()["usage"]["completion_tokens"] > 0  # the whole answer, unchanged
    assert "x-gateway-cost-usd" not in big.headers
    record = audit.wait_for(big.headers["x-gateway-request-id"])
    assert record["usage_source"] == "bound" and record["tokens"]["output_tokens"] == 20
