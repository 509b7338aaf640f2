"""The metering section of the gateway config: whether Envoy waits for the sidecar on the
response path (synchronous) or only lets it observe (observe, the default)."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

from gateway_extproc.config.reader import Reader
from gateway_extproc.cost.endings import DEFAULT_UNSEEN_OUTPUT_TOKENS

MIN_JSON_BODY_BYTES = 256 * 1024  # above what a truncated body keeps (response/json_body.py)
MAX_UNSEEN_OUTPUT_TOKENS = 10_000_000  # far above any output limit: the limit then decides


class MeteringMode(enum.StrEnum):
    OBSERVE = "observe"  # the response path is observed; Envoy never waits for the sidecar
    SYNCHRONOUS = "synchronous"  # every response message waits; JSON gets x-gateway-cost-usd


@dataclasses.dataclass(frozen=True)
class MeteringConfig:
    mode: MeteringMode = MeteringMode.OBSERVE
    # Observe mode: how long Envoy keeps an observer stream open after the request's own
    # stream ended without a response end (a client disconnect, a reset): the sidecar meters
    # what it saw when the stream closes. Envoy's `deferred_close_timeout`.
    observer_close_timeout_ms: int = 5000
    # What the sidecar keeps of one non-streamed response: whole up to this, beyond it only its
    # first and last 64 KiB (response/json_body.py). Bounds memory per response; usage is read
    # from the ends of a larger body.
    max_json_body_bytes: int = 1 << 20
    # An ending whose usage is not read (a cut stream, no usage reported, a dead worker) is
    # charged the output seen plus this many tokens, at most the request's output limit: what a
    # provider generates before it notices a cut, and framing tokens no stream shows (endings.py).
    unseen_output_tokens: int = DEFAULT_UNSEEN_OUTPUT_TOKENS

    @property
    def synchronous(self) -> bool:
        return self.mode is MeteringMode.SYNCHRONOUS


def parse_metering(r: Reader, doc: Mapping[str, Any]) -> MeteringConfig:
    section = r.section(
        doc,
        "metering",
        {"mode", "observer_close_timeout_ms", "max_json_body_bytes", "unseen_output_tokens"},
    )
    mode = section.get("mode", MeteringMode.OBSERVE.value)
    if mode not in {m.value for m in MeteringMode}:
        choices = ", ".join(m.value for m in MeteringMode)
        r.problems.append(f"metering.mode: must be one of {choices} (got {mode!r})")
        mode = MeteringMode.OBSERVE.value
    key = "observer_close_timeout_ms"
    timeout = r.integer({key: section.get(key, 5000)}, "metering", key, 100, 600_000)
    key = "max_json_body_bytes"
    cap = r.integer({key: section.get(key, 1 << 20)}, "metering", key, MIN_JSON_BODY_BYTES, 1 << 30)
    key = "unseen_output_tokens"
    margin = section.get(key, DEFAULT_UNSEEN_OUTPUT_TOKENS)
    margin = r.integer({key: margin}, "metering", key, 0, MAX_UNSEEN_OUTPUT_TOKENS)
    return MeteringConfig(MeteringMode(mode), timeout, cap, margin)
