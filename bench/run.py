"""`python -m bench`: start each setup in turn, drive it with wrk and the stream timer, print
the table and the targets, write them as JSON to bench/results/. Progress goes to stderr.

Every figure is the median of `--runs` wrk runs (each after a warm-up run) or of the timed
streams; every process started is stopped at the end, on Ctrl-C and on errors too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import IO

from bench import (
    fallback_run,
    guardrails,
    load,
    otlp_sink,
    report,
    report_text,
    request_body,
    results_json,
    setup_configs,
    setups,
    streams_run,
    translation,
    trust,
    versus,
)
from bench import litellm as litellm_setup
from bench import profile as profiler
from bench.cli import SELECTED_BY, Settings, parse_args
from bench.measure import Bench, Load
from bench.probes import burst, check_audit, redis_probe
from bench.procs import Procs, start_upstream
from bench.upstream import CHUNKS
from gateway_extproc.stack import StackError


def measure_setup(bench: Bench, running: setups.Running, full: bool) -> None:
    """Every load on a started setup; `full` adds the concurrency-1 measurements."""
    s = bench.settings
    json_load, sse = Load("json", False), Load("sse", True)
    paced = Load("sse-paced", True, s.gap_ms)
    if running.setup == "litellm":
        bench.litellm_version = running.proxy_version
        versus_loads(bench, running, (json_load, sse), ())
        return
    if running.setup == "gateway" and running.workers == 1 and "litellm" in s.setups:
        versus_loads(bench, running, (json_load, sse), (1, s.connections))  # those measured below
    if full or running.sidecar_pids:  # c=1 at W=N too: `make run` starts one per core
        bench.rows.append(bench.wrk_row(running, json_load, 1))
    bench.rows.append(bench.wrk_row(running, json_load, s.connections))
    if full:
        bench.rows.append(bench.timed_streams(running, sse, bench.wrk_row(running, sse, 1)))
    bench.rows.append(bench.wrk_row(running, sse, s.connections))
    if full:
        bench.rows.append(bench.timed_streams(running, paced, None))
    if running.sidecar_pids:
        bench.rows.append(bench.wrk_row(running, paced, s.connections))
    if running.setup == "gateway" and full:
        redis_probe(bench, running, (json_load, sse, paced))
    if running.audit_path is not None:
        check_audit(running.audit_path)
    if running.setup == "gateway" and not full:
        for count in (200, 1000):
            bench.bursts.append(burst(bench, running, count))


def versus_loads(
    bench: Bench, running: setups.Running, specs: tuple[Load, ...], skip: tuple[int, ...]
) -> None:
    """The loads of the LiteLLM comparison (bench/versus.py) at the concurrencies not in
    `skip`: LiteLLM's all, the gateway's c=16 beside the c=1 and c=sat that measure_setup() runs."""
    for spec in specs:
        for c in versus.concurrencies(spec.name, bench.settings.connections):
            if c not in skip:
                bench.rows.append(bench.wrk_row(running, spec, c))


def profile_setup(bench: Bench, running: setups.Running) -> None:
    """py-spy on the sidecar under json and paced SSE at the saturating concurrency."""
    s = bench.settings
    for spec in (Load("json", False), Load("sse-paced", True, s.gap_ms)):
        bench.profiles.append(profiler.record(bench, running, spec, s.connections))


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
    identity = setup_configs.make_identity(run_dir)
    bench = Bench(settings, run_dir, identity.token)
    n = settings.workers
    bench.progress(
        f"bench: {os.cpu_count()} cores shared by wrk, Envoy (--concurrency 1), the upstream, "
        f"the sidecar workers and redis-server; logs in {run_dir}"
    )
    procs = Procs(log)
    try:
        port, _pid = start_upstream(procs, run_dir)
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
            # Issue 26: a chained model's per-attempt filter beside a model without a chain.
            ("fallback", 1, True),
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
                workers != 1
                or setup in ("plain", "litellm", *SELECTED_BY, "translated", "fallback")
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
            elif setup == "fallback":
                cm = setups.gateway(
                    log, log_path, run_dir, port, workers, identity, env, fallback=True
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
                        profile_setup(bench, running)
                    elif setup in ("translated", "translated-sync"):
                        streams_run.translated(bench, running)
                    elif setup == "fallback":
                        fallback_run.fallback(bench, running)
                    else:
                        measure_setup(bench, running, full)
            finally:
                if sink is not None:
                    bench.progress(f"otlp sink received {sink.traces.spans} spans")
                    sink.stop()
                    sink = None
    finally:
        procs.stop()
    machine = results_json.machine(bench.litellm_version)
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
    settings, keep, update_baseline = parse_args(argv, __doc__)
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
        return results_json.write(result, "profile", str(result["text"]))
    print(report_text.render(result))
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
    result["guard"] = results_json.check_floor(result, settings.connections, update_baseline)
    return results_json.write(result, "bench")
