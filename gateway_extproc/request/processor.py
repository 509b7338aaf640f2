"""One processor per synchronous ext_proc stream: a request's identity, policy, budget and route.

`handle` is a coroutine. The request phases await I/O: a JWKS refresh when a token names an
unknown key, the budget reservation in Redis (under its deadline), and large bodies are parsed
in a worker thread. Once the request is forwarded, its response belongs to a `ResponseObserver`
(observer.py) built from a `RequestState` (handoff.py). This processor keeps it and answers the
response phases itself for a non-streamed answer in either mode (Envoy buffers the body; the
JSON `x-gateway-cost-usd` header needs the whole body before the headers go out), and for an
event stream in `synchronous` mode. An event stream or embeddings answer in the default
`metering.mode: observe` is handed over: the state travels in Envoy dynamic metadata to an
observability-mode ext_proc stream that Envoy never waits for. Requests the gateway answers
itself (errors, /v1/models) are audited here.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import secrets
from typing import Any

from google.protobuf import struct_pb2

from gateway_extproc.apis import (
    MODELS_PATH,
    Api,
    Schema,
    api_for_path,
    looks_azure,
    looks_gemini,
)
from gateway_extproc.audit import AuditRecord, LimitReached
from gateway_extproc.budgets import report as budget_report
from gateway_extproc.budgets.admission import Admission
from gateway_extproc.budgets.gate import BoundFor
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.cache.key import CONTROL_HEADER, STATUS_HEADER, TTL_HEADER, CacheTicket
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import cost_micros, format_usd
from gateway_extproc.cost.endings import limits_for
from gateway_extproc.errors import (
    BadRequest,
    ClientError,
    Forbidden,
    InternalError,
    NotFound,
    UnknownModel,
)
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.guardrails import GuardResult
from gateway_extproc.handoff import MAC_KEY, NAMESPACE, STATE_KEY, RequestState
from gateway_extproc.identity.metadata import parse_metadata
from gateway_extproc.identity.model import Identity
from gateway_extproc.observability.attributes import RequestFacts
from gateway_extproc.providers.azure.paths import parse_inbound
from gateway_extproc.providers.gemini.paths import parse_path, without_credentials
from gateway_extproc.providers.inbound import ParsedRequest, with_body
from gateway_extproc.providers.registry import error_body
from gateway_extproc.request import prompt_checks, route
from gateway_extproc.request.bodyparse import parse_off_loop
from gateway_extproc.request.models_api import models_response
from gateway_extproc.response import reaped_audit
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.tokens import Usage, UsageSource
from gateway_extproc.translate.pairs import Translation, reaches, translation_for

log = logging.getLogger("gateway.processor")

# Observe mode: every response header the request phase may decide, copied by Envoy from
# dynamic metadata (envoy/bootstrap.py).
METADATA_RESPONSE_HEADERS = ("x-gateway-request-id", *budget_report.RESPONSE_HEADERS, STATUS_HEADER)
# Observe mode: the dynamic metadata that tells Envoy this stream meters the request's response,
# so the request is re-matched to the route that leaves the observer out (envoy/bootstrap.py).
RESPONSE_METERED_KEY = "response_metered_by"
RESPONSE_METERED_HERE = "request_stream"
_METERED_HERE_METADATA = struct_pb2.Struct()
_METERED_HERE_METADATA.update({NAMESPACE: {RESPONSE_METERED_KEY: RESPONSE_METERED_HERE}})
# The error code of a request whose stream ended before it was forwarded (nothing was sent).
CLIENT_LEFT = "client_disconnected_before_forward"
# Client headers that carry credentials: never forwarded to a provider.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


def response_on_this_stream(request: ParsedRequest) -> bool:
    """Observe mode: whether the request stream meters this request's response itself (its
    headers and its buffered body: four messages on one stream, and `x-gateway-cost-usd`), or
    the observer does. A non-streamed answer is buffered whole, once, by Envoy and the sidecar,
    which a chat answer (bounded by its output tokens) affords; an embeddings answer grows with
    its input (tens of MB for a large batch) and an event stream must not wait for the sidecar:
    both stay with the observer, which sees them chunk by chunk and keeps a bounded part."""
    return not request.stream and request.api is not Api.OPENAI_EMBEDDINGS


class StreamProcessor:
    def __init__(self, ctx: GatewayContext) -> None:
        self.ctx = ctx
        self.started = ctx.monotonic()
        self.arrived = ctx.wall_clock()
        self.request_id = "-"
        # The budget reservation's id: random, never from a client-influenced header (the
        # request id stays the correlation id in logs and headers).
        self.reservation_id = secrets.token_hex(16)
        self.client_headers: tuple[str, ...] = ()
        self.anthropic_beta = ""
        self.method = ""
        self.path = ""  # as the client sent it, less any credential in its query (Gemini `key=`)
        self.path_changed = False  # a credential was taken out of the query: Envoy's :path too
        # An `AzureOpenAI` client's deployment path: the gateway model it names
        self.azure_deployment: str | None = None
        self.schema = Schema.OPENAI
        self.request: ParsedRequest | None = None
        self.entry: ModelEntry | None = None
        # A model served through another API than the client's: how the request is translated
        # (translate/), and its body in the provider's API (model and output limit set later).
        self.translation: Translation | None = None
        self.translated: dict[str, Any] | None = None
        self.status: int | None = None
        self.error_code: str | None = None
        self.concluded = False
        self.identity: Identity | None = None
        self.metadata: dict[str, str] = {}
        self.admission: Admission | None = None
        # Synchronous mode: the forwarded request's response side, answered on this stream.
        # Observe mode: None; the state went to the observer stream in dynamic metadata.
        self.observer: ResponseObserver | None = None
        self.handed_off = False
        # A reservation may exist for this id once a budget check began (its script may have
        # run even if this stream was cancelled while waiting for its answer).
        self.reserving = False
        self.guard: GuardResult | None = None  # what the guardrails found and did
        self.rate_limited: RateLimited | None = None  # the 429 of a rate limit, for the audit
        self.limits_reached: list[LimitReached] = []  # bounds the request phase ran into
        # The response cache: the client's two headers, the request's decision (None: no cache
        # rule applies; small and serialisable for the response side), the cost a hit saved.
        self.cache_headers: tuple[str | None, str | None] = (None, None)
        self.cache_ticket: CacheTicket | None = None
        self.cache_cap: tuple[str, int] | None = None  # the output cap the cache key assumed
        self.cost_saved: int | None = None
        # W3C trace context the span continues: Envoy's (ext_proc gRPC metadata, when Envoy
        # traces; set by the server) or else the client's request headers.
        self.trace_context: tuple[str | None, str | None] = (None, None)

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, message: msgs.ProcessingRequest) -> msgs.ProcessingResponse:
        """One ext_proc message in, its reply out. The request phases may await (a JWKS
        refresh, the budget reservation); the response phases never do."""
        phase = message.WhichOneof("request")
        if phase in ("response_headers", "response_body"):
            if self.observer is None:  # the observer stream meters it (or nothing was forwarded)
                if phase == "response_headers":
                    return msgs.response_headers_without_body()
                return msgs.passthrough(message)
            return await self.observer.reply(message, self._response_headers)
        try:
            if phase == "request_headers":
                headers = msgs.headers_of(message.request_headers)
                self._note_request(headers)
                await self._identify(headers)
                return self._on_request_headers(headers, message.request_headers.end_of_stream)
            if phase == "request_body":
                return await self._on_request_body(message.request_body)
            return msgs.passthrough(message)  # trailers: not requested, answered if sent
        except ClientError as err:
            return self._reject(err)
        except Exception:
            log.exception("request processing failed", extra={"request_id": self.request_id})
            return self._reject(
                InternalError(f"internal gateway error (request id {self.request_id})")
            )

    def close(self) -> None:
        """The ext_proc stream ended. A forwarded request whose response this stream meters
        and which did not finish (client disconnect, upstream abort, Envoy reset) is metered
        from what was seen now: spend is never lost. A handed-over one is the observer
        stream's (or, if it never opens, the reaper's: response/reaped_audit.py). A stream that
        ended before its request was forwarded (the client left while a request phase
        awaited, e.g. its budget check) sent nothing to a provider: whatever it may have
        reserved is released, and its record says so."""
        if self.observer is not None:
            self.observer.close()
        elif not self.handed_off and not self.concluded:
            self.status = self.status or 499  # the client closed the request: no response
            self.error_code = self.error_code or CLIENT_LEFT
            self._conclude()

    # -- request side -----------------------------------------------------------------------

    def _note_request(self, headers: dict[str, str]) -> None:
        """Request id, method, path and the client's API family (for error formats)."""
        self.request_id = headers.get("x-request-id", "-")
        self.client_headers = tuple(headers)  # names; which reach the provider: forwarding.py
        self.anthropic_beta = headers.get("anthropic-beta", "")
        self.cache_headers = (headers.get(CONTROL_HEADER), headers.get(TTL_HEADER))
        self.method = headers.get(":method", "")
        path = headers.get(":path", "")
        gemini = looks_gemini(path)
        self.path = without_credentials(path) if gemini else path
        inbound = parse_inbound(path) if looks_azure(path) else None
        if inbound is not None:  # an AzureOpenAI client: served as the gateway's own path is
            self.path, self.azure_deployment = inbound.gateway_path, inbound.deployment
        self.path_changed = self.path != path
        if self.trace_context[0] is None:
            self.trace_context = (headers.get("traceparent"), headers.get("tracestate"))
        api = api_for_path(self.path)
        if api is not None:
            self.schema = api.schema
        elif gemini:
            self.schema = Schema.GEMINI
        elif "anthropic-version" in headers:
            self.schema = Schema.ANTHROPIC

    async def _identify(self, headers: dict[str, str]) -> None:
        """Who is calling: a verified token (cached after the first verify), a static service
        token, or anonymous when allowed. Raises Unauthenticated / BadRequest."""
        auth = self.ctx.authenticator
        identity = auth.cached(headers, self.ctx.wall_clock())
        self.identity = identity if identity is not None else await auth.authenticate(headers)
        header = self.ctx.config.identity.metadata_header
        self.metadata = parse_metadata(headers.get(header), header=header)

    def _on_request_headers(
        self, headers: dict[str, str], end_of_stream: bool
    ) -> msgs.ProcessingResponse:
        bare_path = self.path.split("?", 1)[0].rstrip("/")
        api = api_for_path(self.path)
        if self.identity is None:  # handle() identifies first; this is a programming error
            raise RuntimeError("request headers processed before identification")

        if api is not None and api.schema is Schema.GEMINI:
            parse_path(self.path)  # a bad model name or query: 400 before the body is read
        elif bare_path == MODELS_PATH or bare_path.startswith(MODELS_PATH + "/"):
            return self._models(bare_path)
        if api is None:
            raise NotFound(f"the gateway does not serve {self.method} {bare_path or '/'}")
        if self.method != "POST":
            raise NotFound(f"{bare_path} accepts POST only")
        if end_of_stream:
            raise BadRequest("request body is empty: expected a JSON object")
        remove = [h for h in headers if h.startswith("x-gateway-") or h in CREDENTIAL_HEADERS]
        # Providers must send identity-encoded bodies, or metering sees only gzip bytes.
        remove.append("accept-encoding")
        # A credential in the query (Gemini `?key=`) leaves the path before Envoy logs or
        # forwards it (the body phase sets the provider's path anyway).
        path = {":path": self.path} if self.path_changed else None
        common = msgs.common(set_headers=path, remove=remove)
        return msgs.request_headers_reply(common, forwarded=True)

    def _models(self, bare_path: str) -> msgs.ProcessingResponse:
        if self.method != "GET":
            raise NotFound(f"{bare_path} accepts GET only")
        identity, ctx = self.identity, self.ctx
        assert identity is not None

        def visible(entry: ModelEntry) -> bool:
            return entry.provider in ctx.upstreams and ctx.config.policies.allows(
                identity, entry.name
            )

        body = models_response(self.schema, bare_path, ctx.catalog, visible)
        self.status = 200
        self._conclude()
        return msgs.immediate(200, body, self._json_headers(), "gateway_models")

    async def _on_request_body(self, message: msgs.HttpBody) -> msgs.ProcessingResponse:
        api = api_for_path(self.path)
        assert api is not None  # the headers phase rejected everything else
        # Capped and, for large bodies, off the event loop: no body stalls the other streams.
        request = await parse_off_loop(api, message.body, self.ctx.config.limits, self.path)
        if self.azure_deployment is not None:  # Azure's path names the model, not the body:
            # forwarding writes it into the body (upstream_body), the cache keys by it
            request = dataclasses.replace(request, model=self.azure_deployment)
        self.request = request
        entry = self.ctx.catalog.lookup(request.model)
        if entry is None:
            raise UnknownModel(
                f"model {request.model!r} is not in the gateway's catalog; "
                f"GET {MODELS_PATH} lists the models you can use"
            )
        self.entry = entry
        self.translation = self._translation_to(entry)
        assert self.identity is not None
        policies = self.ctx.config.policies
        if not policies.allows(self.identity, entry.name, request.model):
            raise Forbidden(
                f"{self.identity.subject} may not use model {request.model!r}: "
                f"{policies.explain(self.identity, entry.name, request.model)}"
            )
        if entry.provider not in self.ctx.upstreams:  # a built-in provider left out without a key
            raise UnknownModel(
                f"model {request.model!r} has no configured provider: this gateway does not "
                f"serve {entry.provider}"
            )
        # Guardrails: PII and secrets in the prompt are blocked (400), redacted or monitored; a
        # large prompt is scanned off the event loop after its rate limits, and within a time.
        if self.ctx.config.guardrails.rules:
            try:
                self.guard = guard = await prompt_checks.scan(
                    self.ctx, self.identity, entry, request, size=len(message.body),
                    beta=self.anthropic_beta, request_id=self.request_id,
                )  # fmt: skip
            except RateLimited as refused:  # a large prompt's rate limits come first
                self.rate_limited = refused
                raise
            if guard is not None and guard.incomplete:
                self.limits_reached.append(LimitReached.GUARDRAIL_SCAN_TIMEOUT)
            refusal = prompt_checks.refusal(guard, self.ctx.config.limits)
            if refusal is not None:
                raise refusal
        redacted = self.guard.body if self.guard is not None else None
        if redacted is not None:  # bounded and sent as the provider will see it
            self.request = request = with_body(request, redacted)
        if self.translation is not None:  # refused (400) before anything is reserved
            self.translated = self.translation.request(request.body)
        else:  # a translated request bypasses the cache (docs/translation.md)
            cached = await self._cache_lookup(request, entry)  # a hit reserves nothing
            if cached is not None:
                return cached
        upstream = self.ctx.upstreams[entry.provider]  # a refused billing header: 400, unreserved
        upstream.forward.removals(self.client_headers, provider=upstream.provider)
        # The price of this request: its service tier, a long-context beta (400 if unpriced).
        long_context_beta = self._long_context_beta
        providers = self.ctx.config.providers  # their default service tiers
        self.entry = entry = route.priced(
            entry, request, long_context_beta=long_context_beta, providers=providers
        )
        # Budgets: reserve the worst case everywhere it applies, or block / downgrade (429).
        identity = self.identity
        gate = self.ctx.budgets
        facts = reaped_audit.facts_for(
            request_id=self.request_id,
            arrived=self.arrived,
            method=self.method,
            path=self.path,
            api=request.api.name.lower(),
            stream=request.stream,
            requested=entry,
            requested_model=request.model,
            identity=identity,
            metadata=self.metadata,
            provider_of=gate.provider_of,
            trace=self.trace_context,
        )
        self.reserving = True
        try:
            self.admission = admission = await gate.admit(
                reservation_id=self.reservation_id,
                identity=identity,
                entry=entry,
                requested=request.model,
                bound_for=self._bounder(request),
                allowed=lambda model: (
                    model.provider in self.ctx.upstreams
                    and policies.allows(identity, model.name)
                    and reaches(request.api, model.schema)
                ),
                facts_for=facts,
            )
        except RateLimited as refused:
            self.rate_limited = refused
            raise
        served = request.model
        if admission.downgraded_from is not None:
            self.entry = entry = admission.entry
            served = entry.name
            if admission.bound is not None and admission.bound.price is not None:
                self.entry = entry = dataclasses.replace(entry, price=admission.bound.price)
            if self.cache_ticket is not None:  # another model's answer: not stored
                self.cache_ticket = CacheTicket(self.cache_ticket.status)
        if self.cache_ticket is not None and route.output_cap(admission.bound) != self.cache_cap:
            self.cache_ticket = CacheTicket(self.cache_ticket.status)  # keyed for another body
        upstream = self.ctx.upstreams[entry.provider]
        if upstream.token is not None:  # Entra ID: cached; waits only when none is valid (503)
            await upstream.token.ensure()
        if upstream.vertex is not None or upstream.signer is not None:
            served = entry.name  # a Vertex or Bedrock entry's name is the provider's model id
        requested_translation = self.translation
        translation = self.translation = self._translation_to(entry)  # a downgrade may cross
        if translation is not requested_translation:  # translated for another API, or none
            self.translated = None
        if translation is None:
            if upstream.signer is not None:  # Converse: temporary credentials refreshed
                await upstream.signer.fresh()
            common = route.forward(
                upstream,
                request,
                admission,
                served_model=served,
                path=self.path,
                client_headers=self.client_headers,
                redacted=redacted,
            )
        else:
            if self.translated is None:  # downgraded onto a provider of another API
                self.translated = translation.request(request.body)
            if upstream.signer is not None:  # temporary credentials refreshed off the loop
                await upstream.signer.fresh()
            common = route.forward_translated(
                upstream,
                translation,
                self.translated,
                served_model=served,
                stream=request.stream,
                max_tokens=route.translated_max_tokens(request, admission.bound, entry),
                client_headers=self.client_headers,
                beta=self.anthropic_beta,
            )
        synchronous = self.ctx.config.metering.synchronous
        # A translated answer is rewritten, which only this stream can do (observe mode's
        # observer never answers): its response comes here, streamed or not.
        here = synchronous or response_on_this_stream(request) or translation is not None
        state = self._hand_off(request, entry, upstream.provider, self.started if here else None)
        if here:
            self.observer = ResponseObserver(self.ctx, state)
            if synchronous:
                return msgs.request_body_reply(common)
            # observe mode, a JSON answer: the observer stays out of it
            return msgs.request_body_reply(common, dynamic_metadata=_METERED_HERE_METADATA)
        self.handed_off = True
        return msgs.request_body_reply(common, dynamic_metadata=self._dynamic_metadata(state))

    def _hand_off(
        self,
        request: ParsedRequest,
        entry: ModelEntry,
        upstream_provider: str,
        started_monotonic: float | None,
    ) -> RequestState:
        """The forwarded request's state, for whoever meters its response (`started_monotonic`
        only when that is this process)."""
        admission = self.admission
        assert admission is not None and self.identity is not None
        bound = admission.bound
        cap_injected = bound is not None and bound.inject_max_output is not None
        max_tokens = request.max_output_tokens
        if cap_injected and bound is not None:
            max_tokens = bound.inject_max_output
        translation = self.translation
        if translation is not None:  # the limit the provider was sent
            max_tokens = route.translated_max_tokens(request, bound, entry)
        return RequestState(
            request_id=self.request_id,
            arrived=self.arrived,
            method=self.method,
            path=self.path,
            api=request.api
            if translation is None
            else translation.provider_api_for(request.stream),
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
            identity=self.identity,
            metadata=self.metadata,
            budget=admission.handoff(budget_report.audit_fields(admission)),
            traceparent=self.trace_context[0],
            tracestate=self.trace_context[1],
            audit_extra=self._audit_extra(),
            cache=self.cache_ticket.to_metadata() if self.cache_ticket is not None else None,
            charge_limits=limits_for(request.api, request.body, request.shape, entry, bound),
            started_monotonic=started_monotonic,
        )

    def _audit_extra(self) -> dict[str, Any]:
        """Audit fields the request phase decided beyond the budget's."""
        extra: dict[str, Any] = {
            "guardrails": self.guard.audit_fields() if self.guard is not None else None,
            "rate_limits": budget_report.rate_limit_fields(self.admission, self.rate_limited),
            "cache": self.cache_ticket.status if self.cache_ticket is not None else None,
            "cost_saved_micros": self.cost_saved,
        }
        if self.limits_reached:
            extra["limits_reached"] = list(self.limits_reached)
        return extra

    def _response_headers(self, cost_micros: int | None = None) -> dict[str, str]:
        """Response headers the request phase decided: budgets, rate limits, the cache status
        (METADATA_RESPONSE_HEADERS names every one)."""
        headers = budget_report.response_headers(self.admission, cost_micros)
        if self.cache_ticket is not None:
            headers.update(self.cache_ticket.response_headers())
        return headers

    async def _cache_lookup(
        self, request: ParsedRequest, entry: ModelEntry
    ) -> msgs.ProcessingResponse | None:
        """Answer from the response cache (an immediate 200, no provider call, no reservation),
        or note the decision the response side needs to store the answer (`cache_ticket`)."""
        identity = self.identity
        assert identity is not None

        def output_cap() -> tuple[str, int] | None:  # asked only when a key is computed
            gate, bound_for = self.ctx.budgets, self._bounder(request)
            self.cache_cap = route.cap_if_admitted(gate, identity, request, entry, bound_for)
            return self.cache_cap

        lookup = await self.ctx.cache.lookup(
            request=request,
            entry=entry,
            identity=identity,
            headers=self.cache_headers,
            beta=self.anthropic_beta,
            output_cap=output_cap,
        )
        self.cache_ticket = lookup.ticket
        if lookup.hit is None:
            return None
        self.reserving = True
        try:  # rate limits set to count hits count this one (the 429 wins over the hit)
            self.admission = await self.ctx.budgets.admit_cache_hit(
                reservation_id=self.reservation_id,
                identity=identity,
                entry=entry,
                requested=request.model,
            )
        except RateLimited as refused:
            self.rate_limited = refused
            self.cache_ticket = None  # not answered from the cache
            raise
        self.status = 200
        self.cost_saved = cost_micros(lookup.hit.usage, entry.price)
        self._conclude()
        headers = {"content-type": lookup.hit.content_type} | self._response_headers()
        headers |= {"x-gateway-request-id": self.request_id, "x-gateway-cost-usd": format_usd(0)}
        return msgs.immediate(200, lookup.hit.body, headers, "gateway_cache_hit")

    def _translation_to(self, entry: ModelEntry) -> Translation | None:
        """How this request reaches `entry`'s provider: None when it speaks the client's API,
        else the translation; BadRequest when the gateway has none for that pair."""
        request = self.request
        if request is None or entry.schema is request.api.schema:
            return None
        translation = translation_for(request.api, entry.schema)
        if translation is None:
            raise BadRequest(
                f"model {request.model!r} is served through the {entry.schema.value} API, "
                f"not {self.path.split('?', 1)[0]}"
            )
        return translation

    @property
    def _long_context_beta(self) -> bool:
        return "context-1m" in self.anthropic_beta

    def _bounder(self, request: ParsedRequest) -> BoundFor:
        """The request's worst case on a model, as the budget gate asks for it."""
        settings = self.ctx.budgets.settings
        return route.bounder(
            request,
            default_max_output=settings.default_max_output_tokens,
            unseen_input=settings.unseen_input,
            long_context_beta=self._long_context_beta,
            providers=self.ctx.config.providers,
        )

    def _dynamic_metadata(self, state: RequestState) -> struct_pb2.Struct:
        """Observe mode: the state for the observer stream, and the response headers Envoy adds
        from it (envoy/bootstrap.py lists the names)."""
        text = state.encode()
        mac = self.ctx.sidecar_auth.seal.sign(text)  # the observer trusts only what we signed
        fields = {STATE_KEY: text, MAC_KEY: mac, "x-gateway-request-id": self.request_id}
        fields.update(self._response_headers())
        return msgs.string_struct(NAMESPACE, fields)

    # -- endings ----------------------------------------------------------------------------

    def _json_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "x-gateway-request-id": self.request_id}

    def _reject(self, err: ClientError) -> msgs.ProcessingResponse:
        self.status = err.status
        self.error_code = err.code
        self._conclude()
        headers = self._json_headers() | err.headers
        body = error_body(self.schema, err, self.request_id)
        return msgs.immediate(err.status, body, headers, f"gateway_{err.code}")

    def _conclude(self) -> None:
        """Audit a request the gateway answered itself (an error, /v1/models); a reservation
        taken before a late failure is released."""
        self.concluded = True
        hit = self.cost_saved is not None  # answered from the response cache
        if self.admission is not None:
            self.ctx.budgets.settle_or_release(self.admission, None, self.request_id)
        elif self.reserving and self.status == 499:  # left during the check: release the id
            # in the background (idempotent; with no reservation yet, a tombstone makes a
            # reserve still on the wire hold nothing).
            self.ctx.budgets.services.settle(self.reservation_id, None)
        record = AuditRecord(
            request_id=self.request_id,
            time=datetime.datetime.fromtimestamp(self.arrived, datetime.UTC),
            method=self.method,
            path=self.path.split("?", 1)[0],
            api=self.request.api.name.lower() if self.request else None,
            requested_model=self.request.model if self.request else None,
            served_model=self.entry.name if self.entry else None,
            provider_model=None,
            provider=self.entry.provider if hit and self.entry else None,
            upstream_mocked=False,
            stream=self.request.stream if self.request else False,
            status=self.status if self.status is not None else 0,
            completed=hit,
            usage=Usage(),
            usage_source=UsageSource.NONE,
            cost_micros=0,
            latency_ms=(self.ctx.monotonic() - self.started) * 1000,
            time_to_first_byte_ms=None,
            error_code=self.error_code,
            identity=self.identity,
            unverified_metadata=self.metadata,
            budget=budget_report.audit_fields(self.admission),
            output_cap_injected=False,
            provider_api=None
            if self.translation is None
            else self.translation.provider_api_for(
                self.request is not None and self.request.stream
            ).name.lower(),
            **self._audit_extra(),
        )
        try:
            self.ctx.audit.write(record)
        except OSError:
            log.exception("audit write failed", extra={"request_id": self.request_id})
        if self.ctx.telemetry.enabled:
            parent, state = self.trace_context
            self.ctx.telemetry.request_done(record, RequestFacts(parent, state))
