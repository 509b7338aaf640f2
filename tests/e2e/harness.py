"""Helpers for end-to-end tests: the audit log, the mock's request log, exact expected costs."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from gateway_extproc.mock.recorder import MAX_RECORDED
from gateway_extproc.sidecar_auth.caller import METADATA_KEY
from gateway_extproc.sidecar_auth.settings import caller_tokens
from gateway_extproc.stack import Stack
from tests.paths import REPO, TEST_FIXTURES

CATALOG = REPO / "gateway_extproc" / "catalog" / "catalog.yaml"
# Models the recorded transcripts use that the providers have since retired (operator catalog).
RETIRED_MODELS = TEST_FIXTURES / "retired-models.yaml"


def complete_lines(text: str) -> list[str]:
    """The lines a writer has finished. The audit and journal files are appended in batches by a
    writer thread, so a reader can see the start of a line whose end is still being written."""
    return [line for line in text.split("\n")[:-1] if line.strip()]


class AuditLog:
    """Reads the audit file the sidecar appends to (GATEWAY_AUDIT_LOG)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in complete_lines(self.path.read_text())]

    def wait_for(self, request_id: str, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.records() if r["request_id"] == request_id]
            if found:
                assert len(found) == 1, f"{len(found)} audit records for {request_id}"
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no audit record for request {request_id} after {timeout}s")


class MockLog:
    """What the mock provider received (GET /_mock/requests)."""

    def __init__(self, base: str) -> None:
        self.base = base

    def requests(self) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.base + "/_mock/requests", timeout=5) as r:
            return list(json.load(r))

    def clear(self) -> None:
        req = urllib.request.Request(self.base + "/_mock/requests", method="DELETE")
        with urllib.request.urlopen(req, timeout=5):
            pass

    def received(self) -> list[dict[str, Any]]:
        """What the mock received since `clear()`, for "never sent to the provider" checks: clear
        first, act, then look. The mock keeps only its last MAX_RECORDED requests (a count or a
        search of a full log can miss the very request it looks for), so a full log fails."""
        reqs = self.requests()
        assert len(reqs) < MAX_RECORDED, "the mock's log is full: clear() it before the action"
        return reqs

    def bills(self) -> list[dict[str, Any]]:
        """What the mock billed each request (GET /_mock/bills), by `request_id`."""
        with urllib.request.urlopen(self.base + "/_mock/bills", timeout=5) as r:
            return list(json.load(r))

    def last(self) -> dict[str, Any]:
        reqs = self.requests()
        assert reqs, "the mock received no request"
        return reqs[-1]


def raw_catalog() -> dict[str, Any]:
    """Every model the catalog files list (the shipped catalog and the retired models), raw."""
    models: dict[str, Any] = {}
    for path in (CATALOG, RETIRED_MODELS):
        models.update(yaml.safe_load(path.read_text())["models"])
    return models


# A trailing snapshot date, as the catalog documents its fallback: `-YYYY-MM-DD` or `-YYYYMMDD`.
_SNAPSHOT = re.compile(r"(?P<base>.+)-20\d\d-?\d\d-?\d\d")


def catalog_model(requested: str) -> str:
    """The catalog model a request for `requested` must be served and priced as, read from the
    catalog files rather than from the gateway (or its audit record): the name itself, the model
    that lists it in `aliases`, else the undated name of a dated snapshot."""
    models = raw_catalog()
    names = {name: name for name in models}
    for name, doc in models.items():
        names.update((alias, name) for alias in doc.get("aliases") or [])
    if requested in names:
        return names[requested]
    dated = _SNAPSHOT.fullmatch(requested)
    assert dated is not None and dated["base"] in names, f"{requested!r} is in no catalog file"
    return names[dated["base"]]


