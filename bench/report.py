"""The bench's result: rows, the latency each setup adds over plain Envoy and over the no-op
ext_proc, the ratios, the targets with PASS/FAIL, and the table printed from them. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from bench import fallback, streams, versus

SETUP_NAMES = {
    "plain": "plain envoy",
    "noop": "no-op ext_proc",
    "noop-observe": "no-op ext_proc, observe mode",
    "noop-state": "no-op observe, state handed over",
    "noop-trust": "no-op observe, state + caller checks",
    "gateway-sync": "gateway, synchronous (before)",
    "gateway": "gateway, observe (after)",
    "gateway+otel": "gateway, traces + metrics on",
    "litellm": "LiteLLM proxy, 1 worker, no DB",
    "native": "gateway observe, native stream",
    "native-sync": "gateway sync, native stream",
    "translated": "gateway, translated stream",
    fallback.UNCHAINED: "fallback stack, model w/o chain",
    fallback.FIRST: "fallback stack, chained, 1 attempt",
    fallback.SECOND: "fallback stack, chained, 2 attempts",
}
GATEWAYS = ("gateway", "gateway-sync")


@dataclasses.dataclass(frozen=True)
class Row:
    """One setup under one load at one concurrency; None where it does not apply."""

    setup: str  # plain | noop | noop-observe | gateway-sync | gateway | gateway+otel | native | …
    workers: int  # sidecar processes (0: plain Envoy)
    load: str  # json | sse | sse-paced
    connections: int
    requests: int = 0  # completed in the measured wrk runs
    errors: int = 0
    rps: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None  # wrk's mean latency (not in the table: bench/versus.py's)
    ttfb_ms: float | None = None  # stream timer, concurrency 1
    chunk_us: float | None = None  # stream timer: see load.StreamTimes.chunk_us
    sidecar_ms_per_req: float | None = None  # CPU (utime + stime) of all sidecar workers
    sidecar_us_per_chunk: float | None = None
    envoy_ms_per_req: float | None = None
    extproc_msgs_per_req: float | None = None  # messages Envoy sent to the sidecar
    redis_cmds_per_req: float | None = None  # Redis commands, those inside Lua scripts included


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


class _Rows:
    def __init__(self, rows: Iterable[Row]) -> None:
        self.rows = list(rows)

    def find(self, setup: str, workers: int, load: str, connections: int) -> Row | None:
        for r in self.rows:
            key = (r.setup, r.workers, r.load, r.connections)
            if key == (setup, workers, load, connections):
                return r
        return None

    def value(self, field: str, setup: str, workers: int, load: str, conns: int) -> float | None:
        row = self.find(setup, workers, load, conns)
        return None if row is None else getattr(row, field)


def _added(rows: _Rows, row: Row) -> dict[str, float | None]:
    plain = rows.find("plain", 0, row.load, row.connections)
    noop = rows.find("noop", row.workers, row.load, row.connections)
    out: dict[str, float | None] = {}
    if row.connections != 1:  # under saturation latency only mirrors throughput
        return out
    for field in ("p50_ms", "ttfb_ms", "chunk_us"):
        name = field.rsplit("_", 1)[0]
        mine = getattr(row, field)
        out[f"{name}_vs_plain"] = (
            None if row.setup == "plain" or plain is None else (_diff(mine, getattr(plain, field)))
        )
        out[f"{name}_vs_noop"] = (
            None
            if row.setup not in GATEWAYS or noop is None
            else (_diff(mine, getattr(noop, field)))
        )
    return out


def _target(
    name: str, value: float | None, limit: float, unit: str, *, minimum: bool = False
) -> dict[str, Any]:
    """PASS when `value` <= `limit` (>= with `minimum`)."""
    ok = value is not None and (value >= limit if minimum else value <= limit)
    status = "n/a" if value is None else ("PASS" if ok else "FAIL")
    return {"target": name, "value": value, "limit": limit, "unit": unit, "status": status}


def _response_path_targets(table: _Rows, sat: int) -> list[dict[str, Any]]:
    """Issue 13, in one run: the gateway (observe mode) against plain Envoy and against the
    synchronous response path it replaced."""
    v = table.value

    def over_plain(setup: str, field: str, load: str) -> float | None:
        return _diff(v(field, setup, 1, load, 1), v(field, "plain", 0, load, 1))

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
                _diff(v("p50_ms", "gateway", w, "json", 1), v("p50_ms", "plain", 0, "json", 1)),
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
                _ratio(
                    v("rps", "gateway", w, "json", sat), v("rps", "gateway-sync", w, "json", sat)
                ),
                2.0,
                "ratio",
                minimum=True,
            )
        )
    return targets


def build(
    rows: Iterable[Row],
    *,
    redis_round_trips: Mapping[str, Mapping[str, float]],
    settings: Mapping[str, Any],
    machine: Mapping[str, Any],
    elapsed_s: float,
    bursts: Iterable[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    table = _Rows(rows)
    sat = int(settings["connections"])
    workers = sorted({r.workers for r in table.rows if r.setup == "gateway"})
    v = table.value

    ratios: dict[str, float | None] = {}
    for w in workers:
        for load in ("json", "sse", "sse-paced"):
            ratios[f"rps gateway/noop {load} c={sat} W={w}"] = _ratio(
                v("rps", "gateway", w, load, sat), v("rps", "noop", w, load, sat)
            )
        for load in ("json", "sse"):
            ratios[f"rps gateway/plain {load} c={sat} W={w}"] = _ratio(
                v("rps", "gateway", w, load, sat), v("rps", "plain", 0, load, sat)
            )
        ratios[f"sidecar cpu/request gateway/noop json c={sat} W={w}"] = _ratio(
            v("sidecar_ms_per_req", "gateway", w, "json", sat),
            v("sidecar_ms_per_req", "noop", w, "json", sat),
        )
        for load in ("sse", "sse-paced"):
            ratios[f"sidecar cpu/chunk gateway/noop {load} c={sat} W={w}"] = _ratio(
                v("sidecar_us_per_chunk", "gateway", w, load, sat),
                v("sidecar_us_per_chunk", "noop", w, load, sat),
            )

    # Issue 13: observe mode (after) against synchronous mode (before), same workers.
    sync_workers = sorted({r.workers for r in table.rows if r.setup == "gateway-sync"})
    for w in sorted(set(workers) & set(sync_workers)):
        for load in ("json", "sse", "sse-paced"):
            ratios[f"rps observe/synchronous {load} c={sat} W={w}"] = _ratio(
                v("rps", "gateway", w, load, sat), v("rps", "gateway-sync", w, load, sat)
            )
        ratios[f"sidecar cpu/request observe/synchronous json c={sat} W={w}"] = _ratio(
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
            ratios[f"floor: noop-observe added {field.split('_')[0]} {unit} {load} c=1 W=1"] = (
                _diff(v(field, "noop-observe", 1, load, 1), v(field, "plain", 0, load, 1))
            )
        for w in sorted(set(sync_workers)):
            ratios[f"floor: rps noop-observe/gateway-sync json c={sat} W={w}"] = _ratio(
                v("rps", "noop-observe", w, "json", sat), v("rps", "gateway-sync", w, "json", sat)
            )

    # The caller checks (W=1): sidecar CPU per request with the token check, the sign and the
    # verify, minus the same no-op without them, against the no-op floor.
    if table.find("noop-trust", 1, "json", sat) is not None:
        for load in ("json", "sse"):
            added_ms = _diff(
                v("sidecar_ms_per_req", "noop-trust", 1, load, sat),
                v("sidecar_ms_per_req", "noop-state", 1, load, sat),
            )
            ratios[f"caller checks: sidecar cpu us/request added {load} c={sat} W=1"] = (
                None if added_ms is None else added_ms * 1000
            )
            ratios[f"caller checks: added / noop-observe cpu {load} c={sat} W=1"] = _ratio(
                added_ms, v("sidecar_ms_per_req", "noop-observe", 1, load, sat)
            )
            ratios[f"caller checks: rps noop-trust/noop-state {load} c={sat} W=1"] = _ratio(
                v("rps", "noop-trust", 1, load, sat), v("rps", "noop-state", 1, load, sat)
            )

    # Telemetry on versus off (W=1): latency added at c=1, throughput and sidecar CPU at c=sat.
    if table.find("gateway+otel", 1, "json", 1) is not None:
        for load in ("json", "sse"):
            ratios[f"telemetry: added p50 ms {load} c=1 W=1"] = _diff(
                v("p50_ms", "gateway+otel", 1, load, 1), v("p50_ms", "gateway", 1, load, 1)
            )
            ratios[f"telemetry: rps on/off {load} c={sat} W=1"] = _ratio(
                v("rps", "gateway+otel", 1, load, sat), v("rps", "gateway", 1, load, sat)
            )
        ratios[f"telemetry: sidecar cpu/request on/off json c={sat} W=1"] = _ratio(
            v("sidecar_ms_per_req", "gateway+otel", 1, "json", sat),
            v("sidecar_ms_per_req", "gateway", 1, "json", sat),
        )

    def added(field: str, load: str) -> float | None:
        return _diff(v(field, "gateway", 1, load, 1), v(field, "noop", 1, load, 1))

    json_added = added("p50_ms", "json")
    targets = _response_path_targets(table, sat)
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
    trips = dict(redis_round_trips)
    per_chunk_calls = _diff(
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
    bursts = list(bursts)
    if bursts:
        failed = sum(
            n for b in bursts for code, n in b["statuses"].items() if code not in ("200", "429")
        )
        over = any(b["spent_micros"] > b["limit_micros"] for b in bursts)
        name = "bursts of 200 and 1,000: statuses other than 200/429 (spend over limit: FAIL)"
        targets.append(_target(name, float(failed) + (1e9 if over else 0.0), 0.0, "responses"))
    return {
        "settings": dict(settings),
        "machine": dict(machine),
        "elapsed_s": round(elapsed_s, 1),
        "rows": [dataclasses.asdict(r) | {"added": _added(table, r)} for r in table.rows],
        "ratios": ratios,
        "redis_round_trips_per_request": trips,
        "targets": targets,
        "bursts": [dict(b) for b in bursts],
        "versus_litellm": versus.summary(versus.ratios(table.rows), machine.get("litellm")),
        "translated_streams": streams.pair(table.rows, sat),
        "fallback": fallback.pair(table.rows, sat),
    }


# -- text -------------------------------------------------------------------------------------

_COLUMNS: tuple[tuple[str, str, int], ...] = (
    # header, key (row field or added.<name>), decimals
    ("req/s", "rps", 0),
    ("p50", "p50_ms", 2),
    ("p99", "p99_ms", 2),
    ("+p50 pl", "added.p50_vs_plain", 2),
    ("+p50 np", "added.p50_vs_noop", 2),
    ("ttfb", "ttfb_ms", 2),
    ("+ttfb pl", "added.ttfb_vs_plain", 2),
    ("+ttfb np", "added.ttfb_vs_noop", 2),
    ("chunk", "chunk_us", 1),
    ("+chk pl", "added.chunk_vs_plain", 1),
    ("+chk np", "added.chunk_vs_noop", 1),
    ("sc/req", "sidecar_ms_per_req", 3),
    ("sc/chunk", "sidecar_us_per_chunk", 2),
    ("envoy/req", "envoy_ms_per_req", 3),
    ("msgs/req", "extproc_msgs_per_req", 1),
    ("redis/req", "redis_cmds_per_req", 1),
)

LEGEND = """\
Latencies in ms: p50/p99 from wrk (whole response); ttfb = first body byte (stream timer, c=1).
chunk (us): sse = (end - first body byte) / {chunks} chunks; sse-paced = median latency of one
  chunk from the upstream's write to the client's read, {gap:g} ms between chunks.
