"""The bench's measuring of one started setup, a row at a time: a load's wrk runs with the
processes' CPU and Envoy's counters sampled around each (`Bench.wrk_row`), and the stream
timer at concurrency 1 (`Bench.timed_streams`). Which rows a setup gets is bench/run.py's."""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from pathlib import Path

import redis

from bench import load, setups
from bench.cli import Settings
from bench.profile import Profile
from bench.rows import Row
from bench.upstream import CHUNKS, FAIL_HEADER, FAIL_RESPONSE, response_bytes
from bench.upstream_messages import CLIENT_STAMP


@dataclasses.dataclass(frozen=True)
class Load:
    name: str  # json | sse | sse-paced
    stream: bool
    gap_ms: float | None = None
    # An OpenAI client on a Claude model: translated to Anthropic Messages (the upstream
    # answers in Anthropic's format, to the anthropic cluster).
    translated: bool = False
    model: str | None = None  # the requested model when not the native or translated one
    # The bench upstream answers 500 to a request for this model (`x-bench-fail-model`): a
    # chain's first target fails and its second answers.
    fail_model: str | None = None

    def body(self) -> bytes:
        model = load.TRANSLATED_MODEL if self.translated else load.NATIVE_MODEL
        return load.request_body(self.stream, self.model or model)

    def headers(self) -> dict[str, str]:
        return {} if self.fail_model is None else {FAIL_HEADER: self.fail_model}

    def file_name(self) -> str:
        """A name for its wrk script, unique among the loads of a run."""
        parts = [self.name, "translated" if self.translated else "", self.model or ""]
        parts.append(f"fail-{self.fail_model}" if self.fail_model else "")
        return "-".join(p for p in parts if p)


