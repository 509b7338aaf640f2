"""Rate limits before the guardrails' scan of a large prompt.

The scan is the one request-path step whose cost a client controls: its time grows with the
prompt (~50 ms per MB of prose, ~0.5 s per MB dense with findings) and runs in the worker's one
body-parsing thread, shared by every stream on the worker. A client over its rate limit must not
get to spend it. The reservation, which counts the request in its rate limits atomically with
its budgets, comes after the cache lookup (a hit reserves nothing), which must come after the
guardrails (a blocked prompt is never answered). So for a prompt large enough to be scanned off
the event loop (`bodyparse.OFFLOAD_BYTES`), the enforced rate limits that apply are first peeked
at: one read-only script (`budgets/lua/peek.lua`) that counts nothing; a limit with no room
refuses the request (429, as the reservation would) before the scan. A smaller prompt scans in
less time than the Redis round trip would take, so it goes without (the common path keeps its
one round trip). The reservation still decides: a request the peek let through may be refused
by it, exactly as before. Store errors let the request through (rate limits fail open).
"""

from __future__ import annotations

import logging

from gateway_extproc.budgets.calls import Overloaded
from gateway_extproc.budgets.gate import BoundFor, BudgetGate
from gateway_extproc.budgets.ratelimits import report
from gateway_extproc.budgets.results import BudgetStoreError
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.errors import ClientError
from gateway_extproc.identity.model import Identity

log = logging.getLogger("gateway.ratelimits")


async def refuse_if_over(
    gate: BudgetGate,
    *,
    identity: Identity,
    entry: ModelEntry,
    requested: str,
    bound_for: BoundFor,
) -> None:
    """Raise RateLimited (429) when an enforced rate limit that applies has no room for this
    request now. Counts nothing; no round trip when no enforced limit applies."""
    store = gate.store
    limits = gate.applicable_rate_limits(identity, entry, requested)
    if store is None or not any(limit.enforced for limit, _ in limits):
        return
    bound = None
    if any(limit.tokens is not None for limit, _ in limits):
        try:
            bound = bound_for(entry)
        except ClientError:
            return  # the reservation refuses it with its own error
    charges = tuple(
        c for c in gate.rate_charges(identity, entry, requested, bound) if c.limit.enforced
    )
    now = gate.clock()
    try:
        states = await gate.services.call(lambda: store.peek_rate_limits(charges, now))
    except (BudgetStoreError, Overloaded) as exc:
        log.warning("rate limits not checked before the guardrails: %s", exc)
        return
    blocking = [s for s in states if s.would_block]
    if blocking:
        tokens = max((c.tokens_estimate for c in charges), default=0)
        raise report.refusal(blocking, states, tokens)
