"""Deploys lose nothing: a sidecar worker that gets SIGTERM mid-stream reports NOT_SERVING,
Envoy's health checks stop sending it new streams (they go to the other worker), the stream in
flight runs to its end, is audited once, metered from the provider's usage and settled in
Redis, all before the worker exits; a stream that outlives the grace period is cut, and still
audited and settled before the exit."""

from __future__ import annotations

import hashlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, eventually, expected_cost_micros, extproc_hosts

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
SECRET = "drain-secret"
BUDGET = "drainers"


def config(workers: int, grace_s: float) -> str:
    digest = hashlib.sha256(SECRET.encode()).hexdigest()
    return f"""
sidecar: {{workers: {workers}, grace_s: {grace_s}}}
identity:
  static_tokens:
    drainer: {{sha256: "{digest}"}}
budgets:
  - name: {BUDGET}
    scope: {{kind: static_token}}
    match: {{static_tokens: [drainer]}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
"""


def counters(stack: Stack) -> tuple[int, int]:
    """(spent, held) of the drainers budget."""
    spent = held = 0
    with redis.Redis.from_url(stack.redis_url) as client:
        for key in client.scan_iter(f"llmgw:{{gwb}}:[cr]:{BUDGET}:drainer:*"):
            fields = {k.decode(): int(v) for k, v in client.hgetall(key).items()}
            spent += fields.get("spent", 0) + sum(
                v for k, v in fields.items() if k.startswith("b:")
            )
            held += fields.get("held", 0)
    return spent, held


class SlowStream:
    """A streamed chat completion read on a thread: `tokens` words, one every `delay_ms`."""

    def __init__(self, stack: Stack, tokens: int, delay_ms: int) -> None:
        self.stack = stack
        self.headers: dict[str, str] = {}
        self.body = b""
        self.error: BaseException | None = None
        self.first_bytes = threading.Event()
        self.request = {
            "model": "gpt-4o-mini",
            "stream": True,
            "max_tokens": tokens,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
        }
        self.mock_headers = {
            "authorization": f"Bearer {SECRET}",
            "x-mock-output-tokens": str(tokens),
            "x-mock-chunk-delay-ms": str(delay_ms),
        }
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with httpx.stream(
                "POST",
                self.stack.gateway_url + CHAT,
                json=self.request,
                headers=self.mock_headers,
                timeout=120,
            ) as r:
                self.headers = dict(r.headers)
                for chunk in r.iter_raw():
                    self.body += chunk
                    self.first_bytes.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.first_bytes.set()

    def join(self) -> None:
        self.thread.join(120)
        assert not self.thread.is_alive()


# ext_proc streams per event stream in observe mode: the request filter's and the observer's;
# a JSON answer is metered on the request filter's stream alone.
STREAMS_PER_REQUEST = 2
STREAMS_PER_JSON_REQUEST = 1


def worker_with_the_stream(stack: Stack) -> int:
    """A worker with one of the request's two ext_proc streams open (both may be on one
    worker), from Envoy's own counters."""
    busy: list[int] = []

    def found() -> bool:
        hosts = extproc_hosts(stack.admin_url)
        active = {w: int(hosts[port]["rq_active"]) for w, port in stack.sidecar_ports.items()}
        busy[:] = [w for w, n in active.items() if n]
        return sum(active.values()) == STREAMS_PER_REQUEST

    eventually(found, what="the request's ext_proc streams in flight")
    return busy[0]


def post(stack: Stack) -> httpx.Response:
    return httpx.post(
        stack.gateway_url + CHAT,
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        headers={"authorization": f"Bearer {SECRET}"},
        timeout=30,
    )


def sidecar_log(stack: Stack) -> str:
    return (stack.run_dir / "stack.log").read_text(errors="replace")


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Stack]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config(workers=2, grace_s=120))
    stack = start_stack(tmp_path / "run", config_path=path, drain=True)
    yield stack
    stack.stop()


