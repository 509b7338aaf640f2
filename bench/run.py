"""`python -m bench`: start each setup in turn, drive it with wrk and the stream timer, print
the table and the targets, write them as JSON to bench/results/. Progress goes to stderr.

Every figure is the median of `--runs` wrk runs (each after a warm-up run) or of the timed
streams; every process started is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO, Any

import redis

from bench import (
    guard,
    guardrails,
    load,
    otlp_sink,
    report,
    request_body,
    setups,
    translation,
    trust,
    versus,
)
from bench import litellm as litellm_setup
from bench import profile as profiler
from bench.report import Row
from bench.upstream import CHUNKS, response_bytes
from bench.upstream_messages import CLIENT_STAMP
from gateway_extproc.request.processor import CLIENT_LEFT
from gateway_extproc.stack import StackError, find_binary

RESULTS = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Settings:
    duration_s: int  # wrk takes whole seconds
    warmup_s: int
    runs: int
    connections: int  # the saturating concurrency
    workers: int  # N
    gap_ms: float  # between the events of a paced stream
    setups: list[str] = dataclasses.field(default_factory=list)  # which setups run
    profile: bool = False  # py-spy the sidecar instead of measuring (bench/profile.py)


@dataclasses.dataclass(frozen=True)
class Load:
    name: str  # json | sse | sse-paced
    stream: bool
    gap_ms: float | None = None
    # An OpenAI client on a Claude model: translated to Anthropic Messages (the upstream
    # answers in Anthropic's format, to the anthropic cluster).
    translated: bool = False

    def body(self) -> bytes:
        model = load.TRANSLATED_MODEL if self.translated else load.NATIVE_MODEL
        return load.request_body(self.stream, model)


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
        self.profiles: list[profiler.Profile] = []
        self.litellm_version: str | None = None

    def progress(self, message: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {message}", file=sys.stderr, flush=True)

    def _script(self, spec: Load) -> Path:
        name = f"{spec.name}-translated" if spec.translated else spec.name
        return load.lua_script(self.run_dir / f"{name}.lua", spec.body(), self.token, spec.gap_ms)

    def _sample(
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

        rx, whole = _upstream_counter(running, spec)
        sidecar0 = load.cpu_seconds(running.sidecar_pids)
        envoy0 = load.cpu_seconds((running.envoy_pid,))
        msgs0 = counter(load.EXTPROC_MESSAGES)
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
            "msgs": (counter(load.EXTPROC_MESSAGES) - msgs0) / n,
            "redis": (load.redis_commands(client) - redis0) / n,
            "served": n,
        }

    def wrk_row(
        self, running: setups.Running, spec: Load, connections: int, setup: str | None = None
    ) -> Row:
        """Warm-up, then `runs` wrk runs with process CPU and counters sampled around each.
        `setup`: the row's name when not the running setup's."""
        s = self.settings
        script = self._script(spec)
        setup = setup or running.setup
        label = f"{setup} W={running.workers} {spec.name} c={connections}"
        load.run_wrk(self.wrk, running.url, script, connections, s.warmup_s)
        client = redis.Redis.from_url(running.redis_url) if running.redis_url else None
        try:
            samples = [
                self._sample(running, spec, script, connections, client, f"{label} run {i + 1}")
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

    def measure(self, running: setups.Running, full: bool) -> None:
        """Every load on a started setup; `full` adds the concurrency-1 measurements."""
        s = self.settings
        json_load, sse = Load("json", False), Load("sse", True)
        paced = Load("sse-paced", True, s.gap_ms)
        if running.setup == "litellm":
            self.litellm_version = running.proxy_version
            self.versus(running, (json_load, sse), ())
            return
        if running.setup == "gateway" and running.workers == 1 and "litellm" in s.setups:
            self.versus(running, (json_load, sse), (1, s.connections))  # those measured below
        if full or running.sidecar_pids:  # c=1 at W=N too: `make run` starts one per core
            self.rows.append(self.wrk_row(running, json_load, 1))
        self.rows.append(self.wrk_row(running, json_load, s.connections))
        if full:
            self.rows.append(self.timed_streams(running, sse, self.wrk_row(running, sse, 1)))
        self.rows.append(self.wrk_row(running, sse, s.connections))
        if full:
            self.rows.append(self.timed_streams(running, paced, None))
        if running.sidecar_pids:
            self.rows.append(self.wrk_row(running, paced, s.connections))
        if running.setup == "gateway" and full:
            self.redis_probe(running, (json_load, sse, paced))
        if running.audit_path is not None:
            check_audit(running.audit_path)
        if running.setup == "gateway" and not full:
            for count in (200, 1000):
                self.bursts.append(self.burst(running, count))

    def translated(self, running: setups.Running) -> None:
        """Issue 25: paced streams through Envoy and the sidecar, an OpenAI client each, on a
        native model and on a Claude model translated to Anthropic Messages (its response path
        synchronous whatever the metering mode); in the synchronous stack the native one only.
        Per stream: the chunk latency at c=1 (stream timer), the sidecar CPU per chunk at
        c=sat (wrk). Rows `native`, `translated` (observe stack) and `native-sync`."""
        s = self.settings
        native = Load("sse-paced", True, s.gap_ms)
        claude = Load("sse-paced", True, s.gap_ms, translated=True)
        if running.setup == "translated-sync":
            streams = [(native, "native-sync")]
        else:
            streams = [(native, "native"), (claude, "translated")]
        for spec, name in streams:
            self.rows.append(self.timed_with_cpu(running, spec, name))
            self.rows.append(self.wrk_row(running, spec, s.connections, name))
        if running.audit_path is not None:
            check_audit(running.audit_path)

    def timed_with_cpu(self, running: setups.Running, spec: Load, setup: str) -> Row:
        """The stream timer's row (c=1) with the sidecar's CPU and Envoy's ext_proc messages
        per stream sampled around it, per response's worth of upstream bytes (warm-up streams
        included): at c=1 each paced chunk reaches the sidecar as its own message, where at
        c=sat a busy Envoy coalesces some."""
        rx, whole = _upstream_counter(running, spec)
        cpu0 = load.cpu_seconds(running.sidecar_pids)
        msgs0 = load.envoy_counter(running.admin_url, load.EXTPROC_MESSAGES)
        rx0 = load.envoy_counter(running.admin_url, rx)
        row = self.timed_streams(running, spec, None, setup)
        n = max((load.envoy_counter(running.admin_url, rx) - rx0) / whole, 1.0)
        cpu_ms = (load.cpu_seconds(running.sidecar_pids) - cpu0) * 1000 / n
        msgs = load.envoy_counter(running.admin_url, load.EXTPROC_MESSAGES) - msgs0
        return dataclasses.replace(
            row,
            sidecar_ms_per_req=cpu_ms,
            sidecar_us_per_chunk=cpu_ms * 1000 / CHUNKS,
            extproc_msgs_per_req=msgs / n,
        )

    def versus(
        self, running: setups.Running, specs: tuple[Load, ...], skip: tuple[int, ...]
    ) -> None:
        """The loads of the LiteLLM comparison (bench/versus.py) at the concurrencies not in
        `skip`: LiteLLM's all, the gateway's c=16 beside the c=1 and c=sat that measure() runs."""
        for spec in specs:
            for c in versus.concurrencies(spec.name, self.settings.connections):
                if c not in skip:
                    self.rows.append(self.wrk_row(running, spec, c))

    def profile(self, running: setups.Running) -> None:
        """py-spy on the sidecar under json and paced SSE at the saturating concurrency."""
        s = self.settings
        for spec in (Load("json", False), Load("sse-paced", True, s.gap_ms)):
            self.profiles.append(profiler.record(self, running, spec, s.connections))

    def burst(self, running: setups.Running, count: int) -> dict[str, object]:
        """`count` concurrent requests from one user against the burst budget ($0.10; each
        reserves the injected cap's worst case): a healthy Redis must only produce 200s and 429s."""
        assert running.redis_url is not None
        client = redis.Redis.from_url(running.redis_url)
        try:
            for key in client.scan_iter("llmgw:{gwb}:c:bench-burst:*"):
                client.delete(key)
            statuses = load.burst(running.url, self.token, count)
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
            "limit_micros": setups.BURST_LIMIT_MICROS,
        }
        self.progress(f"burst of {count}: {result['statuses']}, spent {spent} of the limit")
        return result

    def redis_probe(self, running: setups.Running, specs: tuple[Load, ...]) -> None:
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
                    load.request_once(running.url, body, self.token, spec.gap_ms)
                time.sleep(0.5)  # settling runs after the response: let it finish
                delta = monitor.snapshot() - before
                per = {k: v / counts[spec.name] for k, v in sorted(delta.items())}
                self.redis_round_trips[spec.name] = {"total": sum(per.values()), **per}
                self.progress(
                    f"gateway Redis round trips per {spec.name} request: "
                    + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
                )
        finally:
            monitor.close()


