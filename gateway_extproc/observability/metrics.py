"""Every metric the sidecar exports, declared here and in collected.py: GenAI convention
instruments and the gateway's own spend, budget and health signals.

Per-request instruments (this module) are recorded once, when a request's audit record is
written. Counters the process already keeps (budget store errors, breaker, JWKS, audit drops, ...)
are observed by callbacks at collection time (collected.py): nothing on the request path. Each
worker process has its own instruments and its own /metrics endpoint; Prometheus sums the
workers (label `instance`).
"""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry.metrics import Meter

from gateway_extproc.audit import AuditRecord
from gateway_extproc.observability import attributes as at
from gateway_extproc.observability.collected import BudgetGauge, CollectedMetrics, Observed
from gateway_extproc.observability.settings import Disclosure, ObservabilityConfig
from gateway_extproc.tokens import UsageSource

# Bucket advice of the GenAI conventions.
TOKEN_BUCKETS = [float(4**i) for i in range(14)]  # 1, 4, 16, ... 67108864
DURATION_BUCKETS = [0.01 * 2**i for i in range(14)]  # 0.01 ... 81.92 s
FIRST_CHUNK_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75]
FIRST_CHUNK_BUCKETS += [1.0, 2.5, 5.0, 7.5, 10.0]
# The gateway's own work: a budget store call, the ext_proc handling of one request.
FAST_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1]
FAST_BUCKETS += [0.25, 0.5, 1.0, 2.5]
OTHER = "_other"  # label value once a capped label has seen max_label_values values
NONE = "_none"
NONE_FOUND = "none"  # a guardrail applied and found nothing

Attrs = dict[str, str]