+... pl / np: added over plain Envoy / over the no-op ext_proc (same load and W; c=1 only).
sc/req: sidecar CPU ms per request (all W workers); sc/chunk: the same in us / {chunks} chunks.
envoy/req: Envoy CPU ms per request (for the LiteLLM proxy: LiteLLM's own process); msgs/req:
ext_proc messages Envoy sent per request; redis/req: Redis commands per request (those its Lua
scripts run included).
Envoy --concurrency {envoy_concurrency}; {cpus} cores shared by wrk (-t1), Envoy, the upstream,
the sidecar and redis-server; saturating concurrency c={sat} (sse-paced c={sat}: streams last
~{chunks} x {gap:g} ms, so the offered load is bounded by the pacing too)."""


def _cell(doc: Mapping[str, Any], key: str, decimals: int) -> str:
    value: Any = doc
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return "-"
    if key == "rps":
        return f"{value:,.0f}"
    return f"{value:+.{decimals}f}" if key.startswith("added.") else f"{value:.{decimals}f}"


def render(result: Mapping[str, Any]) -> str:
    head = ["setup", "W", "load", "c", *(c[0] for c in _COLUMNS)]
    lines = [head]
    for row in result["rows"]:
        name = SETUP_NAMES.get(row["setup"], row["setup"])
        cells = [name, str(row["workers"] or "-"), row["load"], str(row["connections"])]
        lines.append(cells + [_cell(row, key, d) for _, key, d in _COLUMNS])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        text.append("  ".join(cells))
        if n == 0:
            text.append("  ".join("-" * w for w in widths))
    settings, machine = result["settings"], result["machine"]
    text += [
        "",
        LEGEND.format(sat=settings["connections"], gap=settings["gap_ms"], **settings | machine),
    ]
    text += ["", "Ratios"]
    for name, value in result["ratios"].items():
        text.append(f"  {name:<52} {'-' if value is None else f'{value:.2f}'}")
    text += ["", "Gateway's Redis round trips per request (one at a time, under MONITOR)"]
    for name, per in result["redis_round_trips_per_request"].items():
        detail = ", ".join(f"{k} {v:.2f}" for k, v in per.items() if k != "total")
        text.append(f"  {name:<10} {per['total']:.2f}  ({detail})")
    if result.get("bursts"):
        text += ["", "Bursts from one user against a $0.10 budget (a healthy Redis: 200/429 only)"]
        for b in result["bursts"]:
            statuses = ", ".join(f"{k}: {v}" for k, v in b["statuses"].items())
            text.append(
                f"  W={b['workers']} {b['requests']:>5} concurrent  {statuses}  "
                f"spent {b['spent_micros']:,} of {b['limit_micros']:,} µ$"
            )
    against = versus.render(result.get("versus_litellm") or {})
    if against:
        text += ["", *against]
    pair = streams.render(
        result.get("translated_streams") or [], settings["connections"], settings["gap_ms"]
    )
    if pair:
        text += ["", *pair]
    chains = fallback.render(result.get("fallback") or {})
    if chains:
        text += ["", *chains]
    text += ["", "Targets"]
    for t in result["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g} {t['unit']}"
        text.append(f"  {t['status']:<4}  {t['target']:<70} {value}")
    text.append(
        f"\n{settings['runs']} wrk runs of {settings['duration_s']:g} s per figure (median), "
        f"Envoy {machine['envoy']}, commit {machine.get('commit', '?')}, "
        f"{result['elapsed_s']:.0f} s in all."
    )
    return "\n".join(text)
