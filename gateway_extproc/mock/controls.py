"""The `x-mock-*` control headers a test sends to steer one mock response.

    x-mock-output-tokens: N       reply length in words = output tokens (default 12, max 100000),
                                  capped by the request's max-tokens field
    x-mock-cached-tokens: N       OpenAI cached_tokens (inside prompt_tokens) /
                                  Anthropic cache_read_input_tokens (beside input_tokens)
    x-mock-input-tokens: N        input tokens billed (beside cache reads and writes) instead of the
                                  mock's count of the request's text: a provider billing what the
                                  request's text does not show (tool definitions, hidden prompts)
    x-mock-cache-write-tokens: N  Anthropic 5-minute cache writes (cache_creation.ephemeral_5m_...);
                                  OpenAI cache_write_tokens (inside prompt_tokens, as GPT-5.6 does)
    x-mock-cache-write-1h-tokens: N
                                  Anthropic 1-hour cache writes (cache_creation.ephemeral_1h_...);
                                  cache_creation_input_tokens reports the sum of both
    x-mock-reasoning-tokens: N    OpenAI reasoning_tokens (inside completion/output tokens)
    x-mock-latency-ms: N          sleep before the response headers
    x-mock-chunk-delay-ms: N      sleep between body writes
    x-mock-chunk-bytes: N         write the body in N-byte pieces, across event borders
    x-mock-events-per-write: N    put N whole SSE events in each write (default 1)
    x-mock-status: S              answer with error status S (400-599), provider-format body
    x-mock-abort-after-events: N  send N events (or N body writes' worth for JSON: 0 or all), then
                                  cut the connection without terminating the body
    x-mock-omit-usage: 1          report no usage at all (the mock still bills: GET /_mock/bills)
    x-mock-generates-after-cut: N once a write fails (the client is gone), bill up to N more
                                  words generated before the mock noticed (default 0)
    x-mock-content-filter: prompt  Azure paths only: the prompt is filtered (400 content_filter)
    x-mock-replay: NAME           replay NAME.yaml (go-vcr cassette) from --fixtures-dir
    x-mock-hold: NAME             hold the response until `POST /_mock/release/NAME` (tests that
                                  need every admitted request in flight at once)
    x-mock-hold-after-events: NAME@N
                                  after the first N body writes (N events, or N pieces with
                                  x-mock-chunk-bytes), wait for `POST /_mock/release/NAME`, then
                                  go on (a cut asked by abort-after-events comes after): a test
                                  acts mid-stream once the client has read what came before
    x-mock-response-model: NAME   report NAME as the response's model (not the request's)
    x-mock-tool-use: NAME         Anthropic, Gemini: after its text, call tool NAME with the
                                  input {"query": "mock"} (stop_reason tool_use; Gemini: a
                                  functionCall part, finishReason STOP)
    x-mock-service-tier: NAME     OpenAI: report NAME as the response's service_tier (the tier
                                  served, e.g. a project's default priority; else `default`)
    x-mock-content-encoding: E    label the body `Content-Encoding: E` without encoding it (a
                                  body the gateway cannot decode: its metering fails)
    x-mock-gzip: 1                gzip the body even though the request did not ask for it (a
                                  provider that ignores the dropped Accept-Encoding)
    x-mock-fault: M=F[,M=F...]    fail for target model M (or `*`): F is 500, 429[@s], reset,
                                  stall@ms or cut@bytes; the first match wins (fault_header.py)
    x-mock-pad-bytes: N           N spaces after a JSON reply's opening brace, written 1 MiB at a
                                  time (a body far over the observer's cap; with x-mock-gzip, a
                                  decompression bomb of ~1,000:1)

Pure: `parse_controls` turns request headers into a frozen `Controls` value, or raises
`ControlError` listing every bad header at once (an unknown `x-mock-*` name is an error too).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

from gateway_extproc.mock.fault_header import (
    FAULT_HEADER,
    Fault,
    FaultRule,
    Kind,
    parse_fault_header,
    select_fault,
)

DEFAULT_OUTPUT_TOKENS = 12
MAX_OUTPUT_TOKENS = 100_000
MAX_DELAY_MS = 3_600_000
INJECTABLE_STATUSES = range(400, 600)
_REPLAY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_CODING = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"", "0", "false", "no", "off"})


class ControlError(ValueError):
    """One or more control headers are malformed. Carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid mock control headers: " + "; ".join(self.problems))


