"""No request body stalls the sidecar: streams keep flowing and other requests are served while
a pathological body arrives on the same worker, and the structural caps answer with a clear
error naming the limit.

Before bodies were capped and parsed off the event loop, two million `[]` (6 MB) held the one
worker's loop for ~1-2.5 s: streams froze for that long and, with a `fail_closed` budget on a
50 ms Redis deadline, requests arriving meanwhile were answered 503.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
HEADERS = {"content-type": "application/json"}
# Two million empty arrays: ~1 s of parsing on this machine when it was done on the loop.
PATHOLOGICAL = b'{"model": "gpt-4o-mini", "messages": [' + b",".join([b"[]"] * 2_000_000) + b"]}"
STREAMS = 3
CHUNK_DELAY_MS = 20
STREAM_TOKENS = 150  # ~3 s per stream at one event per token
# Far above the 20 ms spacing and any scheduling noise on a shared 2-core box, far below the
# second the blocking parse cost.
MAX_GAP_S = 0.6

CONFIG = """
identity: {allow_anonymous: true}
sidecar: {workers: 1}  # the streams, the small requests and the body share one event loop
budget_store: {deadline_ms: 50}
budgets:
  - name: everyone
    scope: {kind: global}
    limit_usd: 1000000
    window: {type: calendar, period: day}
    action: block
    on_redis_error: fail_closed
"""


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("oneworker")
    config = run_dir / "gateway.yaml"
    config.write_text(CONFIG)
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


def chat(stream: bool, content: str = "Tell me a long story.") -> bytes:
    body = {"model": "gpt-4o-mini", "stream": stream, "max_tokens": 400}
    body["messages"] = [{"role": "user", "content": content}]
    return json.dumps(body).encode()


def stream_arrivals(stack: Stack, started: threading.Barrier) -> list[float]:
    """Arrival time of every SSE event of one stream."""
    headers = {
        **HEADERS,
        "x-mock-output-tokens": str(STREAM_TOKENS),
        "x-mock-chunk-delay-ms": str(CHUNK_DELAY_MS),
    }
    arrivals: list[float] = []
    with httpx.stream(
        "POST", stack.gateway_url + CHAT, content=chat(True), headers=headers, timeout=60
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
                if len(arrivals) == 5:
                    started.wait(timeout=30)
    return arrivals


def test_streams_keep_flowing_and_requests_are_served_during_a_pathological_body(
    one_worker: Stack,
) -> None:
    stack = one_worker
    started = threading.Barrier(STREAMS + 1)
    with concurrent.futures.ThreadPoolExecutor(STREAMS + 8) as pool:
        streams = [pool.submit(stream_arrivals, stack, started) for _ in range(STREAMS)]
        started.wait(timeout=30)  # every stream is flowing

        def send_pathological() -> tuple[float, float, httpx.Response]:
            sent = time.monotonic()
            r = httpx.post(
                stack.gateway_url + CHAT, content=PATHOLOGICAL, headers=HEADERS, timeout=60
            )
            return sent, time.monotonic(), r

        def small(delay_s: float) -> httpx.Response:
            time.sleep(delay_s)  # spread over the time the body is uploaded and checked
            return httpx.post(
                stack.gateway_url + CHAT, content=chat(False), headers=HEADERS, timeout=30
            )

        bad = pool.submit(send_pathological)
        smalls = [pool.submit(small, n * 0.05) for n in range(6)]
        sent, answered, bad_response = bad.result(timeout=60)
        small_responses = [f.result(timeout=60) for f in smalls]
        arrivals = [f.result(timeout=120) for f in streams]

    # The body reached the worker while every stream was in flight.
    for events in arrivals:
        assert events[0] < sent and answered < events[-1], "the body did not overlap the streams"
        assert len(events) >= STREAM_TOKENS
    # Other requests were served: with a fail_closed budget on a 50 ms Redis deadline, a stall
    # can turn a reservation in flight into 503 budget_store_unavailable.
    assert [r.status_code for r in small_responses] == [200] * len(small_responses), [
        r.text for r in small_responses if r.status_code != 200
    ]
    # The streams kept flowing: no gap anywhere near the second the blocking parse cost.
    gaps = [b - a for events in arrivals for a, b in itertools.pairwise(events)]
    assert max(gaps) < MAX_GAP_S, f"largest gap between events {max(gaps):.3f}s"
    # The body was refused clearly.
    assert bad_response.status_code == 413, bad_response.text
    assert "limits.max_json_values" in bad_response.json()["error"]["message"]
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    rec = audit.wait_for(bad_response.headers["x-gateway-request-id"])
    assert rec["status"] == 413 and rec["error_code"] == "request_too_large"


def test_the_caps_answer_naming_the_limit(one_worker: Stack) -> None:
    url = one_worker.gateway_url
    deep = b'{"model": "gpt-4o-mini", "messages": ' + b"[" * 200 + b"]" * 200 + b"}"
    r = httpx.post(url + CHAT, content=deep, headers=HEADERS, timeout=30)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "limits.max_json_depth" in err["message"]
    assert "128" in err["message"]

    anthropic = {**HEADERS, "anthropic-version": "2023-06-01"}
    r = httpx.post(url + "/v1/messages", content=PATHOLOGICAL, headers=anthropic, timeout=60)
    assert r.status_code == 413
    doc = r.json()
    assert doc["type"] == "error" and doc["error"]["type"] == "request_too_large"
    assert "limits.max_json_values" in doc["error"]["message"]
