"""The bench's guard (issue 24): sidecar CPU per request of the gateway ÷ the no-op processor's,
in the same run, for JSON and paced SSE at the saturating concurrency (W=1), against the
committed baseline (bench/baseline.json), with a verdict line per load.

A ratio within one run is robust on this noisy shared machine where absolute CPU is not: both
setups meet the same machine state. The noise band is the relative spread those ratios showed
across repeated runs of the same code (docs/performance.md, issue 24); a ratio outside it is
REGRESSED or improved. `python -m bench --update-baseline` rewrites the baseline from a run.
The verdict is pure (`judge`) and tested exhaustively (tests/unit/test_bench_guard.py).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

BASELINE = Path(__file__).resolve().parent / "baseline.json"
# The loads guarded: (key in the baseline, the bench's load name, its label).
LOADS: tuple[tuple[str, str, str], ...] = (
    ("json", "json", "JSON"),
    ("sse-paced", "sse-paced", "paced SSE"),
)
GATEWAY, FLOOR = "gateway", "noop"

WITHIN, REGRESSED, IMPROVED = "within noise", "REGRESSED", "improved"
NO_BASELINE, NOT_MEASURED = "no baseline", "not measured"


def judge(ratio: float | None, baseline: float | None, noise: float) -> str:
    """REGRESSED above baseline * (1 + noise), improved below baseline * (1 - noise), else
    within noise (the band's edges are within). `noise` is relative: 0.15 is ±15 %."""
    if noise < 0:
        raise ValueError(f"noise band must be >= 0, got {noise}")
    if ratio is None:
        return NOT_MEASURED
    if baseline is None or baseline <= 0:
        return NO_BASELINE
    if ratio > baseline * (1 + noise):
        return REGRESSED
    if ratio < baseline * (1 - noise):
        return IMPROVED
    return WITHIN


def goal_status(ratio: float | None, goal: float | None) -> str:
    """`met` when ratio <= goal; `not met`; `` when there is no goal or no ratio."""
    if goal is None or ratio is None:
        return ""
    return "met" if ratio <= goal else "not met"


@dataclasses.dataclass(frozen=True)
class Verdict:
    label: str  # JSON | paced SSE
    ratio: float | None
    baseline: float | None
    noise: float
    goal: float | None
    status: str

    def line(self) -> str:
        def x(v: float | None) -> str:
            return "-" if v is None else f"{v:.2f}x"

        goal = (
            "no goal"
            if self.goal is None
            else f"goal <= {self.goal:g}x: {goal_status(self.ratio, self.goal) or 'n/a'}"
        )
        return (
            f"verdict: {self.label} {x(self.ratio)} the no-op floor "
            f"(baseline {x(self.baseline)} ±{self.noise * 100:.0f} %, {goal}): {self.status}"
        )


def floor_ratios(rows: Sequence[Mapping[str, Any]], connections: int) -> dict[str, float | None]:
    """Gateway sidecar CPU per request ÷ the no-op's, W=1, per guarded load (None when either
    setup did not run that load)."""

    def cpu(setup: str, load: str) -> float | None:
        for r in rows:
            if (r["setup"], r["workers"], r["load"], r["connections"]) == (
                setup,
                1,
                load,
                connections,
            ):
                value = r.get("sidecar_ms_per_req")
                return None if value is None else float(value)
        return None

    out: dict[str, float | None] = {}
    for key, load, _ in LOADS:
        mine, floor = cpu(GATEWAY, load), cpu(FLOOR, load)
        out[key] = None if mine is None or not floor else mine / floor
    return out


def verdicts(ratios: Mapping[str, float | None], baseline: Mapping[str, Any]) -> list[Verdict]:
    """One verdict per guarded load. The baseline's `noise` is one band for all loads or a
    band per load (`{"json": 0.4, ...}`; a load it does not name has none)."""
    noise = baseline.get("noise", 0.0)
    base = baseline.get("ratios", {})
    goals = baseline.get("goals", {})
    out = []
    for key, _, label in LOADS:
        ratio = ratios.get(key)
        band = float(noise.get(key, 0.0) if isinstance(noise, Mapping) else noise)
        verdict = judge(ratio, base.get(key), band)
        out.append(Verdict(label, ratio, base.get(key), band, goals.get(key), verdict))
    return out


def read_baseline(path: Path = BASELINE) -> dict[str, Any]:
    """The committed baseline; {} when there is none."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a JSON object")
    return doc


def updated_baseline(
    old: Mapping[str, Any], ratios: Mapping[str, float | None], *, date: str, commit: str
) -> dict[str, Any]:
    """The baseline with this run's ratios (rounded to 0.01), date and commit; the noise band,
    the goals and the notes kept. A load this run did not measure keeps its old ratio."""
    kept = dict(old.get("ratios", {}))
    for key, value in ratios.items():
        if value is not None:
            kept[key] = round(value, 2)
    return {**old, "ratios": kept, "date": date, "commit": commit}


def render(verdicts_: Sequence[Verdict], baseline: Mapping[str, Any]) -> str:
    lines = [v.line() for v in verdicts_]
    if baseline:
        lines.append(
            f"  (sidecar CPU/request, gateway ÷ no-op, W=1, same run; baseline of "
            f"{baseline.get('date', '?')}, commit {baseline.get('commit', '?')})"
        )
    return "\n".join(lines)
