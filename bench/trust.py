"""What the sidecar's caller checks cost per request: pure CPU, no processes (part of `make bench`
with the `noop-trust` setup; alone: `python -m bench.trust`).

Per request the gateway does: one caller check per ext_proc stream (two streams in observe
mode: the request's and the observer's), one HMAC-SHA256 sign of the handed-over state and one
verify on the observer stream. The state is a realistic one (a JWT user with groups, two budget
charges, an audit block), encoded as the request phase encodes it. Each figure is the median of
`RUNS` timings of `LOOPS` calls, in microseconds per call.
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time
from collections.abc import Callable

from gateway_extproc.apis import Api
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.handoff import BudgetHandoff, RequestState
from gateway_extproc.identity.model import ANONYMOUS, AuthMethod, Kind
from gateway_extproc.sidecar_auth.caller import METADATA_KEY, CallerCheck
from gateway_extproc.sidecar_auth.seal import StateSeal

LOOPS = 20_000
RUNS = 5
TOKEN = b"bench-caller-token-0123456789abcdefghijklmnopq"
KEYS = (
    b"bench-state-key-0123456789abcdefghijklmnopqrst",
    b"bench-retired-key-0123456789abcdefghijk",
)


def sample_state() -> str:
    """A forwarded request's state as the request phase hands it over (about 1 KB)."""
    identity = dataclasses.replace(
        ANONYMOUS,
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user="alice.anderson@example.com",
        groups=frozenset({"engineering", "platform", "llm-users"}),
        issuer="corp",
    )
    charges = (
        ("engineering-monthly", "engineering", 81_920, 5_000_000_000),
        ("user-daily", "alice.anderson@example.com", 81_920, 20_000_000),
    )
    budget = BudgetHandoff(
        decision="admitted",
        reservation_id="0f6a2c6e-1b9e-4a53-9d8e-6d1f2f3b4c5d",
        reserved=True,
        charges=charges,
        arrived=1_767_225_600.123,
        audit={"decision": "admitted", "budgets": [{"name": n} for n, *_ in charges]},
    )
    state = RequestState(
        request_id="0f6a2c6e-1b9e-4a53-9d8e-6d1f2f3b4c5d",
        arrived=1_767_225_600.123,
        method="POST",
        path="/v1/chat/completions",
        api=Api.OPENAI_CHAT,
        requested_model="gpt-4o",
        served_model="gpt-4o",
        price=Price(2_500_000, 10_000_000, 1_250_000, 0, 10_000_000),
        provider="openai",
        stream=True,
        input_tokens_estimate=1_234,
        max_tokens=8_192,
        cap_injected=True,
        identity=identity,
        metadata={"project": "search-reranker"},
        budget=budget,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        audit_extra={"guardrails": None, "rate_limits": None, "cache": "miss"},
        cache="miss:3600:" + "ab" * 32,
    )
    return state.encode()


def _per_call_us(fn: Callable[[], object]) -> float:
    samples = []
    for _ in range(RUNS):
        start = time.perf_counter()
        for _ in range(LOOPS):
            fn()
        samples.append((time.perf_counter() - start) * 1e6 / LOOPS)
    return statistics.median(samples)


def measure() -> dict[str, object]:
    """{operation: µs per call} and the per-request total in observe mode."""
    state = sample_state()
    check = CallerCheck((TOKEN,))
    metadata = (
        ("content-type", "application/grpc"),
        (METADATA_KEY, TOKEN.decode()),
        ("x-envoy-internal", "true"),
    )
    seal, rotating = StateSeal(KEYS[:1]), StateSeal(KEYS)
    mac = seal.sign(state)
    old_mac = StateSeal(KEYS[1:]).sign(state)
    ops = {
        "caller check (per ext_proc stream)": _per_call_us(lambda: check.refusal(metadata)),
        "sign the state (per request)": _per_call_us(lambda: seal.sign(state)),
        "verify the state (per observer stream)": _per_call_us(lambda: seal.verify(state, mac)),
        "verify, two keys listed (rotation)": _per_call_us(lambda: rotating.verify(state, old_mac)),
    }
    names = list(ops)
    per_request = 2 * ops[names[0]] + ops[names[1]] + ops[names[2]]
    return {
        "state_bytes": len(state.encode()),
        "loops": LOOPS,
        "runs": RUNS,
        "us": {k: round(v, 2) for k, v in ops.items()},
        "per_request_us": round(per_request, 2),
    }


def render(result: dict[str, object]) -> str:
    ops = result["us"]
    assert isinstance(ops, dict)
    lines = [f"Caller checks: µs per call (median), state of {result['state_bytes']} bytes"]
    for name, us in ops.items():
        lines.append(f"  {name:<44} {us:>7.2f} µs")
    lines.append(
        f"  {'per request, observe mode (2 checks, sign, verify)':<44} "
        f"{result['per_request_us']:>7.2f} µs"
    )
    return "\n".join(lines)


def main() -> int:
    print(render(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
