"""Where an admitted request goes and at what price: the request's price (its service tier, a
long-context beta), the worst-case bound its reservation holds, and the request phase's reply
that sends it to the served model's provider (cluster, path, credential, the body with the
served model and the output cap, the client headers the provider must not see).

Pure given the catalog entry, the admission and the provider's `Upstream`; admission.py and
forward.py call these in order on each forwarded request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from gateway_extproc.apis import Schema
from gateway_extproc.budgets.gate import BoundFor, BudgetGate
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.config.providers import ProviderConfig
from gateway_extproc.config.upstreams import Upstream
from gateway_extproc.cost.bounds import (
    Bound,
    Unbounded,
    Unpriced,
    UnseenInput,
    bound,
    request_price,
)
from gateway_extproc.errors import CostUnbounded, UnsupportedOption
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.identity.model import Identity
from gateway_extproc.providers.bedrock.converse import converse_path
from gateway_extproc.providers.gemini.paths import parse_path
from gateway_extproc.providers.inbound import ParsedRequest, upstream_body
from gateway_extproc.providers.vertex import paths as vertex_paths
from gateway_extproc.translate.pairs import Translation

CLUSTER_HEADER = "x-gateway-cluster"


def default_tier(providers: Mapping[str, ProviderConfig], entry: ModelEntry) -> str | None:
    """The service tier `entry`'s provider serves a request that names none."""
    provider = providers.get(entry.provider)
    return None if provider is None else provider.default_service_tier


def priced(
    entry: ModelEntry,
    request: ParsedRequest,
    *,
    long_context_beta: bool,
    providers: Mapping[str, ProviderConfig] | None = None,
) -> ModelEntry:
    """The catalog entry at this request's price (its service tier - else its provider's default
    - the long-context tier, the cache retention it asks for). Raises UnsupportedOption (400) for
    an option the catalog has no price for."""
    try:
        price = request_price(
            entry,
            request.shape.service_tier,
            default_tier=default_tier(providers or {}, entry),
            long_context_beta=long_context_beta,
            unpriced=request.shape.unpriced,
            retention=request.shape.retention,
        )
    except Unpriced as exc:
        raise UnsupportedOption(str(exc)) from None
    return entry if price is entry.price else dataclasses.replace(entry, price=price)


def bounder(
    request: ParsedRequest,
    *,
    default_max_output: int,
    unseen_input: UnseenInput,
    long_context_beta: bool,
    providers: Mapping[str, ProviderConfig] | None = None,
) -> BoundFor:
    """The worst-case bound of this request on a model (the gate asks again for a downgrade
    target). Raises CostUnbounded or UnsupportedOption (400)."""

    def bound_for(model: ModelEntry) -> Bound:
        try:
            return bound(
                request.shape,
                model,
                default_max_output=default_max_output,
                unseen_input=unseen_input,
                long_context_beta=long_context_beta,
                default_tier=default_tier(providers or {}, model),
            )
        except Unbounded as exc:
            raise CostUnbounded(str(exc)) from None
        except Unpriced as exc:
            raise UnsupportedOption(str(exc)) from None

    return bound_for


def output_cap(bound: Bound | None) -> tuple[str, int] | None:
    """The `(field, tokens)` the gateway writes into the forwarded body (a budgeted request that
    sets no output limit), or None."""
    if bound is None or not bound.cap_field or bound.inject_max_output is None:
        return None
    return bound.cap_field, bound.inject_max_output


def cap_if_admitted(
    gate: BudgetGate,
    identity: Identity,
    request: ParsedRequest,
    entry: ModelEntry,
    bound_for: BoundFor,
) -> tuple[str, int] | None:
    """The output cap `forward` will write into this request's body once the gate admits it
    on `entry` (not downgraded): the response cache keys an answer by the body the provider
    answers, and it is known before the reservation is."""
    if request.shape.max_output is not None or request.shape.cap_field is None:
        return None  # the client's own limit is in its body, or the API takes none
    bound = gate.bound_if_admitted(
        identity=identity, entry=entry, requested=request.model, bound_for=bound_for
    )
    return output_cap(bound)


def _routing(upstream: Upstream, cluster: str | None) -> dict[str, str]:
    """The request phase routes by CLUSTER_HEADER (`cluster`: the provider's or a chain's, and
    Envoy re-matches the route); a chain's per-attempt filter (`cluster` None), already routed,
    names the attempt's host instead (its endpoint is the target provider's)."""
    if cluster is None:
        return {":authority": upstream.host_header}
    return {CLUSTER_HEADER: cluster}


