"""The body phase's forwarding, once a request is admitted: native or translated (for the
served model's API), per-provider rewrites (credential, path, signing), and the hand-off of the
forwarded request's state to whoever meters its response.

In synchronous mode, and in observe mode for an answer this stream meters itself (a JSON
answer, or any translated one), the stream keeps a `ResponseObserver`; otherwise the state goes
to the observer stream in Envoy dynamic metadata, signed.
"""

from __future__ import annotations

import dataclasses

from google.protobuf import struct_pb2

from gateway_extproc.apis import Api
from gateway_extproc.budgets import report as budget_report
from gateway_extproc.cache.key import STATUS_HEADER
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.cost.endings import limits_for
from gateway_extproc.errors import BadRequest
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY, RequestState
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.request import chain, route
from gateway_extproc.request.stream import RequestStream
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.translate.pairs import Translation, translation_for

# Observe mode: every response header the request phase may decide, copied by Envoy from
# dynamic metadata (envoy/routes.py).
METADATA_RESPONSE_HEADERS = ("x-gateway-request-id", *budget_report.RESPONSE_HEADERS, STATUS_HEADER)
# Observe mode: the dynamic metadata that tells Envoy this stream meters the request's response,
# so the request is re-matched to the route that leaves the observer out (envoy/routes.py).
RESPONSE_METERED_KEY = "response_metered_by"
RESPONSE_METERED_HERE = "request_stream"
_METERED_HERE_METADATA = struct_pb2.Struct()
_METERED_HERE_METADATA.update({NAMESPACE: {RESPONSE_METERED_KEY: RESPONSE_METERED_HERE}})


def response_on_this_stream(request: ParsedRequest) -> bool:
    """Observe mode: whether the request stream meters this request's response itself (its
    headers and its buffered body: four messages on one stream, and `x-gateway-cost-usd`), or
    the observer does. A non-streamed answer is buffered whole, once, by Envoy and the sidecar,
    which a chat answer (bounded by its output tokens) affords; an embeddings answer grows with
    its input (tens of MB for a large batch) and an event stream must not wait for the sidecar:
    both stay with the observer, which sees them chunk by chunk and keeps a bounded part."""
    return not request.stream and request.api is not Api.OPENAI_EMBEDDINGS


async def forward(stream: RequestStream) -> msgs.ProcessingResponse:
    """The request body phase's reply for an admitted request (admission.py set the stream's
    request, entry and admission), and who meters its response."""
    request, entry, admission = stream.request, stream.entry, stream.admission
    assert request is not None and entry is not None and admission is not None
    redacted = stream.guard.body if stream.guard is not None else None
    served = request.model if admission.downgraded_from is None else entry.name
    upstream = stream.ctx.upstreams[entry.provider]
    if upstream.token is not None:  # Entra ID: cached; waits only when none is valid (503)
        await upstream.token.ensure()
    if upstream.vertex is not None or upstream.signer is not None:
        served = entry.name  # a Vertex or Bedrock entry's name is the provider's model id
    if stream.chain:
        return _forward_chain(stream, request, entry)
    requested_translation = stream.translation
    translation = stream.translation = translation_to(stream, entry)  # a downgrade may cross
    if translation is not requested_translation:  # translated for another API, or none
        stream.translated = None
    if translation is None:
        if upstream.signer is not None:  # Converse: temporary credentials refreshed off the loop
            await upstream.signer.fresh()
        common = route.forward(
            upstream,
            request,
            route.output_cap(admission.bound),
            served_model=served,
            path=stream.path,
            client_headers=stream.client_headers,
            redacted=redacted,
            cluster=upstream.cluster,
        )
    else:
        if stream.translated is None:  # downgraded onto a provider of another API
            stream.translated = translation.request(request.body)
        if upstream.signer is not None:  # temporary credentials refreshed off the loop
            await upstream.signer.fresh()
        common = route.forward_translated(
            upstream,
            translation,
            stream.translated,
            served_model=served,
            stream=request.stream,
            max_tokens=route.translated_max_tokens(request, admission.bound, entry),
            client_headers=stream.client_headers,
            beta=stream.anthropic_beta,
            cluster=upstream.cluster,
        )
    synchronous = stream.ctx.config.metering.synchronous
    # A translated answer is rewritten, which only this stream can do (observe mode's
    # observer never answers): its response comes here, streamed or not.
    here = synchronous or response_on_this_stream(request) or translation is not None
    state = hand_off(stream, request, entry, upstream.provider, stream.started if here else None)
    if here:
        stream.observer = ResponseObserver(stream.ctx, state)
        if synchronous:
            return msgs.request_body_reply(common)
        # observe mode, a JSON answer: the observer stays out of it
        return msgs.request_body_reply(common, dynamic_metadata=_METERED_HERE_METADATA)
    stream.handed_off = True
    return msgs.request_body_reply(common, dynamic_metadata=dynamic_metadata(stream, state))


