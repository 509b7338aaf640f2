"""The process-lifetime budget services (the budget store's Redis client, settlement, the
fail-open journal, alerts) and the budget gate one configuration runs over them."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from gateway_extproc.budgets.alerts import AlertSender, webhooks_of
from gateway_extproc.budgets.gate import BudgetGate, GateSettings
from gateway_extproc.budgets.journal import Journal
from gateway_extproc.budgets.loader import BudgetStoreConfig
from gateway_extproc.budgets.pipe import ScriptPipe
from gateway_extproc.budgets.services import BudgetServices
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.config.gateway import GatewayConfig
from gateway_extproc.spend.rollup import RollupSettings

log = logging.getLogger("gateway.runtime")


def gate_settings(config: GatewayConfig) -> GateSettings:
    sc = config.budget_store
    return GateSettings(
        deadline_s=sc.deadline_ms / 1000,
        lease_s=float(sc.lease_s),
        breaker_failures=sc.breaker_failures,
        breaker_open_s=sc.breaker_open_s,
        default_max_output_tokens=sc.default_max_output_tokens,
        reap_interval_s=sc.reap_interval_s,
        unseen_input=sc.unseen_input,
        max_inflight=sc.max_inflight,
        queue_timeout_s=sc.queue_timeout_ms / 1000,
    )


def connect_store(
    sc: BudgetStoreConfig, pool_size: int, rollups: RollupSettings | None = None
) -> tuple[BudgetStore, Redis | RedisCluster]:
    """The budget store's Redis client. Socket timeouts bound every call even if a caller forgets
    its deadline; no client-side retries (a dead Redis would otherwise hold a call for ~20 s); a
    pool as large as the calls the services let run at once (they queue the rest)."""
    options: dict[str, object] = {
        "socket_timeout": 2.0,
        "socket_connect_timeout": 1.0,
        "retry": Retry(NoBackoff(), 0),
        "max_connections": pool_size,
    }
    if sc.redis_password is not None:
        options["password"] = sc.redis_password
    client: Redis | RedisCluster
    if sc.cluster:
        client = RedisCluster.from_url(sc.redis_url, **options)
    else:
        client = Redis.from_url(sc.redis_url, **options)  # type: ignore[arg-type]
    pipe = ScriptPipe.for_client(client)  # the scripts' lean path (budgets/pipe.py)
    return BudgetStore(client, sc.key_prefix, rollups=rollups, pipe=pipe), client


def build_services(config: GatewayConfig, journal: Journal | None = None) -> BudgetServices:
    """The process-lifetime budget services; no Redis client when no budget is configured and
    the admin API is off (with one, every billed request's spend is rolled up for reports)."""
    settings = gate_settings(config)
    store: BudgetStore | None = None
    close_client: Callable[[], Awaitable[None]] | None = None
    if config.uses_store:
        store, client = connect_store(config.budget_store, settings.max_inflight, config.spend)

        async def close_both() -> None:
            await store.aclose()
            await client.aclose()

        close_client = close_both
    alerts = AlertSender(webhooks=webhooks_of(config.budgets))
    return BudgetServices(
        store, settings, alerts=alerts, close_client=close_client, journal=journal
    )


def build_gate(config: GatewayConfig, services: BudgetServices | None = None) -> BudgetGate:
    """The budget gate of one configuration, over the running services (or new ones)."""
    if services is None:
        services = build_services(config)
    elif (config.budgets or config.rate_limits) and services.store is None:
        log.warning(
            "budgets or rate limits were added by a reload but the sidecar started without a "
            "budget store: restart it to connect to Redis (until then the budgets' "
            "on_redis_error applies; rate limits admit)"
        )
    return BudgetGate(
        services.store,
        config.budgets,
        config.catalog,
        lambda entry: entry.provider,
        gate_settings(config),
        services=services,
        rate_limits=config.rate_limits,
    )
