"""The results JSON of a `python -m bench` run: the machine it ran on, the guard's verdict
against bench/baseline.json, and the file written to bench/results/."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench import guard
from bench.procs import ENVOY_CONCURRENCY
from gateway_extproc.stack import find_binary

RESULTS = Path(__file__).resolve().parent / "results"


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


def machine(litellm_version: str | None) -> dict[str, object]:
    """What the figures were measured on (and with which LiteLLM, when it was measured)."""
    out: dict[str, object] = {
        "cpus": os.cpu_count(),
        "envoy": envoy_version(),
        "envoy_concurrency": ENVOY_CONCURRENCY,
        "python": sys.version.split()[0],
        "commit": gateway_commit(),
    }
    if litellm_version is not None:
        out["litellm"] = litellm_version
    return out


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


def write(result: dict[str, object], kind: str, text: str | None = None) -> int:
    if text is not None:
        print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"{kind}-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0
