"""Reconciliation results stored and served (issue 28): the Redis store (idempotent per provider
and day, the rollups' expiry, alert and schedule claims that one caller wins), the drift
thresholds, the ReconciliationService on the admin API's gRPC server (same credentials and
groups, audited runs), the drift webhook through budgets/alerts.py's delivery, and the schedule's
tick. Real redis-server, the mock provider in-process on an ephemeral port, a webhook receiver
on another."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest
from aiohttp import web
from redis.asyncio import Redis

from gateway_extproc.admin import recon_schedule
from gateway_extproc.admin import server as admin_server
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.api import AdminClient
from gateway_extproc.admin.recon_runner import ALERT_TYPE, Reconciler
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.mock.testing import RunningMock, running_mock
from gateway_extproc.reconcile import store as recon_store
from gateway_extproc.reconcile.compare import Comparison, Explained, GatewaySide, ProviderSide
from gateway_extproc.reconcile.results import OUTSIDE, UNEXPLAINED, DayResult, drifts
from gateway_extproc.reconcile.rows import Tokens
from gateway_extproc.reconcile.settings import AlertThresholds, parse_reconcile
from gateway_extproc.runtime import build_context, close_context, start_context
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage
from tests.redis_servers import RedisEndpoint, redis_standalone_server  # noqa: F401
from tests.sidecar_secrets import ENV as SIDECAR_ENV

DAY = dt.date(2026, 12, 6)
ENV = {"OPENAI_ADMIN_KEY": "sk-admin-mock-openai", "ANTHROPIC_ADMIN_KEY": "sk-ant-admin01-mock"}
EXACT = {"x-mock-input-tokens": "100", "x-mock-output-tokens": "10"}  # 21 micros on gpt-4o-mini


def comparison(model: str, gateway: int, provider: int, unexplained: int, outside: int = 0) -> Any:
    return Comparison(
        "openai",
        DAY,
        model,
        GatewaySide(Tokens(input=100, output=10), 2, gateway, 0),
        ProviderSide(Tokens(input=100, output=10), 2, provider, Tokens(), outside),
        gateway - provider,
        None,
        Explained(outside=-outside, unexplained=unexplained),
    )


def result(*items: Comparison) -> DayResult:
    return DayResult("openai", DAY, 1_700_000_000.5, items)


# -- pure: JSON and thresholds -------------------------------------------------------------------


def test_a_result_survives_json_exactly() -> None:
    r = result(comparison("gpt-4o", 100, 90, 10), comparison("gpt-4o-mini", 5, 7, 0, 2))
    back = DayResult.from_json(orjson.loads(orjson.dumps(r.to_json())))
    assert back == r
    assert back.total.model == "*" and back.total.gateway.cost_micros == 105
    assert back.total.explained == Explained(outside=-2, unexplained=10)


@pytest.mark.parametrize(
    ("alert", "kinds"),
    [
        (AlertThresholds(), []),
        (AlertThresholds(unexplained_pct=Decimal("0.5")), [UNEXPLAINED]),  # 10/1000 = 1 %
        (AlertThresholds(unexplained_pct=Decimal("1")), []),  # exactly 1 %: not over
        (AlertThresholds(unexplained_micros=9), [UNEXPLAINED]),
        (AlertThresholds(unexplained_micros=10), []),
        (AlertThresholds(outside_micros=0), [OUTSIDE]),
        (AlertThresholds(outside_micros=50), []),
        (AlertThresholds(unexplained_micros=1, outside_micros=1), [UNEXPLAINED, OUTSIDE]),
    ],
)
def test_drift_thresholds(alert: AlertThresholds, kinds: list[str]) -> None:
    r = result(comparison("gpt-4o", 1010, 1000, 10, 50))
    assert [d.kind for d in drifts(r, alert)] == kinds


def test_unexplained_spend_on_a_day_the_provider_billed_nothing_crosses_any_percentage() -> None:
    r = result(comparison("gpt-4o", 650, 0, 650))
    (d,) = drifts(r, AlertThresholds(unexplained_pct=Decimal(50)))
    assert (d.amount_micros, d.models) == (650, (("gpt-4o", 650),))


def test_alert_settings_are_parsed_and_checked() -> None:
    problems: list[str] = []
    s = parse_reconcile(
        {
            "rerun_days": 3,
            "alert": {"unexplained_pct": 0.5, "unexplained_usd_per_day": "5", "webhook": "x"},
        },
        problems,
    )
    assert s.rerun_days == 3 and s.alert.unexplained_pct == Decimal("0.5")
    assert s.alert.unexplained_micros == 5_000_000
    assert problems == ["reconcile.alert.webhook: must be an http(s) URL"]
    problems = []
    parse_reconcile(
        {"rerun_days": -1, "alert": {"webhook": "https://h.example/x", "outside_usd_per_day": -2}},
        problems,
    )
    assert problems == [
        "reconcile.rerun_days: must be an integer 0..31",
        "reconcile.alert.outside_usd_per_day: must be a number >= 0, got -2",
        "reconcile.alert: a webhook without a threshold never fires: set unexplained_pct, "
        "unexplained_usd_per_day or outside_usd_per_day",
    ]


# -- the store on a real redis-server ----------------------------------------------------------


@pytest.fixture
async def redis(redis_standalone_server: RedisEndpoint) -> AsyncIterator[Redis]:  # noqa: F811
    node = redis_standalone_server
    client = Redis(host=node.host, port=node.port)
    yield client
    await client.aclose()


async def test_results_are_stored_once_per_provider_and_day_with_the_rollups_expiry(
    redis: Redis,
) -> None:
    base = f"P:{{t{uuid.uuid4().hex[:6]}}}"
    expire_ms = int(time.time() * 1000) + 3_600_000
    first = result(comparison("gpt-4o", 100, 90, 10))
    second = result(comparison("gpt-4o", 100, 100, 0))
    await recon_store.save_result(redis, base, first, expire_ms)
    await recon_store.save_result(redis, base, second, expire_ms)  # a re-run replaces it
    assert await redis.keys(f"{base}:*") == [recon_store.result_key(base, "openai", DAY).encode()]
    left = await redis.pttl(recon_store.result_key(base, "openai", DAY))  # no PEXPIRETIME in 6.2
    assert abs(time.time() * 1000 + left - expire_ms) < 5_000
    other = DAY + dt.timedelta(days=1)
    found = await recon_store.load_results(redis, base, [("openai", DAY), ("openai", other)])
    assert found == {("openai", DAY): second}
    rows: list[Any] = []
    await recon_store.save_day(redis, base, "openai", DAY, rows, expire_ms)
    assert await recon_store.load_day(redis, base, "openai", DAY) == []
    assert await recon_store.load_day(redis, base, "openai", other) is None


async def test_alert_and_run_claims_are_won_once(redis: Redis) -> None:
    base = f"P:{{t{uuid.uuid4().hex[:6]}}}"
    expire_ms = int(time.time() * 1000) + 3_600_000
    claims = [
        recon_store.claim_alert(redis, base, "openai", DAY, UNEXPLAINED, expire_ms)
        for _ in range(5)
    ]
    assert sorted(await asyncio.gather(*claims)) == [False] * 4 + [True]
    assert await recon_store.claim_alert(redis, base, "openai", DAY, OUTSIDE, expire_ms)
    runs = [recon_store.claim_run(redis, base, DAY, 60_000) for _ in range(5)]
    assert sorted(await asyncio.gather(*runs)) == [False] * 4 + [True]
    assert not await recon_store.is_done(redis, base, DAY)
    await recon_store.run_done(redis, base, DAY, 60_000)
    assert await recon_store.is_done(redis, base, DAY)
    assert not await recon_store.claim_run(redis, base, DAY, 60_000)


# -- the service on the admin API's server ------------------------------------------------------

CONFIG = """
identity:
  static_tokens:
{tokens}
admin_api:
  enabled: true
  read_groups: [finance]
  write_groups: [admins]
  static_tokens: [root, finance]
