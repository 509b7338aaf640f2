"""One processor per ext_proc stream: it owns that request's state from headers to audit record.

`handle` is a coroutine. The request phases await I/O: a JWKS refresh when a token names an
unknown key, the budget reservation in Redis (under its deadline), and large bodies are parsed
in a worker thread. The response phases await nothing: metering and pricing are pure calls, so
nothing on the per-chunk path can block or fail on a network. The audit line is queued.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import secrets
import zlib

from gateway_extproc import extproc_msgs as msgs
from gateway_extproc.apis import API_PREFIX, MODELS_PATH, Schema, api_for_path
from gateway_extproc.audit import AuditRecord
from gateway_extproc.bodyparse import parse_off_loop
from gateway_extproc.bounds import Bound, Unbounded, Unpriced, bound, request_price
from gateway_extproc.budgets import report as budget_report
from gateway_extproc.budgets.gate import Admission
from gateway_extproc.cache.key import CONTROL_HEADER, STATUS_HEADER, TTL_HEADER, CacheTicket
from gateway_extproc.catalog import ModelEntry
from gateway_extproc.context import GatewayContext
from gateway_extproc.errors import (
    BadRequest,
    ClientError,
    CostUnbounded,
    Forbidden,
    InternalError,
    NotFound,
    UnknownModel,
    UnsupportedOption,
    error_body,
)
from gateway_extproc.identity.metadata import parse_metadata
from gateway_extproc.identity.model import Identity
from gateway_extproc.inbound import ParsedRequest, upstream_body
from gateway_extproc.metering import StreamMeter, estimate_tokens, usage_from_json
from gateway_extproc.model_mismatch import price_reported
from gateway_extproc.models_api import models_response
from gateway_extproc.observability.attributes import RequestFacts
from gateway_extproc.pricing import cost_micros, format_usd
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage, UsageSource
from gateway_extproc.upstreams import Upstream

log = logging.getLogger("gateway.processor")

CLUSTER_HEADER = "x-gateway-cluster"
# Client headers that carry credentials: never forwarded to a provider.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")


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
        self.path = ""
        self.schema = Schema.OPENAI
        self.request: ParsedRequest | None = None
        self.entry: ModelEntry | None = None
        self.upstream: Upstream | None = None
        self.forwarded = False
        self.status: int | None = None
        self.error_code: str | None = None
        self.first_byte: float | None = None
        self.meter: StreamMeter | None = None
        self.json_body = bytearray()
        self.decompressor: zlib._Decompress | None = None
        self.metering_broken = False
        self.completed = False
        self.finished = False
        self.identity: Identity | None = None
        self.metadata: dict[str, str] = {}
        self.admission: Admission | None = None
        self.lease_keeper: asyncio.Future[None] | None = None
        # W3C trace context the span continues: Envoy's (ext_proc gRPC metadata, when Envoy
        # traces; set by the server) or else the client's request headers.
        self.trace_context: tuple[str | None, str | None] = (None, None)
        self.response_meta: tuple[str | None, tuple[str, ...]] = (None, ())  # id, finish reasons
        # The response cache: the client's two headers, the request's decision (None: no cache
        # rule applies; small and serialisable for the response side), the cost a hit saved.
        self.cache_headers: tuple[str | None, str | None] = (None, None)
        self.cache_ticket: CacheTicket | None = None
        self.cost_saved: int | None = None

    # -- dispatch ---------------------------------------------------------------------------

    async def handle(self, message: msgs.ProcessingRequest) -> msgs.ProcessingResponse:
        """One ext_proc message in, its reply out. The request phases may await (a JWKS
        refresh, the budget reservation); the response phases never do."""
        phase = message.WhichOneof("request")
        if phase in ("response_headers", "response_body"):
            return self._on_response(message, phase)
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

    def _on_response(self, message: msgs.ProcessingRequest, phase: str) -> msgs.ProcessingResponse:
        # The response is already on its way: a metering fault must never break it.
        try:
            if phase == "response_headers":
                return self._on_response_headers(message.response_headers)
            return self._on_response_body(message.response_body)
        except Exception:
            log.exception("metering failed", extra={"request_id": self.request_id})
            self.metering_broken = True
            if phase == "response_headers":  # keep streams streaming even so
                content_type = msgs.headers_of(message.response_headers).get("content-type", "")
                return msgs.response_headers_reply(
                    msgs.common(), stream_body=content_type.startswith("text/event-stream")
                )
            return msgs.passthrough(message)

    def close(self) -> None:
        """The ext_proc stream ended. If the response did not finish (client disconnect,
        upstream abort, Envoy reset), meter what was seen now: spend is never lost."""
        if not self.finished:
            self._finish()

    # -- request side -----------------------------------------------------------------------

    def _note_request(self, headers: dict[str, str]) -> None:
        """Request id, method, path and the client's API family (for error formats)."""
        self.request_id = headers.get("x-request-id", "-")
        self.client_headers = tuple(headers)  # names; which reach the provider: forwarding.py
        self.anthropic_beta = headers.get("anthropic-beta", "")
        self.method = headers.get(":method", "")
        self.path = headers.get(":path", "")
        self.cache_headers = (headers.get(CONTROL_HEADER), headers.get(TTL_HEADER))
        if self.trace_context[0] is None:
            self.trace_context = (headers.get("traceparent"), headers.get("tracestate"))
        api = api_for_path(self.path)
        anthropic_client = "anthropic-version" in headers
        self.schema = (
            api.schema if api else (Schema.ANTHROPIC if anthropic_client else Schema.OPENAI)
        )

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

        if bare_path == MODELS_PATH or bare_path.startswith(MODELS_PATH + "/"):
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
        return msgs.request_headers_reply(msgs.common(remove=remove))

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
        self._finish()
        return msgs.immediate(200, body, self._json_headers(), "gateway_models")

    async def _on_request_body(self, message: msgs.HttpBody) -> msgs.ProcessingResponse:
        api = api_for_path(self.path)
        assert api is not None  # the headers phase rejected everything else
        # Capped and, for large bodies, off the event loop: no body stalls the other streams.
        request = await parse_off_loop(api, message.body, self.ctx.config.limits)
        self.request = request
        entry = self.ctx.catalog.lookup(request.model)
        if entry is None:
            raise UnknownModel(
                f"model {request.model!r} is not in the gateway's catalog; "
                f"GET {MODELS_PATH} lists the models you can use"
            )
        self.entry = entry
        if entry.schema is not api.schema:
            raise BadRequest(
                f"model {request.model!r} is served through the {entry.schema.value} API, "
                f"not {API_PREFIX}{api.value}"
            )
        assert self.identity is not None
        policies = self.ctx.config.policies
        if not policies.allows(self.identity, entry.name, request.model):
            raise Forbidden(
                f"{self.identity.subject} may not use model {request.model!r}: "
                f"{policies.explain(self.identity, entry.name, request.model)}"
            )
        if entry.provider not in self.ctx.upstreams:
            raise UnknownModel(f"model {request.model!r} has no configured provider")
        upstream = self.ctx.upstreams[entry.provider]  # a refused billing header: 400, unreserved
        upstream.forward.removals(self.client_headers, provider=upstream.provider)
        # The price of this request: its service tier, a long-context beta (400 if unpriced).
        long_context_beta = "context-1m" in self.anthropic_beta
        try:
            price = request_price(
                entry,
                request.shape.service_tier,
                long_context_beta=long_context_beta,
                unpriced=request.shape.unpriced,
            )
        except Unpriced as exc:
            raise UnsupportedOption(str(exc)) from None
        if price is not entry.price:
            self.entry = entry = dataclasses.replace(entry, price=price)
        cached = await self._cache_lookup(request, entry)  # a hit reserves nothing
        if cached is not None:
            return cached
        # Budgets: reserve the worst case everywhere it applies, or block / downgrade (429).
        identity = self.identity
        gate = self.ctx.budgets

        def bound_for(model: ModelEntry) -> Bound:
            try:
                return bound(
                    request.shape,
                    model,
                    default_max_output=gate.settings.default_max_output_tokens,
                    unseen_input=gate.settings.unseen_input,
                    long_context_beta=long_context_beta,
                )
            except Unbounded as exc:
                raise CostUnbounded(str(exc)) from None
            except Unpriced as exc:
                raise UnsupportedOption(str(exc)) from None

        self.admission = admission = await gate.admit(
            reservation_id=self.reservation_id,
            identity=identity,
            entry=entry,
            requested=request.model,
            bound_for=bound_for,
            allowed=lambda model: policies.allows(identity, model.name),
        )
        if admission.reserved:
            self.lease_keeper = asyncio.ensure_future(
                gate.keep_lease(self.reservation_id, self._cost_so_far)
            )
        served = request.model
        if admission.downgraded_from is not None:
            if self.cache_ticket is not None:  # another model's answer: not stored
                self.cache_ticket = CacheTicket(self.cache_ticket.status)
            self.entry = entry = admission.entry
            served = entry.name
            if admission.bound is not None and admission.bound.price is not None:
                self.entry = entry = dataclasses.replace(entry, price=admission.bound.price)
        cap = admission.bound
        output_cap = None
        if cap is not None and cap.cap_field and cap.inject_max_output is not None:
            output_cap = (cap.cap_field, cap.inject_max_output)
        upstream = self.ctx.upstreams[entry.provider]
        self.upstream = upstream
        set_headers = {CLUSTER_HEADER: upstream.cluster, ":path": upstream.upstream_path(self.path)}
        if upstream.auth_header and upstream.auth_value:
            set_headers[upstream.auth_header] = upstream.auth_value
        new_body = upstream_body(request, served_model=served, output_cap=output_cap)
        if new_body is not None:
            set_headers["content-length"] = str(len(new_body))
        remove = upstream.forward.removals(
            self.client_headers, provider=upstream.provider, keep=set_headers
        )
        self.forwarded = True
        return msgs.request_body_reply(
            msgs.common(
                set_headers=set_headers, remove=remove, body=new_body, clear_route_cache=True
            )
        )

    async def _cache_lookup(
        self, request: ParsedRequest, entry: ModelEntry
    ) -> msgs.ProcessingResponse | None:
        """Answer from the response cache (an immediate 200, no provider call, no reservation),
        or note the decision the response side needs to store the answer (`cache_ticket`)."""
        assert self.identity is not None
        lookup = await self.ctx.cache.lookup(
            request=request,
            entry=entry,
            identity=self.identity,
            headers=self.cache_headers,
            beta=self.anthropic_beta,
        )
        self.cache_ticket = lookup.ticket
        if lookup.hit is None:
            return None
        self.upstream = self.ctx.upstreams[entry.provider]  # for the audit: who was spared
        self.status = 200
        self.completed = True
        self.cost_saved = cost_micros(lookup.hit.usage, entry.price)
        self._finish()
        headers = {"content-type": lookup.hit.content_type, STATUS_HEADER: "hit"}
        headers |= {"x-gateway-request-id": self.request_id, "x-gateway-cost-usd": format_usd(0)}
        return msgs.immediate(200, lookup.hit.body, headers, "gateway_cache_hit")

    def _cap_injected(self) -> bool:
        bound = self.admission.bound if self.admission is not None else None
        return self.forwarded and bound is not None and bound.inject_max_output is not None

    def _cost_so_far(self) -> int:
        """The request's cost until now, for lease checkpoints of long responses."""
        if self.request is None or self.entry is None:
            return 0
        chars = self.meter.output_chars_so_far if self.meter is not None else 0
        usage = Usage(
            input_tokens=self.request.input_tokens_estimate, output_tokens=estimate_tokens(chars)
        )
        return cost_micros(usage, self.entry.price)

    # -- response side ----------------------------------------------------------------------

    def _on_response_headers(self, message: msgs.HttpHeaders) -> msgs.ProcessingResponse:
        headers = msgs.headers_of(message)
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        self.first_byte = self.ctx.monotonic()
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self.decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self.decompressor = zlib.decompressobj()
        elif encoding not in ("identity", ""):
            self.metering_broken = True  # e.g. br: counted from the estimate, and said so
            log.warning(
                "cannot meter %s-encoded body", encoding, extra={"request_id": self.request_id}
            )
        streaming = headers.get("content-type", "").startswith("text/event-stream")
        if streaming and self.request is not None:
            self.meter = StreamMeter(self.request.api)
        extra = budget_report.response_headers(self.admission)
        if self.cache_ticket is not None:
            extra = {**extra, **self.cache_ticket.response_headers()}
        reply = msgs.common(set_headers={"x-gateway-request-id": self.request_id, **extra})
        if message.end_of_stream:
            self.completed = True
            self._finish()
        return msgs.response_headers_reply(reply, stream_body=streaming)

    def _decoded(self, chunk: bytes, end: bool) -> bytes:
        if self.decompressor is None:
            return chunk
        data = self.decompressor.decompress(chunk)
        return data + self.decompressor.flush() if end else data

    def _on_response_body(self, message: msgs.HttpBody) -> msgs.ProcessingResponse:
        end = message.end_of_stream
        data = b"" if self.metering_broken else self._decoded(message.body, end)
        if self.meter is not None:
            self.meter.feed(data)
            self.ctx.cache.capture(self.cache_ticket, self.json_body, data)  # a miss to store
            if end:
                self.completed = True
                self._finish()
            return msgs.response_body_reply()
        self.json_body += data
        if not end:
            return msgs.response_body_reply()
        self.completed = True
        cost = self._finish()
        headers = {"x-gateway-cost-usd": format_usd(cost)}
        headers.update(budget_report.response_headers(self.admission, cost))
        return msgs.response_body_reply(msgs.common(set_headers=headers))

    # -- endings ----------------------------------------------------------------------------

    def _json_headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "x-gateway-request-id": self.request_id}

    def _reject(self, err: ClientError) -> msgs.ProcessingResponse:
        self.status = err.status
        self.error_code = err.code
        self.forwarded = False
        self._finish()
        headers = self._json_headers() | err.headers
        body = error_body(self.schema, err, self.request_id)
        return msgs.immediate(err.status, body, headers, f"gateway_{err.code}")

    def _metered_usage(self) -> tuple[Usage, UsageSource, str | None]:
        """What the request consumed, from the provider's report or, failing that, an estimate."""
        if not self.forwarded or self.request is None:
            return Usage(), UsageSource.NONE, None
        if self.status is not None and self.status >= 400:
            return Usage(), UsageSource.NONE, None  # providers do not bill failed requests
        usage: Usage | None = None
        provider_model: str | None = None
        output_chars = 0
        complete = self.completed and not self.metering_broken
        if self.meter is not None:
            result = self.meter.finish()
            usage, provider_model, output_chars = (
                result.usage,
                result.served_model,
                result.output_chars,
            )
            self.response_meta = (result.response_id, result.finish_reasons)
            # The stream's own terminal event makes its usage final, even when the client hung
            # up before the transport's end-of-stream reached Envoy.
            complete = result.completed and not self.metering_broken
            self.completed = self.completed or result.completed
        elif self.json_body and not self.metering_broken:
            jr = usage_from_json(self.request.api, bytes(self.json_body))
            usage, provider_model, output_chars = jr.usage, jr.served_model, jr.output_chars
            self.response_meta = (jr.response_id, jr.finish_reasons)
        if usage is not None and complete:
            return usage, UsageSource.PROVIDER, provider_model
        estimated_output = estimate_tokens(output_chars)
        if usage is not None:  # partial report (stream cut short): keep what the provider said
            return (
                usage.with_output_at_least(estimated_output),
                UsageSource.ESTIMATED,
                provider_model,
            )
        usage = Usage(
            input_tokens=self.request.input_tokens_estimate, output_tokens=estimated_output
        )
        return usage, UsageSource.ESTIMATED, provider_model

    def _priced(self, usage: Usage, provider_model: str | None) -> int:
        """The cost; by the dearer model when the provider reports another (model_mismatch)."""
        if self.entry is None:
            return 0
        cost, mismatch = price_reported(usage, self.entry, provider_model, self.ctx.catalog.lookup)
        if mismatch is not None:
            self.ctx.model_mismatches[mismatch.kind] += 1
            log.warning("%s", mismatch.describe(), extra={"request_id": self.request_id})
        return cost

    def _rollup(self, usage: Usage, source: UsageSource, cost: int) -> UsageRecord:
        """What this billed request adds to the spend reports (written by its settle)."""
        provider = self.upstream.provider if self.upstream else None
        model = self.entry.name if self.entry else None
        dims = Dimensions.of(self.identity, model, provider)
        return UsageRecord(self.arrived, dims, usage, cost, source is UsageSource.ESTIMATED)

    def _finish(self) -> int:
        """Write the audit record exactly once; return the request's cost in micro-dollars."""
        self.finished = True
        try:
            usage, source, provider_model = self._metered_usage()
            cost = self._priced(usage, provider_model)
        except Exception:  # the record must still be written: charge the request's estimate
            log.exception("metering failed at the end", extra={"request_id": self.request_id})
            estimate = self.request.input_tokens_estimate if self.request else 0
            usage, source, provider_model = (
                Usage(input_tokens=estimate),
                UsageSource.ESTIMATED,
                None,
            )
            cost = cost_micros(usage, self.entry.price) if self.entry is not None else 0
            self.error_code = self.error_code or "metering_failed"
        self.ctx.cache.store(
            self.cache_ticket,
            self.request.api if self.request else None,
            status=self.status,
            complete=source is UsageSource.PROVIDER,
            stream=self.meter is not None,
            body=self.json_body,
        )
        if self.lease_keeper is not None:
            self.lease_keeper.cancel()
        if self.admission is not None:  # settle the real cost, or release the hold
            billed = source is not UsageSource.NONE
            rollup = self._rollup(usage, source, cost) if billed else None
            self.ctx.budgets.finish(
                self.admission, cost if billed else None, self.request_id, rollup
            )
        now = self.ctx.monotonic()
        record = AuditRecord(
            request_id=self.request_id,
            time=datetime.datetime.fromtimestamp(self.arrived, datetime.UTC),
            method=self.method,
            path=self.path.split("?", 1)[0],
            api=self.request.api.name.lower() if self.request else None,
            requested_model=self.request.model if self.request else None,
            served_model=self.entry.name if self.entry else None,
            provider_model=provider_model,
            provider=self.upstream.provider if self.upstream else None,
            upstream_mocked=self.upstream.mocked if self.upstream else False,
            stream=self.request.stream if self.request else False,
            status=self.status if self.status is not None else 0,
            completed=self.completed,
            usage=usage,
            usage_source=source,
            cost_micros=cost,
            latency_ms=(now - self.started) * 1000,
            time_to_first_byte_ms=(
                None if self.first_byte is None else (self.first_byte - self.started) * 1000
            ),
            error_code=self.error_code,
            identity=self.identity,
            unverified_metadata=self.metadata,
            budget=budget_report.audit_fields(self.admission),
            output_cap_injected=self._cap_injected(),
            cache=self.cache_ticket.status if self.cache_ticket is not None else None,
            cost_saved_micros=self.cost_saved,
        )
        try:
            self.ctx.audit.write(record)
        except OSError:
            log.exception("audit write failed", extra={"request_id": self.request_id})
        if self.ctx.telemetry.enabled:
            self.ctx.telemetry.request_done(record, self._facts())
        return cost

    def _facts(self) -> RequestFacts:
        """What a span says beyond the audit record (observability/attributes.py)."""
        max_tokens = self.request.max_output_tokens if self.request else None
        if self._cap_injected() and self.admission is not None and self.admission.bound:
            max_tokens = self.admission.bound.inject_max_output
        result = self.admission.result if self.admission is not None else None
        up = self.upstream
        return RequestFacts(
            traceparent=self.trace_context[0],
            tracestate=self.trace_context[1],
            max_tokens=max_tokens,
            response_id=self.response_meta[0],
            finish_reasons=self.response_meta[1],
            server_address=up.host if up is not None else None,
            server_port=up.port if up is not None else None,
            budgets=tuple(
                (b.budget.name, b.scope_value, b.limit_micros, b.spent_micros, b.held_micros)
                for b in (result.budgets if result is not None else ())
            ),
        )
