"""Issue 25: a translated stream's per-chunk cost beside a native one's, through Envoy.

Pure: from the bench's rows (the `translated` setup, bench/streams_run.py `translated`) to the
pair the report prints and the results JSON keeps. Every stream is paced (one ext_proc message
per chunk) and comes from an OpenAI client on `/v1/chat/completions`:

- `native`: a native OpenAI model, the default observe mode (Envoy does not wait on the
  sidecar for a chunk: the observer meters a copy);
- `native-sync`: the same with `metering.mode: synchronous` (a round trip per chunk);
- `translated`: a Claude model, translated to Anthropic Messages (in observe mode too, but the
  response path of that request is synchronous STREAMED: a round trip and a rewrite per chunk).

Per stream: sidecar CPU per chunk (process CPU of the sidecar / upstream responses' worth of
bytes / CHUNKS, as the bench's `sc/chunk`) at c=1, where every chunk is its own ext_proc
message, and at the saturating concurrency, where a busy Envoy coalesces some; ext_proc
messages per stream at both; the chunk latency at c=1 (upstream write -> client read, median
over every chunk); and each against `native`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, cast

NATIVE, NATIVE_SYNC, TRANSLATED = "native", "native-sync", "translated"
STREAMS: tuple[tuple[str, str], ...] = (
    (NATIVE, "native model, observe"),
    (NATIVE_SYNC, "native model, synchronous"),
    (TRANSLATED, "claude -> Anthropic Messages"),
)
LOAD = "sse-paced"


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
    def chunk_us(self) -> float | None: ...
    @property
    def ttfb_ms(self) -> float | None: ...
    @property
    def sidecar_us_per_chunk(self) -> float | None: ...
    @property
    def extproc_msgs_per_req(self) -> float | None: ...


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def pair(rows: Iterable[_Row], saturating: int) -> list[dict[str, Any]]:
    """One entry per stream the run measured (W=1), in STREAMS' order; `vs_native` fields are
    None for `native` itself or when it was not measured."""
    found: dict[tuple[str, int], _Row] = {}
    for r in rows:
        if r.load == LOAD and r.workers == 1 and r.setup in dict(STREAMS):
            found[(r.setup, r.connections)] = r
    out = []

    def field(name: str, c: int, attr: str) -> float | None:
        row = found.get((name, c))
        return None if row is None else cast(float | None, getattr(row, attr))

    for name, label in STREAMS:
        if (name, saturating) not in found and (name, 1) not in found:
            continue
        own = name == NATIVE
        entry: dict[str, Any] = {"stream": name, "label": label}
        for c, suffix in ((1, "c1"), (saturating, "sat")):
            cpu = field(name, c, "sidecar_us_per_chunk")
            entry[f"sidecar_us_per_chunk_{suffix}"] = cpu
            entry[f"cpu_vs_native_{suffix}"] = (
                None if own else _ratio(cpu, field(NATIVE, c, "sidecar_us_per_chunk"))
            )
            entry[f"msgs_per_req_{suffix}"] = field(name, c, "extproc_msgs_per_req")
        entry["rps_sat"] = field(name, saturating, "rps")
        entry["chunk_us"] = field(name, 1, "chunk_us")
        entry["ttfb_ms"] = field(name, 1, "ttfb_ms")
        entry["chunk_added_us_vs_native"] = (
            None if own else _diff(entry["chunk_us"], field(NATIVE, 1, "chunk_us"))
        )
        out.append(entry)
    return out


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render(entries: list[Mapping[str, Any]], saturating: int, gap_ms: float) -> list[str]:
    """The report's section; nothing when the run measured none of the streams."""
    if not entries:
        return []
    head = (
        "stream",
        "sc us/chunk c=1",
        "x native",
        "msgs",
        f"sc us/chunk c={saturating}",
        "x native",
        "msgs",
        f"req/s c={saturating}",
        "chunk latency us c=1",
        "+ over native",
    )
    lines = [head]
    for e in entries:
        lines.append(
            (
                f"{e['stream']} ({e['label']})",
                _cell(e["sidecar_us_per_chunk_c1"], ".1f"),
                _cell(e["cpu_vs_native_c1"], ".2f"),
                _cell(e["msgs_per_req_c1"], ".0f"),
                _cell(e["sidecar_us_per_chunk_sat"], ".1f"),
                _cell(e["cpu_vs_native_sat"], ".2f"),
                _cell(e["msgs_per_req_sat"], ".0f"),
                _cell(e["rps_sat"], ",.0f"),
                _cell(e["chunk_us"], ".1f"),
                _cell(e["chunk_added_us_vs_native"], "+.1f"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        f"Translated stream beside native ones, through Envoy (paced, {gap_ms:g} ms between "
        "chunks, W=1; bench/streams.py)",
        "  sc: sidecar CPU per content chunk; msgs: ext_proc messages per stream (a chunk each at "
        "c=1); chunk latency: upstream write -> client read",
    ]
    for line in lines:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        text.append("  " + "  ".join(cells))
    return text
