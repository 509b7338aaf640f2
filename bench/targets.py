"""The bench's targets: each a figure of the run against its limit, PASS, FAIL or n/a where
the run did not measure it (issue 13's response path, the gateway against the no-op, Redis
calls per chunk, the bursts). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bench.rows import Rows, diff, ratio


def _target(
    name: str, value: float | None, limit: float, unit: str, *, minimum: bool = False
) -> dict[str, Any]:
    """PASS when `value` <= `limit` (>= with `minimum`)."""
    ok = value is not None and (value >= limit if minimum else value <= limit)
    status = "n/a" if value is None else ("PASS" if ok else "FAIL")
    return {"target": name, "value": value, "limit": limit, "unit": unit, "status": status}


def _response_path(table: Rows, sat: int) -> list[dict[str, Any]]:
    """Issue 13, in one run: the gateway (observe mode) against plain Envoy and against the
    synchronous response path it replaced."""
    v = table.value

    def over_plain(setup: str, field: str, load: str) -> float | None:
        return diff(v(field, setup, 1, load, 1), v(field, "plain", 0, load, 1))

    targets = []
    request_path = over_plain("gateway", "p50_ms", "json")
    targets.append(
        _target("observe: added p50 over plain Envoy <= 1.3 ms, json, c=1", request_path, 1.3, "ms")
    )
    # `make run` starts a worker per core. Envoy balances per gRPC stream, so with two a
    # request's observer stream can run on the other worker, beside the next request's path.
    for w in sorted({r.workers for r in table.rows if r.setup == "gateway"} - {1}):
        targets.append(
            _target(
                f"observe: added p50 over plain Envoy <= 1.3 ms, json, c=1, W={w}",
                diff(v("p50_ms", "gateway", w, "json", 1), v("p50_ms", "plain", 0, "json", 1)),
                1.3,
                "ms",
            )
        )
    # ~0 added per chunk: the upstream-write-to-client-read latency of a paced chunk within
    # 0.05 ms of plain Envoy's (the timer's noise on this machine is of that order).
    lag = over_plain("gateway", "chunk_us", "sse-paced")
    targets.append(
        _target(
            "observe: added chunk latency over plain Envoy <= 50 us, sse-paced, c=1",
            lag,
            50.0,
            "us",
        )
    )
    limit = request_path if request_path is not None else 0.0
    for load in ("sse-paced", "sse"):
        targets.append(
            _target(
                f"observe: added TTFB over plain <= added json p50 ({limit:.2f} ms), {load}, c=1",
                over_plain("gateway", "ttfb_ms", load),
                limit,
                "ms",
            )
        )
    workers = sorted({r.workers for r in table.rows if r.setup == "gateway-sync"})
    for w in workers:
        targets.append(
            _target(
                f"observe rps >= 2x synchronous's, json, c={sat}, W={w}",
                ratio(
                    v("rps", "gateway", w, "json", sat), v("rps", "gateway-sync", w, "json", sat)
                ),
                2.0,
                "ratio",
                minimum=True,
            )
        )
    return targets


def evaluate(
    table: Rows,
    ratios: Mapping[str, float | None],
    *,
    sat: int,
    workers: Sequence[int],
    trips: Mapping[str, Mapping[str, float]],
    bursts: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """Every target of one run, in the order the report prints them; `workers` are the
    gateway's worker counts measured, `sat` the saturating concurrency."""
    v = table.value

    def added(field: str, load: str) -> float | None:
        return diff(v(field, "gateway", 1, load, 1), v(field, "noop", 1, load, 1))

    json_added = added("p50_ms", "json")
    targets = _response_path(table, sat)
    targets += [
        _target(
            f"gateway rps >= 50% of no-op's, json, c={sat}, W={w}",
            ratios[f"rps gateway/noop json c={sat} W={w}"],
            0.5,
            "ratio",
            minimum=True,
        )
        for w in workers
    ]
    targets.append(_target("added p50 over no-op <= 0.5 ms, json, c=1", json_added, 0.5, "ms"))
    for load in ("sse-paced", "sse"):
        for w in workers:
            targets.append(
                _target(
                    f"sidecar CPU/chunk <= 1.3x no-op's, {load}, c={sat}, W={w}",
                    ratios[f"sidecar cpu/chunk gateway/noop {load} c={sat} W={w}"],
                    1.3,
                    "ratio",
                )
            )
    per_chunk_calls = diff(
        trips.get("sse-paced", {}).get("total"), trips.get("json", {}).get("total")
    )
    targets.append(
        _target(
            "no Redis call per chunk: round trips per paced stream - per json <= 0.5",
            per_chunk_calls,
            0.5,
            "calls",
        )
    )
    for load in ("sse-paced", "sse"):
        ttfb_added = added("ttfb_ms", load)
        limit = json_added if json_added is not None else 0.0
        targets.append(
            _target(
                f"added TTFB over no-op <= added json p50 ({limit:.2f} ms), {load}, c=1",
                ttfb_added,
                limit,
                "ms",
            )
        )
    if bursts:
        failed = sum(
            n for b in bursts for code, n in b["statuses"].items() if code not in ("200", "429")
        )
        over = any(b["spent_micros"] > b["limit_micros"] for b in bursts)
        name = "bursts of 200 and 1,000: statuses other than 200/429 (spend over limit: FAIL)"
        targets.append(_target(name, float(failed) + (1e9 if over else 0.0), 0.0, "responses"))
    return targets