def forward(
    upstream: Upstream,
    request: ParsedRequest,
    cap: tuple[str, int] | None,
    *,
    served_model: str,
    path: str,
    client_headers: tuple[str, ...],
    redacted: dict[str, Any] | None,
    cluster: str | None,
) -> pb.CommonResponse:
    """The CommonResponse that sends a request to `upstream` in its own API (`cap`: the output
    cap to write, `output_cap`): the request phase's (`cluster`: its routing header) or a chain
    attempt's (`cluster` None). The body is rewritten only when the served model, the injected
    output cap or a redaction changes it."""
    if upstream.vertex is not None:  # the model and the method in Vertex's path
        path = _vertex_path(upstream, request.api.schema, served_model, stream=request.stream)
    elif request.api.schema is Schema.GEMINI:  # the served model is in the path; never `key=`
        path = parse_path(path).upstream(served_model)
    elif request.api.schema is Schema.BEDROCK:  # Converse: the served model's id in the path
        path = converse_path(served_model, request.stream)
    upstream_path = upstream.api_path(path, request.api, served_model)
    set_headers = {**_routing(upstream, cluster), ":path": upstream_path}
    credential = upstream.credential()
    if credential is not None:
        set_headers[credential[0]] = credential[1]
    new_body = upstream_body(
        request,
        served_model=upstream.model_name(served_model),  # an Azure deployment: the body's model
        output_cap=cap,
        redacted=redacted,
    )
    if upstream.vertex is not None and request.api.schema is Schema.ANTHROPIC:
        # rawPredict: the model is in the path, Vertex's API version in the body.
        body = request.body if new_body is None else orjson.loads(new_body)
        new_body = vertex_paths.anthropic_body(body)
    signer = upstream.signer
    if signer is not None and new_body is None:  # signed over the bytes sent: send ours
        new_body = orjson.dumps(request.body if redacted is None else redacted)
    if new_body is not None:
        set_headers["content-length"] = str(len(new_body))
    remove = upstream.forward.removals(client_headers, provider=upstream.provider, keep=set_headers)
    if signer is not None:  # Bedrock: SigV4 last, over the final path, host and body
        scheme = "https" if upstream.tls else "http"
        assert new_body is not None
        host = upstream.host_header
        set_headers.update(signer.sign(host=host, path=upstream_path, body=new_body, scheme=scheme))
    return msgs.common(
        set_headers=set_headers, remove=remove, body=new_body, clear_route_cache=cluster is not None
    )


def _vertex_path(upstream: Upstream, schema: Schema, model: str, *, stream: bool) -> str:
    assert upstream.vertex is not None and upstream.project is not None
    return vertex_paths.vertex_path(
        project=upstream.project,
        location=upstream.vertex.location,
        schema=schema,
        model=upstream.vertex.model_id(model),
        stream=stream,
    )


def translated_max_tokens(request: ParsedRequest, bound: Bound | None, entry: ModelEntry) -> int:
    """The output limit a translated request carries to a provider that requires one
    (Anthropic's `max_tokens`): the client's, else the budget's injected cap, else the model's
    default cap, else its maximum output (what the worst-case bound assumed)."""
    if request.max_output_tokens is not None:
        return request.max_output_tokens
    cap = output_cap(bound)
    if cap is not None:
        return cap[1]
    return entry.default_max_output_tokens or entry.max_output_tokens


def forward_translated(
    upstream: Upstream,
    translation: Translation,
    translated: dict[str, Any],
    *,
    served_model: str,
    stream: bool,
    max_tokens: int,
    client_headers: tuple[str, ...],
    beta: str = "",
    cluster: str | None,
) -> pb.CommonResponse:
    """`forward` for a request translated to the provider's API (translate/): the provider
    API's path (Gemini's names the served model and the method, Bedrock's the served model's
    id; Vertex has its own, with the Anthropic API version in the body) and version header, and
    always a new body. `beta`: the client's `anthropic-beta` (Bedrock takes it in the body).
    A signed upstream (Bedrock) is signed last, over the final path, host and body (the host
    Envoy sends: its cluster endpoint's hostname, by the route's `auto_host_rewrite`); the
    moved `anthropic-beta` header is not sent. `cluster`: as in `forward`."""
    path = translation.provider_path(served_model, stream)
    body = translation.upstream_body(
        translated, model=served_model, max_tokens=max_tokens, beta=beta
    )
    headers = dict(translation.headers)
    if upstream.vertex is not None:  # Vertex: its path, the API version in the body
        schema = translation.provider_api.schema
        path = _vertex_path(upstream, schema, served_model, stream=stream)
        if schema is Schema.ANTHROPIC:
            body = vertex_paths.anthropic_body(orjson.loads(body))
            headers.pop("anthropic-version", None)
    path = upstream.upstream_path(path)
    set_headers = {**_routing(upstream, cluster), ":path": path}
    set_headers.update(headers)
    credential = upstream.credential()
    if credential is not None:
        set_headers[credential[0]] = credential[1]
    set_headers["content-length"] = str(len(body))
    remove = upstream.forward.removals(client_headers, provider=upstream.provider, keep=set_headers)
    signer = upstream.signer
    if signer is not None:
        host = upstream.host_header  # Envoy sends it: the route's auto_host_rewrite
        scheme = "https" if upstream.tls else "http"
        set_headers.update(signer.sign(host=host, path=path, body=body, scheme=scheme))
        if "anthropic-beta" in client_headers and "anthropic-beta" not in remove:
            remove.append("anthropic-beta")  # in the body now
    return msgs.common(
        set_headers=set_headers, remove=remove, body=body, clear_route_cache=cluster is not None
    )
