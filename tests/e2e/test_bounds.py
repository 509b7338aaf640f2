"""Memory and time bounds through real Envoy, the sidecar (one worker), redis-server and the mock
provider: a ~30 MB embeddings response and a gzip bomb from the upstream leave the worker's memory
flat (its peak RSS, VmHWM) while another stream on it keeps flowing, each charged as documented;
an answer over the observer's cap is not cached; a prompt dense with findings does not make the
other large prompts on the worker time out; and a large prompt over its rate limit is refused
before it is scanned.

Before these bounds, the observer kept every byte of a JSON response (and inflated a gzip body
without limit) and parsed it on the event loop at the end, and the guardrails' scan of a 16 MiB
prompt dense with findings held the worker's one parsing thread ~8 s.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually, expected_cost_micros, tokens
from tests.e2e.worst_case import input_bound

pytestmark = pytest.mark.e2e

KEY = "bounds-client-key"
CONFIG = f"""
sidecar: {{workers: 1}}  # every request and stream below shares one worker
identity:
  static_tokens:
    bounds-client: {{sha256: "{hashlib.sha256(KEY.encode()).hexdigest()}"}}
cache:
  max_entry_bytes: 8388608  # far above the observer's cap: the cap decides
  rules:
    - name: answers
      match: {{models: ["gpt-4o"]}}
      ttl: 1h
guardrails:
  - name: no-secrets
    match: {{models: ["gpt-4o-mini", "gpt-4.1-mini"]}}
    categories: {{secrets: block, pii: redact}}
rate_limits:
  - name: one-a-minute
    scope: {{kind: static_token}}
    match: {{models: ["gpt-4.1-mini"]}}
    requests: 1
    window: 60s
    action: block
"""
HEADERS = {"authorization": f"Bearer {KEY}", "accept-encoding": "identity"}
# The upstream sends its body as a provider across a network does: 64 KiB at a time. (From a
# loopback upstream Envoy reads, and hands the observer in one message, up to the provider
# cluster's buffer limit at once - 32 MiB: a bound of the transport, not of the observer.)
PACED = {"x-mock-chunk-bytes": "65536", "x-mock-chunk-delay-ms": "1"}
# Worker peak RSS growth allowed while a response far over the cap passes: the cap (1 MiB), the
# gRPC messages in flight and allocator slack. Before the bounds: ~100 MB for the embeddings
# response, ~1 GB for the bomb.
MAX_GROWTH_KB = 32 * 1024
MAX_GAP_S = 0.6  # between a paced stream's events (20 ms apart) while the big response passes
# One finding every ~30 bytes (bench/guardrails.py): ~0.5 s per MB to scan whole.
DENSE = (
    "mail jane.roe@fabrikam.net call +1 415 555 2671 card 4111 1111 1111 1111 "
    "iban DE89 3704 0044 0532 0130 00 ssn 536-22-1234 key sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oO"
    "OL8dKLzdocJ2isAj aws AKIA6I8J76B2LAJLJ4H9 password=Zx8!kQ2@pL9#mN4v\n"
)
PROSE = "The quarterly report covers revenue, churn and the billing migration. " * 3000


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir = tmp_path_factory.mktemp("bounds")
    config = run_dir / "gateway.yaml"
    config.write_text(CONFIG)
    s = start_stack(run_dir, config_path=config)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def audit(stack: Stack) -> AuditLog:
    return AuditLog(stack.run_dir / "audit.jsonl")


class Memory:
    """The worker's resident memory (/proc): its peak is reset, then read after the test."""

    def __init__(self, stack: Stack) -> None:
        self.status = Path(f"/proc/{stack.sidecar(0)[0].pid}/status")
        Path(self.status.parent / "clear_refs").write_text("5")  # VmHWM := VmRSS
        self.start_kb = self.read("VmHWM")

    def read(self, field: str) -> int:
        for line in self.status.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in {self.status}")

    def growth_kb(self) -> int:
        return self.read("VmHWM") - self.start_kb


def post(stack: Stack, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + path, json=body, headers={**HEADERS, **headers}, timeout=120
    )


