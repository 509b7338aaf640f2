"""Span attributes and metrics of finished requests, through the SDK's in-memory exporter and
reader: names, GenAI attributes, identity disclosure, exact token and cost sums, capped labels."""

from __future__ import annotations

import dataclasses
import datetime
import types
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway_extproc.audit import AuditRecord
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from gateway_extproc.observability import attributes as at
from gateway_extproc.observability.metrics import OTHER, CappedLabel, GatewayMetrics
from gateway_extproc.observability.settings import (
    Disclosure,
    ObservabilityConfig,
    Protocol,
    otlp_protocol,
    parse_observability,
)
from gateway_extproc.observability.telemetry import Telemetry, start_telemetry
from gateway_extproc.tokens import Usage, UsageSource

ALICE = Identity(
    kind=Kind.USER,
    auth_method=AuthMethod.JWT,
    user="alice@example.com",
    service=None,
    groups=frozenset({"ml", "saver"}),
    issuer="corp",
    attributes={"team": "search"},
    expires_at=None,
)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def record(**overrides: Any) -> AuditRecord:
    base = AuditRecord(
        request_id="req-1",
        time=datetime.datetime(2026, 12, 1, 12, 0, tzinfo=datetime.UTC),
        method="POST",
        path="/v1/chat/completions",
        api="openai_chat",
        requested_model="gpt-4o",
        served_model="gpt-4o-mini",
        provider_model="gpt-4o-mini-2024-07-18",
        provider="openai",
        upstream_mocked=False,
        stream=True,
        status=200,
        completed=True,
        usage=Usage(input_tokens=10, cached_input_tokens=5, output_tokens=7, reasoning_tokens=2),
        usage_source=UsageSource.PROVIDER,
        cost_micros=123,
        latency_ms=250.0,
        time_to_first_byte_ms=40.0,
        identity=ALICE,
        budget={
            "decision": "downgraded",
            "would_block": False,
            "downgraded_from": "gpt-4o",
            "budgets": [{"name": "saver"}],
        },
    )
    return dataclasses.replace(base, **overrides)


FACTS = at.RequestFacts(
    traceparent=TRACEPARENT,
    max_tokens=512,
    server_address="api.openai.com",
    server_port=443,
    budgets=(("saver", "alice@example.com", 3000, 1000, 200),),
)


def test_span_attributes_follow_the_genai_conventions() -> None:
    attrs = at.span_attributes(record(), FACTS, ObservabilityConfig())
    assert at.span_name(record()) == "chat gpt-4o-mini"
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini-2024-07-18"
    assert attrs["gen_ai.request.max_tokens"] == 512
    assert attrs["gen_ai.request.stream"] is True
    assert attrs["gen_ai.usage.input_tokens"] == 15  # includes cached input
    assert attrs["gen_ai.usage.cache_read.input_tokens"] == 5
    assert attrs["gen_ai.usage.output_tokens"] == 7
    assert attrs["gen_ai.usage.reasoning.output_tokens"] == 2
    assert attrs["server.address"] == "api.openai.com"
    assert attrs["gateway.budget.decision"] == "downgraded"
    assert attrs["gateway.budget.downgraded_from"] == "gpt-4o"
    assert attrs["gateway.cost.micros"] == 123
    assert attrs["gateway.cost.usd"] == pytest.approx(0.000123)
    assert attrs["gateway.usage.source"] == "provider"
    assert "error.type" not in attrs
    # Defaults: kind shown, subject pseudonymous, groups left out.
    assert attrs["gateway.identity.kind"] == "user"
    assert attrs["gateway.identity.subject"] == at.disclose("alice@example.com", Disclosure.HASHED)
    assert "alice" not in str(attrs)
    assert "gateway.identity.groups" not in attrs


