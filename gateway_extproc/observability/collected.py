"""The metrics observed at collection time, by callbacks: budgets as last seen (the per-request
path updates `budgets`) and the counters the process already keeps (budget store errors, breaker,
JWKS, audit drops, refused streams, ...). Nothing here runs on the request path. Declared beside
the per-request instruments' module (metrics.py), which owns one of these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from gateway_extproc.observability.settings import ObservabilityConfig

if TYPE_CHECKING:
    from gateway_extproc.audit import AuditSink
    from gateway_extproc.budgets.gate import BudgetGate
    from gateway_extproc.identity.authenticator import Authenticator
    from gateway_extproc.sidecar_auth.guard import SidecarAuth


@dataclasses.dataclass
class BudgetGauge:
    limit: int
    spent: int
    held: int


@dataclasses.dataclass
class ReconcileGauge:
    """One provider and model of the latest day reconciled (reconciliation runs on worker 0)."""

    day: str
    capture_ratio: float | None  # gateway / provider dollars; None: the provider billed nothing
    unexplained: int  # micro-dollars, gateway - provider after the explained parts
    outside: int  # provider spend the gateway never saw, micro-dollars


class Observed(Protocol):
    """What the metric callbacks read of the running configuration's context
    (`extproc.context.GatewayContext`, which holds the metrics' telemetry: a view of it, so
    observability does not import the context back)."""

    @property
    def budgets(self) -> BudgetGate: ...
    @property
    def audit(self) -> AuditSink: ...
    @property
    def authenticator(self) -> Authenticator: ...
    @property
    def model_mismatches(self) -> Mapping[str, int]: ...
    @property
    def sidecar_auth(self) -> SidecarAuth: ...


class CollectedMetrics:
    """The observable instruments and their callbacks, over the current context (`current`)."""

    def __init__(
        self,
        meter: Meter,
        config: ObservabilityConfig,
        current: Callable[[], Observed | None],
    ) -> None:
        self.config = config
        self.current = current
        self.budgets: dict[tuple[str, str], BudgetGauge] = {}
        self.reconcile: dict[tuple[str, str], ReconcileGauge] = {}  # (provider, model)
        m = meter
        for name, unit, desc, fn in (
            (
                "gateway.budget.remaining.micro_usd",
                "{microdollar}",
                "Left as last seen",
                self._remaining,
            ),
            ("gateway.budget.held.micro_usd", "{microdollar}", "Held as last seen", self._held),
            ("gateway.budget.limit.micro_usd", "{microdollar}", "The budget's limit", self._limit),
            ("gateway.budget_store.breaker.open", "1", "1 while the breaker is open", self._open),
            (
                "gateway.reconcile.capture_ratio",
                "1",
                "Gateway / provider dollars of the latest UTC day reconciled (1.0: all captured)",
                self._capture,
            ),
            (
                "gateway.reconcile.unexplained.micro_usd",
                "{microdollar}",
                "Gateway - provider dollars not explained (latest day reconciled)",
                self._unexplained,
            ),
            (
                "gateway.reconcile.outside.micro_usd",
                "{microdollar}",
                "Provider spend outside the gateway's projects / keys (latest day reconciled)",
                self._outside,
            ),
        ):
            m.create_observable_gauge(name, [fn], unit=unit, description=desc)
        for name, unit, desc, fn in (
            ("gateway.budget.overruns", "{request}", "Real cost above the bound", self._overruns),
            (
                "gateway.budget.overrun.micro_usd",
                "{microdollar}",
                "Sum of overruns",
                self._overrun_micros,
            ),
            ("gateway.budget_store.errors", "{error}", "Failed store calls", self._store_errors),
            ("gateway.budget_store.overloaded", "{request}", "503 overloaded", self._overloaded),
            ("gateway.budget_store.breaker.openings", "{event}", "Opened", self._openings),
            ("gateway.budget.fail_open", "{request}", "Admitted unchecked", self._fail_open),
            ("gateway.budget.settle_retries", "{retry}", "Settle retries", self._settle_retries),
            ("gateway.budget.reaped", "{reservation}", "Reaper charges", self._reaped),
            ("gateway.budget.fail_open_dropped", "{request}", "Unreconciled", self._dropped),
            (
                "gateway.budget.vanished",
                "{reservation}",
                "Settles whose reservation record Redis had lost, charged fail-open",
                self._vanished,
            ),
            ("gateway.jwks.refresh.failures", "{fetch}", "JWKS fetch failures", self._jwks_fail),
            ("gateway.audit.dropped", "{record}", "Audit records dropped", self._audit_dropped),
            ("gateway.model_mismatches", "{response}", "Reported model differs", self._mismatch),
            (
                "gateway.sidecar.refused_streams",
                "{stream}",
                "ext_proc streams refused for a missing or wrong caller token, by gateway.reason",
                self._refused_streams,
            ),
            (
                "gateway.handoff.rejected_states",
                "{stream}",
                "Observer streams whose request state failed its MAC (nothing settled, cached "
                "or audited), by gateway.reason",
                self._rejected_states,
            ),
        ):
            m.create_observable_counter(name, [fn], unit=unit, description=desc)

    def _budget_obs(self, field: str) -> Iterable[Observation]:
        per_scope = self.config.budget_scope_values
        for (name, scope), gauge in list(self.budgets.items()):
            labels = {"gateway.budget.name": name}
            if per_scope:
                labels["gateway.budget.scope_value"] = scope
            value = {
                "remaining": gauge.limit - gauge.spent - gauge.held,
                "held": gauge.held,
                "limit": gauge.limit,
            }[field]
            yield Observation(value, labels)

    def _reconcile_obs(self, field: str) -> Iterable[Observation]:
        for (provider, model), gauge in list(self.reconcile.items()):
            labels = {"gen_ai.provider.name": provider, "gen_ai.request.model": model}
            value = getattr(gauge, field)
            if value is not None:
                yield Observation(value, labels)

    def _capture(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._reconcile_obs("capture_ratio")

    def _unexplained(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._reconcile_obs("unexplained")

    def _outside(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._reconcile_obs("outside")

    def _remaining(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._budget_obs("remaining")

    def _held(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._budget_obs("held")

    def _limit(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._budget_obs("limit")

    def _stat(self, read: Callable[[Observed], int]) -> Iterable[Observation]:
        ctx = self.current()
        return [] if ctx is None else [Observation(read(ctx))]

    def _open(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: int(c.budgets.services.breaker.opened_at is not None))

    def _openings(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.breaker.opened)

    def _overruns(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.overruns)

    def _overrun_micros(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.overrun_micros)

    def _store_errors(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.store_errors)

    def _overloaded(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.overloaded)

    def _fail_open(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.fail_open_admitted)

    def _settle_retries(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.settle_retries)

    def _reaped(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.reaped)

    def _dropped(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.reconcile_dropped)

    def _vanished(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.budgets.services.stats.vanished)

    def _audit_dropped(self, _o: CallbackOptions) -> Iterable[Observation]:
        return self._stat(lambda c: c.audit.dropped)

    def _jwks_fail(self, _o: CallbackOptions) -> Iterable[Observation]:
        ctx = self.current()
        if ctx is None:
            return []
        return [
            Observation(cache.fetch_failed, {"gateway.issuer": name})
            for name, cache in ctx.authenticator.jwks.items()
        ]

    def _mismatch(self, _o: CallbackOptions) -> Iterable[Observation]:
        ctx = self.current()
        if ctx is None:
            return []
        return [Observation(n, {"gateway.mismatch": k}) for k, n in ctx.model_mismatches.items()]

    def _refused_streams(self, _o: CallbackOptions) -> Iterable[Observation]:
        ctx = self.current()
        if ctx is None:
            return []
        refused = ctx.sidecar_auth.stats.refused
        return [Observation(n, {"gateway.reason": k}) for k, n in refused.items()]

    def _rejected_states(self, _o: CallbackOptions) -> Iterable[Observation]:
        ctx = self.current()
        if ctx is None:
            return []
        rejected = ctx.sidecar_auth.stats.rejected_states
        return [Observation(n, {"gateway.reason": k}) for k, n in rejected.items()]
