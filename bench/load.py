"""Load and samples: wrk runs (a generated Lua script reports JSON), the raw-socket stream timer,
process CPU from /proc, Envoy's ext_proc message counters, and Redis command counts."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path

import redis

from bench.upstream import CHUNKS
from gateway_extproc.envoy.filters import EXTPROC_CLUSTER

PATH = "/v1/chat/completions"
MARKER = "WRK_JSON "

_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%%d,"duration_us":%%d,"connect":%%d,"read":%%d,"write":%%d,'
    .. '"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d,"mean_us":%%d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), math.floor(latency.mean)))
end
"""


class BenchError(RuntimeError):
    pass


def ensure_wrk() -> str:
    """wrk from PATH, else `apt-get install -y wrk` (after `apt-get update` if the first try
    fails: the package index may be empty or stale). Needs root and apt."""
    install = ["apt-get", "install", "-y", "wrk"]
    attempts = [install, ["apt-get", "update"], install]
    output = ""
    for argv in attempts:
        if shutil.which("wrk"):
            break
        print(f"bench: wrk not found, running {' '.join(argv)}", file=sys.stderr, flush=True)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            output = done.stdout[-1000:] + done.stderr[-1000:]
        except (OSError, subprocess.TimeoutExpired) as exc:
            output = str(exc)
            break
    found = shutil.which("wrk")
    if not found:
        raise BenchError(
            "wrk is required and `apt-get install -y wrk` failed (it needs root and apt): "
            f"install wrk yourself and run `make bench` again.\n{output}"
        )
    return found


NATIVE_MODEL = "gpt-4o-mini"
TRANSLATED_MODEL = "claude-haiku-4-5"  # served by the anthropic provider: translated


def request_body(stream: bool, model: str = NATIVE_MODEL) -> bytes:
    """The same request for every setup. Streams ask for usage themselves, so the gateway sends
    the client's bytes unchanged and all three setups get the identical upstream response.
    With TRANSLATED_MODEL the same chat request is translated to Anthropic Messages."""
    doc: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Name a few letters of the NATO alphabet."},
        ],
        # The canned upstream always generates CHUNKS tokens: the limit admits them all (a
        # real provider stops at the limit; this one does not, and would show as an overrun).
        "max_tokens": CHUNKS,
    }
    if stream:
        doc.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(doc).encode()


def lua_script(
    path: Path,
    body: bytes,
    token: str,
    gap_ms: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> Path:
    """wrk's script: POST `body` with the bearer token, the pacing header for a paced stream,
    and `headers` (the bench upstream's switches, e.g. `x-bench-fail-model`)."""
    text = (
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{body.decode()}]==]\n"
        'wrk.headers["content-type"] = "application/json"\n'
        f'wrk.headers["authorization"] = "Bearer {token}"\n'
    )
    if gap_ms:
        text += f'wrk.headers["x-bench-chunk-gap-ms"] = "{gap_ms:g}"\n'
    for name, value in (headers or {}).items():
        text += f'wrk.headers["{name}"] = "{value}"\n'
    text += _DONE % MARKER
    path.write_text(text)
    return path


@dataclasses.dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    mean_ms: float  # of the completed requests: closed-loop throughput = connections / this
    errors: int  # socket errors + non-2xx/3xx statuses

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s else 0.0


def run_wrk(wrk: str, url: str, script: Path, connections: int, seconds: int) -> WrkResult:
    argv = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script), url + PATH]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARKER)), None)
    if done.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
    doc = json.loads(line[len(MARKER) :])
    errors = sum(doc[k] for k in ("connect", "read", "write", "status", "timeout"))
    return WrkResult(
        requests=doc["requests"],
        duration_s=doc["duration_us"] / 1e6,
        p50_ms=doc["p50_us"] / 1000,
        p99_ms=doc["p99_us"] / 1000,
        mean_ms=doc["mean_us"] / 1000,
        errors=errors,
    )


