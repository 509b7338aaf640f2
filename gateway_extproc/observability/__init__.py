"""Traces and metrics: OpenTelemetry GenAI conventions plus the gateway's own spend signals."""
