"""The response side of a forwarded request: meter it as it passes, then end the request once -
settle (or release) its reservation, write its audit record, record its span and metrics.

It works from a `RequestState` alone, so it runs wherever the response is seen: in the default
`observe` mode on whichever sidecar worker Envoy's observability-mode ext_proc stream reached
(Envoy does not wait for it: nothing here can delay a response or a streamed chunk), in
`synchronous` mode inside the request's own processor. Nothing here awaits I/O: metering and
pricing are pure calls; settles and the audit line are queued.

Memory and time stay bounded whatever the upstream sends (response_body.py): compressed bodies
inflate at most 100:1, a JSON body is kept whole only up to `metering.max_json_body_bytes`, and
one over 64 KiB is parsed in the body-parsing thread, not on the event loop (synchronous mode
awaits it; observe mode ends the request from there).

Beside it: the observe-mode stream that feeds it (stream_observer.py), synchronous mode's answers
(synchronous.py), a chained request's attempt records (attempts.py).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections.abc import Callable, Sequence

from gateway_extproc.budgets.results import SettleResult
from gateway_extproc.cache.key import CacheTicket
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import cost_micros
from gateway_extproc.cost.endings import charge, checkpoint_output, output_seen
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.extproc.offload import OFFLOAD_BYTES, run_off_loop
from gateway_extproc.handoff import RequestState
from gateway_extproc.providers.base import JsonMeterResult
from gateway_extproc.providers.metering import StreamMeter
from gateway_extproc.response.attempts import (
    answering_target,
    attempt_records,
    charge_dropped,
    dropped_micros,
    skipped_targets,
)
from gateway_extproc.response.audit import write_record
from gateway_extproc.response.body import ResponseBody
from gateway_extproc.response.model_mismatch import in_provider, price_reported
from gateway_extproc.response.reported_tier import charge_reported_tier
from gateway_extproc.response.translated import TranslatedResponse, is_stream
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage, UsageSource

log = logging.getLogger("gateway.observer")


def served_entry(ctx: GatewayContext, state: RequestState) -> ModelEntry:
    """The catalog entry the request was sent to, at the price the request phase fixed."""
    entry = ctx.catalog.lookup(state.served_model)
    if entry is None:  # a reload removed it meanwhile: the handed-over price still holds
        return ModelEntry(state.served_model, state.provider, state.api.schema, 0, state.price)
    if entry.price != state.price:
        entry = dataclasses.replace(entry, price=state.price)
    return entry


class ResponseObserver:
    def __init__(self, ctx: GatewayContext, state: RequestState) -> None:
        self.ctx = ctx
        self.state = state
        self.entry = served_entry(ctx, state)
        self.upstream = ctx.upstreams.get(state.provider)
        self.status: int | None = None
        self.first_byte: float | None = None  # on the clock `_now` reads
        self.body = ResponseBody(ctx.config.metering.max_json_body_bytes)
        self.parsed: JsonMeterResult | None = None  # a JSON body's parse, done off the loop
        self.sse_capture = bytearray()  # a streamed miss's events, for the response cache
        self.metering_broken = False
        self.completed = False
        self.concluded = False
        self.error_code: str | None = None
        self.overrun_micros = 0
        self.cost = 0
        self.dropped = 0  # what a chained request's dropped answers were charged (fact 5)
        self.response_meta: tuple[str | None, tuple[str, ...]] = (None, ())  # id, finish reasons
        self.service_tier: str | None = None  # the tier the provider reports it served
        # The response cache's decision for a miss: its answer is stored when it completes.
        self.cache_ticket = None if state.cache is None else CacheTicket.from_metadata(state.cache)
        # A translated request's answer, rewritten into the client's API (synchronous only).
        self.translated = TranslatedResponse.of(state)
        budget = state.budget
        self.lease = budget.reservation_id if budget is not None and budget.reserved else None
        if self.lease is not None:
            # While the response runs, checkpoint its cost and renew the reservation's lease.
            ctx.budgets.services.hold_lease(self.lease, self._cost_so_far)

    def _now(self) -> float:
        """Monotonic in the request's own process, else wall-clock (another worker)."""
        if self.state.started_monotonic is not None:
            return self.ctx.monotonic() - self.state.started_monotonic
        return self.ctx.wall_clock() - self.state.arrived

    # -- fallback ----------------------------------------------------------------------------

    def on_attempts(self, message: msgs.ProcessingRequest) -> None:
        """A chained request's response headers come with every attempt's record (the
        per-attempt filter's, request/attempt.py): the target that answered is the last one
        whose status is the response's. Its model, price and API are what the response is
        metered, charged and translated by; every attempt, and the target that answered, go to
        the audit record, with the chain's targets no attempt reached (`skipped`). Failed
        attempts are not billed by providers: they charge nothing; a 2xx that did not answer
        (fact 5) is charged its target's bound, on top of the answer's cost (`dropped`)."""
        state = self.state
        if not state.chain:
            return
        records = attempt_records(message)
        status = msgs.headers_of(message.response_headers).get(":status", "")
        served = answering_target(state.chain, records, status)
        served_by = None if served is None else served.target
        margin = self.ctx.config.metering.unseen_output_tokens
        records = charge_dropped(
            state.chain, records, served_by, stream=state.stream, margin=margin
        )
        self.dropped = dropped_micros(records)
        extra = dict(state.audit_extra)
        extra["attempts"] = records
        extra["served_by"] = served_by
        extra["skipped"] = skipped_targets(state.chain, records)
        state = dataclasses.replace(state, audit_extra=extra)
        if served is not None and served.target != state.chain[0].target:
            state = state.answered_by(served)
            self.entry = served_entry(self.ctx, state)
            self.upstream = self.ctx.upstreams.get(state.provider)
            self.translated = TranslatedResponse.of(state)
        self.state = state

    # -- metering ----------------------------------------------------------------------------

    def on_headers(self, headers: dict[str, str], end_of_stream: bool) -> bool:
        """The response's headers; True when its body is an event stream."""
        try:
            self.status = int(headers.get(":status", "0"))
        except ValueError:
            self.status = 0
        self.first_byte = self._now()
        streaming = is_stream(headers.get("content-type", ""))
        self.body.start(
            self.state.api, stream=streaming, encoding=headers.get("content-encoding", "")
        )
        if self.body.unreadable is not None:  # e.g. br: counted from the estimate, and said so
            log.warning(
                "cannot meter %s body", self.body.unreadable, extra={"request_id": self.request_id}
            )
        if end_of_stream:
            self.completed = True
            self.conclude()
        return streaming

    @property
    def meter(self) -> StreamMeter | None:
        return self.body.meter

    def on_body(self, chunk: bytes, end: bool) -> int | None:
        """Observe mode: one body chunk; at the end, the request's cost (micro-dollars), or None
        when a large JSON body went to the body-parsing thread (the request ends from there)."""
        self.take(chunk, end)
        if not end:
            return None
        self.completed = True
        if self._end_off_loop():
            return None
        return self.conclude()

    def take(self, chunk: bytes, end: bool) -> Sequence[bytes]:
        """Meter one chunk; a stream's decoded bytes (the chunk itself when not decoded)."""
        if self.metering_broken:
            return (chunk,)
        was_readable = self.body.unreadable is None
        pieces = self.body.take(chunk, end)  # a stream's decoded bytes: a miss to store
        if self.cache_ticket is not None:
            for data in pieces:
                self.ctx.cache.capture(self.cache_ticket, self.sse_capture, data)
        if was_readable and self.body.unreadable is not None:  # a decompression bomb
            log.warning(
                "response body %s: not decoded further, charged its bound",
                self.body.unreadable,
                extra={"request_id": self.request_id},
            )
        return pieces if self.body.unreadable is None else (chunk,)

    def readable_json(self) -> bool:
        return self.meter is None and self.body.unreadable is None and not self.metering_broken

    def _end_off_loop(self) -> bool:
        """Observe mode: parse a large JSON body in the body-parsing thread and end the request
        when that is done (its context waits for it before closing). False when the parse is
        cheap enough for the event loop, or there is no loop (tools, tests)."""
        if not self.readable_json() or self.body.json.kept < OFFLOAD_BYTES:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return False
        self.concluded = True  # nothing more to observe: the stream may close now
        future = run_off_loop(loop, self.body.json.meter, self.state.api)
        future.add_done_callback(self._parsed)
        self.ctx.pending_ends.add(future)
        return True

    def _parsed(self, future: asyncio.Future[JsonMeterResult]) -> None:
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            log.error(
                "response parse failed", exc_info=error, extra={"request_id": self.request_id}
            )
            self.metering_broken = True
        else:
            self.parsed = future.result()
        self._end()

    def broken(self) -> None:
        """Metering raised: the response still flows; the request is charged its estimate."""
        log.exception("metering failed", extra={"request_id": self.request_id})
        self.metering_broken = True

    @property
    def request_id(self) -> str:
        return self.state.request_id

    def _cost_so_far(self) -> int:
        """A lease checkpoint of a long response: an upper bound of what it will have cost when
        the next checkpoint is due (lease_s / 2 at most), which the reaper charges if this
        worker dies before then."""
        meter = self.meter
        if meter is None:
            usage, _ = self._unreported(None, 0, ended=False)
        else:
            usage, _ = self._unreported(meter.usage_so_far, meter.output_bytes_so_far, ended=None)
        return cost_micros(usage, self.entry.price) + self.dropped

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        """The stream ended. If the response did not finish (client disconnect, upstream
        abort, Envoy reset), meter what was seen now: spend is never lost."""
        if not self.concluded:
            self.conclude()

    def _metered_usage(self) -> tuple[Usage, UsageSource, str | None]:
        """What the request consumed: the provider's report, else an upper bound of its bill."""
        if self.status is not None and self.status >= 400:
            return Usage(), UsageSource.NONE, None  # providers do not bill failed requests
        usage: Usage | None = None
        provider_model: str | None = None
        output_bytes = 0
        complete = self.completed and not self.metering_broken and self.body.unreadable is None
        if self.meter is not None:
            result = self.meter.flush()
            usage, provider_model, output_bytes = (
                result.usage,
                result.served_model,
                result.output_bytes,
            )
            self.response_meta = (result.response_id, result.finish_reasons)
            self.service_tier = result.service_tier
            # The stream's own terminal event makes its usage final, even when the client hung
            # up before the transport's end-of-stream reached Envoy.
            complete = result.completed and not self.metering_broken
            self.completed = self.completed or result.completed
        elif self.body.json.size and self.readable_json():
            jr = self.parsed or self.body.json.meter(self.state.api, ended=self.completed)
            usage, provider_model, output_bytes = jr.usage, jr.served_model, jr.output_bytes
            self.response_meta = (jr.response_id, jr.finish_reasons)
            self.service_tier = jr.service_tier
        if usage is not None and complete:
            return usage, UsageSource.PROVIDER, provider_model
        return (*self._unreported(usage, output_bytes, ended=self.completed), provider_model)

    def _unreported(
        self, reported: Usage | None, output_bytes: int, *, ended: bool | None
    ) -> tuple[Usage, UsageSource]:
        """An ending without the provider's whole usage (`reported`: what it did report): an
        upper bound of its bill (endings.py), or an estimate where nothing bounds the request.
        `ended` None: a checkpoint of a stream still running, bounded at the next checkpoint."""
        limits = self.state.charge_limits
        if limits is None:
            output = self.body.estimated_output(output_bytes, self.state.max_tokens)
            if reported is not None:  # partial report (stream cut short): keep what it said
                return reported.with_output_at_least(output), UsageSource.ESTIMATED
            usage = Usage(input_tokens=self.state.input_tokens_estimate, output_tokens=output)
            return usage, UsageSource.ESTIMATED
        seen = output_seen(
            output_bytes,
            countable=not self.metering_broken and self.body.unreadable is None,
            streaming=self.meter is not None,
            responded=self.status is not None,
            asked_stream=self.state.stream,
            ended=bool(ended),
        )
        if ended is None and seen is not None and self.first_byte is not None:
            horizon = self.ctx.budgets.settings.lease_s / 2
            seen = checkpoint_output(seen, self._now() - self.first_byte, horizon)
        margin = self.ctx.config.metering.unseen_output_tokens
        bound = charge(limits, reported, seen, margin=margin, price=self.entry.price)
        return bound, UsageSource.BOUND

    def _priced(self, usage: Usage, provider_model: str | None) -> int:
        """The cost; by the dearer model when the provider reports another (model_mismatch)."""
        up = self.upstream
        deployment = None if up is None else up.model_name(self.state.served_model)
        lookup = in_provider(self.entry, self.ctx.catalog.lookup, deployment)
        cost, mismatch = price_reported(usage, self.entry, provider_model, lookup)
        if mismatch is not None:
            self.ctx.model_mismatches[mismatch.kind] += 1
            log.warning("%s", mismatch.describe(), extra={"request_id": self.request_id})
        served = self.ctx.catalog.lookup(self.state.served_model)
        tier = charge_reported_tier(usage, cost, served, self.service_tier)
        if tier is not None:  # billed at the tier the provider served (reported_tier.py)
            level = logging.INFO if tier.priced else logging.WARNING
            log.log(level, "%s", tier.describe(), extra={"request_id": self.request_id})
            cost = tier.cost
        return cost

    def conclude(self) -> int:
        """Settle the request's reservation (or release it: nothing billed) and write its audit
        record, exactly once; return the request's cost in micro-dollars."""
        if self.concluded:
            return self.cost
        self.concluded = True
        return self._end()

    def _end(self) -> int:
        state = self.state
        try:
            usage, source, provider_model = self._metered_usage()
            cost = self._priced(usage, provider_model)
        except Exception:  # the record must still be written: charge the request's bound
            log.exception("metering failed at the end", extra={"request_id": self.request_id})
            self.metering_broken = True  # nothing it saw is trusted: the whole bound
            (usage, source), provider_model = self._unreported(None, 0, ended=False), None
            cost = cost_micros(usage, self.entry.price)
            self.error_code = self.error_code or "metering_failed"
        cost += self.dropped  # answers the router dropped and retried (docs/fallback.md)
        if self.lease is not None:
            self.ctx.budgets.services.drop_lease(self.lease)
        billed = source is not UsageSource.NONE or self.dropped > 0
        dims = Dimensions.of(state.identity, self.entry.name, state.provider)
        estimated = source in (UsageSource.BOUND, UsageSource.ESTIMATED) or self.dropped > 0
        rollup = UsageRecord(state.arrived, dims, usage, cost, estimated)
        gate = self.ctx.budgets
        record = functools.partial(
            write_record, self, usage, source, provider_model, cost, latency_s=self._now()
        )
        then = None
        if self._maybe_reaped():  # the record waits for the settle's answer (see below)
            then = functools.partial(self._record_settled, record)
        if state.budget is not None:  # settle the real cost, or release the hold (or roll up)
            self.overrun_micros = gate.settle_outcome(
                state.budget,
                cost if billed else None,
                self.request_id,
                rollup if billed else None,
                then,
            )
        stream = self.meter is not None
        truncated = self.body.json.truncated  # not kept whole: not stored
        self.ctx.cache.store(
            self.cache_ticket,
            state.api,
            status=self.status,
            complete=source is UsageSource.PROVIDER and not truncated,
            stream=stream,
            body=self.sse_capture if stream else self.body.json.whole() or b"",
        )
        note = self.body.truncation_note(usage_read=source is UsageSource.PROVIDER)
        if note is not None:  # usage read: as expected for a large body; else worth a look
            level = logging.INFO if source is UsageSource.PROVIDER else logging.WARNING
            log.log(level, "%s", note, extra={"request_id": self.request_id})
        if then is None:
            record()
        self.cost = cost
        return cost

    def _maybe_reaped(self) -> bool:
        """Whether the reaper may have ended this request's reservation before its settle: only
        once its lease could have run out (lease_s after the reserve, which followed the
        arrival; half of it here, for clocks that differ between replicas). Such a request's
        record is written when the settle answers, so that it can carry the correction of the
        reaper's record (`_record_settled`); every other record is written at once."""
        budget = self.state.budget
        if budget is None or not budget.reserved:
            return False
        lease_s = self.ctx.budgets.settings.lease_s
        return self.ctx.wall_clock() - self.state.arrived >= lease_s / 2

    @staticmethod
    def _record_settled(record: Callable[..., None], settled: SettleResult | None) -> None:
        """Write the record once the settle answered. If the reaper had ended the reservation
        and written its record (usage_source reaped, its charge), this settle corrected the
        ledger and the rollup to the real cost, and this record carries that correction: its
        cost is the real cost less the reaper's charge, so the request's records sum to what
        the ledger holds (docs/budgets.md, "Every reservation ends in one audit record")."""
        record(reaped_micros=None if settled is None else settled.reaped_micros)