@dataclasses.dataclass(frozen=True, slots=True)
class Controls:
    """What the test asked of this response. Defaults describe a plain, prompt reply."""

    output_tokens: int = DEFAULT_OUTPUT_TOKENS
    input_tokens: int | None = None  # None: the mock counts the request's text
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    reasoning_tokens: int = 0
    latency_ms: int = 0
    chunk_delay_ms: int = 0
    chunk_bytes: int | None = None  # None: write whole events
    events_per_write: int = 1
    status: int | None = None
    abort_after_events: int | None = None
    omit_usage: bool = False
    replay: str | None = None
    hold: str | None = None
    hold_after: tuple[str, int] | None = None  # (NAME, N): wait after the first N writes
    response_model: str | None = None
    tool_use: str | None = None  # Anthropic, Gemini: the tool the reply calls
    service_tier: str | None = None  # None: `default`
    content_encoding: str | None = None  # a false Content-Encoding label for the body
    gzip: bool = False  # compress whatever the request's Accept-Encoding
    pad_bytes: int = 0  # spaces after a JSON reply's opening brace
    generates_after_cut: int = 0  # words billed after a failed write, before noticing the cut
    faults: tuple[FaultRule, ...] = ()  # x-mock-fault, before `aimed_at` picks this target's
    fault: Fault | None = None  # the fault `aimed_at` picked for this request's model
    retry_after_s: int | None = None  # an injected 429's retry-after (None: the default, 1 s)
    reset: bool = False  # reset the connection before any response header
    cut_after_bytes: int | None = None  # drop the connection after this many body bytes

    @property
    def aborts(self) -> bool:
        """The reply is cut short on purpose (after some events, or some bytes)."""
        return self.abort_after_events is not None or self.cut_after_bytes is not None


