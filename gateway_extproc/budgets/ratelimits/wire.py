"""What the reserve script takes and returns for each rate limit. Pure: values in, values out.

Per rate limit the script takes `ARGS` arguments - bucket ms, bucket count, request limit (-1:
none), token limit (-1: none), token estimate, enforced (1/0), name, scope value - and replies
`REPLY` integers: requests used, tokens used, would block (1/0), requests retry ms, tokens retry
ms, requests reset ms, tokens reset ms (see `budgets/lua/reserve.lua`).
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway_extproc.budgets.ratelimits.model import BUCKETS, RateLimitCharge, RateLimitState

ARGS = 8
REPLY = 7


def script_args(charge: RateLimitCharge) -> list[str | int]:
    limit = charge.limit
    if charge.tokens_estimate < 0:
        raise ValueError(f"negative token estimate in {charge!r}")
    return [
        limit.bucket_ms,
        BUCKETS,
        -1 if limit.requests is None else limit.requests,
        -1 if limit.tokens is None else limit.tokens,
        charge.tokens_estimate if limit.tokens is not None else 0,
        1 if limit.enforced else 0,
        limit.name,
        charge.scope_value,
    ]


def state(charge: RateLimitCharge, values: Sequence[object]) -> RateLimitState:
    n = [int(v.decode() if isinstance(v, bytes) else str(v)) for v in values]
    if len(n) != REPLY:
        raise ValueError(f"expected {REPLY} values for rate limit {charge.limit.name!r}")
    return RateLimitState(
        limit=charge.limit,
        scope_value=charge.scope_value,
        requests_used=n[0],
        tokens_used=n[1],
        would_block=n[2] == 1,
        requests_retry_ms=n[3],
        tokens_retry_ms=n[4],
        requests_reset_ms=n[5],
        tokens_reset_ms=n[6],
    )