class CappedLabel:
    """A label whose distinct values are capped per worker: the first `limit` values pass,
    later ones become `_other` (a client can never blow up the series count)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.seen:
            return value
        if len(self.seen) >= self.limit:
            return OTHER
        self.seen.add(value)
        return value


class GatewayMetrics:
    def __init__(
        self,
        meter: Meter,
        config: ObservabilityConfig,
        current: Callable[[], Observed | None],
    ) -> None:
        self.config = config
        self.current = current
        self._subjects = CappedLabel(config.max_label_values)
        self._attribute_values = CappedLabel(config.max_label_values)
        self._scopes = CappedLabel(config.max_label_values)
        # Observed at collection time (collected.py): budgets as last seen, process counters.
        self.collected = CollectedMetrics(meter, config, current)
        self.budgets = self.collected.budgets
        m = meter
        self.token_usage = m.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Tokens per request by gen_ai.token.type (input includes cached input)",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self.duration = m.create_histogram(
            "gen_ai.client.operation.duration",
            unit="s",
            description="Time from the request's arrival at the gateway to its last byte",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self.first_chunk = m.create_histogram(
            "gen_ai.client.operation.time_to_first_chunk",
            unit="s",
            description="Time from the request's arrival to the provider's response headers",
            explicit_bucket_boundaries_advisory=FIRST_CHUNK_BUCKETS,
        )
        self.requests = m.create_counter(
            "gateway.requests", unit="{request}", description="Requests by outcome"
        )
        self.cost = m.create_counter(
            "gateway.cost.micro_usd",
            unit="{microdollar}",
            description="Spend in micro-dollars (USD/1e6)",
        )
        self.budget_spend = m.create_counter(
            "gateway.budget.spend.micro_usd",
            unit="{microdollar}",
            description="Spend charged to each budget, micro-dollars",
        )
        self.decisions = m.create_counter(
            "gateway.budget.decisions", unit="{request}", description="Budget decisions"
        )
        self.rate_limit_decisions = m.create_counter(
            "gateway.rate_limit.decisions",
            unit="{request}",
            description="Rate-limit outcomes per limit: counted, blocked, would_block",
        )
        self.store_duration = m.create_histogram(
            "gateway.budget_store.duration",
            unit="s",
            description="Budget store (Redis) calls on the request path",
            explicit_bucket_boundaries_advisory=FAST_BUCKETS,
        )
        self.extproc_duration = m.create_histogram(
            "gateway.extproc.duration",
            unit="s",
            description="Time the sidecar spent handling one request's ext_proc messages",
            explicit_bucket_boundaries_advisory=FAST_BUCKETS,
        )
        self.cache_requests = m.create_counter(
            "gateway.cache.requests", unit="{request}", description="Response cache outcomes"
        )
        self.cache_saved = m.create_counter(
            "gateway.cache.saved.micro_usd",
            unit="{microdollar}",
            description="What cache hits would have cost at catalog prices, micro-dollars",
        )
        self.guardrail_decisions = m.create_counter(
            "gateway.guardrail.decisions",
            unit="{request}",
            description="Requests a guardrail applied to, by what it did (none: nothing found)",
        )
        self.guardrail_findings = m.create_counter(
            "gateway.guardrail.findings",
            unit="{finding}",
            description="PII and secrets found in prompts, by category and the action taken",
        )
        self.limits_reached = m.create_counter(
            "gateway.limits.reached",
            unit="{request}",
            description="Requests that ran into a memory or time bound, by bound (gateway.limit)",
        )
        self.extproc_messages = m.create_counter(
            "gateway.extproc.messages", unit="{message}", description="ext_proc messages handled"
        )
        self.reconcile_runs = m.create_counter(
            "gateway.reconcile.runs",
            unit="{run}",
            description="Reconciliations of a provider's day, by gateway.outcome (ok, failed) "
            "and gateway.trigger (schedule, admin)",
        )
        self.reconcile_alerts = m.create_counter(
            "gateway.reconcile.alerts",
            unit="{alert}",
            description="Drift alerts fired, by provider and gateway.reconcile.kind "
            "(unexplained, outside)",
        )
        self.fallback_attempts = m.create_counter(
            "gateway.fallback.attempts",
            unit="{attempt}",
            description="Attempts of chained requests, by target and outcome (served, "
            "rate_limited, server_error, client_error, dropped, no_response)",
        )

    # -- per request --------------------------------------------------------------------------

    def record(self, record: AuditRecord, facts: at.RequestFacts) -> None:
        """One finished request: everything but the ext_proc time (see `stream_done`). A late
        record correcting a reaped request's (`reaped_charge_micros`) counts only what the
        reaper's could not: its tokens, and its cost when it adds to the reaper's charge (a
        counter cannot go down: a lower real cost leaves the reaper's charge counted)."""
        model = record.served_model or NONE  # a catalog name, never a client's string
        provider = record.provider or NONE
        if record.reaped_charge_micros is not None:
            self._correction(record, provider, model)
            return
        error = at.error_type(record)
        outcome: Attrs = {
            "http.response.status_class": at.status_class(record.status),
            at.ERROR_TYPE: error or NONE,
            at.PROVIDER: provider,
            at.REQUEST_MODEL: model,
        }
        self.requests.add(1, outcome)
        if record.cache is not None:
            self.cache_requests.add(
                1, {"gateway.cache.status": record.cache, at.REQUEST_MODEL: model}
            )
            if record.cost_saved_micros:
                saved: Attrs = {at.PROVIDER: provider, at.REQUEST_MODEL: model}
                self.cache_saved.add(record.cost_saved_micros, saved)
        guard = record.guardrails
        if guard is not None:  # categories and actions are closed sets: bounded labels
            action = str(guard.get("action") or NONE_FOUND)
            self.guardrail_decisions.add(1, {"gateway.guardrail.action": action})
            for category, found in (guard.get("categories") or {}).items():
                labels = {
                    "gateway.guardrail.category": str(category),
                    "gateway.guardrail.action": str(found["action"]),
                }
                self.guardrail_findings.add(int(found["count"]), labels)
        attempts = record.attempts or ()
        for i, attempt in enumerate(attempts):  # targets are the configuration's: bounded
            answered = i == len(attempts) - 1 and attempt.get("target") == record.served_by
            labels = {
                "gateway.fallback.target": str(attempt.get("target") or "unknown"),
                "gateway.fallback.outcome": at.attempt_outcome(attempt, answered),
            }
            self.fallback_attempts.add(1, labels)
        for reached in record.limits_reached:  # a closed set (audit.LimitReached): bounded
            self.limits_reached.add(1, {"gateway.limit": reached})
        for decision in at.decisions(record):
            self.decisions.add(1, {"gateway.budget.decision": decision})
        for limit_state in record.rate_limits or ():
            outcome_name = "counted"
            if limit_state["blocked"]:
                outcome_name = "blocked"
            elif limit_state["would_block"]:
                outcome_name = "would_block"
            self.rate_limit_decisions.add(
                1,
                {
                    "gateway.rate_limit.name": str(limit_state["name"]),
                    "gateway.rate_limit.decision": outcome_name,
                },
            )
        for name, scope, limit, spent, held in facts.budgets:
            key = (name, self._scopes(scope) if self.config.budget_scope_values else "")
            self.budgets[key] = BudgetGauge(limit, spent, held)
        if record.api is None or record.provider is None:
            return  # refused before a provider was chosen: no GenAI operation happened
        op: Attrs = {at.OPERATION: at.operation_name(record.api), at.PROVIDER: provider}
        op[at.REQUEST_MODEL] = model
        timing = dict(op, **({at.ERROR_TYPE: error} if error else {}))
        self.duration.record(record.latency_ms / 1000, timing)
        if record.stream and record.time_to_first_byte_ms is not None:
            self.first_chunk.record(record.time_to_first_byte_ms / 1000, timing)
        if not at.billed(record):
            return
        if record.usage_source is not UsageSource.REAPED:  # a reaped request's are unknown
            self._tokens(record, op)
        self._cost(record, provider, model)

    def _tokens(self, record: AuditRecord, op: Attrs) -> None:
        for token_type, count in at.token_counts(record.usage):
            if count or token_type in ("input", "output"):
                self.token_usage.record(count, {**op, at.TOKEN_TYPE: token_type})

    def _cost(self, record: AuditRecord, provider: str, model: str) -> None:
        if record.cost_micros < 0:  # a correction that lowers the charge: see `record`
            return
        self.cost.add(record.cost_micros, self._cost_labels(record, provider, model))
        for budget in (record.budget or {}).get("budgets", ()):
            self.budget_spend.add(record.cost_micros, {"gateway.budget.name": str(budget["name"])})

    def _correction(self, record: AuditRecord, provider: str, model: str) -> None:
        if record.api is None or not at.billed(record):
            return
        op: Attrs = {at.OPERATION: at.operation_name(record.api), at.PROVIDER: provider}
        op[at.REQUEST_MODEL] = model
        self._tokens(record, op)
        self._cost(record, provider, model)

    def _cost_labels(self, record: AuditRecord, provider: str, model: str) -> Attrs:
        labels: Attrs = {at.PROVIDER: provider, at.REQUEST_MODEL: model}
        identity, config = record.identity, self.config
        if config.cost_by_subject is not Disclosure.OFF:
            subject = at.disclose(identity.subject, config.cost_by_subject) if identity else None
            labels["gateway.identity.subject"] = self._subjects(subject or NONE)
        if config.cost_by_attribute:
            value = identity.attributes.get(config.cost_by_attribute) if identity else None
            labels["gateway.identity.attribute"] = self._attribute_values(value or NONE)
        return labels

    def stream_done(self, busy_s: float, messages: int) -> None:
        self.extproc_duration.record(busy_s)
        self.extproc_messages.add(messages)

    def store_call(self, seconds: float, ok: bool) -> None:
        self.store_duration.record(seconds, {"gateway.outcome": "ok" if ok else "error"})
