"""The bench's rows: one setup under one load at one concurrency, the table that finds them, and
the differences and ratios the report and its targets are made of. Pure."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


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


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


class Rows:
    """The rows of one run, found by (setup, workers, load, connections)."""

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
