"""Reconcile a provider's UTC day now: pull its reports, compare them with the day's rollups,
store both beside the rollups, update the drift metrics, and alert a threshold crossing once.

The I/O edge around the pure `reconcile` package, shared by RunReconciliation (admin API), the
schedule (recon_schedule.py) and the spend page's reads (`stored`). Runs on sidecar worker 0,
never on the request path. Errors name the provider and what failed, never an admin key.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Protocol

import httpx
import orjson

from gateway_extproc.admin.budget_api import AdminError
from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.alerts import AlertSender
from gateway_extproc.budgets.scripts import redis_errors
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.pricing import format_usd
from gateway_extproc.observability.collected import ReconcileGauge
from gateway_extproc.reconcile import store as recon_store
from gateway_extproc.reconcile.compare import reconcile_day
from gateway_extproc.reconcile.fetch import FetchError
from gateway_extproc.reconcile.openai_report import ReportShapeError
from gateway_extproc.reconcile.pull import pull_day
from gateway_extproc.reconcile.results import DayResult, Drift, drifts
from gateway_extproc.reconcile.settings import ReconcileSettings
from gateway_extproc.spend.query import DayRange
from gateway_extproc.spend.rollup import expire_at_ms

if TYPE_CHECKING:
    from gateway_extproc.catalog.models import Catalog
    from gateway_extproc.observability.telemetry import Telemetry

log = logging.getLogger("gateway.reconcile")

ALERT_TYPE = "gateway.reconcile_alert.v1"
SCHEDULE, ADMIN = "schedule", "admin"  # what started a run (metrics, logs)


class ReconcileError(RuntimeError):
    """A day could not be reconciled (a report unreadable, a key refused, no such provider)."""


class ReconcileConfig(Protocol):
    @property
    def reconcile(self) -> ReconcileSettings: ...


class ReconcileContext(Protocol):
    """What a run reads of the running configuration's context (a view of
    `extproc.context.GatewayContext`)."""

    @property
    def config(self) -> ReconcileConfig: ...
    @property
    def catalog(self) -> Catalog: ...
    @property
    def telemetry(self) -> Telemetry: ...


def alert_payload(drift: Drift, now: float) -> bytes:
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).isoformat(timespec="milliseconds")
    return orjson.dumps(
        {
            "type": ALERT_TYPE,
            "time": stamp.replace("+00:00", "Z"),
            "provider": drift.provider,
            "day": drift.day.isoformat(),
            "kind": drift.kind,
            "amount_micros": drift.amount_micros,
            "amount_usd": format_usd(drift.amount_micros),
            "threshold": drift.threshold,
            "provider_cost_micros": drift.provider_cost_micros,
            "gateway_cost_micros": drift.gateway_cost_micros,
            "capture_rate": drift.capture_rate,
            "models": [{"model": m, "amount_micros": v} for m, v in drift.models],
        }
    )


def _describe(drift: Drift) -> str:
    return (
        f"reconciliation drift: {drift.provider} {drift.day}: {drift.kind} "
        f"${format_usd(drift.amount_micros)} (over {drift.threshold}; capture "
        f"{drift.capture_rate or 'n/a'})"
    )


class Reconciler:
    """Worker 0's reconciliation runs. `start` / `close` own the HTTP client and the alert
    sender (budgets/alerts.py's delivery: bounded retries, URL secrets kept out of logs)."""

    def __init__(
        self,
        mock_url: str | None,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._mock_url = mock_url
        self._environ = environ
        self._clock = clock
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.alerts = AlertSender(webhooks={})

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(transport=self._transport)
        await self.alerts.start()

    async def close(self) -> None:
        await self.alerts.close()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run(
        self,
        ctx: ReconcileContext,
        store: BudgetStore,
        providers: Sequence[str],
        day: dt.date,
        trigger: str,
    ) -> list[DayResult]:
        """Reconcile `day` for each provider (in order; the first failure raises
        ReconcileError or BudgetStoreError, after the providers before it were stored)."""
        out = []
        for name in providers:
            try:
                out.append(await self._one(ctx, store, name, day))
            except (ReconcileError, FetchError) as exc:
                self._count(ctx, trigger, "failed")
                raise ReconcileError(str(exc)) from None
            except ReportShapeError as exc:
                self._count(ctx, trigger, "failed")
                raise ReconcileError(f"{name}: a report had an unexpected shape: {exc}") from None
            except Exception:
                self._count(ctx, trigger, "failed")
                raise
            self._count(ctx, trigger, "ok")
        return out

    async def _one(
        self, ctx: ReconcileContext, store: BudgetStore, provider: str, day: dt.date
    ) -> DayResult:
        settings = ctx.config.reconcile
        found = settings.provider(provider)
        if found is None:
            raise ReconcileError(f"provider {provider!r} is not reconciled here")
        try:
            reports = found.resolved(self._mock_url)
        except ValueError as exc:
            raise ReconcileError(str(exc)) from None
        if self._client is None:
            raise ReconcileError("the reconciler is not started")
        rows = await pull_day(reports, day, self._client, self._environ)
        catalog = ctx.catalog

        def canonical(model: str) -> str:
            entry = catalog.lookup(model)
            return model if entry is None else entry.name

        expire = expire_at_ms(day, store.rollups)
        with redis_errors("reconcile"):
            await recon_store.save_day(store.client, store.key_base, provider, day, rows, expire)
            rollups = await read_days(store, DayRange(day, day))
        result = DayResult(
            provider, day, self._clock(), tuple(reconcile_day(rollups, rows, reports, canonical))
        )
        with redis_errors("reconcile"):
            await recon_store.save_result(store.client, store.key_base, result, expire)
        total = result.total
        log.info(
            "reconciled %s %s: gateway $%s, provider $%s, capture %s, unexplained $%s",
            provider,
            day,
            format_usd(total.gateway.cost_micros),
            format_usd(total.reported.cost_micros),
            total.capture_rate or "n/a",
            format_usd(total.explained.unexplained),
        )
        self._gauges(ctx, result)
        await self._alert(ctx, store, result, expire)
        return result

    def _count(self, ctx: ReconcileContext, trigger: str, outcome: str) -> None:
        metrics = ctx.telemetry.metrics
        if metrics is not None:
            metrics.reconcile_runs.add(1, {"gateway.outcome": outcome, "gateway.trigger": trigger})

    def _gauges(self, ctx: ReconcileContext, result: DayResult) -> None:
        metrics = ctx.telemetry.metrics
        if metrics is None:
            return
        gauges = metrics.collected.reconcile
        latest = max((g.day for (p, _), g in gauges.items() if p == result.provider), default="")
        day = result.day.isoformat()
        if day < latest:  # a re-run of an older day: the gauges show the latest day
            return
        for key in [k for k in gauges if k[0] == result.provider]:
            del gauges[key]
        for c in result.comparisons:
            ratio = None
            if c.reported.cost_micros > 0:
                ratio = c.gateway.cost_micros / c.reported.cost_micros
            gauges[(result.provider, c.model)] = ReconcileGauge(
                day, ratio, c.explained.unexplained, c.reported.outside_cost_micros
            )

    async def _alert(
        self, ctx: ReconcileContext, store: BudgetStore, result: DayResult, expire: int
    ) -> None:
        alert = ctx.config.reconcile.alert
        for drift in drifts(result, alert):
            with redis_errors("reconcile alert"):
                first = await recon_store.claim_alert(
                    store.client, store.key_base, drift.provider, drift.day, drift.kind, expire
                )
            if not first:
                continue
            log.warning("%s", _describe(drift))
            metrics = ctx.telemetry.metrics
            if metrics is not None:
                labels = {"gen_ai.provider.name": drift.provider}
                metrics.reconcile_alerts.add(1, {**labels, "gateway.reconcile.kind": drift.kind})
            if alert.webhook is not None:
                self.alerts.post(
                    alert.webhook, alert_payload(drift, self._clock()), _describe(drift)
                )


def chosen_providers(settings: ReconcileSettings, asked: Sequence[str]) -> list[str]:
    """The providers a request names (none: every configured one). Raises AdminError."""
    if not settings.enabled:
        raise AdminError(
            "FAILED_PRECONDITION", "reconciliation is not configured (no reconcile.providers)"
        )
    configured = [p.provider for p in settings.providers]
    for name in asked:
        if name not in configured:
            raise AdminError(
                "INVALID_ARGUMENT",
                f"provider {name!r} is not reconciled here (configured: {', '.join(configured)})",
            )
    return [p for p in configured if p in asked] if asked else configured


async def stored(
    store: BudgetStore, providers: Sequence[str], days: DayRange
) -> tuple[list[DayResult], list[tuple[str, dt.date]]]:
    """The stored results of `providers` over `days` (by day, then provider), and the
    (provider, day) pairs never reconciled."""
    wanted = [(p, d) for d in days.days() for p in providers]
    with redis_errors("reconcile"):
        found = await recon_store.load_results(store.client, store.key_base, wanted)
    return [found[k] for k in wanted if k in found], [k for k in wanted if k not in found]
