"""The body phase's admission steps, in order: the body parsed and its model looked up in the
catalog, the translation it needs, policy, guardrails, the response cache, the price, and the
budget admission (reserve the worst case, or block / downgrade).

`admit` answers a cache hit itself (an immediate 200, nothing reserved) and raises the
client errors of the other refusals; when it returns None the request is admitted, and the
stream holds its request, entry and admission for forwarding (forward.py).
"""

from __future__ import annotations

import dataclasses

from gateway_extproc.apis import MODELS_PATH, api_for_path
from gateway_extproc.audit import LimitReached
from gateway_extproc.budgets.gate import BoundFor
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.cache.key import CacheTicket
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import cost_micros, format_usd
from gateway_extproc.errors import Forbidden, UnknownModel
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.providers.inbound import ParsedRequest, with_body
from gateway_extproc.request import chain, prompt_checks, route
from gateway_extproc.request.bodyparse import parse_off_loop
from gateway_extproc.request.forward import translation_to
from gateway_extproc.request.stream import RequestStream
from gateway_extproc.response import reaped_audit
from gateway_extproc.translate.pairs import reaches


async def admit(stream: RequestStream, message: msgs.HttpBody) -> msgs.ProcessingResponse | None:
    api = api_for_path(stream.path)
    assert api is not None  # the headers phase rejected everything else
    # Capped and, for large bodies, off the event loop: no body stalls the other streams.
    request = await parse_off_loop(api, message.body, stream.ctx.config.limits, stream.path)
    if stream.azure_deployment is not None:  # Azure's path names the model, not the body:
        # forwarding writes it into the body (upstream_body), the cache keys by it
        request = dataclasses.replace(request, model=stream.azure_deployment)
    stream.request = request
    entry = stream.ctx.catalog.lookup(request.model)
    if entry is None:
        raise UnknownModel(
            f"model {request.model!r} is not in the gateway's catalog; "
            f"GET {MODELS_PATH} lists the models you can use"
        )
    stream.entry = entry
    stream.translation = translation_to(stream, entry)
    assert stream.identity is not None
    policies = stream.ctx.config.policies
    if not policies.allows(stream.identity, entry.name, request.model):
        raise Forbidden(
            f"{stream.identity.subject} may not use model {request.model!r}: "
            f"{policies.explain(stream.identity, entry.name, request.model)}"
        )
    if entry.provider not in stream.ctx.upstreams:  # a built-in provider left out without a key
        raise UnknownModel(
            f"model {request.model!r} has no configured provider: this gateway does not "
            f"serve {entry.provider}"
        )
    # Guardrails: PII and secrets in the prompt are blocked (400), redacted or monitored; a
    # large prompt is scanned off the event loop after its rate limits, and within a time.
    if stream.ctx.config.guardrails.rules:
        try:
            stream.guard = guard = await prompt_checks.scan(
                stream.ctx, stream.identity, entry, request, size=len(message.body),
                beta=stream.anthropic_beta, request_id=stream.request_id,
            )  # fmt: skip
        except RateLimited as refused:  # a large prompt's rate limits come first
            stream.rate_limited = refused
            raise
        if guard is not None and guard.incomplete:
            stream.limits_reached.append(LimitReached.GUARDRAIL_SCAN_TIMEOUT)
        refusal = prompt_checks.refusal(guard, stream.ctx.config.limits)
        if refusal is not None:
            raise refusal
    redacted = stream.guard.body if stream.guard is not None else None
    if redacted is not None:  # bounded and sent as the provider will see it
        stream.request = request = with_body(request, redacted)
    if stream.translation is not None:  # refused (400) before anything is reserved
        stream.translated = stream.translation.request(request.body)
    else:  # a translated request bypasses the cache (docs/translation.md)
        cached = await cache_lookup(stream, request, entry)  # a hit reserves nothing
        if cached is not None:
            return cached
    upstream = stream.ctx.upstreams[entry.provider]  # a refused billing header: 400, unreserved
    upstream.forward.removals(stream.client_headers, provider=upstream.provider)
    # The price of this request: its service tier, a long-context beta (400 if unpriced).
    long_context_beta = "context-1m" in stream.anthropic_beta
    providers = stream.ctx.config.providers  # their default service tiers
    stream.entry = entry = route.priced(
        entry, request, long_context_beta=long_context_beta, providers=providers
    )
    # A fallback chain: the targets the caller may reach, and a reservation for the dearest.
    stream.chain = chain.admitted(
        stream,
        request,
        entry,
        lambda e: route.priced(
            e, request, long_context_beta=long_context_beta, providers=providers
        ),
    )
    if stream.chain:  # a cooling head (429 retry-after) skipped: the suffix variant's cluster
        stream.chain_skip = chain.skipped_head(stream, entry, await chain.cooling(stream, entry))
    bound_for = bounder(stream, request)
    if stream.chain:
        bound_for = chain.dearest(bound_for, stream.chain)
    # Budgets: reserve the worst case everywhere it applies, or block / downgrade (429).
    identity = stream.identity
    gate = stream.ctx.budgets
    facts = reaped_audit.facts_for(
        request_id=stream.request_id,
        arrived=stream.arrived,
        method=stream.method,
        path=stream.path,
        api=request.api.name.lower(),
        stream=request.stream,
        requested=entry,
        requested_model=request.model,
        identity=identity,
        metadata=stream.metadata,
        provider_of=gate.provider_of,
        trace=stream.trace_context,
    )
    stream.reserving = True
    try:
        stream.admission = admission = await gate.admit(
            reservation_id=stream.reservation_id,
            identity=identity,
            entry=entry,
            requested=request.model,
            bound_for=bound_for,
            allowed=lambda model: (
                model.provider in stream.ctx.upstreams
                and policies.allows(identity, model.name)
                and reaches(request.api, model.schema)
            ),
            facts_for=facts,
        )
    except RateLimited as refused:
        stream.rate_limited = refused
        raise
    if stream.chain and stream.cache_ticket is not None:  # a fallback may answer: not stored
        stream.cache_ticket = CacheTicket(stream.cache_ticket.status)
    if admission.downgraded_from is not None:
        stream.chain = ()  # another model is served: its provider's own route
        stream.chain_skip = 0
        stream.entry = entry = admission.entry
        if admission.bound is not None and admission.bound.price is not None:
            stream.entry = entry = dataclasses.replace(entry, price=admission.bound.price)
        if stream.cache_ticket is not None:  # another model's answer: not stored
            stream.cache_ticket = CacheTicket(stream.cache_ticket.status)
    if stream.cache_ticket is not None and route.output_cap(admission.bound) != stream.cache_cap:
        stream.cache_ticket = CacheTicket(stream.cache_ticket.status)  # keyed for another body
    return None


