"""The OTLP exporters import in this environment. xds-protos (Envoy's API) ships an older copy of
opentelemetry/proto/*_pb2.py than opentelemetry-proto; whichever pip installs last wins, and the
old one breaks the exporters (`make` reinstalls opentelemetry-proto last to prevent that)."""

from __future__ import annotations


def test_the_otlp_exporters_import() -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpExporter,
    )
    from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope

    assert OTLPSpanExporter and HttpExporter
    assert "name" in InstrumentationScope.DESCRIPTOR.fields_by_name
