"""LLM spend-governance gateway: the Envoy ext_proc sidecar."""

__version__ = "0.1.0"
