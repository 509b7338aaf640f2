"""What every stream processor shares: built once at start-up, immutable afterwards."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

from gateway_extproc.audit import AuditSink
from gateway_extproc.budgets.gate import BudgetGate
from gateway_extproc.cache.service import ResponseCache
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.config.upstreams import Upstream
from gateway_extproc.identity.authenticator import Authenticator
from gateway_extproc.observability.telemetry import Telemetry
from gateway_extproc.providers.azure.entra import EntraTokens
from gateway_extproc.providers.vertex.tokens import TokenSources
from gateway_extproc.sidecar_auth.guard import SidecarAuth


class PendingEnds:
    """Requests whose end (settle, audit) waits for their response body's parse in the
    body-parsing thread (observe mode, large JSON bodies). A context closes only after they
    have ended: their settles and cache stores use it."""

    def __init__(self) -> None:
        self._futures: set[asyncio.Future[Any]] = set()

    def add(self, future: asyncio.Future[Any]) -> None:
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)

    def __len__(self) -> int:
        return len(self._futures)

    async def drain(self, timeout_s: float = 10.0) -> None:
        if self._futures:
            await asyncio.wait(list(self._futures), timeout=timeout_s)


@dataclasses.dataclass(frozen=True)
class GatewayContext:
    config: GatewayConfig
    catalog: Catalog
    upstreams: dict[str, Upstream]
    audit: AuditSink
    authenticator: Authenticator
    budgets: BudgetGate
    # The caller check, the state seal and their counters: process-lifetime, kept by reloads.
    sidecar_auth: SidecarAuth
    # Reported-model mismatches by kind (model_mismatch.MismatchKind), for metrics.
    model_mismatches: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    # Spans and metrics: process-lifetime, handed to every context a reload builds. Off by default.
    telemetry: Telemetry = dataclasses.field(default_factory=Telemetry)
    # The response cache of this configuration (off without cache rules).
    cache: ResponseCache = dataclasses.field(default_factory=ResponseCache.off)
    # The admin API's callers (admin/auth.py), sharing `authenticator`'s signing keys.
    admin_authenticator: Authenticator | None = None
    pending_ends: PendingEnds = dataclasses.field(default_factory=PendingEnds)
    # Vertex AI access tokens: process-lifetime, handed to every context a reload builds.
    vertex_tokens: TokenSources = dataclasses.field(default_factory=TokenSources)
    # Entra ID token sources (Azure): process-lifetime; this context holds its upstreams' ones.
    entra_tokens: EntraTokens = dataclasses.field(default_factory=EntraTokens)
    monotonic: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
