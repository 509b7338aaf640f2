"""The process's OpenTelemetry pipeline: a tracer and the metrics, built from the configuration and
the standard `OTEL_*` environment variables, and the one call the processor makes per request.

Off by default, at no cost: a `Telemetry()` has neither tracer nor metrics and the processor skips
it with one attribute check. Spans are built when the request ends (start time backdated to its
arrival) and exported by a BatchSpanProcessor thread; metrics are read by Prometheus scrapes (the
per-worker /metrics endpoint) and, when configured, an OTLP periodic reader.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from gateway_extproc.observability import attributes as at
from gateway_extproc.observability.settings import ObservabilityConfig, Protocol, otlp_protocol

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from gateway_extproc.audit import AuditRecord
    from gateway_extproc.observability.collected import Observed
    from gateway_extproc.observability.metrics import GatewayMetrics

log = logging.getLogger("gateway.observability")
SERVICE_NAME = "llm-spend-gateway"


class Telemetry:
    """What a worker exports. The default instance exports nothing."""

    def __init__(
        self,
        config: ObservabilityConfig | None = None,
        tracer: Tracer | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config or ObservabilityConfig()
        self.tracer = tracer
        self.metrics = metrics
        self.enabled = tracer is not None or metrics is not None
        self.metrics_port: int | None = None  # the bound /metrics port, when serving one
        self._shutdowns: list[Callable[[], object]] = []

    def request_done(self, record: AuditRecord, facts: at.RequestFacts) -> None:
        """A request's audit record was written: its span and its metrics. Never raises: a
        telemetry fault must not touch the request (it is logged with the request id)."""
        try:
            if self.metrics is not None:
                self.metrics.record(record, facts)
            if self.tracer is not None:
                self._span(self.tracer, record, facts)
        except Exception:
            log.exception("telemetry failed", extra={"request_id": record.request_id})

    def stream_done(self, busy_s: float, messages: int) -> None:
        if self.metrics is not None:
            self.metrics.stream_done(busy_s, messages)

    def _span(self, tracer: Tracer, record: AuditRecord, facts: at.RequestFacts) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = None
        if facts.traceparent:
            carrier = {"traceparent": facts.traceparent}
            if facts.tracestate:
                carrier["tracestate"] = facts.tracestate
            parent = TraceContextTextMapPropagator().extract(carrier)
        start_ns = int(record.time.timestamp() * 1e9)
        span = tracer.start_span(
            at.span_name(record),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=at.span_attributes(record, facts, self.config),
            start_time=start_ns,
        )
        error = at.error_type(record)
        if error is not None:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=start_ns + int(record.latency_ms * 1e6))

    def shutdown(self) -> None:
        """Flush spans and metrics still buffered; stop the /metrics server."""
        for stop in reversed(self._shutdowns):
            try:
                stop()
            except Exception:  # an exporter failing at exit must not block the shutdown
                log.exception("telemetry shutdown step failed")


def resource(environ: Mapping[str, str], worker: int) -> Resource:
    """OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES (read by the SDK), a default service name,
    and a per-worker instance id so the workers' OTLP metric streams never collide."""
    from opentelemetry.sdk.resources import Resource

    attrs: dict[str, Any] = {"gateway.worker": worker}
    declared = environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    if not environ.get("OTEL_SERVICE_NAME") and "service.name=" not in declared:
        attrs["service.name"] = SERVICE_NAME
    if "service.instance.id=" not in declared:
        attrs["service.instance.id"] = f"{socket.gethostname()}-{os.getpid()}-w{worker}"
    return Resource.create(attrs)


def _tracer_provider(protocol: Protocol, res: Resource) -> TracerProvider:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if protocol is Protocol.HTTP:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    provider = TracerProvider(resource=res)  # the sampler: OTEL_TRACES_SAMPLER (+ _ARG)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def _meter_provider(
    config: ObservabilityConfig, protocol: Protocol | None, res: Resource, port: int
) -> tuple[MeterProvider, int | None, Callable[[], object] | None]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader

    readers: list[MetricReader] = []
    bound: int | None = None
    stop_server: Callable[[], object] | None = None
    if config.metrics:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry, start_http_server

        registry = CollectorRegistry()
        readers.append(PrometheusMetricReader(registry=registry))
        httpd, _thread = start_http_server(port, addr=config.metrics_host, registry=registry)
        bound = int(httpd.server_port)
        stop_server = httpd.shutdown
    if protocol is Protocol.HTTP:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    elif protocol is Protocol.GRPC:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (  # type: ignore[assignment]
            OTLPMetricExporter,
        )

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    return MeterProvider(resource=res, metric_readers=readers), bound, stop_server


def start_telemetry(
    config: ObservabilityConfig,
    environ: Mapping[str, str],
    *,
    worker: int,
    metrics_port: int,
    current: Callable[[], Observed | None],
) -> Telemetry:
    """This worker's pipeline: traces when an OTLP endpoint is configured, the /metrics endpoint
    on `metrics_port` (0: any free port) unless disabled, OTLP metrics when configured."""
    traces = otlp_protocol(environ, "traces")
    otlp_metrics = otlp_protocol(environ, "metrics")
    if traces is None and otlp_metrics is None and not config.metrics:
        return Telemetry(config)
    res = resource(environ, worker)
    tracer = None
    shutdowns: list[Callable[[], object]] = []
    if traces is not None:
        tracer_provider = _tracer_provider(traces, res)
        tracer = tracer_provider.get_tracer("gateway_extproc")
        shutdowns.append(tracer_provider.shutdown)
        log.info("exporting traces by OTLP (%s)", traces.value)
    metrics = None
    bound = None
    if config.metrics or otlp_metrics is not None:
        from gateway_extproc.observability.metrics import GatewayMetrics

        meter_provider, bound, stop_server = _meter_provider(
            config, otlp_metrics, res, metrics_port
        )
        metrics = GatewayMetrics(meter_provider.get_meter("gateway_extproc"), config, current)
        shutdowns.append(meter_provider.shutdown)
        if stop_server is not None:
            shutdowns.append(stop_server)
    telemetry = Telemetry(config, tracer, metrics)
    telemetry.metrics_port = bound
    telemetry._shutdowns = shutdowns
    return telemetry
