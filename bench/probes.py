"""What the gateway did besides its speed: Redis round trips per request (under MONITOR), a
burst of one user's requests against a small budget, and its audit records (every completed
request identified, admitted, metered and priced)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import redis

from bench import load, setups
from bench.measure import Bench, Load
from bench.setup_configs import BURST_LIMIT_MICROS
from gateway_extproc.request.processor import CLIENT_LEFT


def burst(bench: Bench, running: setups.Running, count: int) -> dict[str, object]:
    """`count` concurrent requests from one user against the burst budget ($0.10; each
    reserves the injected cap's worst case): a healthy Redis must only produce 200s and 429s."""
    assert running.redis_url is not None
    client = redis.Redis.from_url(running.redis_url)
    try:
        for key in client.scan_iter("llmgw:{gwb}:c:bench-burst:*"):
            client.delete(key)
        statuses = load.burst(running.url, bench.token, count)
        time.sleep(1.0)  # the admitted requests' settles run after their responses
        spent = sum(
            int(client.hget(key, "spent") or 0)
            for key in client.scan_iter("llmgw:{gwb}:c:bench-burst:*")
        )
    finally:
        client.close()
    result: dict[str, object] = {
        "workers": running.workers,
        "requests": count,
        "statuses": {str(k): statuses.count(k) for k in sorted(set(statuses))},
        "spent_micros": spent,
        "limit_micros": BURST_LIMIT_MICROS,
    }
    bench.progress(f"burst of {count}: {result['statuses']}, spent {spent} of the limit")
    return result


def redis_probe(bench: Bench, running: setups.Running, specs: tuple[Load, ...]) -> None:
    """Redis round trips per request, one request at a time under MONITOR (after the
    measured runs: MONITOR slows Redis). A call per chunk would show as 200 per stream."""
    assert running.redis_url is not None
    counts = {"json": 50, "sse": 20, "sse-paced": 10}
    # The streams the last wrk run cut short are settled first: in observe mode when Envoy
    # closes their observer streams (metering.observer_close_timeout_ms later).
    load.wait_idle(running.admin_url)
    time.sleep(0.5)
    monitor = load.RedisMonitor(running.redis_url)
    try:
        for spec in specs:
            before = monitor.snapshot()
            for _ in range(counts[spec.name]):
                body = load.request_body(spec.stream)
                load.request_once(running.url, body, bench.token, spec.gap_ms)
            time.sleep(0.5)  # settling runs after the response: let it finish
            delta = monitor.snapshot() - before
            per = {k: v / counts[spec.name] for k, v in sorted(delta.items())}
            bench.redis_round_trips[spec.name] = {"total": sum(per.values()), **per}
            bench.progress(
                f"gateway Redis round trips per {spec.name} request: "
                + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
            )
    finally:
        monitor.close()


def check_audit(path: Path) -> None:
    """The gateway really did the work: no request was refused, and every completed one was
    identified by its JWT, admitted by the budget, metered from the provider's usage and
    priced. (wrk cuts the requests in flight when a run ends: recorded as not completed, and
    those it cut before they were forwarded as 499 `client_disconnected_before_forward`.)"""
    records = [json.loads(line) for line in path.read_bytes().splitlines() if line]
    completed = [r for r in records if r.get("completed") and r.get("status") == 200]
    cut = (499, CLIENT_LEFT)
    bad = [r for r in records if r.get("error_code") and (r.get("status"), r["error_code"]) != cut]
    bad += [
        r
        for r in completed
        if r.get("usage_source") != "provider"
        or r.get("cost_micros", 0) <= 0
        or (r.get("identity") or {}).get("auth_method") != "jwt"
        or (r.get("budget") or {}).get("decision") != "admitted"
    ]
    if bad or not completed:
        raise load.BenchError(
            f"{len(bad)} of {len(records)} gateway audit records are not metered requests, "
            f"e.g. {bad[0] if bad else None}"
        )
