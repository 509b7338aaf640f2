"""A fixed caller token and state key for tests that start a sidecar, or generate Envoy's
bootstrap, outside `Stack` (which makes fresh ones per run)."""

from __future__ import annotations

from gateway_extproc.envoy.filters import SidecarAccess
from gateway_extproc.sidecar_auth.guard import SidecarAuth
from gateway_extproc.sidecar_auth.settings import (
    DEFAULT_STATE_KEYS_ENV,
    DEFAULT_TOKEN_ENV,
    SidecarSecrets,
)

CALLER_TOKEN = "test-caller-token-0123456789abcdefghijklmnop"
STATE_KEY = "test-state-key-0123456789abcdefghijklmnopqrs"
# What the sidecar and `gatewayctl envoy-config` read with the built-in configuration.
ENV = {DEFAULT_TOKEN_ENV: CALLER_TOKEN, DEFAULT_STATE_KEYS_ENV: STATE_KEY}
ACCESS = SidecarAccess(CALLER_TOKEN)
# gRPC metadata a direct client (playing Envoy) sends.
METADATA = (("x-gateway-sidecar-token", CALLER_TOKEN),)


def sidecar_auth() -> SidecarAuth:
    return SidecarAuth.of(SidecarSecrets((CALLER_TOKEN.encode(),), (STATE_KEY.encode(),), None))