def paced_stream(stack: Stack, flowing: threading.Event) -> list[float]:
    """Arrival times of a stream's events, 20 ms apart, ~3 s long."""
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {**HEADERS, "x-mock-output-tokens": "150", "x-mock-chunk-delay-ms": "20"}
    arrivals: list[float] = []
    url = stack.gateway_url + "/v1/chat/completions"
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic())
                if len(arrivals) == 5:
                    flowing.set()
    return arrivals


def while_streaming(stack: Stack, work: Any) -> tuple[Any, list[float]]:
    """`work()` run while a paced stream flows on the same worker; its result and the stream."""
    flowing = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        stream = pool.submit(paced_stream, stack, flowing)
        assert flowing.wait(30)
        result = work()
        return result, stream.result(timeout=120)


def largest_gap(arrivals: list[float]) -> float:
    return max(b - a for a, b in itertools.pairwise(arrivals))


def test_a_large_embeddings_response_keeps_the_worker_flat_and_is_charged_exactly(
    stack: Stack, audit: AuditLog
) -> None:
    memory = Memory(stack)
    body = {
        "model": "text-embedding-3-large",
        "input": [f"document number {i} about the billing migration" for i in range(512)],
        "dimensions": 3072,
    }
    response, arrivals = while_streaming(
        stack, lambda: post(stack, "/v1/embeddings", body, **PACED)
    )
    assert response.status_code == 200
    assert len(response.content) > 25_000_000  # ~30 MB of floats, 30 times the cap
    usage = response.json()["usage"]
    record = audit.wait_for(response.headers["x-gateway-request-id"])
    assert memory.growth_kb() < MAX_GROWTH_KB, f"worker peak RSS grew {memory.growth_kb()} kB"
    assert record["usage_source"] == "provider" and record["limits_reached"] == [
        "response_body_cap"
    ]
    assert record["tokens"]["input_tokens"] == usage["prompt_tokens"]
    assert record["provider_model"] == "text-embedding-3-large"
    expected = expected_cost_micros("text-embedding-3-large", tokens(usage["prompt_tokens"]))
    assert record["cost_micros"] == expected
    assert largest_gap(arrivals) < MAX_GAP_S


def test_a_gzip_bomb_from_the_upstream_is_cut_and_charged_its_bound(
    stack: Stack, audit: AuditLog
) -> None:
    memory = Memory(stack)
    body = {"model": "gpt-4.1", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]}
    bomb = {"x-mock-gzip": "1", "x-mock-pad-bytes": str(512 << 20)}  # 512 MiB from ~0.5 MB

    def fetch() -> tuple[int, str, int]:
        url = stack.gateway_url + "/v1/chat/completions"
        with httpx.stream("POST", url, json=body, headers={**HEADERS, **bomb}, timeout=120) as r:
            wire = sum(len(part) for part in r.iter_raw())  # never inflated here either
            return r.status_code, r.headers["x-gateway-request-id"], wire

    (status, request_id, wire), arrivals = while_streaming(stack, fetch)
    assert status == 200 and wire < 2_000_000
    record = audit.wait_for(request_id)
    assert memory.growth_kb() < MAX_GROWTH_KB, f"worker peak RSS grew {memory.growth_kb()} kB"
    assert record["usage_source"] == "bound"
    assert record["limits_reached"][0] == "response_inflate_ratio"  # (then the cap, if it got
    # past 1 MiB before the ratio stopped it: that depends on how Envoy chunked the body)
    # Charged an upper bound: the input bound and the request's own output limit.
    assert record["tokens"]["input_tokens"] == input_bound(body)
    assert record["tokens"]["output_tokens"] == 50
    expected = expected_cost_micros("gpt-4.1", tokens(record["tokens"]["input_tokens"], output=50))
    assert record["cost_micros"] == expected
    assert largest_gap(arrivals) < MAX_GAP_S
    # The worker is fine: the next request is served and metered from the provider's usage.
    after = post(stack, "/v1/chat/completions", body)
    assert after.status_code == 200
    assert audit.wait_for(after.headers["x-gateway-request-id"])["usage_source"] == "provider"