def test_sigterm_mid_stream_drains_to_the_other_worker_and_loses_nothing(
    two_workers: Stack,
) -> None:
    stack = two_workers
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    healthy = lambda: all(  # noqa: E731
        h["health_flags"] == "healthy" for h in extproc_hosts(stack.admin_url).values()
    )
    eventually(healthy, what="both workers healthy in Envoy")
    # 200 words at 100 ms: the stream runs ~20 s, far longer than the drain (3 s).
    stream = SlowStream(stack, tokens=200, delay_ms=100)
    assert stream.first_bytes.wait(30) and stream.error is None
    draining = worker_with_the_stream(stack)
    (other,) = set(stack.sidecar_ports) - {draining}
    proc, port = stack.sidecar(draining)
    other_port = stack.sidecar_ports[other]

    proc.send_signal(signal.SIGTERM)
    # Until Envoy's health checks see NOT_SERVING, requests may still reach the draining
    # worker: it serves them. Then Envoy stops choosing it ...
    in_between: list[int] = []

    def unhealthy() -> bool:
        in_between.append(post(stack).status_code)
        return "failed_active_hc" in extproc_hosts(stack.admin_url)[port]["health_flags"]

    eventually(unhealthy, what="Envoy marks the draining worker unhealthy")
    assert set(in_between) == {200}, in_between
    assert proc.poll() is None, "the worker keeps serving its stream"
    # ... so new requests during the drain go to the other worker, and succeed.
    before = extproc_hosts(stack.admin_url)
    for _ in range(6):
        r = post(stack)
        assert r.status_code == 200, r.text
    after = extproc_hosts(stack.admin_url)
    assert after[port]["rq_total"] == before[port]["rq_total"]
    assert int(after[other_port]["rq_total"]) == (
        int(before[other_port]["rq_total"]) + 6 * STREAMS_PER_JSON_REQUEST
    )
    # The worker stopped accepting (after drain_s) while its stream was still running.
    eventually(lambda: "no new streams; waiting up to" in sidecar_log(stack), what="drain ends")
    assert stream.thread.is_alive(), "the stream should outlast the drain"

    stream.join()
    assert stream.error is None, stream.error
    assert proc.wait(60) == 0
    # Metered and settled exactly once: by the draining worker before it exited, or - when the
    # request's observer stream was on the other worker - by that one (nothing for a reaper).
    audit.wait_for(stream.headers["x-gateway-request-id"])
    records = [r for r in audit.records() if r["stream"] is True]
    assert len(records) == 1, records
    rec = records[0]
    assert rec["request_id"] == stream.headers["x-gateway-request-id"]
    assert b"data: [DONE]" in stream.body
    assert rec["completed"] is True and rec["usage_source"] == "provider"
    assert rec["tokens"]["output_tokens"] == 200
    assert rec["cost_micros"] == expected_cost_micros("gpt-4o-mini", rec["tokens"])
    eventually(
        lambda: len([r for r in audit.records() if r["stream"] is False]) == len(in_between) + 6,
        what="every short request audited",
    )
    non_streamed = [r for r in audit.records() if r["stream"] is False]
    eventually(lambda: counters(stack)[1] == 0, what="every hold settled")
    spent, held = counters(stack)
    assert held == 0
    assert spent == rec["cost_micros"] + sum(r["cost_micros"] for r in non_streamed)


@pytest.fixture
def impatient(tmp_path: Path) -> Iterator[Stack]:
    path = tmp_path / "gateway.yaml"
    path.write_text(config(workers=1, grace_s=1))
    stack = start_stack(tmp_path / "run", config_path=path, drain=True)
    yield stack
    stack.stop()


def test_a_stream_cut_by_the_grace_period_is_audited_and_settled_before_exit(
    impatient: Stack,
) -> None:
    stack = impatient
    audit = AuditLog(stack.run_dir / "audit.jsonl")
    # ~60 s of stream against drain 3 s + grace 1 s: the grace period ends it.
    stream = SlowStream(stack, tokens=600, delay_ms=100)
    assert stream.first_bytes.wait(30) and stream.error is None
    proc, _port = stack.sidecar(0)
    worker_with_the_stream(stack)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    # The exit came after the audit line and the settle: both are there at once.
    records = audit.records()
    assert len(records) == 1, records
    rec = records[0]
    assert rec["stream"] is True and rec["completed"] is False
    # Its bill is unknown: what it showed + metering.unseen_output_tokens (1024) passes its
    # max_tokens of 600, so the whole limit (docs/budgets.md, "How each ending is charged").
    assert rec["usage_source"] == "bound" and rec["tokens"]["output_tokens"] == 600
    assert counters(stack) == (rec["cost_micros"], 0)
    stream.join()
    assert stream.error is not None or b"[DONE]" not in stream.body  # the client saw it cut
    # The request's stream and its observer's (one worker).
    assert f"waiting up to 1s for {STREAMS_PER_REQUEST} in flight" in sidecar_log(stack)
