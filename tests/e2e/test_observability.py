"""Traces and metrics of real requests through Envoy: an in-process OTLP gRPC collector receives
the sidecar's spans (SDK clients, streamed and not, downgraded, blocked) and Envoy's own (one trace
from the client's traceparent through Envoy's ingress and ext_proc spans to the sidecar's), and a
scrape of every worker's /metrics equals the audit records' totals exactly."""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import anthropic
import grpc
import openai
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mpb_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as pb_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client.parser import text_string_to_metric_families

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import stack_environ, start_stack
from tests.e2e.harness import AuditLog

pytestmark = pytest.mark.e2e

SECRET_PROMPT = "the-secret-prompt-f00d"  # must never reach a span
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"
CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 2}
observability:
  cost_by_attribute: team
  identity_subject: hashed
  envoy_otlp_endpoint: "COLLECTOR"  # Envoy traces to the same collector
budgets:
  - name: tight
    scope: {kind: user}
    match: {groups: [tight]}
    limit_usd: 0.000001
    window: {type: calendar, period: month}
    action: block
  - name: saver
    scope: {kind: user}
    match: {groups: [saver], models: [gpt-4o]}
    limit_usd: 0.003
    window: {type: calendar, period: month}
    action: downgrade
    downgrade_to: gpt-4o-mini
  - name: everyone
    scope: {kind: global}
    limit_usd: 100
    window: {type: calendar, period: month}
    action: monitor
"""


class Collector(pb_grpc.TraceServiceServicer):  # type: ignore[misc]
    """An OTLP/gRPC trace collector on an ephemeral port; keeps every span it receives."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.raw: list[bytes] = []
        self.resources: list[dict[str, Any]] = []
        self.changed = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.metrics = MetricsCollector(self.changed)
        mpb_grpc.add_MetricsServiceServicer_to_server(self.metrics, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def Export(self, request: pb.ExportTraceServiceRequest, context: object) -> Any:
        with self.changed:
            self.raw.append(request.SerializeToString())
            for rs in request.resource_spans:
                self.resources.append({a.key: value(a.value) for a in rs.resource.attributes})
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
            self.changed.notify_all()
        return pb.ExportTraceServiceResponse()

    def envoy_spans(
        self, trace_id: str, name_part: str, count: int = 1, timeout: float = 20
    ) -> list[Span]:
        def found() -> list[Span]:
            return [s for s in self.spans if s.trace_id.hex() == trace_id and name_part in s.name]

        with self.changed:
            assert self.changed.wait_for(lambda: len(found()) >= count, timeout), (
                f"fewer than {count} {name_part} spans in {trace_id}"
            )
            spans = found()
            assert len(spans) == count
            return spans

    def envoy_span(self, trace_id: str, name_part: str, timeout: float = 20) -> Span:
        (span,) = self.envoy_spans(trace_id, name_part, 1, timeout)
        return span

    def span_of(self, request_id: str, timeout: float = 20) -> Span:
        def found() -> list[Span]:
            return [s for s in self.spans if attrs(s).get("gateway.request.id") == request_id]

        with self.changed:
            assert self.changed.wait_for(found, timeout), f"no span for {request_id}"
            (span,) = found()
            return span


class MetricsCollector(mpb_grpc.MetricsServiceServicer):  # type: ignore[misc]
    """OTLP metrics: metric names by the exporting worker's service.instance.id."""

    def __init__(self, changed: threading.Condition) -> None:
        self.changed = changed
        self.names: dict[str, set[str]] = {}

    def Export(self, request: mpb.ExportMetricsServiceRequest, context: object) -> Any:
        with self.changed:
            for rm in request.resource_metrics:
                resource = {a.key: value(a.value) for a in rm.resource.attributes}
                names = self.names.setdefault(str(resource["service.instance.id"]), set())
                names.update(m.name for sm in rm.scope_metrics for m in sm.metrics)
            self.changed.notify_all()
        return mpb.ExportMetricsServiceResponse()


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def attrs(span: Span) -> dict[str, Any]:
    return {a.key: value(a.value) for a in span.attributes}


@dataclass
class Observed:
    stack: Stack
    collector: Collector
    issuer: DevIssuer
    audit: AuditLog

    def token(self, user: str, *groups: str) -> str:
        return self.issuer.mint(user, list(groups), None, 3600, {"team": "search"}, time.time())

    def oai(self, token: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.stack.gateway_url + "/v1", api_key=token, max_retries=0)


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("observability")
    run_dir = tmp / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp / "gateway.yaml"
    collector = Collector()
    config.write_text(CONFIG.replace("COLLECTOR", f"127.0.0.1:{collector.port}"))
    environ = stack_environ(
        run_dir,
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.port}",  # traces + metrics
        OTEL_BSP_SCHEDULE_DELAY="50",
        OTEL_METRIC_EXPORT_INTERVAL="500",
        OTEL_SERVICE_NAME="gateway-e2e",
        OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test",
    )
    stack = start_stack(run_dir, config_path=config, environ=environ)
    yield Observed(stack, collector, issuer, AuditLog(run_dir / "audit.jsonl"))
    stack.stop()
    collector.server.stop(None)