# -- samples ----------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the processes (all their threads), in seconds."""
    total = 0
    for pid in pids:
        # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def envoy_counter(admin_url: str, name: str) -> int:
    """One of Envoy's counters (0 when it does not exist, e.g. ext_proc's on plain Envoy)."""
    query = urllib.parse.urlencode({"filter": f"^{re.escape(name)}$", "format": "json"})
    with urllib.request.urlopen(f"{admin_url}/stats?{query}", timeout=5) as r:
        stats = json.load(r).get("stats", [])
    return sum(int(s.get("value", 0)) for s in stats if s.get("name") == name)


EXTPROC_MESSAGES = "http.gateway.ext_proc.stream_msgs_sent"  # Envoy -> sidecar messages


def upstream_extproc_messages(cluster: str) -> str:
    """Messages Envoy sent to the per-attempt ext_proc of chain cluster `cluster` (an upstream
    filter's stats live in its cluster's scope)."""
    return f"cluster.{cluster}.ext_proc.stream_msgs_sent"


EXTPROC_ACTIVE = f"cluster.{EXTPROC_CLUSTER}.upstream_rq_active"  # ext_proc streams open (gauge)


def upstream_bytes(cluster: str) -> str:
    """The counter of response bytes Envoy received from `cluster`."""
    return f"cluster.{cluster}.upstream_cx_rx_bytes_total"


def redis_commands(client: redis.Redis | None) -> int:
    """Commands Redis has executed so far, those Lua scripts run included (Redis's own
    accounting), not counting our INFO calls."""
    if client is None:
        return 0
    stats = client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info")


_MONITOR_LINE = re.compile(rb'^\+[0-9.]+ \[\d+ ([^\]]+)\] "([^"]+)"(?: "([^"]+)")?')


