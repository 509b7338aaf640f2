"""The bench's result as text: the table of rows, the legend, the ratios, the Redis round trips,
the bursts, the sections of bench/versus.py, streams.py and fallback.py, and the targets. Pure."""

from __future__ import annotations

from collections.abc import Mapping
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
