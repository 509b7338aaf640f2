"""What a 429, a response and an audit record say about rate limits. Pure: states in, values out.

Headers follow OpenAI's (which clients and SDKs already parse): `x-ratelimit-limit-requests`,
`x-ratelimit-remaining-requests`, `x-ratelimit-reset-requests` and the same three for tokens, each
trio from the most constrained limit in that dimension (the least remaining); resets are
durations in OpenAI's format (`20ms`, `1s`, `6m0s`): the time until that limit is back to full.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from gateway_extproc.budgets.model import ScopeKind
from gateway_extproc.budgets.ratelimits.model import RateLimitState
from gateway_extproc.errors import ClientError


class RateLimited(ClientError):
    """429: an enforced rate limit has no room. `states`: every rate limit the request was
    checked against (for the audit record); nothing was counted or held anywhere."""

    status = 429
    code = "rate_limited"
    openai_type = "rate_limit_error"
    anthropic_type = "rate_limit_error"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        states: Sequence[RateLimitState] = (),
    ) -> None:
        super().__init__(message, headers=headers)
        self.states = tuple(states)


def format_reset(ms: int) -> str:
    """A duration as OpenAI writes it: `0s`, `20ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`."""
    ms = max(ms, 0)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        seconds = f"{ms / 1000:.3f}".rstrip("0").rstrip(".")
        return f"{seconds}s"
    total = math.ceil(ms / 1000)
    hours, rest = divmod(total, 3600)
    minutes, seconds_int = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{seconds_int}s"
    return f"{minutes}m{seconds_int}s"


def headers(states: Sequence[RateLimitState]) -> dict[str, str]:
    """The `x-ratelimit-*` trios of the most constrained limit per dimension (none: no limit
    counts that dimension)."""
    out: dict[str, str] = {}
    requests = [s for s in states if s.remaining_requests is not None]
    if requests:
        tight = min(requests, key=lambda s: (s.remaining_requests, -s.requests_reset_ms))
        assert tight.limit.requests is not None
        out["x-ratelimit-limit-requests"] = str(tight.limit.requests)
        out["x-ratelimit-remaining-requests"] = str(tight.remaining_requests)
        out["x-ratelimit-reset-requests"] = format_reset(tight.requests_reset_ms)
    tokens = [s for s in states if s.remaining_tokens is not None]
    if tokens:
        tight = min(tokens, key=lambda s: (s.remaining_tokens, -s.tokens_reset_ms))
        assert tight.limit.tokens is not None
        out["x-ratelimit-limit-tokens"] = str(tight.limit.tokens)
        out["x-ratelimit-remaining-tokens"] = str(tight.remaining_tokens)
        out["x-ratelimit-reset-tokens"] = format_reset(tight.tokens_reset_ms)
    return out


def retry_after_s(blocking: Iterable[RateLimitState]) -> int:
    """Whole seconds until the request fits every limit that refused it (at least 1). A
    request that never fits by waiting (its worst case is over a token limit) gets the
    longest window."""
    waits = []
    for state in blocking:
        wait = state.retry_ms
        waits.append(state.limit.window_ms if wait < 0 else wait)
    return max(1, math.ceil(max(waits, default=1000) / 1000))


def describe(state: RateLimitState, tokens_estimate: int) -> str:
    limit = state.limit
    who = f"{limit.scope.kind.value} {state.scope_value}"
    if limit.scope.kind is ScopeKind.GLOBAL:
        who = "everyone"
    window = format_reset(limit.window_ms)
    parts = []
    if limit.requests is not None and state.requests_retry_ms != 0:
        parts.append(f"{state.requests_used} of {limit.requests} requests used")
    if limit.tokens is not None and state.tokens_retry_ms != 0:
        parts.append(
            f"{state.tokens_used} of {limit.tokens} tokens used and this request may use up to "
            f"{tokens_estimate}"
        )
    detail = "; ".join(parts) or "no room"
    return f"rate limit {limit.name!r} for {who} reached: {detail} per {window}"


def refusal(
    blocking: Sequence[RateLimitState],
    states: Sequence[RateLimitState],
    tokens_estimate: int,
) -> RateLimited:
    """The 429 for a request the enforced limits in `blocking` refused."""
    first = blocking[0]
    message = describe(first, tokens_estimate)
    if first.retry_ms < 0:
        message += " (larger than the limit: it will never fit)"
    extra = headers(states)
    extra["retry-after"] = str(retry_after_s(blocking))
    return RateLimited(message, headers=extra, states=states)


def audit_fields(states: Sequence[RateLimitState]) -> list[dict[str, Any]]:
    return [
        {
            "name": s.limit.name,
            "scope_value": s.scope_value,
            "action": s.limit.action.value,
            "window_s": s.limit.window_s,
            "limit_requests": s.limit.requests,
            "remaining_requests": s.remaining_requests,
            "limit_tokens": s.limit.tokens,
            "remaining_tokens": s.remaining_tokens,
            "would_block": s.would_block,
            "blocked": s.would_block and s.limit.enforced,
        }
        for s in states
    ]
