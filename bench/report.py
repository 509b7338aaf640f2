"""The bench's result: rows, the latency each setup adds over plain Envoy and over the no-op
ext_proc, the ratios, the targets with PASS/FAIL (bench/targets.py), as the document the
results JSON keeps and bench/report_text.py prints. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from bench import fallback, streams, targets, versus
from bench.rows import Row, Rows, diff, ratio

GATEWAYS = ("gateway", "gateway-sync")


def _added(rows: Rows, row: Row) -> dict[str, float | None]:
    plain = rows.find("plain", 0, row.load, row.connections)
    noop = rows.find("noop", row.workers, row.load, row.connections)
    out: dict[str, float | None] = {}
    if row.connections != 1:  # under saturation latency only mirrors throughput
        return out
    for field in ("p50_ms", "ttfb_ms", "chunk_us"):
        name = field.rsplit("_", 1)[0]
        mine = getattr(row, field)
        out[f"{name}_vs_plain"] = (
            None if row.setup == "plain" or plain is None else (diff(mine, getattr(plain, field)))
        )
        out[f"{name}_vs_noop"] = (
            None
            if row.setup not in GATEWAYS or noop is None
            else (diff(mine, getattr(noop, field)))
        )
    return out


def build(
    rows: Iterable[Row],
    *,
    redis_round_trips: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
    machine: Mapping[str, Any],
    elapsed_s: float,
    bursts: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    table = Rows(rows)
    sat = int(settings["connections"])
    workers = sorted({r.workers for r in table.rows if r.setup == "gateway"})
    v = table.value

    ratios: dict[str, float | None] = {}
    for w in workers:
        for load in ("json", "sse", "sse-paced"):
            ratios[f"rps gateway/noop {load} c={sat} W={w}"] = ratio(
                v("rps", "gateway", w, load, sat), v("rps", "noop", w, load, sat)
            )
        for load in ("json", "sse"):
            ratios[f"rps gateway/plain {load} c={sat} W={w}"] = ratio(
                v("rps", "gateway", w, load, sat), v("rps", "plain", 0, load, sat)
            )
        ratios[f"sidecar cpu/request gateway/noop json c={sat} W={w}"] = ratio(
            v("sidecar_ms_per_req", "gateway", w, "json", sat),
            v("sidecar_ms_per_req", "noop", w, "json", sat),
        )
        for load in ("sse", "sse-paced"):
            ratios[f"sidecar cpu/chunk gateway/noop {load} c={sat} W={w}"] = ratio(
                v("sidecar_us_per_chunk", "gateway", w, load, sat),
                v("sidecar_us_per_chunk", "noop", w, load, sat),
            )

    # Issue 13: observe mode (after) against synchronous mode (before), same workers.
    sync_workers = sorted({r.workers for r in table.rows if r.setup == "gateway-sync"})
    for w in sorted(set(workers) & set(sync_workers)):
        for load in ("json", "sse", "sse-paced"):
            ratios[f"rps observe/synchronous {load} c={sat} W={w}"] = ratio(
                v("rps", "gateway", w, load, sat), v("rps", "gateway-sync", w, load, sat)
            )
        ratios[f"sidecar cpu/request observe/synchronous json c={sat} W={w}"] = ratio(
            v("sidecar_ms_per_req", "gateway", w, "json", sat),
            v("sidecar_ms_per_req", "gateway-sync", w, "json", sat),
        )

    # Observe mode's floor: the same two filters and messages with a processor that does
    # nothing. What the gateway cannot beat whatever its own work costs.
    if table.find("noop-observe", 1, "json", 1) is not None:
        for field, load, unit in (
            ("p50_ms", "json", "ms"),
            ("ttfb_ms", "sse", "ms"),
            ("chunk_us", "sse-paced", "us"),
        ):
            ratios[f"floor: noop-observe added {field.split('_')[0]} {unit} {load} c=1 W=1"] = diff(
                v(field, "noop-observe", 1, load, 1), v(field, "plain", 0, load, 1)
            )
        for w in sorted(set(sync_workers)):
            ratios[f"floor: rps noop-observe/gateway-sync json c={sat} W={w}"] = ratio(
                v("rps", "noop-observe", w, "json", sat), v("rps", "gateway-sync", w, "json", sat)
            )

    # The caller checks (W=1): sidecar CPU per request with the token check, the sign and the
    # verify, minus the same no-op without them, against the no-op floor.
    if table.find("noop-trust", 1, "json", sat) is not None:
        for load in ("json", "sse"):
            added_ms = diff(
                v("sidecar_ms_per_req", "noop-trust", 1, load, sat),
                v("sidecar_ms_per_req", "noop-state", 1, load, sat),
            )
            ratios[f"caller checks: sidecar cpu us/request added {load} c={sat} W=1"] = (
                None if added_ms is None else added_ms * 1000
            )
            ratios[f"caller checks: added / noop-observe cpu {load} c={sat} W=1"] = ratio(
                added_ms, v("sidecar_ms_per_req", "noop-observe", 1, load, sat)
            )
            ratios[f"caller checks: rps noop-trust/noop-state {load} c={sat} W=1"] = ratio(
                v("rps", "noop-trust", 1, load, sat), v("rps", "noop-state", 1, load, sat)
            )

    # Telemetry on versus off (W=1): latency added at c=1, throughput and sidecar CPU at c=sat.
    if table.find("gateway+otel", 1, "json", 1) is not None:
        for load in ("json", "sse"):
            ratios[f"telemetry: added p50 ms {load} c=1 W=1"] = diff(
                v("p50_ms", "gateway+otel", 1, load, 1), v("p50_ms", "gateway", 1, load, 1)
            )
            ratios[f"telemetry: rps on/off {load} c={sat} W=1"] = ratio(
                v("rps", "gateway+otel", 1, load, sat), v("rps", "gateway", 1, load, sat)
            )
        ratios[f"telemetry: sidecar cpu/request on/off json c={sat} W=1"] = ratio(
            v("sidecar_ms_per_req", "gateway+otel", 1, "json", sat),
            v("sidecar_ms_per_req", "gateway", 1, "json", sat),
        )

    trips = dict(redis_round_trips)
    bursts = list(bursts)
    verdicts = targets.evaluate(table, ratios, sat=sat, workers=workers, trips=trips, bursts=bursts)
    return {
        "settings": dict(settings),
        "machine": dict(machine),
        "elapsed_s": round(elapsed_s, 1),
        "rows": [dataclasses.asdict(r) | {"added": _added(table, r)} for r in table.rows],
        "ratios": ratios,
        "redis_round_trips_per_request": trips,
        "targets": verdicts,
        "bursts": [dict(b) for b in bursts],
        "versus_litellm": versus.summary(versus.ratios(table.rows), machine.get("litellm")),
        "translated_streams": streams.pair(table.rows, sat),
        "fallback": fallback.pair(table.rows, sat),
    }
