"""Issue 24's yardstick: the gateway's requests/s over a LiteLLM proxy's, same loads, same run.

Pure: from the bench's rows to the ratios (gateway in the default observe mode, each W it ran
with, over LiteLLM with one worker and no database) and the lines the report prints.

Two estimates of requests/s per row. `rps`, wrk's: the requests completed in the run ÷ its
length, as in the bench's table. It counts low when a request takes a sizeable part of the run:
every wrk run opens its c connections at once, and nothing completes in the first latency's
worth of the run (LiteLLM at c=32: ~1.2 s of a 4 s run). `steady`: the closed loop's steady
state by Little's law, c ÷ wrk's mean latency, which has no such start-up term (for the gateway
the two agree within a few %). The verdict is on the steady ratio, the one fair to LiteLLM.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

GOAL = 10.0  # issue 24: the gateway serves >= 10x LiteLLM's requests/s on the same box
LOADS = ("json", "sse")  # LiteLLM does not forward the paced stream's header
GATEWAY = "gateway"
LITELLM = "litellm"


class _Row(Protocol):
    @property
    def setup(self) -> str: ...
    @property
    def workers(self) -> int: ...
    @property
    def load(self) -> str: ...
    @property
    def connections(self) -> int: ...
    @property
    def rps(self) -> float | None: ...
    @property
    def mean_ms(self) -> float | None: ...


def steady_rps(connections: int, mean_ms: float | None) -> float | None:
    """Little's law for a closed loop of `connections` clients: throughput = c / mean latency."""
    return connections * 1000.0 / mean_ms if mean_ms else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def concurrencies(load: str, saturating: int) -> tuple[int, ...]:
    """JSON at c=1, c=16 (the issue's figure) and the bench's saturating concurrency; SSE at c=1
    alone: a 200-chunk stream costs LiteLLM ~0.15-0.3 s of CPU, so at c=16 none of its streams
    ends within a 4 s wrk run, and at c=32 they outlast wrk's 10 s timeout."""
    if load == "sse":
        return (1,)
    return tuple(sorted({1, 16, saturating}))


def ratios(rows: Iterable[_Row]) -> list[dict[str, Any]]:
    """One entry per gateway row that has a LiteLLM row of the same load and concurrency."""
    rows = list(rows)
    litellm = {(r.load, r.connections): r for r in rows if r.setup == LITELLM and r.rps}
    out = []
    for r in rows:
        theirs = litellm.get((r.load, r.connections))
        if r.setup != GATEWAY or r.rps is None or r.load not in LOADS or theirs is None:
            continue
        ours_steady = steady_rps(r.connections, r.mean_ms)
        theirs_steady = steady_rps(r.connections, theirs.mean_ms)
        out.append(
            {
                "load": r.load,
                "connections": r.connections,
                "workers": r.workers,
                "gateway_rps": r.rps,
                "litellm_rps": theirs.rps,
                "ratio": _ratio(r.rps, theirs.rps),
                "gateway_steady_rps": ours_steady,
                "litellm_steady_rps": theirs_steady,
                "steady_ratio": _ratio(ours_steady, theirs_steady),
            }
        )
    out.sort(key=lambda e: (e["workers"], LOADS.index(e["load"]), e["connections"]))
    return out


def judged(entry: Mapping[str, Any]) -> float:
    """The ratio the verdict is on: the steady one, else wrk's (no mean latency recorded)."""
    steady = entry.get("steady_ratio")
    return float(entry["ratio"] if steady is None else steady)


def summary(entries: list[dict[str, Any]], litellm_version: str | None) -> dict[str, Any]:
    """The results JSON's `versus_litellm`: every ratio, the lowest, and whether all meet GOAL."""
    lowest = min(entries, key=judged, default=None)
    return {
        "litellm": litellm_version,
        "goal": GOAL,
        "ratios": entries,
        "lowest": lowest,
        "met": None if lowest is None else judged(lowest) >= GOAL,
    }


def render(doc: Mapping[str, Any]) -> list[str]:
    """The report's section; nothing when the run had no LiteLLM and gateway pair."""
    entries = doc.get("ratios") or []
    if not entries:
        return []
    lines = [
        f"Against LiteLLM {doc.get('litellm') or '?'} (one worker, no database): "
        f"gateway req/s / LiteLLM's, goal >= {doc['goal']:g}x",
        "  wrk: completed in the run / its length; steady: c / mean latency (bench/versus.py)",
    ]
    for e in entries:  # ratios() sorted them by W, load, c
        line = (
            f"  {e['load']:<5} W={e['workers']} c={e['connections']:<3} "
            f"wrk {e['ratio']:6.2f}x ({e['gateway_rps']:,.0f} / {e['litellm_rps']:,.1f})"
        )
        if e.get("steady_ratio") is not None:
            line += (
                f"   steady {e['steady_ratio']:6.2f}x ({e['gateway_steady_rps']:,.0f} / "
                f"{e['litellm_steady_rps']:,.1f})"
            )
        lines.append(line)
    low = doc["lowest"]
    verdict = "MET" if doc["met"] else "NOT MET"
    lines.append(
        f"  goal >= {doc['goal']:g}x LiteLLM's req/s: {verdict} (lowest {judged(low):.2f}x, "
        f"{low['load']} c={low['connections']} W={low['workers']})"
    )
    return lines
