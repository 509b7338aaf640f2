"""The request phase's scan of a prompt, the one step whose cost a client controls, bounded.

The guardrails' scan grows with the prompt (~50 ms per MB of prose, ~0.5 s per MB dense with
findings) and a prompt over 64 KiB is scanned in the worker's one body-parsing thread, which
every stream on the worker shares: unbounded, a 32 MiB prompt dense with findings held it ~16 s
and the large prompts queued behind it ran into Envoy's message timeout. So:

- a prompt large enough for the thread is first checked against its enforced rate limits
  (ratelimit_first.py: a read-only peek; the reservation still counts it later), so a client
  over its limit cannot spend the scan;
- the scan stops at `limits.guardrail_scan_timeout_ms` (1 s), measured from its start in the
  thread; a request whose scan did not finish is refused 413 when an applicable guardrail
  blocks or redacts (text it holds went unchecked), and forwarded with what was found when they
  only monitor.
"""

from __future__ import annotations

import logging

from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.config.gateway import Limits
from gateway_extproc.errors import ClientError, GuardrailBlocked, PayloadTooLarge
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.extproc.offload import OFFLOAD_BYTES, off_loop_if_large
from gateway_extproc.guardrails import GuardResult
from gateway_extproc.guardrails.deadline import Deadline
from gateway_extproc.identity.model import Identity
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.request import ratelimit_first as first
from gateway_extproc.request import route

log = logging.getLogger("gateway.guardrails")


async def scan(
    ctx: GatewayContext,
    identity: Identity,
    entry: ModelEntry,
    request: ParsedRequest,
    *,
    size: int,
    beta: str,
    request_id: str,
) -> GuardResult | None:
    """The guardrails' result for a prompt of `size` bytes (raises RateLimited for a large one
    over its rate limits); `refusal` says whether it may go out."""
    if size >= OFFLOAD_BYTES:
        gate = ctx.budgets
        bound_for = route.bounder(
            request,
            default_max_output=gate.settings.default_max_output_tokens,
            unseen_input=gate.settings.unseen_input,
            long_context_beta="context-1m" in beta,
        )
        await first.refuse_if_over(
            gate, identity=identity, entry=entry, requested=request.model, bound_for=bound_for
        )
    guardrails, clock = ctx.config.guardrails, ctx.monotonic
    timeout_ms = ctx.config.limits.guardrail_scan_timeout_ms

    def check() -> GuardResult | None:  # the deadline starts with the scan, in its thread
        return guardrails.check(identity, entry, request, Deadline(clock, timeout_ms / 1000))

    guard = await off_loop_if_large(size, check)
    if guard is not None and guard.incomplete:
        log.warning(
            "guardrail scan stopped after %d ms (limits.guardrail_scan_timeout_ms): %s",
            timeout_ms,
            "refused" if guard.refuse_unscanned else "forwarded (monitor-only guardrails)",
            extra={"request_id": request_id},
        )
    return guard


def refusal(guard: GuardResult | None, limits: Limits) -> ClientError | None:
    """Why the request may not go out, if it may not: a blocked category (400), or text the
    scan did not reach while a guardrail would block or redact it (413)."""
    if guard is None:
        return None
    if guard.blocked:
        return GuardrailBlocked(guard.block_message())
    if guard.refuse_unscanned:
        return PayloadTooLarge(
            "the prompt is too large for the gateway's guardrails to check within "
            f"limits.guardrail_scan_timeout_ms ({limits.guardrail_scan_timeout_ms} ms); "
            "nothing was sent: send less text"
        )
    return None