def content_free(obs: Observed, *secrets: str) -> None:
    with obs.collector.changed:
        data = b"".join(obs.collector.raw)
    for secret in (SECRET_PROMPT, *secrets):
        assert secret.encode() not in data


def test_chat_span_continues_the_clients_trace(obs: Observed) -> None:
    token = obs.token("alice@example.com")
    with obs.oai(token) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": SECRET_PROMPT}],
            max_tokens=50,
            extra_headers={"traceparent": TRACEPARENT},
        )
    completion = raw.parse()
    span = obs.collector.span_of(raw.headers["x-gateway-request-id"])
    assert span.name == "chat gpt-4o-mini"
    assert span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    # One trace: the client's; Envoy's spans continue it and parent the sidecar's span.
    assert span.trace_id.hex() == TRACE_ID
    ingress = obs.collector.envoy_span(TRACE_ID, "ingress")
    # One ext_proc stream: a non-streamed answer is metered on the request's own stream (no
    # observer stream); it carried Envoy's context in its gRPC metadata.
    (request_stream,) = obs.collector.envoy_spans(TRACE_ID, "ExternalProcessor.Process")
    assert ingress.parent_span_id.hex() == "b7ad6b7169203331"  # the client's span
    assert request_stream.parent_span_id == ingress.span_id
    assert span.parent_span_id == request_stream.span_id
    a = attrs(span)
    rec = obs.audit.wait_for(raw.headers["x-gateway-request-id"])
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    assert a["gen_ai.response.model"] == completion.model
    assert a["gen_ai.request.max_tokens"] == 50 and a["gen_ai.request.stream"] is False
    assert a["gen_ai.response.id"] == completion.id
    assert a["gen_ai.response.finish_reasons"] == [completion.choices[0].finish_reason]
    assert completion.usage is not None
    assert a["gen_ai.usage.input_tokens"] == completion.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == completion.usage.completion_tokens
    assert a["gateway.cost.micros"] == rec["cost_micros"]
    assert a["gateway.usage.source"] == "provider" and "error.type" not in a
    assert a["gateway.identity.kind"] == "user"
    assert "alice" not in str(a)  # hashed subject
    assert "server.address" in a
    resources = obs.collector.resources
    assert {r["service.name"] for r in resources} == {"gateway-e2e", "llm-spend-gateway-envoy"}
    sidecar = [r for r in resources if r["service.name"] == "gateway-e2e"]
    assert all(r["deployment.environment.name"] == "test" for r in sidecar)
    assert {r["gateway.worker"] for r in sidecar} <= {0, 1}
    content_free(obs, token, completion.choices[0].message.content or SECRET_PROMPT)


def test_streamed_and_anthropic_spans_start_their_own_traces(obs: Observed) -> None:
    token = obs.token("bob@example.com")
    with obs.oai(token) as client:
        stream = client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": SECRET_PROMPT}],
            stream=True,
            stream_options={"include_usage": True},
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    span = obs.collector.span_of(stream.headers["x-gateway-request-id"])
    a = attrs(span)
    assert a["gen_ai.request.stream"] is True and a["gen_ai.usage.output_tokens"] > 0
    assert a["gen_ai.response.id"] and a["gen_ai.response.finish_reasons"]
    assert span.trace_id.hex() != TRACE_ID  # a new trace, started by Envoy
    claude = anthropic.Anthropic(base_url=obs.stack.gateway_url, api_key=token, max_retries=0)
    with claude:
        msg = claude.messages.with_raw_response.create(
            model="claude-haiku-4-5",
            max_tokens=64,
            messages=[{"role": "user", "content": SECRET_PROMPT}],
        )
    a = attrs(obs.collector.span_of(msg.headers["x-gateway-request-id"]))
    assert a["gen_ai.provider.name"] == "anthropic" and a["gen_ai.request.max_tokens"] == 64
    message = msg.parse()
    assert a["gen_ai.response.id"] == message.id
    assert a["gen_ai.response.finish_reasons"] == [message.stop_reason]
    content_free(obs, token, text)


