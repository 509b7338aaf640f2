"""Where the sidecar's samples go: py-spy's stacks mapped to the categories issue 24 names, by
module path. Pure: the mapping lives here and only here (tests/unit/test_bench_frames.py).

A sample is a stack of frames, root first, each `function (path:line)` as py-spy's raw
format writes them. Its category is found from the leaf up: the first frame whose path belongs
to a category other than the transport decides (so the event loop's frames under a redis-py
read count as Redis, and a JWT library's frames under the authenticator as identity). A stack
with nothing but transport frames (grpc, asyncio, uvloop, the servicer loop) is transport; one
with no known frame at all is `other`. Within one frame the first matching row of
`CATEGORIES` wins, so a specific file is listed before its package.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

TRANSPORT = "gRPC and event loop (transport)"
OTHER = "other"

_G = "/gateway_extproc/"
# (category, path fragments). A fragment matches anywhere in the frame's path, which is given a
# leading "/" first (py-spy shortens site-packages paths to `redis/client.py`).
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("policy", (_G + "identity/policy.py", _G + "catalog/models.py")),
    (
        "JWT and identity",
        (_G + "identity/", _G + "sidecar_auth/", "/jwt/", "/cryptography/"),
    ),
    ("guardrails", (_G + "guardrails/", _G + "request/prompt_checks.py")),
    (
        "body parse and bound",
        (
            _G + "request/bodyparse.py",
            _G + "request/jsonshape.py",
            _G + "request/models_api.py",
            _G + "providers/inbound.py",
            _G + "cost/bounds.py",
            _G + "cost/shape.py",
            _G + "tokens.py",
            "/orjson/",
        ),
    ),
    (
        "Redis calls (redis-py and the store)",
        (
            "/redis/",
            "/hiredis/",
            _G + "budgets/store.py",
            _G + "budgets/keys.py",
            _G + "budgets/recent.py",
            _G + "budgets/pipe.py",
            _G + "budgets/calls.py",
            _G + "budgets/scripts.py",
            _G + "budgets/wire.py",
            _G + "budgets/breaker.py",
            _G + "budgets/ratelimits/wire.py",
        ),
    ),
    ("budget logic (matching, windows, settle)", (_G + "budgets/", _G + "catalog/")),
    ("audit", (_G + "audit.py", _G + "response/audit.py", _G + "response/reaped_audit.py")),
    (
        "telemetry",
        (_G + "observability/", "/opentelemetry/", "/prometheus_client/"),
    ),
    (
        "observer's per-message work (metering)",
        (_G + "response/", _G + "providers/", _G + "cost/"),
    ),
    (
        "state and ext_proc replies",
        (
            _G + "handoff.py",
            _G + "extproc/",
            _G + "request/",
            _G + "runtime/",
            _G + "envoy/",
            _G + "apis.py",
            _G + "errors.py",
            "/google/protobuf/",
            "/envoy/",
            "/xds/",
        ),
    ),
    (
        TRANSPORT,
        (
            _G + "server.py",
            "/bench/noop.py",  # the no-op's servicer does no work: all it costs is transport
            "/bench/service.py",
            "/grpc/",
            "/grpc_health/",
            "/asyncio/",
            "/uvloop/",
            "/selectors.py",
            "/threading.py",
            "/concurrent/futures/",
            "cygrpc",  # native frames: `fn (cygrpc.cpython-…so)` with --native
            "libgrpc",
            "/libuv",
        ),
    ),
)
# The order the table prints: the list, then what the issue did not name.
ORDER: tuple[str, ...] = (
    "JWT and identity",
    "policy",
    "body parse and bound",
    "guardrails",
    "Redis calls (redis-py and the store)",
    "budget logic (matching, windows, settle)",
    "state and ext_proc replies",
    "observer's per-message work (metering)",
    "audit",
    "telemetry",
    TRANSPORT,
    OTHER,
)

# `function (path:line)`; the line is absent for some native frames, the path for a few.
_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<path>[^()]*?)(?::\d+)?\)$")


def frame_path(frame: str) -> str:
    """The path of one raw frame, with a leading "/" ("" when the frame names none)."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return ""
    path = m.group("path")
    return path if path.startswith("/") else "/" + path


def category_of_path(path: str) -> str | None:
    """The first row of CATEGORIES one of whose fragments is in `path`; None if none is."""
    for name, fragments in CATEGORIES:
        if any(f in path for f in fragments):
            return name
    return None


def categorise(stack: Sequence[str]) -> str:
    """The category of one sample (`stack` root first), by the leaf-up rule above."""
    transport = False
    for frame in reversed(stack):
        name = category_of_path(frame_path(frame))
        if name == TRANSPORT:
            transport = True
        elif name is not None:
            return name
    return TRANSPORT if transport else OTHER


def parse_raw(text: str) -> Iterator[tuple[list[str], int]]:
    """py-spy's `--format raw` (collapsed stacks): `frame;frame;... count` per line. With
    `--threads` the root frame is the thread (`thread (0x…)`): it matches no category."""
    for line in text.splitlines():
        line = line.rstrip()
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        yield stack.split(";"), int(count)


def breakdown(samples: Iterable[tuple[Sequence[str], int]]) -> Counter[str]:
    """Samples per category (every category of ORDER present, zero when unseen)."""
    counts: Counter[str] = Counter(dict.fromkeys(ORDER, 0))
    for stack, n in samples:
        counts[categorise(stack)] += n
    return counts