def _forward_chain(
    stream: RequestStream, request: ParsedRequest, entry: ModelEntry
) -> msgs.ProcessingResponse:
    """A chained request (request/chain.py): to the chain's cluster, its state (with every
    admitted target) signed in dynamic metadata for each attempt's filter. Its response comes to
    this stream when a target may answer in another API (only this stream can translate it back),
    in synchronous mode, or for a JSON answer; else to the observer, as any other."""
    admission = stream.admission
    assert admission is not None
    settings = stream.ctx.budgets.settings
    bound_for = route.bounder(  # each target's own bound: its output cap, its charge limits
        request,
        default_max_output=settings.default_max_output_tokens,
        unseen_input=settings.unseen_input,
        long_context_beta="context-1m" in stream.anthropic_beta,
        providers=stream.ctx.config.providers,
    )
    targets = chain.targets(stream, bound_for, budgeted=admission.bound is not None)
    translation = stream.translation
    first = targets[0]
    state = hand_off(stream, request, entry, first.provider, None)
    state = dataclasses.replace(state, chain=targets).answered_by(first)
    synchronous = stream.ctx.config.metering.synchronous
    crosses = any(t.api.schema is not request.api.schema for t in targets)
    here = synchronous or response_on_this_stream(request) or crosses or translation is not None
    common = chain.forward(stream)
    if here:
        stream.observer = ResponseObserver(
            stream.ctx, dataclasses.replace(state, started_monotonic=stream.started)
        )
        # observe mode: the observer stays out of it (the route's metadata match)
        extra = {} if synchronous else {RESPONSE_METERED_KEY: RESPONSE_METERED_HERE}
        return msgs.request_body_reply(
            common, dynamic_metadata=dynamic_metadata(stream, state, extra)
        )
    stream.handed_off = True
    return msgs.request_body_reply(common, dynamic_metadata=dynamic_metadata(stream, state))


def hand_off(
    stream: RequestStream,
    request: ParsedRequest,
    entry: ModelEntry,
    upstream_provider: str,
    started_monotonic: float | None,
) -> RequestState:
    """The forwarded request's state, for whoever meters its response (`started_monotonic`
    only when that is this process)."""
    admission = stream.admission
    assert admission is not None and stream.identity is not None
    bound = admission.bound
    cap_injected = bound is not None and bound.inject_max_output is not None
    max_tokens = request.max_output_tokens
    if cap_injected and bound is not None:
        max_tokens = bound.inject_max_output
    translation = stream.translation
    if translation is not None:  # the limit the provider was sent
        max_tokens = route.translated_max_tokens(request, bound, entry)
    return RequestState(
        request_id=stream.request_id,
        arrived=stream.arrived,
        method=stream.method,
        path=stream.path,
        api=request.api if translation is None else translation.provider_api_for(request.stream),
        client_api=None if translation is None else request.api,
        wants_usage=request.wants_usage,
        requested_model=request.model,
        served_model=entry.name,
        price=entry.price,
        provider=upstream_provider,
        stream=request.stream,
        input_tokens_estimate=request.input_tokens_estimate,
        max_tokens=max_tokens,
        cap_injected=cap_injected,
        identity=stream.identity,
        metadata=stream.metadata,
        budget=admission.handoff(budget_report.audit_fields(admission)),
        traceparent=stream.trace_context[0],
        tracestate=stream.trace_context[1],
        audit_extra=stream.audit_extra(),
        cache=stream.cache_ticket.to_metadata() if stream.cache_ticket is not None else None,
        charge_limits=limits_for(request.api, request.body, request.shape, entry, bound),
        started_monotonic=started_monotonic,
    )


def translation_to(stream: RequestStream, entry: ModelEntry) -> Translation | None:
    """How this request reaches `entry`'s provider: None when it speaks the client's API,
    else the translation; BadRequest when the gateway has none for that pair."""
    request = stream.request
    if request is None or entry.schema is request.api.schema:
        return None
    translation = translation_for(request.api, entry.schema)
    if translation is None:
        raise BadRequest(
            f"model {request.model!r} is served through the {entry.schema.value} API, "
            f"not {stream.path.split('?', 1)[0]}"
        )
    return translation


def dynamic_metadata(
    stream: RequestStream, state: RequestState, extra: dict[str, str] | None = None
) -> struct_pb2.Struct:
    """Observe mode: the state for the observer stream, and the response headers Envoy adds
    from it (envoy/routes.py lists the names)."""
    text = state.encode()
    mac = stream.ctx.sidecar_auth.seal.sign(text)  # the observer trusts only what we signed
    fields = {STATE_KEY: text, MAC_KEY: mac, "x-gateway-request-id": stream.request_id}
    fields.update(stream.response_headers())
    fields.update(extra or {})
    return msgs.string_struct(NAMESPACE, fields)