budget_store:
  key_prefix: {prefix}
audit:
  stdout: false
  file: {audit}
reconcile:
  schedule: "00:00"
  rerun_days: 1
  providers:
    openai: {{base_url: mock, projects: [proj_default]}}
  alert:
    unexplained_usd_per_day: 0
    outside_usd_per_day: 0
    webhook: {webhook}
"""


class Service:
    def __init__(
        self,
        ctx: GatewayContext,
        channel: grpc.aio.Channel,
        mock: RunningMock,
        reconciler: Reconciler,
        hooks: list[dict[str, Any]],
    ) -> None:
        self.ctx, self.channel, self.mock = ctx, channel, mock
        self.reconciler, self.hooks = reconciler, hooks

    async def call(self, method: str, request: Any, who: str = "root") -> Any:
        return await AdminClient(self.channel, f"secret-{who}").call(method, request)

    def audit(self) -> list[dict[str, Any]]:
        self.ctx.audit.flush(5)
        path = self.ctx.config.audit_file
        assert path is not None
        return [orjson.loads(line) for line in Path(path).read_bytes().splitlines()]


@pytest.fixture
async def service(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Service]:
    hooks: list[dict[str, Any]] = []
    received = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        hooks.append(await request.json())
        received.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook/{secret}", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook/s3cret"
    tokens = "\n".join(
        f'    {n}: {{sha256: "{hashlib.sha256(f"secret-{n}".encode()).hexdigest()}", '
        f"groups: [{g}]}}"
        for n, g in (("root", "admins"), ("finance", "finance"))
    )
    config = tmp_path / "gateway.yaml"
    config.write_text(
        CONFIG.format(
            tokens=tokens,
            prefix=f"t{uuid.uuid4().hex[:8]}",
            audit=tmp_path / "audit.jsonl",
            webhook=hook_url,
        )
    )
    node = redis_standalone_server
    env = {"GATEWAY_REDIS_URL": f"redis://{node.host}:{node.port}/0", **SIDECAR_ENV, **ENV}
    async with running_mock() as mock:
        ctx = build_context(config, env, mock.openai_base_url)
        await start_context(ctx)
        reconciler = Reconciler(mock.openai_base_url, env)
        await reconciler.start()
        server, port = await admin_server.start(lambda: ctx, "127.0.0.1:0", reconciler=reconciler)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Service(ctx, channel, mock, reconciler, hooks)
        await server.stop(None)
        await reconciler.close()
        await close_context(ctx)
        await ctx.budgets.services.close()
        ctx.audit.close()
    await runner.cleanup()


async def bill_and_roll_up(s: Service, requests: int) -> None:
    """Requests the mock bills (today, UTC) and their rollups, as the gateway records them."""
    store = s.ctx.budgets.store
    assert store is not None
    async with httpx.AsyncClient(base_url=s.mock.url) as client:
        for i in range(requests):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
            r = await client.post("/v1/chat/completions", json=body, headers=EXACT)
            assert r.status_code == 200, r.text
            dims = Dimensions(user="alice", model="gpt-4o-mini", provider="openai")
            usage = UsageRecord(
                time.time(), dims, Usage(input_tokens=100, output_tokens=10), 21, False
            )
            await store.record_usage(f"r{uuid.uuid4().hex}{i}", usage, time.time())


async def test_run_stores_serves_audits_and_alerts_once(service: Service) -> None:
    s = service
    today = dt.datetime.now(dt.UTC).date().isoformat()
    await bill_and_roll_up(s, 2)
    run = await s.call("RunReconciliation", pb.RunReconciliationRequest(day=today, reason="t"))
    (day,) = run.days
    assert (day.provider, day.day, day.total.capture_rate) == ("openai", today, "100.0 %")
    assert day.total.gateway_cost_micros == day.total.provider_cost_micros == 42
    assert day.total.unexplained_micros == 0 and [r.model for r in day.rows] == ["gpt-4o-mini"]
    assert day.rows[0].gateway_tokens == day.rows[0].provider_tokens
    got = await s.call("GetReconciliation", pb.GetReconciliationRequest(day=today), "finance")
    assert list(got.days) == [day] and list(got.missing) == []
    yesterday = (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()
    got = await s.call(
        "GetReconciliation",
        pb.GetReconciliationRequest(dates=pb.DateRange(since=yesterday, until=today)),
    )
    assert list(got.days) == [] and list(got.missing) == [f"openai {yesterday}"]
    (line,) = s.audit()
    assert line["method"] == "RunReconciliation" and line["caller"]["subject"] == "root"
    assert line["change"]["days"][0]["capture_rate"] == "100.0 %" and line["reason"] == "t"
    assert s.hooks == []  # nothing drifted

    # A price change the catalog missed: unexplained, alerted once however often it is re-run.
    async with httpx.AsyncClient(base_url=s.mock.url) as client:
        r = await client.post("/_mock/reports", json={"price_factor": {"openai": "1.5"}})
        assert r.status_code == 200
    for _ in range(2):
        run = await s.call("RunReconciliation", pb.RunReconciliationRequest(day=today, reason="t"))
        assert run.days[0].total.unexplained_micros == 42 - 63
    await s.reconciler.alerts.close()  # delivers what is queued
    (hook,) = s.hooks
    assert hook["type"] == ALERT_TYPE and hook["kind"] == UNEXPLAINED
    assert (hook["provider"], hook["day"], hook["amount_micros"]) == ("openai", today, 21)
    assert hook["capture_rate"] == "66.7 %"
    assert hook["models"] == [{"model": "gpt-4o-mini", "amount_micros": -21}]


async def test_reads_need_a_read_group_and_runs_a_write_group(service: Service) -> None:
    s = service
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.call("RunReconciliation", pb.RunReconciliationRequest(reason="x"), "finance")
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.call("GetReconciliation", pb.GetReconciliationRequest(providers=["anthropic"]))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await AdminClient(s.channel, "nope").call(
            "GetReconciliation", pb.GetReconciliationRequest()
        )
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    tomorrow = (dt.datetime.now(dt.UTC).date() + dt.timedelta(days=1)).isoformat()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.call("RunReconciliation", pb.RunReconciliationRequest(day=tomorrow, reason="x"))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert s.audit() == []


async def test_a_refused_admin_key_is_unavailable_and_names_no_key(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = service
    monkeypatch.setitem(s.reconciler._environ, "OPENAI_ADMIN_KEY", "sk-serving-key-oops")  # type: ignore[index]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await s.call("RunReconciliation", pb.RunReconciliationRequest(reason="x"))
    assert info.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "admin key was refused" in (info.value.details() or "")
    assert "sk-serving-key-oops" not in (info.value.details() or "")


async def test_the_schedule_runs_once_across_workers_and_retries_a_failure(
    service: Service,
) -> None:
    s = service
    now = time.time()  # schedule 00:00 UTC: due today; rerun_days 1: yesterday and the day before
    other = Reconciler(s.mock.openai_base_url, {})  # a second pod's worker: no admin key at all
    await other.start()
    try:
        ctx: Any = s.ctx
        assert await recon_schedule.tick(ctx, other, now) == "failed"  # logged, not done
        assert await recon_schedule.tick(ctx, s.reconciler, now) == "held"  # hold not expired
        store = s.ctx.budgets.store
        assert store is not None
        await store.client.delete(
            recon_store.run_key(store.key_base, dt.datetime.now(dt.UTC).date())
        )
        ticks = await asyncio.gather(
            *(recon_schedule.tick(ctx, s.reconciler, now) for _ in range(3))
        )
        assert sorted(ticks) == ["done", "held", "held"]
        assert await recon_schedule.tick(ctx, s.reconciler, now) == "idle"
    finally:
        await other.close()
    days = recon_schedule.days_of(dt.datetime.now(dt.UTC).date(), 1)
    got = await s.call(
        "GetReconciliation",
        pb.GetReconciliationRequest(
            dates=pb.DateRange(
                since=days[-1].isoformat(), until=(days[0] + dt.timedelta(days=1)).isoformat()
            )
        ),
    )
    assert [d.day for d in got.days] == [d.isoformat() for d in reversed(days)]