async def cache_lookup(
    stream: RequestStream, request: ParsedRequest, entry: ModelEntry
) -> msgs.ProcessingResponse | None:
    """Answer from the response cache (an immediate 200, no provider call, no reservation),
    or note the decision the response side needs to store the answer (`cache_ticket`)."""
    identity = stream.identity
    assert identity is not None

    def output_cap() -> tuple[str, int] | None:  # asked only when a key is computed
        gate, bound_for = stream.ctx.budgets, bounder(stream, request)
        stream.cache_cap = route.cap_if_admitted(gate, identity, request, entry, bound_for)
        return stream.cache_cap

    lookup = await stream.ctx.cache.lookup(
        request=request,
        entry=entry,
        identity=identity,
        headers=stream.cache_headers,
        beta=stream.anthropic_beta,
        output_cap=output_cap,
    )
    stream.cache_ticket = lookup.ticket
    if lookup.hit is None:
        return None
    stream.reserving = True
    try:  # rate limits set to count hits count this one (the 429 wins over the hit)
        stream.admission = await stream.ctx.budgets.admit_cache_hit(
            reservation_id=stream.reservation_id,
            identity=identity,
            entry=entry,
            requested=request.model,
        )
    except RateLimited as refused:
        stream.rate_limited = refused
        stream.cache_ticket = None  # not answered from the cache
        raise
    stream.status = 200
    stream.cost_saved = cost_micros(lookup.hit.usage, entry.price)
    stream.conclude()
    headers = {"content-type": lookup.hit.content_type} | stream.response_headers()
    headers |= {"x-gateway-request-id": stream.request_id, "x-gateway-cost-usd": format_usd(0)}
    return msgs.immediate(200, lookup.hit.body, headers, "gateway_cache_hit")


def bounder(stream: RequestStream, request: ParsedRequest) -> BoundFor:
    """The request's worst case on a model, as the budget gate asks for it."""
    settings = stream.ctx.budgets.settings
    return route.bounder(
        request,
        default_max_output=settings.default_max_output_tokens,
        unseen_input=settings.unseen_input,
        long_context_beta="context-1m" in stream.anthropic_beta,
        providers=stream.ctx.config.providers,
    )
