"""`python -m bench --profile` (`make profile`): where the sidecar's CPU goes under the bench's
JSON load at c=32 and its paced-SSE load, by category (bench/frames.py).

For each load, py-spy records every sidecar worker (`--format raw`, non-blocking: the sidecar
is not paused to be sampled) exactly while one wrk run drives the setup; the process CPU and
the requests served are measured around the same run, as `make bench` measures them. Each
category's samples ÷ the sampling rate ÷ the requests gives its CPU per request.

`--gil`: only the thread holding the GIL is sampled, i.e. the Python work. Without it py-spy
also counted threads waiting on a lock or for a core as active (on this busy 2-core machine
its samples added up to twice the process's CPU); with it they add up to the process CPU less
its native threads. gRPC core's own threads (`event_engine`) run without the GIL: their CPU,
and what the sampler misses, is the `not seen by py-spy` row (process CPU minus all samples),
and the CPU of each thread by name, from /proc, says which threads that is.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bench import frames, load, setups

if TYPE_CHECKING:
    from bench.measure import Bench, Load

RATE_HZ = 250  # samples per second per thread
UNSEEN = "not seen by py-spy (native threads, sampling)"


def py_spy() -> str:
    """py-spy beside this Python (the dev extra installs it), else from PATH."""
    here = Path(sys.executable).parent / "py-spy"
    found = str(here) if here.exists() else shutil.which("py-spy")
    if not found:
        raise load.BenchError("py-spy not found: `make` installs it (the dev extra)")
    return found


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (utime + stime) per thread name of one process, threads of one name summed."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def _minus(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


@dataclasses.dataclass(frozen=True)
class Profile:
    """One load's profile: samples per category and what one request cost."""

    setup: str
    load: str
    connections: int
    requests: float  # responses' worth of upstream bytes during the recorded run
    rps: float
    sidecar_ms_per_req: float  # process CPU, all threads
    samples: dict[str, int]  # per category (frames.ORDER)
    threads_ms_per_req: dict[str, float]  # process CPU per thread name
    rate_hz: int = RATE_HZ

    def us_per_req(self) -> dict[str, float]:
        """CPU µs per request per category, plus UNSEEN (may be negative: sampling error)."""
        scale = 1e6 / self.rate_hz / self.requests
        out = {name: n * scale for name, n in self.samples.items()}
        out[UNSEEN] = self.sidecar_ms_per_req * 1000 - sum(out.values())
        return out


def record(bench: Bench, running: setups.Running, spec: Load, connections: int) -> Profile:
    """One wrk run (after a warm-up) with py-spy recording each sidecar worker throughout."""
    script = bench.script(spec)
    s = bench.settings
    load.run_wrk(bench.wrk, running.url, script, connections, s.warmup_s)
    raws = [
        bench.run_dir / f"profile-{running.setup}-{spec.name}-{pid}.raw"
        for pid in running.sidecar_pids
    ]
    spies = [
        subprocess.Popen(
            [
                py_spy(),
                "record",
                "--pid",
                str(pid),
                "--rate",
                str(RATE_HZ),
                "--format",
                "raw",
                "--nonblocking",
                "--gil",
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        for pid, raw in zip(running.sidecar_pids, raws, strict=True)
    ]
    threads0 = [thread_cpu(pid) for pid in running.sidecar_pids]
    client = redis.Redis.from_url(running.redis_url) if running.redis_url else None
    try:
        label = f"profile {running.setup} W={running.workers} {spec.name} c={connections}"
        sample = bench.sample(running, spec, script, connections, client, label)
        threads1 = [thread_cpu(pid) for pid in running.sidecar_pids]
    finally:
        if client is not None:
            client.close()
        for spy in spies:  # py-spy writes its output on SIGINT
            if spy.poll() is None:
                spy.send_signal(signal.SIGINT)
    for spy in spies:
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0:
            raise load.BenchError(f"py-spy failed ({spy.returncode}): {err.decode()[-2000:]}")
    counts: Counter[str] = Counter(dict.fromkeys(frames.ORDER, 0))
    for raw in raws:
        counts.update(frames.breakdown(frames.parse_raw(raw.read_text())))
    threads: dict[str, float] = {}
    for before, after in zip(threads0, threads1, strict=True):
        for name, seconds in _minus(after, before).items():
            threads[name] = threads.get(name, 0.0) + seconds
    n = sample["served"]
    return Profile(
        setup=running.setup,
        load=spec.name,
        connections=connections,
        requests=n,
        rps=sample["rps"],
        sidecar_ms_per_req=sample["sidecar_ms"],
        samples=dict(counts),
        threads_ms_per_req={
            k: v * 1000 / n for k, v in sorted(threads.items(), key=lambda kv: -kv[1])
        },
    )


def render(profiles: Iterable[Profile]) -> str:
    """The breakdown table: per load, each category's share of samples and CPU µs/request."""
    profiles = list(profiles)
    if not profiles:
        return "profile: nothing recorded"
    head = ["category"] + [f"{p.setup} {p.load} c={p.connections}" for p in profiles]
    rows: list[list[str]] = [head]
    per = [p.us_per_req() for p in profiles]
    total_samples = [sum(p.samples.values()) or 1 for p in profiles]
    for name in (*frames.ORDER, UNSEEN):
        cells = [name]
        for p, us, total in zip(profiles, per, total_samples, strict=True):
            share = "" if name == UNSEEN else f" ({100 * p.samples.get(name, 0) / total:4.1f} %)"
            cells.append(f"{us[name]:7.1f} µs{share}")
        rows.append(cells)
    rows.append(
        ["sidecar CPU per request"] + [f"{p.sidecar_ms_per_req * 1000:7.1f} µs" for p in profiles]
    )
    rows.append(["requests/s while recorded"] + [f"{p.rps:,.0f}" for p in profiles])
    rows.append(["samples"] + [f"{t:,}" for t in total_samples])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for p in profiles:
        threads = ", ".join(f"{k} {v * 1000:.0f} µs" for k, v in p.threads_ms_per_req.items())
        lines.append(f"\n{p.setup} {p.load}: CPU per request by thread: {threads}")
    return "\n".join(lines)


def as_json(profiles: Iterable[Profile]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(p) | {"us_per_req": p.us_per_req()} for p in profiles]