@pytest.mark.parametrize("mode", list(Disclosure))
def test_identity_disclosure_is_configurable(mode: Disclosure) -> None:
    config = ObservabilityConfig(identity_kind=mode, identity_subject=mode, identity_groups=mode)
    attrs = at.span_attributes(record(), FACTS, config)
    if mode is Disclosure.OFF:
        assert not [k for k in attrs if k.startswith("gateway.identity")]
    elif mode is Disclosure.ON:
        assert attrs["gateway.identity.subject"] == "alice@example.com"
        assert attrs["gateway.identity.groups"] == ["ml", "saver"]
    else:
        assert len(str(attrs["gateway.identity.subject"])) == 16
        assert "saver" not in str(attrs["gateway.identity.groups"])


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"error_code": "budget_exceeded", "status": 429}, "budget_exceeded"),
        ({"status": 502}, "502"),
        ({"status": 0}, "no_response"),
        ({}, None),
    ],
)
def test_error_type(overrides: dict[str, Any], error: str | None) -> None:
    assert at.error_type(record(**overrides)) == error


def test_decisions() -> None:
    assert list(at.decisions(record())) == ["downgraded"]
    blocked = record(error_code="budget_exceeded", budget=None)
    assert list(at.decisions(blocked)) == ["blocked"]
    monitored = record(budget={"decision": "admitted", "would_block": True, "budgets": []})
    assert list(at.decisions(monitored)) == ["admitted", "would_block"]
    assert list(at.decisions(record(budget=None))) == []