def expected_cost_micros(model: str, tokens: dict[str, int]) -> int:
    """The catalog's list price for these tokens, computed independently of the gateway's code:
    USD per 1M tokens straight from catalog.yaml, exact fractions, rounded half up once. A request
    whose input exceeds the model's `long_context` threshold is priced entirely at that tier."""
    entry = raw_catalog()[model]
    total_input = sum(
        tokens.get(kind, 0)
        for kind in (
            "input_tokens",
            "cached_input_tokens",
            "cache_write_input_tokens",
            "cache_write_1h_input_tokens",
        )
    )
    long = entry.get("long_context")
    if long is not None and total_input > long["above_input_tokens"]:
        entry = long

    def price(field: str, default: str) -> Fraction:
        return Fraction(str(entry.get(field, entry.get(default, 0))))

    # The 1-hour write: listed, else twice input (Anthropic's rule) or the 5-minute rate (OpenAI).
    if "cache_write_1h" in entry:
        write_1h = price("cache_write_1h", "input")
    elif raw_catalog()[model]["schema"] in ("anthropic", "bedrock"):  # Claude's rule
        write_1h = 2 * price("input", "input")
    else:
        write_1h = price("cache_write", "input")
    usd_per_million = (
        tokens["input_tokens"] * price("input", "input")
        + tokens["cached_input_tokens"] * price("cached_input", "input")
        + tokens["cache_write_input_tokens"] * price("cache_write", "input")
        + tokens.get("cache_write_1h_input_tokens", 0) * write_1h
        + (tokens["output_tokens"] - tokens["reasoning_tokens"]) * price("output", "output")
        + tokens["reasoning_tokens"] * price("reasoning", "output")
    )
    micros = usd_per_million  # $/1M tokens x tokens = micro-dollars
    return int(micros + Fraction(1, 2)) if micros >= 0 else -int(-micros + Fraction(1, 2))


def tokens(
    input_tokens: int = 0,
    cached: int = 0,
    cache_write: int = 0,
    output: int = 0,
    reasoning: int = 0,
    cache_write_1h: int = 0,
) -> dict[str, int]:
    return {
        "input_tokens": input_tokens,
        "cached_input_tokens": cached,
        "cache_write_input_tokens": cache_write,
        "cache_write_1h_input_tokens": cache_write_1h,
        "output_tokens": output,
        "reasoning_tokens": reasoning,
    }


def extproc_hosts(admin_url: str) -> dict[int, dict[str, str]]:
    """Envoy's view of each sidecar worker (admin /clusters), by port: `health_flags`
    ("healthy", "/failed_active_hc", ...), `rq_active`, `rq_total`, ..."""
    with urllib.request.urlopen(admin_url + "/clusters", timeout=5) as r:
        lines = r.read().decode().splitlines()
    hosts: dict[int, dict[str, str]] = {}
    for line in lines:
        parts = line.split("::")
        if len(parts) == 4 and parts[0] == "gateway_extproc" and parts[1][:1].isdigit():
            port = int(parts[1].rsplit(":", 1)[1])
            hosts.setdefault(port, {})[parts[2]] = parts[3]
    return hosts


def caller_metadata(stack: Stack) -> tuple[tuple[str, str], ...]:
    """The gRPC metadata Envoy sends the stack's sidecar workers: this run's caller token."""
    problems: list[str] = []
    (token, *_) = caller_tokens(stack.config.sidecar_auth, stack.sidecar_environ, problems)
    return ((METADATA_KEY, token),)


def worker_auth_status(stack: Stack, port: int, credential: str) -> int:
    """Ask one sidecar worker directly (an ext_proc stream on its port, as Envoy would, with the
    run's caller token) what it makes of a chat request with this bearer credential: 401 if it
    refuses it, else 200."""
    headers = {
        ":method": "POST",
        ":path": "/v1/chat/completions",
        "x-request-id": "worker-probe",
        "authorization": f"Bearer {credential}",
        "content-type": "application/json",
    }
    message = pb.ProcessingRequest(
        request_headers=pb.HttpHeaders(
            headers=base_pb2.HeaderMap(
                headers=[
                    base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in headers.items()
                ]
            )
        )
    )
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.ExternalProcessorStub(channel)
        replies = stub.Process(iter([message]), timeout=10, metadata=caller_metadata(stack))
        reply = next(iter(replies))
    if reply.WhichOneof("response") == "immediate_response":
        return int(reply.immediate_response.status.code)
    return 200


def eventually(
    check: Callable[[], bool], timeout: float = 30, what: str = "condition", interval: float = 0.05
) -> None:
    """Wait for `check()` to hold. The timeout only bounds a failure; it never decides a pass."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not reached after {timeout}s"
        time.sleep(interval)


@contextlib.contextmanager
def running_mock(run_dir: Path, *args: str) -> Iterator[str]:
    """The mock provider as its own process; yields its base URL (without /v1)."""
    port_file = run_dir / "port"
    command = [sys.executable, "-m", "gateway_extproc.mock", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--port-file", str(port_file), *args], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "mock did not start"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port_file.read_text().strip()}"
    finally:
        proc.terminate()
        proc.wait(10)
