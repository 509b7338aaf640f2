"""What one finished request says, as span attributes and metric labels. Pure: values in and out.

Names follow the OpenTelemetry GenAI semantic conventions (v1.41); the gateway's own facts are
under `gateway.*`. Content (prompts, completions) and credentials never reach this module: its
input is the audit record, which holds neither, plus a few request facts.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from gateway_extproc.audit import AuditRecord
from gateway_extproc.observability.settings import Disclosure, ObservabilityConfig
from gateway_extproc.tokens import Usage, UsageSource

# GenAI attribute names (semconv v1.41, "Development" stability).
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"

# Operation names by audit `api` value (Api member name, lower case).
_OPERATIONS = {
    "openai_chat": "chat",
    "openai_responses": "chat",
    "anthropic_messages": "chat",
    "openai_completions": "text_completion",
    "openai_embeddings": "embeddings",
}
BLOCKED = "budget_exceeded"  # the error code of a request a budget refused


@dataclasses.dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the audit record does not hold but a span should say."""

    traceparent: str | None = None  # the client's W3C trace context (or Envoy's, when it traces)
    tracestate: str | None = None
    max_tokens: int | None = None  # the output limit sent upstream (the request's or the cap)
    response_id: str | None = None  # the provider's id of the response
    finish_reasons: tuple[str, ...] = ()
    server_address: str | None = None  # the provider host
    server_port: int | None = None
    # Each budget the admission checked: (name, scope value, limit, spent, held), micro-dollars.
    budgets: tuple[tuple[str, str, int, int, int], ...] = ()


def operation_name(api: str | None) -> str:
    return _OPERATIONS.get(api or "", "chat")


def request_model(record: AuditRecord) -> str:
    """The model sent upstream (after a downgrade), else the one asked for."""
    return record.served_model or record.requested_model or "unknown"


def span_name(record: AuditRecord) -> str:
    if record.api is None:  # not a model call (models list, unknown path)
        return f"gateway {record.method} {record.path}".rstrip()
    return f"{operation_name(record.api)} {request_model(record)}"


def error_type(record: AuditRecord) -> str | None:
    """The gateway's error code, else the HTTP status of a failed response."""
    if record.error_code:
        return record.error_code
    if record.status >= 400:
        return str(record.status)
    if record.status == 0:
        return "no_response"
    return None


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "none"


def disclose(value: str, mode: Disclosure) -> str | None:
    if mode is Disclosure.OFF:
        return None
    if mode is Disclosure.HASHED:
        return hashlib.sha256(value.encode()).hexdigest()[:16]
    return value


def token_counts(usage: Usage) -> Iterator[tuple[str, int]]:
    """Token counts by `gen_ai.token.type`. `input` includes cached input (as the convention
    says); the cache and reasoning types are parts of input and output, not extra tokens."""
    yield "input", usage.total_input_tokens
    yield "output", usage.output_tokens
    yield "cache_read", usage.cached_input_tokens
    yield "cache_creation", usage.cache_write_input_tokens + usage.cache_write_1h_input_tokens
    yield "reasoning", usage.reasoning_tokens


def decisions(record: AuditRecord) -> Iterator[str]:
    """Budget decisions: admitted, downgraded, fail_open, blocked; would_block besides them."""
    if record.error_code == BLOCKED:
        yield "blocked"
        return
    budget = record.budget
    if not budget:
        return
    decision = str(budget.get("decision", "none"))
    if decision != "none":
        yield decision
    if budget.get("would_block"):
        yield "would_block"


def billed(record: AuditRecord) -> bool:
    return record.usage_source is not UsageSource.NONE


def span_attributes(
    record: AuditRecord, facts: RequestFacts, config: ObservabilityConfig
) -> dict[str, str | int | float | bool | list[str]]:
    attrs: dict[str, str | int | float | bool | list[str]] = {
        "gateway.request.id": record.request_id,
        "http.request.method": record.method,
        "http.response.status_code": record.status,
        "gateway.completed": record.completed,
    }
    if record.api is not None:
        attrs[OPERATION] = operation_name(record.api)
        attrs[REQUEST_MODEL] = request_model(record)
        attrs["gen_ai.request.stream"] = record.stream
    if record.provider:
        attrs[PROVIDER] = record.provider
    if record.provider_model:
        attrs[RESPONSE_MODEL] = record.provider_model
    if facts.max_tokens is not None:
        attrs["gen_ai.request.max_tokens"] = facts.max_tokens
    if facts.response_id:
        attrs["gen_ai.response.id"] = facts.response_id
    if facts.finish_reasons:
        attrs["gen_ai.response.finish_reasons"] = list(facts.finish_reasons)
    if facts.server_address:
        attrs["server.address"] = facts.server_address
        if facts.server_port:
            attrs["server.port"] = facts.server_port
    error = error_type(record)
    if error is not None:
        attrs[ERROR_TYPE] = error
    if billed(record):
        usage = record.usage
        attrs["gen_ai.usage.input_tokens"] = usage.total_input_tokens
        attrs["gen_ai.usage.output_tokens"] = usage.output_tokens
        attrs["gen_ai.usage.cache_read.input_tokens"] = usage.cached_input_tokens
        attrs["gen_ai.usage.cache_creation.input_tokens"] = (
            usage.cache_write_input_tokens + usage.cache_write_1h_input_tokens
        )
        attrs["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    attrs["gateway.usage.source"] = record.usage_source.value
    attrs["gateway.cost.micros"] = record.cost_micros
    attrs["gateway.cost.usd"] = record.cost_micros / 1_000_000
    if record.upstream_mocked:
        attrs["gateway.upstream.mocked"] = True
    identity = record.identity
    if identity is not None:
        for key, value, mode in (
            ("kind", identity.kind.value, config.identity_kind),
            ("subject", identity.subject, config.identity_subject),
        ):
            shown = disclose(value, mode)
            if shown is not None:
                attrs[f"gateway.identity.{key}"] = shown
        if config.identity_groups is not Disclosure.OFF:
            groups = (disclose(g, config.identity_groups) for g in sorted(identity.groups))
            attrs["gateway.identity.groups"] = [g for g in groups if g is not None]
    found = list(decisions(record))
    if found:
        attrs["gateway.budget.decision"] = found[0]
        attrs["gateway.budget.would_block"] = "would_block" in found
    budget = record.budget or {}
    if budget.get("downgraded_from"):
        attrs["gateway.budget.downgraded_from"] = str(budget["downgraded_from"])
    if budget.get("budgets"):
        attrs["gateway.budget.names"] = [str(b["name"]) for b in budget["budgets"]]
    return attrs


def attempt_outcome(record: Mapping[str, Any], answered: bool) -> str:
    """An attempt's outcome, a closed set (a metric label): `served`, `rate_limited` (429),
    `server_error` (5xx), `client_error` (other 4xx), `dropped` (its headers came back, but
    another attempt answered: docs/fallback.md fact 5), or `no_response` (it left no record: a
    refused connection, a timeout or a reset before its headers)."""
    if answered:
        return "served"
    if record.get("outcome") == "no_response":
        return "no_response"
    status = record.get("status")
    code = status if isinstance(status, int) else 0
    if code == 429:
        return "rate_limited"
    if code >= 500:
        return "server_error"
    if code >= 400:
        return "client_error"
    return "dropped"