def test_downgraded_and_blocked_spans(obs: Observed) -> None:
    with obs.oai(obs.token("sam@example.com", "saver")) as client:
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=1000
        )
    a = attrs(obs.collector.span_of(raw.headers["x-gateway-request-id"]))
    assert a["gateway.budget.decision"] == "downgraded"
    assert a["gateway.budget.downgraded_from"] == "gpt-4o"
    assert a["gen_ai.request.model"] == "gpt-4o-mini"
    with (
        obs.oai(obs.token("tim@example.com", "tight")) as client,
        pytest.raises(openai.RateLimitError) as refused,
    ):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=10
        )
    span = obs.collector.span_of(refused.value.response.headers["x-gateway-request-id"])
    a = attrs(span)
    assert span.status.code == span.status.STATUS_CODE_ERROR
    assert a["error.type"] == "budget_exceeded" and a["gateway.budget.decision"] == "blocked"
    assert "gen_ai.usage.input_tokens" not in a


def scrape(obs: Observed) -> dict[str, float]:
    """Every worker's /metrics, summed: sample name + sorted labels -> value."""
    totals: dict[str, float] = {}
    urls = obs.stack.metrics_urls
    assert len(urls) == 2  # one endpoint per worker
    for url in urls:
        with urllib.request.urlopen(url, timeout=5) as r:
            text = r.read().decode()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(
                    f"{k}={v}" for k, v in sorted(s.labels.items()) if not k.startswith("otel_")
                )
                key = f"{s.name}{{{labels}}}"
                totals[key] = totals.get(key, 0.0) + s.value
    return totals


def total(samples: dict[str, float], name: str, match: Callable[[str], bool] = bool) -> float:
    return sum(v for k, v in samples.items() if k.startswith(name + "{") and match(k))


def test_metrics_of_every_worker_equal_the_audit_totals(obs: Observed) -> None:
    token = obs.token("carol@example.com")
    with obs.oai(token) as client:
        for i in range(6):
            client.chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"count {i}"}],
                stream=i % 2 == 0,
                stream_options={"include_usage": True} if i % 2 == 0 else openai.NOT_GIVEN,
            )
    records = obs.audit.records()

    def settled() -> bool:
        return total(scrape(obs), "gateway_requests_total") == len(obs.audit.records())

    deadline = time.monotonic() + 20
    while not settled():  # the audit line and the metrics are written by the same conclude
        assert time.monotonic() < deadline, "metrics never caught up with the audit log"
        time.sleep(0.1)
    samples = scrape(obs)
    records = obs.audit.records()
    assert total(samples, "gateway_requests_total") == len(records)
    assert total(samples, "gateway_cost_micro_usd_total") == sum(r["cost_micros"] for r in records)
    billed = [r for r in records if r["usage_source"] != "none"]
    input_tokens = sum(
        r["tokens"]["input_tokens"]
        + r["tokens"]["cached_input_tokens"]
        + r["tokens"]["cache_write_input_tokens"]
        + r["tokens"]["cache_write_1h_input_tokens"]
        for r in billed
    )
    output_tokens = sum(r["tokens"]["output_tokens"] for r in billed)
    usage = "gen_ai_client_token_usage_sum"
    assert total(samples, usage, lambda k: "gen_ai_token_type=input" in k) == input_tokens
    assert total(samples, usage, lambda k: "gen_ai_token_type=output" in k) == output_tokens
    blocked = sum(1 for r in records if r["error_code"] == "budget_exceeded")
    decisions = "gateway_budget_decisions_total"
    assert total(samples, decisions, lambda k: "=blocked" in k) == blocked
    by_team = total(samples, "gateway_cost_micro_usd_total", lambda k: "attribute=search" in k)
    assert by_team == sum(r["cost_micros"] for r in records)
    # Gauges as each worker last saw them: the limit, and what was left (below the limit).
    everyone = lambda k: "name=everyone" in k  # noqa: E731
    limit = total(samples, "gateway_budget_limit_micro_usd", everyone)
    assert limit > 0 and limit % 100_000_000 == 0  # 100 USD in each worker that saw it
    assert 0 < total(samples, "gateway_budget_remaining_micro_usd", everyone) < limit
    assert total(samples, "gateway_extproc_duration_seconds_count") > 0


def test_every_worker_exports_its_metrics_by_otlp(obs: Observed) -> None:
    with obs.oai(obs.token("dave@example.com")) as client:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5
        )
    metrics = obs.collector.metrics

    def exported() -> bool:
        workers = [n for n in metrics.names.values() if "gateway.audit.dropped" in n]
        usage = any("gen_ai.client.token.usage" in n for n in metrics.names.values())
        return len(workers) == 2 and usage

    with obs.collector.changed:  # one stream per worker (per-worker service.instance.id)
        assert obs.collector.changed.wait_for(exported, 20), metrics.names