class _Reader:
    """Reads typed control values from lower-cased headers, collecting every problem."""

    def __init__(self, headers: Mapping[str, str]) -> None:
        self.headers = {name.lower(): value.strip() for name, value in headers.items()}
        self.problems: list[str] = []

    def _raw(self, name: str) -> str | None:
        value = self.headers.get(name)
        return value if value else None

    def integer(self, name: str, low: int, high: int) -> int | None:
        raw = self._raw(name)
        if raw is None:
            return None
        try:
            value = int(raw)
        except ValueError:
            self.problems.append(f"{name}: {raw!r} is not an integer")
            return None
        if not low <= value <= high:
            self.problems.append(f"{name}: {value} must be between {low} and {high}")
            return None
        return value

    def flag(self, name: str) -> bool:
        raw = (self._raw(name) or "").lower()
        if raw in _TRUE:
            return True
        if raw not in _FALSE:
            self.problems.append(f"{name}: {raw!r} must be 1/true or 0/false")
        return False

    def status(self, name: str) -> int | None:
        value = self.integer(name, 0, 999)
        if value is not None and value not in INJECTABLE_STATUSES:
            self.problems.append(f"{name}: {value} must be an HTTP error status (400-599)")
            return None
        return value

    def replay(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is None:
            return None
        fixture = raw.removesuffix(".yaml")
        if not _REPLAY_NAME.match(fixture):
            self.problems.append(f"{name}: {raw!r} must be a fixture name (letters, digits, . _ -)")
            return None
        return fixture

    def name(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and not _REPLAY_NAME.match(raw):
            self.problems.append(f"{name}: {raw!r} must be a model name (letters, digits, . _ -)")
            return None
        return raw

    def hold_after(self, name: str) -> tuple[str, int] | None:
        raw = self._raw(name)
        if raw is None:
            return None
        hold, _, count = raw.rpartition("@")
        if not _REPLAY_NAME.match(hold) or not count.isdigit() or int(count) < 1:
            self.problems.append(f"{name}: {raw!r} must be NAME@N (a hold name, N >= 1 writes)")
            return None
        return hold, int(count)

    def coding(self, name: str) -> str | None:
        raw = self._raw(name)
        if raw is not None and not _CODING.match(raw):
            self.problems.append(f"{name}: {raw!r} must be a content-coding name")
            return None
        return raw

    def faults(self, headers: Mapping[str, str]) -> tuple[FaultRule, ...]:
        # Every `x-mock-fault` line, joined as HTTP joins repeated headers.
        lines = [v for k, v in headers.items() if k.lower() == FAULT_HEADER and v.strip()]
        if not lines:
            return ()
        rules, problems = parse_fault_header(",".join(lines))
        self.problems.extend(problems)
        return rules

    def unknown(self) -> None:
        for name in self.headers:
            if name.startswith("x-mock-") and name not in CONTROL_HEADERS:
                known = ", ".join(CONTROL_HEADERS)
                self.problems.append(f"{name}: unknown control header (known: {known})")


CONTROL_HEADERS = (
    "x-mock-output-tokens",
    "x-mock-input-tokens",
    "x-mock-cached-tokens",
    "x-mock-cache-write-tokens",
    "x-mock-cache-write-1h-tokens",
    "x-mock-reasoning-tokens",
    "x-mock-latency-ms",
    "x-mock-chunk-delay-ms",
    "x-mock-chunk-bytes",
    "x-mock-events-per-write",
    "x-mock-status",
    "x-mock-abort-after-events",
    "x-mock-omit-usage",
    "x-mock-replay",
    "x-mock-hold",
    "x-mock-hold-after-events",
    "x-mock-response-model",
    "x-mock-tool-use",
    "x-mock-service-tier",
    "x-mock-content-encoding",
    "x-mock-gzip",
    "x-mock-pad-bytes",
    "x-mock-generates-after-cut",
    FAULT_HEADER,
    "x-mock-content-filter",  # Azure paths: read by azure_api.py (`prompt`: a filtered prompt)
)
_BIG = 1 << 30
MAX_PAD_BYTES = 1 << 32


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def parse_controls(headers: Mapping[str, str]) -> Controls:
    """Read the `x-mock-*` headers (names case-insensitive); unknown `x-mock-*` names are errors."""
    read = _Reader(headers)
    controls = Controls(
        output_tokens=_or(
            read.integer("x-mock-output-tokens", 0, MAX_OUTPUT_TOKENS), DEFAULT_OUTPUT_TOKENS
        ),
        input_tokens=read.integer("x-mock-input-tokens", 0, _BIG),
        cached_tokens=_or(read.integer("x-mock-cached-tokens", 0, _BIG), 0),
        cache_write_tokens=_or(read.integer("x-mock-cache-write-tokens", 0, _BIG), 0),
        cache_write_1h_tokens=_or(read.integer("x-mock-cache-write-1h-tokens", 0, _BIG), 0),
        reasoning_tokens=_or(read.integer("x-mock-reasoning-tokens", 0, _BIG), 0),
        latency_ms=_or(read.integer("x-mock-latency-ms", 0, MAX_DELAY_MS), 0),
        chunk_delay_ms=_or(read.integer("x-mock-chunk-delay-ms", 0, MAX_DELAY_MS), 0),
        chunk_bytes=read.integer("x-mock-chunk-bytes", 1, _BIG),
        events_per_write=_or(read.integer("x-mock-events-per-write", 1, _BIG), 1),
        status=read.status("x-mock-status"),
        abort_after_events=read.integer("x-mock-abort-after-events", 0, _BIG),
        omit_usage=read.flag("x-mock-omit-usage"),
        replay=read.replay("x-mock-replay"),
        hold=read.replay("x-mock-hold"),
        hold_after=read.hold_after("x-mock-hold-after-events"),
        response_model=read.name("x-mock-response-model"),
        tool_use=read.name("x-mock-tool-use"),
        service_tier=read.name("x-mock-service-tier"),
        content_encoding=read.coding("x-mock-content-encoding"),
        gzip=read.flag("x-mock-gzip"),
        pad_bytes=_or(read.integer("x-mock-pad-bytes", 0, MAX_PAD_BYTES), 0),
        generates_after_cut=_or(
            read.integer("x-mock-generates-after-cut", 0, MAX_OUTPUT_TOKENS), 0
        ),
        faults=read.faults(headers),
    )
    read.unknown()
    if read.problems:
        raise ControlError(read.problems)
    return controls


def aimed_at(controls: Controls, model: str | None, keys: Sequence[str] = ()) -> Controls:
    """`controls` for a request to `model` presenting `keys`: the first matching `x-mock-fault`
    rule's fault put in place of what the other controls asked (a stall adds to the latency)."""
    fault = select_fault(controls.faults, model, keys)
    if fault is None:
        return controls
    aimed = dataclasses.replace(controls, fault=fault)
    if fault.kind is Kind.SERVER_ERROR:
        return dataclasses.replace(aimed, status=500)
    if fault.kind is Kind.RATE_LIMITED:
        return dataclasses.replace(aimed, status=429, retry_after_s=fault.amount)
    if fault.kind is Kind.RESET:
        return dataclasses.replace(aimed, reset=True)
    if fault.kind is Kind.STALL:
        return dataclasses.replace(aimed, latency_ms=controls.latency_ms + fault.amount)
    return dataclasses.replace(aimed, cut_after_bytes=fault.amount)
