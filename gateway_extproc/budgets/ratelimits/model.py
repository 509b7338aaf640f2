"""Rate-limit configuration values and what a reservation reports about them. Values only.

Sliding window of `window_s` seconds kept as `BUCKETS` sub-bucket counters (`window_s * 1000 /
BUCKETS` ms each): the window at `now` is the current bucket and the `BUCKETS - 1` before it, so
it covers between `(BUCKETS - 1) / BUCKETS` of the window and the whole window of history. Error
bound: in any interval of `window * (BUCKETS - 1) / BUCKETS` at most `limit` is admitted; in any
interval of `window`, at most `limit` plus what one bucket held (the oldest bucket ages out up to
one bucket early). Memory: at most 2 x BUCKETS integer fields per scope value.
"""

from __future__ import annotations

import dataclasses
import enum

from gateway_extproc.budgets.model import Match, Scope

BUCKETS = 20  # sub-buckets per window: a 60 s window counts in 3 s buckets
MIN_WINDOW_S = 1
MAX_WINDOW_S = 86_400


class RateLimitAction(enum.StrEnum):
    BLOCK = "block"  # refuse the request (429 rate_limited)
    MONITOR = "monitor"  # count and report would-block, never refuse


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitConfig:
    name: str  # unique among rate limits, [a-z0-9_-]; part of its Redis keys
    scope: Scope
    window_s: int
    action: RateLimitAction
    requests: int | None = None  # per window; None: not limited
    tokens: int | None = None  # input + output per window; None: not limited
    match: Match = dataclasses.field(default_factory=Match)
    count_cache_hits: bool = False  # a response-cache hit counts one request here too

    @property
    def enforced(self) -> bool:
        return self.action is RateLimitAction.BLOCK

    @property
    def window_ms(self) -> int:
        return self.window_s * 1000

    @property
    def bucket_ms(self) -> int:
        return self.window_ms // BUCKETS  # window_s is whole seconds: always exact


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitCharge:
    """One rate-limit counter a request is about to count: one request and, when the limit
    counts tokens, the request's worst-case tokens (input bound + output cap)."""

    limit: RateLimitConfig
    scope_value: str
    tokens_estimate: int  # 0 when the limit does not count tokens

    @property
    def counts_tokens(self) -> bool:
        return self.limit.tokens is not None


@dataclasses.dataclass(frozen=True, slots=True)
class RateLimitState:
    """One rate-limit counter as a reserve saw it (counting this request when admitted).
    Times are milliseconds from the reserve's `now`."""

    limit: RateLimitConfig
    scope_value: str
    requests_used: int
    tokens_used: int
    would_block: bool  # this request did not fit (monitor limits report, never block)
    requests_retry_ms: int  # until one more request fits (0: now; -1: never by waiting)
    tokens_retry_ms: int  # until this request's tokens fit (0: now; -1: never by waiting)
    requests_reset_ms: int  # until every counted request has left the window
    tokens_reset_ms: int  # until every counted token has left the window

    @property
    def remaining_requests(self) -> int | None:
        if self.limit.requests is None:
            return None
        return max(self.limit.requests - self.requests_used, 0)

    @property
    def remaining_tokens(self) -> int | None:
        if self.limit.tokens is None:
            return None
        return max(self.limit.tokens - self.tokens_used, 0)

    @property
    def retry_ms(self) -> int:
        """Until this request would fit every dimension of this limit (-1: never by waiting)."""
        waits = (self.requests_retry_ms, self.tokens_retry_ms)
        return -1 if -1 in waits else max(waits)