class RedisMonitor:
    """Counts, by name, the commands clients send to Redis (round trips: not the commands Lua
    scripts run) while open. MONITOR slows Redis down: for a probe, never a measured run."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port or 6379), timeout=5)
        self.sock.sendall(b"MONITOR\r\n")
        self.counts: collections.Counter[str] = collections.Counter()
        self.scripts: collections.Counter[str] = collections.Counter()  # EVALSHA by script SHA
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        pending = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            *lines, pending = (pending + data).split(b"\r\n")
            for line in lines:
                match = _MONITOR_LINE.match(line)
                if match and match.group(1) != b"lua":
                    command = match.group(2).decode().lower()
                    with self.lock:
                        self.counts[command] += 1
                        if command == "evalsha" and match.group(3):
                            self.scripts[match.group(3).decode().lower()] += 1

    def snapshot(self) -> collections.Counter[str]:
        with self.lock:
            return collections.Counter(self.counts)

    def script_snapshot(self) -> collections.Counter[str]:
        """EVALSHA calls so far by script SHA (which script: sha1 of its source)."""
        with self.lock:
            return collections.Counter(self.scripts)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


def request_once(url: str, body: bytes, token: str, gap_ms: float | None = None) -> None:
    """One request on its own connection, read to the end (probes, not timing)."""
    parts = urllib.parse.urlsplit(url)
    headers = {"content-type": "application/json", "authorization": f"Bearer {token}"}
    if gap_ms:
        headers["x-bench-chunk-gap-ms"] = f"{gap_ms:g}"
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    try:
        conn.request("POST", PATH, body, headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 200:
            raise BenchError(f"probe request failed: {response.status} {data[:300]!r}")
    finally:
        conn.close()


# -- the stream timer -------------------------------------------------------------------------

STAMP = b'"id":"chatcmpl-'  # where a native paced chunk carries its write time (bench.upstream)
_DIGITS = 20


@dataclasses.dataclass(frozen=True)
class StreamTimes:
    streams: int
    ttfb_ms: float  # median time to the first body byte
    total_ms: float  # median time to the end of the stream (the terminating chunk)
    # instant streams: median of (end - first body byte) / chunks; paced streams: median over
    # all chunks of (client read - upstream write), the upstream's time carried in the event
    chunk_us: float


def _read_stream(
    sock: socket.socket, started: int, lags: list[int], stamp: bytes = STAMP
) -> tuple[int, int]:
    """Read one chunked response; (first body byte, end) in ns after `started`. Paced events'
    write times (20 digits after `stamp`) are turned into lags (read time - write time, ns)
    appended to `lags`."""
    buf = bytearray()
    head_end = -1
    first: int | None = None
    scan = 0
    while True:
        data = sock.recv(262144)
        now = time.monotonic_ns()
        if not data:
            raise BenchError("connection closed in the middle of a stream")
        buf += data
        if head_end < 0:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                continue
            head = bytes(buf[:head_end]).lower()
            if not head.startswith(b"http/1.1 200"):
                raise BenchError(f"stream request failed: {bytes(buf[:400])!r}")
            if b"transfer-encoding: chunked" not in head:
                raise BenchError(f"stream response is not chunked: {head!r}")
            scan = head_end
        if first is None and len(buf) > head_end + 4:
            first = now
        while (at := buf.find(stamp, scan)) >= 0:
            digits = bytes(buf[at + len(stamp) : at + len(stamp) + _DIGITS])
            if len(digits) < _DIGITS:
                break
            if digits.isdigit():
                lags.append(now - int(digits))
            scan = at + len(stamp) + _DIGITS
        if first is not None and buf.endswith(b"\n0\r\n\r\n"):
            return first - started, now - started


def time_streams(
    url: str,
    body: bytes,
    token: str,
    chunks: int,
    *,
    gap_ms: float | None = None,
    count: int = 200,
    max_seconds: float = 3.0,
    warmup: int = 10,
    stamp: bytes = STAMP,
) -> StreamTimes:
    """One keep-alive connection, one stream at a time: time to the first body byte and to the
    stream's end, for `count` streams or as many as fit in `max_seconds`, after `warmup`.
    `stamp`: what precedes a paced chunk's write time in the client's bytes."""
    parts = urllib.parse.urlsplit(url)
    pacing = f"x-bench-chunk-gap-ms: {gap_ms:g}\r\n" if gap_ms else ""
    request = (
        f"POST {PATH} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {token}\r\n{pacing}content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    ttfbs: list[int] = []
    totals: list[int] = []
    lags: list[int] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(warmup):
            sock.sendall(request)
            _read_stream(sock, time.monotonic_ns(), [], stamp)
        deadline = time.monotonic() + max_seconds
        while len(ttfbs) < count and (time.monotonic() < deadline or len(ttfbs) < 3):
            started = time.monotonic_ns()
            sock.sendall(request)
            ttfb, total = _read_stream(sock, started, lags, stamp)
            ttfbs.append(ttfb)
            totals.append(total)
    if gap_ms:
        if len(lags) < chunks * len(ttfbs):
            raise BenchError(f"paced streams: {len(lags)} timed chunks in {len(ttfbs)} streams")
        chunk_ns = statistics.median(lags)
    else:
        chunk_ns = statistics.median((t - f) / chunks for f, t in zip(ttfbs, totals, strict=True))
    return StreamTimes(
        streams=len(ttfbs),
        ttfb_ms=statistics.median(ttfbs) / 1e6,
        total_ms=statistics.median(totals) / 1e6,
        chunk_us=chunk_ns / 1e3,
    )


def burst(url: str, token: str, count: int) -> list[int]:
    """`count` concurrent gpt-4o requests (no max-tokens field: the gateway injects its cap)
    from one user; the HTTP status of each."""
    import asyncio

    import httpx

    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "a burst"}]}
    headers = {"authorization": f"Bearer {token}"}

    async def run() -> list[int]:
        limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            calls = [
                client.post(url + "/v1/chat/completions", json=body, headers=headers)
                for _ in range(count)
            ]
            return [r.status_code for r in await asyncio.gather(*calls)]

    return asyncio.run(run())


def wait_idle(admin_url: str, timeout_s: float = 30.0) -> None:
    """Until Envoy has no ext_proc stream open (every request metered and settled)."""
    deadline = time.monotonic() + timeout_s
    while envoy_counter(admin_url, EXTPROC_ACTIVE) > 0:
        if time.monotonic() > deadline:
            raise BenchError(f"ext_proc streams still open after {timeout_s:g} s")
        time.sleep(0.1)