class Bench:
    def __init__(self, settings: Settings, run_dir: Path, token: str) -> None:
        self.settings = settings
        self.run_dir = run_dir
        self.token = token
        self.bursts: list[dict[str, object]] = []
        self.wrk = load.ensure_wrk()
        self.started = time.monotonic()
        self.rows: list[Row] = []
        self.redis_round_trips: dict[str, dict[str, float]] = {}
        self.profiles: list[Profile] = []
        self.litellm_version: str | None = None

    def progress(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", file=sys.stderr, flush=True)

    def script(self, spec: Load) -> Path:
        path = self.run_dir / f"{spec.file_name()}.lua"
        return load.lua_script(path, spec.body(), self.token, spec.gap_ms, spec.headers())

    def sample(
        self,
        running: setups.Running,
        spec: Load,
        script: Path,
        connections: int,
        client: redis.Redis | None,
        label: str,
    ) -> dict[str, float]:
        """One wrk run; CPU, ext_proc messages and Redis commands per response's worth of
        upstream bytes (not per response wrk completed: the streams a run cuts short when it
        ends did work too, many of them for paced streams). LiteLLM has no Envoy to count
        upstream bytes: per response wrk completed there."""
        admin = running.admin_url

        def counter(name: str) -> float:
            return load.envoy_counter(admin, name) if admin else 0.0

        def messages() -> float:  # the request filters', and the per-attempt filter's
            chain = running.chain_cluster
            extra = counter(load.upstream_extproc_messages(chain)) if chain else 0.0
            return counter(load.EXTPROC_MESSAGES) + extra

        rx, whole = upstream_counter(running, spec)
        sidecar0 = load.cpu_seconds(running.sidecar_pids)
        envoy0 = load.cpu_seconds((running.envoy_pid,))
        msgs0 = messages()
        rx0 = counter(rx)
        redis0 = load.redis_commands(client)
        result = load.run_wrk(self.wrk, running.url, script, connections, self.settings.duration_s)
        n = max((counter(rx) - rx0) / whole if admin else result.requests, 1.0)
        self.progress(
            f"{label}: {result.rps:,.0f} req/s, p50 {result.p50_ms:.2f} ms, "
            f"p99 {result.p99_ms:.2f} ms"
        )
        return {
            "requests": result.requests,
            "errors": result.errors,
            "rps": result.rps,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "mean_ms": result.mean_ms,
            "sidecar_ms": (load.cpu_seconds(running.sidecar_pids) - sidecar0) * 1000 / n,
            "envoy_ms": (load.cpu_seconds((running.envoy_pid,)) - envoy0) * 1000 / n,
            "msgs": (messages() - msgs0) / n,
            "redis": (load.redis_commands(client) - redis0) / n,
            "served": n,
        }

    def wrk_row(
        self, running: setups.Running, spec: Load, connections: int, setup: str | None = None
    ) -> Row:
        """Warm-up, then `runs` wrk runs with process CPU and counters sampled around each.
        `setup`: the row's name when not the running setup's."""
        s = self.settings
        script = self.script(spec)
        setup = setup or running.setup
        label = f"{setup} W={running.workers} {spec.name} c={connections}"
        load.run_wrk(self.wrk, running.url, script, connections, s.warmup_s)
        client = redis.Redis.from_url(running.redis_url) if running.redis_url else None
        try:
            samples = [
                self.sample(running, spec, script, connections, client, f"{label} run {i + 1}")
                for i in range(s.runs)
            ]
        finally:
            if client is not None:
                client.close()
        errors = sum(int(x["errors"]) for x in samples)
        requests = sum(int(x["requests"]) for x in samples)
        if errors > requests * 0.001:
            raise load.BenchError(f"{label}: {errors} of {requests} requests failed")

        def median(key: str) -> float:
            return statistics.median(x[key] for x in samples)

        sidecar = bool(running.sidecar_pids)
        return Row(
            setup=setup,
            workers=running.workers,
            load=spec.name,
            connections=connections,
            requests=requests,
            errors=errors,
            rps=median("rps"),
            p50_ms=None if spec.gap_ms else median("p50_ms"),
            p99_ms=None if spec.gap_ms else median("p99_ms"),
            mean_ms=None if spec.gap_ms else median("mean_ms"),
            sidecar_ms_per_req=median("sidecar_ms") if sidecar else None,
            sidecar_us_per_chunk=median("sidecar_ms") * 1000 / CHUNKS
            if sidecar and spec.stream
            else None,
            envoy_ms_per_req=median("envoy_ms"),
            extproc_msgs_per_req=median("msgs") if sidecar else None,
            redis_cmds_per_req=median("redis") if running.redis_url else None,
        )

    def timed_streams(
        self, running: setups.Running, spec: Load, row: Row | None, setup: str | None = None
    ) -> Row:
        """The stream timer at concurrency 1: time to first byte and per-chunk time."""
        setup = setup or running.setup
        times = load.time_streams(
            running.url,
            spec.body(),
            self.token,
            CHUNKS,
            gap_ms=spec.gap_ms,
            count=200,
            max_seconds=3.0,
            warmup=2 if spec.gap_ms else 10,
            stamp=CLIENT_STAMP if spec.translated else load.STAMP,
        )
        self.progress(
            f"{setup} W={running.workers} {spec.name} stream timer: "
            f"{times.streams} streams, first byte {times.ttfb_ms:.2f} ms, "
            f"chunk {times.chunk_us:.1f} us"
        )
        if row is None:
            row = Row(setup, running.workers, spec.name, 1)
        return dataclasses.replace(row, ttfb_ms=times.ttfb_ms, chunk_us=times.chunk_us)


def upstream_counter(running: setups.Running, spec: Load) -> tuple[str, int]:
    """Envoy's counter of the response bytes from the cluster `spec`'s requests go to, and
    the bytes of one whole response there."""
    cluster = running.translated_cluster if spec.translated else running.upstream_cluster
    assert cluster is not None, f"{running.setup} does not translate"
    paced = spec.gap_ms is not None
    whole = response_bytes(spec.stream, paced=paced, anthropic=spec.translated)
    if spec.fail_model is not None:  # every request's first attempt got the 500 first
        whole += len(FAIL_RESPONSE)
    return load.upstream_bytes(cluster), whole