def test_an_answer_over_the_cap_is_not_cached(stack: Stack, audit: AuditLog) -> None:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Cache this, maybe."}]}
    big = post(stack, "/v1/chat/completions", body, **{"x-mock-pad-bytes": str(2 << 20)})
    assert big.status_code == 200 and big.headers["x-gateway-cache-status"] == "miss"
    record = audit.wait_for(big.headers["x-gateway-request-id"])
    # Stores run in the background after the response, in order: once a later small answer is
    # served from the cache, the big one's store would have run too.
    probe = {"model": "gpt-4o", "messages": [{"role": "user", "content": "A small answer."}]}

    def probe_hits() -> bool:
        return post(stack, "/v1/chat/completions", probe).headers["x-gateway-cache-status"] == "hit"

    eventually(probe_hits, what="a small answer stored after the big one")
    again = post(stack, "/v1/chat/completions", body)
    assert again.headers["x-gateway-cache-status"] == "miss"  # the big one was not stored
    assert record["usage_source"] == "provider"
    assert record.get("limits_reached") == ["response_body_cap"]


def extproc_bytes_sent(stack: Stack) -> int:
    """Bytes Envoy has written to the sidecar workers (request bodies are most of them)."""
    stat = "cluster.gateway_extproc.upstream_cx_tx_bytes_total"
    url = f"{stack.admin_url}/stats?filter=^{stat.replace('.', '[.]')}$"
    with urllib.request.urlopen(url, timeout=5) as r:
        name, _, value = r.read().decode().strip().partition(": ")
    assert name == stat, name
    return int(value)


def chat(content: str, model: str = "gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}]}


def test_a_pathological_prompt_does_not_make_other_requests_time_out(
    stack: Stack, audit: AuditLog
) -> None:
    pathological = chat((DENSE * (16_000_000 // len(DENSE) + 1))[:16_000_000])  # ~8 s to scan
    large = chat(PROSE)  # 200 KB of prose: scanned in the parsing thread too, in ~10 ms
    sent_before = extproc_bytes_sent(stack)

    def timed(body: dict[str, Any]) -> tuple[httpx.Response, float, float]:
        started = time.monotonic()
        r = post(stack, "/v1/chat/completions", body)
        return r, time.monotonic() - started, started

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        bad = pool.submit(timed, pathological)
        # Once the whole body is with the sidecar it is parsed, then scanned (until the scan's
        # deadline): the other requests start then, and must be answered meanwhile.
        eventually(
            lambda: extproc_bytes_sent(stack) - sent_before >= 16_000_000,
            what="the pathological body never reached the sidecar",
        )
        others = [pool.submit(timed, large) for _ in range(3)]
        others += [pool.submit(timed, chat("Hello")) for _ in range(3)]
        refused, took, sent = bad.result(timeout=120)
        answered = [f.result(timeout=120) for f in others]
    assert [r.status_code for r, _, _ in answered] == [200] * 6, [r.text for r, _, _ in answered]
    assert max(seconds for _, seconds, _ in answered) < 4.0  # far from the 5 s message timeout
    # They arrived while the bad one was in the sidecar (its body had reached it by then).
    assert max(started for _, _, started in answered) < sent + took
    assert refused.status_code == 413, refused.text
    assert "limits.guardrail_scan_timeout_ms" in refused.json()["error"]["message"]
    record = audit.wait_for(refused.headers["x-gateway-request-id"])
    assert record["limits_reached"] == ["guardrail_scan_timeout"]


def test_a_large_prompt_over_its_rate_limit_is_refused_before_its_scan(
    stack: Stack, audit: AuditLog
) -> None:
    first = post(stack, "/v1/chat/completions", chat(PROSE, "gpt-4.1-mini"))
    assert first.status_code == 200  # counts the one request a minute
    secret = "key sk-u8jzPde0IgxLd6GncfBAepfJBd0Kh8oOOL8dKLzdocJ2isAj\n"
    second = post(stack, "/v1/chat/completions", chat(PROSE + secret, "gpt-4.1-mini"))
    assert second.status_code == 429, second.text  # not 400 guardrail_blocked: never scanned
    assert second.json()["error"]["code"] == "rate_limited"
    assert second.headers["retry-after"]
    record = audit.wait_for(second.headers["x-gateway-request-id"])
    assert record["guardrails"] is None
    assert [(r["name"], r["blocked"]) for r in record["rate_limits"]] == [("one-a-minute", True)]
    # A small prompt is scanned first (cheaper than the round trip the peek would cost).
    small = post(stack, "/v1/chat/completions", chat(secret, "gpt-4.1-mini"))
    assert small.status_code == 400 and small.json()["error"]["code"] == "guardrail_blocked"
