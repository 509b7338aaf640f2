"""`python -m bench`'s command line: its options and the settings they give a run, and the
setups there are to choose from."""

from __future__ import annotations

import argparse
import dataclasses
import os


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


ALL_SETUPS = (
    "plain,noop,noop-observe,noop-state,noop-trust,gateway-sync,gateway,"
    "gateway+otel,litellm,guardrails,request-body,translated,fallback"
)
# Plans run when another setup is chosen: `translated` starts the synchronous stack too.
SELECTED_BY = {"translated-sync": "translated"}


def parse_args(argv: list[str] | None, description: str | None) -> tuple[Settings, bool, bool]:
    """The settings, whether to keep the run directory, whether to rewrite the baseline.
    `description`: what `--help` says the command does."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=description)
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
        "process (bench/translation.py); W=1, ~1.5 min; "
        "fallback: one stack chaining one model (gpt-4o -> gpt-4o-mini), json at c=1 and "
        "c=sat for a model without a chain, the chained model answered by its first target, "
        "and by its second after a 500 (bench/fallback.py); W=1, ~2 min",
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
