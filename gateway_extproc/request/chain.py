"""A chained request (docs/fallback.md): which targets of its model's chain the caller may reach,
the reservation that covers the dearest of them, and the request phase's reply that sends it to
the chain's cluster (Envoy's retries walk the targets; the per-attempt filter, attempt.py,
rewrites each attempt for its target).

Policy is applied where the chain is chosen (an attempt cannot skip its target: Envoy's local
reply from the per-attempt filter is final): a target the caller's model policy forbids (or its
API cannot reach, or that is not priced for this request) is left out, and the request goes to
the cluster variant without it (config/fallback.py `with_variants`). Where no variant holds that
list, the chain is cut before the first target left out; either way Envoy is told to stop after
the last admitted target (`x-envoy-max-retries`, counting every key of a pooled target: the
tries are targets x keys). A chain of one target is no chain - the request takes the provider's
own route - unless that target's provider has a key pool (its other keys are the retries).
After a reload only the clusters Envoy was started with are used (FallbackConfig.pinned): a new
variant's request is cut at the longest prefix Envoy holds, a new chain's goes unchained, and
the keys counted are those of Envoy's endpoints (a reload that resized a pool changes neither).

Cooling targets: a one-key provider's target that answered 429 with `retry-after` is cooling
(budgets/keycool.py, written by attempt.py). The request phase reads the chain's cooldowns (one
MGET, chained requests only; Redis down: none) and, when the head and any targets right after it
are cooling, sends the request to the suffix variant without them (`with_variants`): the skipped
targets stay in the request's chain (reservation, state; the audit's `skipped` names them). A
cooling target after the head is left to fall over (a 429 then the next target); a cooling head
without a suffix cluster (pinned to an older Envoy) is tried as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection

from gateway_extproc.budgets.gate import BoundFor
from gateway_extproc.budgets.keycool import KeyCooldowns, one_key
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import worst_case_micros
from gateway_extproc.config.fallback import Target
from gateway_extproc.cost.bounds import Bound
from gateway_extproc.cost.endings import limits_for
from gateway_extproc.errors import ClientError
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import ChainTarget
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.request import route
from gateway_extproc.request.stream import RequestStream
from gateway_extproc.translate.pairs import reaches, translation_for

# Envoy's per-request override of the route's `num_retries` (the router reads it; the edge strips
# every client-sent x-envoy-* header: envoy/edge.py `use_remote_address`).
MAX_RETRIES_HEADER = "x-envoy-max-retries"


def admitted(
    stream: RequestStream,
    request: ParsedRequest,
    head: ModelEntry,
    price: Callable[[ModelEntry], ModelEntry],
) -> tuple[tuple[Target, ModelEntry], ...]:
    """The targets of the requested model's chain the caller may use (at most `max_attempts`),
    each priced for this request (`price`: route.priced), as far as a generated cluster holds
    them in that order (cluster_for); () when that leaves one target of a provider without a
    key pool."""
    ctx = stream.ctx
    fallback = ctx.config.fallback
    chain = fallback.chain_for(head.name)
    if chain is None or stream.identity is None or stream.guard is not None:
        return ()  # a redacted body is not what Envoy's retry buffer replays: no chain
    if not all(t.provider in ctx.upstreams for t in chain):  # no cluster was generated
        return ()
    out: list[tuple[Target, ModelEntry]] = [(chain[0], head)]
    for target in chain[1:]:
        if len(out) == fallback.max_attempts:
            break
        entry = ctx.catalog.lookup(target.model)
        if (
            entry is None
            or not ctx.config.policies.allows(stream.identity, entry.name)
            or not reaches(request.api, entry.schema)
        ):
            continue
        try:
            out.append((target, price(entry)))
        except ClientError:  # an option this target has no price for
            continue
    cluster, reached = fallback.chosen(head.name, [t for t, _ in out])
    # One target is a chain when its level in Envoy's cluster holds a key pool: the other keys
    # are its retries.
    pooled = reached == 1 and cluster is not None and cluster.keys[0] > 1
    return tuple(out[:reached]) if reached > 1 or pooled else ()


async def cooling(stream: RequestStream, head: ModelEntry) -> frozenset[str]:
    """The targets of `head`'s chain cooling on their one-key provider for their model (one
    MGET); nothing without a chain of two or more, or without Redis."""
    ctx = stream.ctx
    chain = ctx.config.fallback.chain_for(head.name)
    store = ctx.budgets.store
    if chain is None or len(chain) < 2 or store is None:
        return frozenset()
    keys: dict[str, tuple[str, str, str]] = {}
    for target in chain:
        upstream = ctx.upstreams.get(target.provider)
        name = None if upstream is None else one_key([n for n, _, _ in upstream.keys])
        if name is not None:
            keys[target.name] = (target.provider, target.model, name)
    cool = await KeyCooldowns(store.client, store.key_base).cooling_of(list(keys.values()))
    return frozenset(t for t, triple in keys.items() if triple in cool)


def skipped_head(stream: RequestStream, head: ModelEntry, cooling: Collection[str]) -> int:
    """How many targets at the start of the admitted chain (`stream.chain`) to skip: the
    cooling ones before the first that is not, when a cluster holds all the rest in order
    (a suffix variant); else 0 (the head is tried, and falls over)."""
    chain = stream.chain
    skip = 0
    while skip < len(chain) - 1 and chain[skip][0].name in cooling:
        skip += 1
    if skip == 0:
        return 0
    rest = [t for t, _ in chain[skip:]]
    cluster, reached = stream.ctx.config.fallback.chosen(head.name, rest)
    return skip if cluster is not None and reached == len(rest) else 0


def dearest(bound_for: BoundFor, chain: tuple[tuple[Target, ModelEntry], ...]) -> BoundFor:
    """`bound_for`, except that the chain's head is bounded by its dearest target: the
    reservation covers whichever target answers. Another model (a downgrade) as before."""
    head = chain[0][1]

    def bound(model: ModelEntry) -> Bound:
        if model.name != head.name:
            return bound_for(model)
        worst: tuple[int, Bound] | None = None
        for _, entry in chain:
            b = bound_for(entry)
            price = b.reserve_price or b.price or entry.price
            cost = worst_case_micros(b.input_tokens, b.output_tokens, price)
            if worst is None or cost > worst[0]:
                worst = (cost, dataclasses.replace(b, reserve_price=price))
        assert worst is not None
        return worst[1]

    return bound


def targets(stream: RequestStream, bound_for: BoundFor, budgeted: bool) -> tuple[ChainTarget, ...]:
    """What the per-attempt filter and the response side need of each admitted target."""
    request = stream.request
    assert request is not None
    out = []
    for target, entry in stream.chain:
        bound = bound_for(entry) if budgeted else None
        translation = translation_for(request.api, entry.schema)
        cap = route.output_cap(bound) if translation is None else None
        if translation is None:
            max_tokens = request.max_output_tokens if cap is None else cap[1]
            api = request.api
        else:
            max_tokens = route.translated_max_tokens(request, bound, entry)
            api = translation.provider_api_for(request.stream)
        out.append(
            ChainTarget(
                target=target.name,
                provider=entry.provider,
                model=entry.name,
                api=api,
                price=entry.price,
                max_tokens=max_tokens,
                cap=cap,
                charge_limits=limits_for(request.api, request.body, request.shape, entry, bound),
            )
        )
    return tuple(out)


def forward(stream: RequestStream) -> msgs.CommonResponse:
    """The request phase's reply for a chained request: the chain's cluster, and Envoy's retries
    stopped at the last admitted target. The body goes as the client sent it: each attempt's
    filter rewrites it for its target (Envoy replays the original from its retry buffer)."""
    head = stream.chain[0][1]
    fallback = stream.ctx.config.fallback
    admitted = [t for t, _ in stream.chain[stream.chain_skip :]]  # a cooling head skipped
    cluster, reached = fallback.chosen(head.name, admitted)
    assert cluster is not None and reached == len(admitted)  # admitted() kept what one holds
    set_headers = {route.CLUSTER_HEADER: cluster.name}
    if reached < len(cluster.targets):  # fewer than the route tries: every key of each target
        set_headers[MAX_RETRIES_HEADER] = str(cluster.tries(reached) - 1)
    return msgs.common(set_headers=set_headers, clear_route_cache=True)