@pytest.fixture
def spans() -> Iterator[tuple[Telemetry, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Telemetry(tracer=provider.get_tracer("test")), exporter
    provider.shutdown()


def test_a_span_continues_the_clients_trace(spans: tuple[Telemetry, InMemorySpanExporter]) -> None:
    telemetry, exporter = spans
    telemetry.request_done(record(), FACTS)
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat gpt-4o-mini"
    assert span.kind is SpanKind.CLIENT
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert span.start_time == int(record().time.timestamp() * 1e9)
    assert span.end_time is not None and span.end_time - span.start_time == 250_000_000


def test_a_span_without_traceparent_starts_a_trace_and_errors_are_marked(
    spans: tuple[Telemetry, InMemorySpanExporter],
) -> None:
    telemetry, exporter = spans
    refused = record(status=429, error_code="budget_exceeded", usage_source=UsageSource.NONE)
    telemetry.request_done(refused, at.RequestFacts())
    (span,) = exporter.get_finished_spans()
    assert span.parent is None
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None and span.attributes["error.type"] == "budget_exceeded"
    assert "gen_ai.usage.input_tokens" not in span.attributes  # nothing was billed


def collect(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                out[metric.name] = list(metric.data.data_points)
    return out


def fake_context() -> Any:
    stats = types.SimpleNamespace(
        overruns=1,
        overrun_micros=40,
        store_errors=2,
        overloaded=0,
        fail_open_admitted=3,
        settle_retries=4,
        reaped=5,
        reconcile_dropped=0,
    )
    breaker = types.SimpleNamespace(opened_at=12.0, opened=1)
    services = types.SimpleNamespace(stats=stats, breaker=breaker)
    cache = types.SimpleNamespace(fetch_failed=6)
    return types.SimpleNamespace(
        budgets=types.SimpleNamespace(services=services),
        audit=types.SimpleNamespace(dropped=7),
        authenticator=types.SimpleNamespace(jwks={"corp": cache}),
        model_mismatches={"unknown": 1},
        sidecar_auth=types.SimpleNamespace(
            stats=types.SimpleNamespace(
                refused={"missing": 8, "wrong": 1}, rejected_states={"bad_mac": 9}
            )
        ),
    )


def metrics_with(config: ObservabilityConfig) -> tuple[GatewayMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    ctx = fake_context()
    return GatewayMetrics(provider.get_meter("test"), config, lambda: ctx), reader


def test_metrics_sum_exactly_what_the_records_say() -> None:
    config = ObservabilityConfig(cost_by_subject=Disclosure.ON, cost_by_attribute="team")
    metrics, reader = metrics_with(config)
    metrics.record(record(), FACTS)
    metrics.record(record(cost_micros=77, stream=False), FACTS)
    metrics.record(record(status=429, error_code="budget_exceeded", budget=None), FACTS)
    metrics.stream_done(0.002, 5)
    metrics.store_call(0.001, True)
    got = collect(reader)
    tokens = {p.attributes["gen_ai.token.type"]: p.sum for p in got["gen_ai.client.token.usage"]}
    # Every record here is billed (usage_source provider), the 429 too: three records.
    assert tokens == {"input": 45, "output": 21, "cache_read": 15, "reasoning": 6}
    (cost,) = got["gateway.cost.micro_usd"]
    assert cost.value == 123 + 77 + 123
    assert cost.attributes["gateway.identity.subject"] == "alice@example.com"
    assert cost.attributes["gateway.identity.attribute"] == "search"
    decisions = {
        p.attributes["gateway.budget.decision"]: p.value for p in got["gateway.budget.decisions"]
    }
    assert decisions == {"downgraded": 2, "blocked": 1}
    outcomes = {p.attributes["error.type"]: p.value for p in got["gateway.requests"]}
    assert outcomes == {"_none": 2, "budget_exceeded": 1}
    (remaining,) = got["gateway.budget.remaining.micro_usd"]
    assert remaining.value == 3000 - 1000 - 200
    assert "gateway.budget.scope_value" not in remaining.attributes
    first_chunk = got["gen_ai.client.operation.time_to_first_chunk"]
    assert sum(p.count for p in first_chunk) == 2  # the two streams (one failed)
    assert got["gateway.extproc.messages"][0].value == 5
    assert got["gateway.budget_store.breaker.open"][0].value == 1
    assert got["gateway.jwks.refresh.failures"][0].value == 6
    assert got["gateway.audit.dropped"][0].value == 7
    assert got["gateway.budget.reaped"][0].value == 5
    refused = {
        p.attributes["gateway.reason"]: p.value for p in got["gateway.sidecar.refused_streams"]
    }
    assert refused == {"missing": 8, "wrong": 1}
    (rejected,) = got["gateway.handoff.rejected_states"]
    assert (rejected.attributes["gateway.reason"], rejected.value) == ("bad_mac", 9)


def test_a_request_refused_before_a_provider_counts_as_a_request_only() -> None:
    metrics, reader = metrics_with(ObservabilityConfig())
    metrics.record(record(provider=None, served_model=None, status=404, error_code="x"), FACTS)
    got = collect(reader)
    assert got["gateway.requests"][0].attributes["gen_ai.request.model"] == "_none"
    assert "gen_ai.client.token.usage" not in got


def test_capped_labels_and_per_scope_gauges() -> None:
    label = CappedLabel(2)
    assert [label(v) for v in "abca"] == ["a", "b", OTHER, "a"]
    metrics, reader = metrics_with(ObservabilityConfig(budget_scope_values=True))
    metrics.record(record(), FACTS)
    (held,) = collect(reader)["gateway.budget.held.micro_usd"]
    assert held.attributes["gateway.budget.scope_value"] == "alice@example.com"
    assert held.value == 200


def test_parse_observability_reports_every_problem() -> None:
    problems: list[str] = []
    doc = {"identity_subject": "maybe", "metrics_port": -1, "metrics": "yes", "bogus": 1}
    doc["envoy_otlp_endpoint"] = "http://collector:4317"
    parse_observability(doc, problems)
    assert problems == [
        "observability.bogus: unknown key",
        "observability.metrics: must be true or false (got 'yes')",
        "observability.metrics_port: must be an integer in [0, 65535] (got -1)",
        "observability.identity_subject: must be one of on, hashed, off (got 'maybe')",
        "observability.envoy_otlp_endpoint: must be host:port of an OTLP/gRPC collector "
        "(got 'http://collector:4317')",
    ]
    # YAML 1.1 turns a bare on/off into booleans.
    config = parse_observability({"identity_groups": True, "identity_kind": False}, problems)
    assert (config.identity_groups, config.identity_kind) == (Disclosure.ON, Disclosure.OFF)


@pytest.mark.parametrize(
    ("environ", "signal", "expected"),
    [
        ({}, "traces", None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, "traces", Protocol.GRPC),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, "metrics", None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            "metrics",
            Protocol.HTTP,
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_TRACES_EXPORTER": "none"}, "traces", None),
        ({"OTEL_METRICS_EXPORTER": "otlp"}, "metrics", Protocol.GRPC),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"}, "traces", None),
    ],
)
def test_exporters_follow_the_otel_environment(
    environ: dict[str, str], signal: str, expected: Protocol | None
) -> None:
    assert otlp_protocol(environ, signal) == expected


def test_no_exporter_configured_means_no_telemetry() -> None:
    telemetry = start_telemetry(
        ObservabilityConfig(metrics=False), {}, worker=0, metrics_port=0, current=lambda: None
    )
    assert not telemetry.enabled and telemetry.tracer is None and telemetry.metrics is None


def test_the_dashboard_queries_only_what_the_sidecar_exports() -> None:
    import json
    import re

    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, generate_latest

    from tests.paths import REPO

    registry = CollectorRegistry()
    provider = MeterProvider(metric_readers=[PrometheusMetricReader(registry=registry)])
    config = ObservabilityConfig(cost_by_subject=Disclosure.HASHED, cost_by_attribute="team")
    ctx = fake_context()
    metrics = GatewayMetrics(provider.get_meter("test"), config, lambda: ctx)
    metrics.record(record(), FACTS)
    metrics.record(record(status=429, error_code="budget_exceeded"), FACTS)
    metrics.stream_done(0.001, 4)
    metrics.store_call(0.001, True)
    text = generate_latest(registry).decode()
    names = set(re.findall(r"^(\w+)[{ ]", text, re.M))
    labels = set(re.findall(r"[{,](\w+)=", text))
    dashboard = json.loads((REPO / "dashboards" / "llm-gateway.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    assert exprs
    for expr in exprs:
        for name in re.findall(r"\b((?:gateway|gen_ai)_\w+)\b(?=[{\[)\s])", expr):
            if name not in labels:
                assert name in names, f"{name} in {expr!r} is not exported"
        for group in re.findall(r"by \(([^)]*)\)", expr):
            for label in (g.strip() for g in group.split(",")):
                assert label == "le" or label in labels, f"label {label} in {expr!r}"
    provider.shutdown()


def test_a_telemetry_fault_never_reaches_the_request(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        def record(self, record: AuditRecord, facts: at.RequestFacts) -> None:
            raise RuntimeError("boom")

    telemetry = Telemetry(metrics=Broken())  # type: ignore[arg-type]
    telemetry.request_done(record(), FACTS)  # logged, not raised
    assert "telemetry failed" in caplog.text


def test_rate_limit_outcomes_are_counted_per_limit() -> None:
    metrics, reader = metrics_with(ObservabilityConfig())

    def state(name: str, would_block: bool, blocked: bool) -> dict[str, Any]:
        return {"name": name, "would_block": would_block, "blocked": blocked}

    metrics.record(record(rate_limits=[state("rpm", False, False)]), FACTS)
    metrics.record(record(rate_limits=[state("rpm", False, False), state("w", True, False)]), FACTS)
    metrics.record(
        record(status=429, error_code="rate_limited", rate_limits=[state("rpm", True, True)]),
        FACTS,
    )
    got = collect(reader)
    counted = {
        (p.attributes["gateway.rate_limit.name"], p.attributes["gateway.rate_limit.decision"]): (
            p.value
        )
        for p in got["gateway.rate_limit.decisions"]
    }
    assert counted == {("rpm", "counted"): 2, ("w", "would_block"): 1, ("rpm", "blocked"): 1}


def test_guardrail_decisions_and_findings_are_counted_by_category_and_action() -> None:
    metrics, reader = metrics_with(ObservabilityConfig())

    def guard(action: str | None, **categories: tuple[int, str]) -> dict[str, Any]:
        found = {c: {"count": n, "action": a} for c, (n, a) in categories.items()}
        return {"rules": ["pii"], "action": action, "categories": found}

    metrics.record(record(guardrails=guard(None)), FACTS)  # applied, found nothing
    metrics.record(record(guardrails=guard("redact", email=(2, "redact"))), FACTS)
    metrics.record(
        record(
            status=400,
            error_code="guardrail_blocked",
            guardrails=guard("block", email=(1, "redact"), openai_key=(1, "block")),
        ),
        FACTS,
    )
    metrics.record(record(), FACTS)  # no guardrail applied: not counted
    got = collect(reader)
    points = got["gateway.guardrail.decisions"]
    decisions = {p.attributes["gateway.guardrail.action"]: p.value for p in points}
    assert decisions == {"none": 1, "redact": 1, "block": 1}
    findings = {
        (p.attributes["gateway.guardrail.category"], p.attributes["gateway.guardrail.action"]): (
            p.value
        )
        for p in got["gateway.guardrail.findings"]
    }
    assert findings == {("email", "redact"): 3, ("openai_key", "block"): 1}