def _upstream_counter(running: setups.Running, spec: Load) -> tuple[str, int]:
    """Envoy's counter of the response bytes from the cluster `spec`'s requests go to, and
    the bytes of one whole response there."""
    cluster = running.translated_cluster if spec.translated else running.upstream_cluster
    assert cluster is not None, f"{running.setup} does not translate"
    paced = spec.gap_ms is not None
    whole = response_bytes(spec.stream, paced=paced, anthropic=spec.translated)
    return load.upstream_bytes(cluster), whole


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


def gateway_commit() -> str:
    """The commit measured (`git describe --always --dirty`), when run from a git checkout."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).resolve().parent.parent,
        )
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


def envoy_version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            [find_binary("envoy"), "--version"], capture_output=True, text=True, timeout=30
        ).stdout
        return out.strip().rsplit("version:", 1)[-1].strip()
    return "unknown"


ALL_SETUPS = (
    "plain,noop,noop-observe,noop-state,noop-trust,gateway-sync,gateway,"
    "gateway+otel,litellm,guardrails,request-body,translated"
)
# Plans run when another setup is chosen: `translated` starts the synchronous stack too.
SELECTED_BY = {"translated-sync": "translated"}


def parse_args(argv: list[str] | None) -> tuple[Settings, bool, bool]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per load")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per load (median)")
    parser.add_argument("--connections", type=int, default=32, help="saturating concurrency")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="N")
    parser.add_argument("--gap-ms", type=float, default=1.0, help="paced streams: event gap")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (logs)")
    parser.add_argument(
        "--update-baseline",
        action="store_true",
        help="rewrite bench/baseline.json with this run's gateway/no-op CPU ratios "
        "(bench/guard.py)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the sidecar of each setup (default: noop,gateway; W=1) under json and "
        "sse-paced at the saturating concurrency, one wrk run of --duration seconds each, and "
        "print where its CPU goes (bench/profile.py)",
    )
    parser.add_argument(
        "--setups",
        default=None,
        help="comma-separated subset (default: all; with --profile: noop,gateway), "
        "e.g. gateway,gateway+otel (telemetry on versus off); "
        "litellm,gateway: the gateway's req/s over a LiteLLM proxy's (one worker, no database; "
        "installed once into .cache/bench-litellm/ from bench/litellm.lock, bench/litellm.py); "
        "noop-state,noop-trust (the caller checks' cost, with the per-call figures); "
        "guardrails: the 1 MB prompt scan; request-body: refusing repeated JSON keys versus "
        "re-serialising every body (both pure CPU, no processes); translated: a paced stream "
        "translated to Anthropic Messages beside native ones (observe and synchronous), "
        "sidecar CPU and latency per chunk through Envoy, then the translation's CPU in "
        "process (bench/translation.py); W=1, ~1.5 min",
    )
    a = parser.parse_args(argv)
    chosen = a.setups or ("noop,gateway" if a.profile else ALL_SETUPS)
    settings = Settings(
        a.duration,
        a.warmup,
        a.runs,
        a.connections,
        a.workers,
        a.gap_ms,
        chosen.split(","),
        a.profile,
    )
    return settings, a.keep, a.update_baseline


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `finally` stops what it started."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(settings: Settings, run_dir: Path, log: IO[bytes]) -> dict[str, object]:
    env = dict(os.environ)
    identity = setups.make_identity(run_dir)
    bench = Bench(settings, run_dir, identity.token)
    n = settings.workers
    bench.progress(
        f"bench: {os.cpu_count()} cores shared by wrk, Envoy (--concurrency 1), the upstream, "
        f"the sidecar workers and redis-server; logs in {run_dir}"
    )
    procs = setups.Procs(log)
    try:
        port, _pid = setups.start_upstream(procs, run_dir)
        bench.progress(f"upstream on 127.0.0.1:{port}")
        log_path = run_dir / "processes.log"
        plans = [
            ("plain", 0, True),
            ("noop", 1, True),
            ("noop-observe", 1, True),  # observe mode's transport with no work: its floor
            # The caller checks' cost: the same no-op handing a state over, without and with
            # the token check, the sign and the verify (bench/noop.py, bench/trust.py).
            ("noop-state", 1, False),
            ("noop-trust", 1, False),
            ("gateway-sync", 1, True),  # the synchronous response path (before issue 13)
            ("gateway", 1, True),
            ("gateway+otel", 1, True),  # traces + metrics on, exported to a local sink
            ("litellm", 0, True),  # issue 24's yardstick: LiteLLM, one worker, no database
            # Issue 25: a translated stream beside native ones (observe, then synchronous).
            ("translated", 1, True),
            ("translated-sync", 1, True),
            ("noop", n, False),
            ("noop-observe", n, False),
            ("gateway-sync", n, False),
            ("gateway", n, False),
        ]
        sink: otlp_sink.Sink | None = None
        for setup, workers, full in plans:
            if SELECTED_BY.get(setup, setup) not in settings.setups:
                continue
            if workers == n and not full and n == 1 and setup not in setups.NOOP_HANDOFFS:
                continue  # W=N is W=1 on a one-core machine
            if settings.profile and (
                workers != 1 or setup in ("plain", "litellm", *SELECTED_BY, "translated")
            ):
                continue  # a profile is of one sidecar worker, under the native loads
            bench.progress(f"starting {setup}" + (f" with {workers} worker(s)" if workers else ""))
            if setup == "plain":
                cm = setups.plain(log, run_dir, port, env)
            elif setup in setups.NOOP_HANDOFFS:
                cm = setups.noop(log, run_dir, port, workers, env, setup=setup)
            elif setup == "litellm":
                cm = litellm_setup.litellm(log, run_dir, port, env, bench.progress)
            elif setup == "gateway-sync":
                cm = setups.gateway(
                    log, log_path, run_dir, port, workers, identity, env, synchronous=True
                )
            elif setup in ("translated", "translated-sync"):
                cm = setups.gateway(
                    log,
                    log_path,
                    run_dir,
                    port,
                    workers,
                    identity,
                    env,
                    synchronous=setup == "translated-sync",
                    translated=True,
                )
            elif setup == "gateway+otel":
                sink = otlp_sink.Sink()
                cm = setups.gateway(
                    log, log_path, run_dir, port, workers, identity, env, sink.endpoint
                )
            else:
                cm = setups.gateway(log, log_path, run_dir, port, workers, identity, env)
            try:
                with cm as running:
                    if settings.profile:
                        bench.profile(running)
                    elif setup in ("translated", "translated-sync"):
                        bench.translated(running)
                    else:
                        bench.measure(running, full)
            finally:
                if sink is not None:
                    bench.progress(f"otlp sink received {sink.traces.spans} spans")
                    sink.stop()
                    sink = None
    finally:
        procs.stop()
    machine = {
        "cpus": os.cpu_count(),
        "envoy": envoy_version(),
        "envoy_concurrency": setups.ENVOY_CONCURRENCY,
        "python": sys.version.split()[0],
        "commit": gateway_commit(),
    }
    if bench.litellm_version is not None:
        machine["litellm"] = bench.litellm_version
    if settings.profile:
        return {
            "settings": dataclasses.asdict(settings),
            "machine": machine,
            "elapsed_s": round(time.monotonic() - bench.started, 1),
            "profiles": profiler.as_json(bench.profiles),
            "text": profiler.render(bench.profiles),
        }
    return report.build(
        bench.rows,
        redis_round_trips=bench.redis_round_trips,
        settings=dataclasses.asdict(settings) | {"chunks": CHUNKS},
        machine=machine,
        elapsed_s=time.monotonic() - bench.started,
        bursts=bench.bursts,
    )


def main(argv: list[str] | None = None) -> int:
    settings, keep, update_baseline = parse_args(argv)
    run_dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))
    ok = False
    try:
        with _terminate_as_exit(), (run_dir / "processes.log").open("ab") as log:
            result = run(settings, run_dir, log)
        ok = True
    except (load.BenchError, StackError) as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    finally:
        if ok and not keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"bench: logs kept in {run_dir}", file=sys.stderr)
    if settings.profile:
        return _write(result, "profile", str(result["text"]))
    print(report.render(result))
    if "guardrails" in settings.setups:
        result["guardrails_scan"] = guardrails.measure()
        print("\n" + guardrails.render(result["guardrails_scan"]))
    if "request-body" in settings.setups:
        result["request_body"] = request_body.measure()
        print("\n" + request_body.render(result["request_body"]))
    if "noop-trust" in settings.setups:
        result["caller_checks"] = trust.measure()
        print("\n" + trust.render(result["caller_checks"]))
    if "translated" in settings.setups:
        in_process = translation.measure(translation.REPEATS)
        result["translation_in_process"] = in_process
        print("\n" + translation.render(in_process))
    result["guard"] = check_floor(result, settings.connections, update_baseline)
    return _write(result, "bench")


def check_floor(result: dict[str, Any], connections: int, update: bool) -> dict[str, Any]:
    """Print the guard's verdict lines (bench/guard.py); with `update`, rewrite the baseline."""
    ratios = guard.floor_ratios(result["rows"], connections)
    baseline = guard.read_baseline()
    verdicts = guard.verdicts(ratios, baseline)
    print("\n" + guard.render(verdicts, baseline))
    if update:
        if all(v is None for v in ratios.values()):
            print("baseline not updated: this run measured neither ratio (--setups noop,gateway)")
        else:
            today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
            commit = str(result["machine"].get("commit", "unknown"))
            new = guard.updated_baseline(baseline, ratios, date=today, commit=commit)
            guard.BASELINE.write_text(json.dumps(new, indent=2) + "\n")
            print(f"baseline updated: {guard.BASELINE}")
    return {
        "ratios": ratios,
        "verdicts": [dataclasses.asdict(v) | {"line": v.line()} for v in verdicts],
    }


def _write(result: dict[str, object], kind: str, text: str | None = None) -> int:
    if text is not None:
        print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{kind}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0
