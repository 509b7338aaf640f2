"""The state of one request stream, and how a request the gateway answers itself ends.

`RequestStream` holds what the request phase learns about its request (identity, model, the
translation, the budget admission, guardrails, the cache's decision) and what it decided. The
processor (processor.py) adds the phase dispatch; the body phase's admission steps
(admission.py) and its forwarding (forward.py) read and set this state. `conclude` audits a
request the gateway answered itself (an error, /v1/models, a cache hit).
"""

from __future__ import annotations

import datetime
import logging
import secrets
from typing import Any

from gateway_extproc.apis import Schema
from gateway_extproc.audit import AuditRecord, LimitReached
from gateway_extproc.budgets import report as budget_report
from gateway_extproc.budgets.admission import Admission
from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.cache.key import CacheTicket
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.config.fallback import Target
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.guardrails import GuardResult
from gateway_extproc.identity.model import Identity
from gateway_extproc.observability.attributes import RequestFacts
from gateway_extproc.providers.inbound import ParsedRequest
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.spend.outcome import answered_outcome
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage, UsageSource
from gateway_extproc.translate.pairs import Translation

log = logging.getLogger("gateway.processor")


class RequestStream:
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
        # A fallback chain (request/chain.py): its admitted targets, priced; empty: none.
        self.chain: tuple[tuple[Target, ModelEntry], ...] = ()
        # Its first targets skipped as cooling (chain.skipped_head): the cluster starts after.
        self.chain_skip = 0
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

    def audit_extra(self) -> dict[str, Any]:
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

    def response_headers(self, cost_micros: int | None = None) -> dict[str, str]:
        """Response headers the request phase decided: budgets, rate limits, the cache status
        (METADATA_RESPONSE_HEADERS names every one)."""
        headers = budget_report.response_headers(self.admission, cost_micros)
        if self.cache_ticket is not None:
            headers.update(self.cache_ticket.response_headers())
        return headers

    def _roll_up_answered(self, hit: bool) -> None:
        """Count a cache hit or a refusal in the spend rollups, on the row of the identity and
        the model asked for (its catalog name and provider; nothing was served), in the
        background. A request refused before it was identified is not attributable: not
        counted. Other endings are in the audit log only (spend/outcome.py)."""
        outcome = answered_outcome(self.error_code, cache_hit=hit)
        if outcome is None or self.identity is None:
            return
        model = self.request.model if self.request is not None else None
        provider = None
        if self.entry is not None:  # the catalog's name, as a billed request's row has it
            model, provider = self.entry.name, self.entry.provider
        record = UsageRecord.answered(
            self.arrived,
            Dimensions.of(self.identity, model, provider),
            outcome,
            saved_micros=self.cost_saved or 0,
        )
        # Its own id: a hit's reservation (rate limits that count hits) is released under
        # the reservation's.
        self.ctx.budgets.services.roll_up_answered(f"{self.reservation_id}:answered", record)

    def conclude(self) -> None:
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
            **self.audit_extra(),
        )
        self._roll_up_answered(hit)
        try:
            self.ctx.audit.write(record)
        except OSError:
            log.exception("audit write failed", extra={"request_id": self.request_id})
        if self.ctx.telemetry.enabled:
            parent, state = self.trace_context
            self.ctx.telemetry.request_done(record, RequestFacts(parent, state))
