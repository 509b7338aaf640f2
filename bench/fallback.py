"""Issue 26: what the per-attempt upstream filter of a fallback chain costs, and that a model
without a chain pays nothing for it.

Pure: from the bench's rows (the `fallback` setup, bench/fallback_run.py) to the entries the
report prints and the results JSON keeps. Every row is JSON requests (wrk, W=1) on one gateway
stack whose configuration chains one model:

- `fallback-none` (a): a model without a chain on that stack (its own provider cluster, no
  upstream filter); set beside the plain `gateway` setup's row (no chain configured at all)
  when the run measured it;
- `fallback-1` (b): the chained model answered by its first target: one attempt, one
  per-attempt ext_proc stream (request headers, body, response headers);
- `fallback-2` (c): the chained model whose first target answers 500: two attempts, two
  per-attempt streams, Envoy's retry back-off between them (`retry_back_off` base 10 ms).

Per case and concurrency: req/s, p50/p99, sidecar CPU and ext_proc messages (both filters) per
request, and (b)/(a), (c)/(a) for each.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

UNCHAINED, FIRST, SECOND = "fallback-none", "fallback-1", "fallback-2"
CASES = (UNCHAINED, FIRST, SECOND)
LABELS = {
    UNCHAINED: "(a) model without a chain",
    FIRST: "(b) chained, first target answers",
    SECOND: "(c) chained, first target 500s",
}
GATEWAY = "gateway"  # the setup with no chain configured
LOAD = "json"
FIELDS = (
    "rps",
    "p50_ms",
    "p99_ms",
    "sidecar_ms_per_req",
    "extproc_msgs_per_req",
    "envoy_ms_per_req",
)


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
    def p50_ms(self) -> float | None: ...
    @property
    def p99_ms(self) -> float | None: ...
    @property
    def sidecar_ms_per_req(self) -> float | None: ...
    @property
    def extproc_msgs_per_req(self) -> float | None: ...
    @property
    def envoy_ms_per_req(self) -> float | None: ...


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def pair(rows: Iterable[_Row], saturating: int) -> dict[str, Any]:
    """`cases`: one entry per case and concurrency the run measured, with `vs_unchained` ratios
    (None for (a) itself) and the sidecar CPU added over (a); `unchained_vs_gateway`: (a) over
    the `gateway` setup's row at each concurrency, or None when the run did not measure it.
    Empty when the run measured no case."""
    found: dict[tuple[str, int], _Row] = {}
    for r in rows:
        if r.load == LOAD and r.workers == 1 and r.setup in (*CASES, GATEWAY):
            found[(r.setup, r.connections)] = r
    if not any(name in CASES for name, _ in found):
        return {}
    cases: list[dict[str, Any]] = []
    versus_gateway: dict[str, Any] | None = None
    for c in (1, saturating):
        base = found.get((UNCHAINED, c))
        for name in CASES:
            row = found.get((name, c))
            if row is None:
                continue
            entry: dict[str, Any] = {"case": name, "label": LABELS[name], "connections": c}
            entry |= {f: getattr(row, f) for f in FIELDS}
            against = None if name == UNCHAINED else base
            entry["vs_unchained"] = {
                f: None if against is None else _ratio(getattr(row, f), getattr(against, f))
                for f in FIELDS
            }
            entry["sidecar_us_added"] = (
                None
                if against is None
                else _us(_diff(row.sidecar_ms_per_req, against.sidecar_ms_per_req))
            )
            cases.append(entry)
        gateway = found.get((GATEWAY, c))
        if base is not None and gateway is not None:
            versus_gateway = versus_gateway or {}
            versus_gateway[f"c={c}"] = {
                f: _ratio(getattr(base, f), getattr(gateway, f)) for f in FIELDS
            }
    return {"cases": cases, "unchained_vs_gateway": versus_gateway}


def _us(ms: float | None) -> float | None:
    return None if ms is None else ms * 1000


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(result: Mapping[str, Any]) -> list[str]:
    """The report's section; nothing when the run measured no case."""
    if not result:
        return []
    head = (
        "case",
        "c",
        "req/s",
        "p50",
        "p99",
        "sc/req",
        "msgs",
        "x req/s",
        "x p50",
        "x p99",
        "x sc",
        "+sc us",
    )
    lines = [head]
    for e in result["cases"]:
        vs = e["vs_unchained"]
        lines.append(
            (
                e["label"],
                str(e["connections"]),
                _cell(e["rps"], ",.0f"),
                _cell(e["p50_ms"], ".2f"),
                _cell(e["p99_ms"], ".2f"),
                _cell(e["sidecar_ms_per_req"], ".3f"),
                _cell(e["extproc_msgs_per_req"], ".1f"),
                _cell(vs["rps"], ".2f"),
                _cell(vs["p50_ms"], ".2f"),
                _cell(vs["p99_ms"], ".2f"),
                _cell(vs["sidecar_ms_per_req"], ".2f"),
                _cell(e["sidecar_us_added"], "+.0f"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "Fallback chains: the per-attempt upstream filter's cost (json, W=1, one stack chaining "
        "one model; bench/fallback.py)",
        "  x ...: over (a) at the same c; sc/req: sidecar CPU ms per request; msgs: ext_proc "
        "messages per request (request filters + per-attempt filter); +sc us: sidecar CPU "
        "added over (a)",
    ]
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        text.append("  " + "  ".join(cells))
    versus = result.get("unchained_vs_gateway")
    if versus is None:
        text.append(
            "  (a) against the gateway setup (no chain configured): not measured in this run "
            "(--setups gateway,fallback)"
        )
    else:
        for c, ratios in versus.items():
            text.append(
                f"  (a) over the gateway setup (no chain configured), {c}: "
                + ", ".join(
                    f"{label} {_cell(ratios[f], '.2f')}"
                    for f, label in (
                        ("rps", "req/s"),
                        ("p50_ms", "p50"),
                        ("p99_ms", "p99"),
                        ("sidecar_ms_per_req", "sidecar CPU"),
                        ("extproc_msgs_per_req", "msgs"),
                    )
                )
            )
    return text
