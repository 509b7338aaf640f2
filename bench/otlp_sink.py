"""An OTLP/gRPC collector that accepts spans and metrics and drops them: the bench's
`gateway+otel` setup exports to it, so the overhead measured is the gateway's own (span
building, batching, the export call), not a real collector's."""

from __future__ import annotations

from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as mpb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc as mgrpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as tpb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc as tgrpc


class _Traces(tgrpc.TraceServiceServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: tpb.ExportTraceServiceRequest, context: Any) -> Any:
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return tpb.ExportTraceServiceResponse()


class _Metrics(mgrpc.MetricsServiceServicer):  # type: ignore[misc]
    def Export(self, request: mpb.ExportMetricsServiceRequest, context: Any) -> Any:
        return mpb.ExportMetricsServiceResponse()


class Sink:
    def __init__(self) -> None:
        self.traces = _Traces()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        tgrpc.add_TraceServiceServicer_to_server(self.traces, self.server)
        mgrpc.add_MetricsServiceServicer_to_server(_Metrics(), self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(None)
