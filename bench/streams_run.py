"""Issue 25's rows through Envoy: paced streams to an OpenAI client on a native model and on a
Claude model translated to Anthropic Messages, each stream's chunk latency at c=1 with the
sidecar's CPU and ext_proc messages sampled around it, and its CPU at c=sat (bench/streams.py
pairs the rows)."""

from __future__ import annotations

import dataclasses

from bench import load, setups
from bench.measure import Bench, Load, upstream_counter
from bench.probes import check_audit
from bench.rows import Row
from bench.upstream import CHUNKS


def translated(bench: Bench, running: setups.Running) -> None:
    """Issue 25: paced streams through Envoy and the sidecar, an OpenAI client each, on a
    native model and on a Claude model translated to Anthropic Messages (its response path
    synchronous whatever the metering mode); in the synchronous stack the native one only.
    Per stream: the chunk latency at c=1 (stream timer), the sidecar CPU per chunk at
    c=sat (wrk). Rows `native`, `translated` (observe stack) and `native-sync`."""
    s = bench.settings
    native = Load("sse-paced", True, s.gap_ms)
    claude = Load("sse-paced", True, s.gap_ms, translated=True)
    if running.setup == "translated-sync":
        streams = [(native, "native-sync")]
    else:
        streams = [(native, "native"), (claude, "translated")]
    for spec, name in streams:
        bench.rows.append(timed_with_cpu(bench, running, spec, name))
        bench.rows.append(bench.wrk_row(running, spec, s.connections, name))
    if running.audit_path is not None:
        check_audit(running.audit_path)


def timed_with_cpu(bench: Bench, running: setups.Running, spec: Load, setup: str) -> Row:
    """The stream timer's row (c=1) with the sidecar's CPU and Envoy's ext_proc messages
    per stream sampled around it, per response's worth of upstream bytes (warm-up streams
    included): at c=1 each paced chunk reaches the sidecar as its own message, where at
    c=sat a busy Envoy coalesces some."""
    rx, whole = upstream_counter(running, spec)
    cpu0 = load.cpu_seconds(running.sidecar_pids)
    msgs0 = load.envoy_counter(running.admin_url, load.EXTPROC_MESSAGES)
    rx0 = load.envoy_counter(running.admin_url, rx)
    row = bench.timed_streams(running, spec, None, setup)
    n = max((load.envoy_counter(running.admin_url, rx) - rx0) / whole, 1.0)
    cpu_ms = (load.cpu_seconds(running.sidecar_pids) - cpu0) * 1000 / n
    msgs = load.envoy_counter(running.admin_url, load.EXTPROC_MESSAGES) - msgs0
    return dataclasses.replace(
        row,
        sidecar_ms_per_req=cpu_ms,
        sidecar_us_per_chunk=cpu_ms * 1000 / CHUNKS,
        extproc_msgs_per_req=msgs / n,
    )
