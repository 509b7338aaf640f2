"""The spend page's reconciliation view (issue 28, "the spend page shows them"): its query, the
day blocks (each provider and UTC day, highlighted over the alert thresholds, never-reconciled
days said so), the CSV (`gatewayctl reconcile --format csv`'s columns and bytes), and who may see
it - through the page's aiohttp app on a real redis-server with the gateway's own context:
admins see it and its nav link, everyone else gets 403 and no link, and its CSV is
GetReconciliation's answer."""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from gateway_extproc.admin import recon_api
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.admin.recon_output import CSV_COLUMNS, render_reconciliation
from gateway_extproc.extproc.context import GatewayContext
from gateway_extproc.reconcile import store as recon_store
from gateway_extproc.reconcile.compare import Comparison, Explained, GatewaySide, ProviderSide
from gateway_extproc.reconcile.results import DayResult
from gateway_extproc.reconcile.rows import Tokens
from gateway_extproc.reconcile.settings import AlertThresholds
from gateway_extproc.runtime import build_context, close_context, start_context
from gateway_extproc.spend.query import QueryError
from gateway_extproc.ui import recon_view, server
from gateway_extproc.ui.recon_view import ReconQuery
from tests.redis_servers import RedisEndpoint, redis_standalone_server  # noqa: F401
from tests.sidecar_secrets import ENV as SIDECAR_ENV

TODAY = dt.date(2026, 12, 9)
DAY = dt.date(2026, 12, 6)
RECONCILED_AT = dt.datetime(2026, 12, 7, 2, 31, 5, tzinfo=dt.UTC).timestamp()


def comparison(
    model: str, gateway: int, provider: int, unexplained: int, outside: int = 0, day: dt.date = DAY
) -> Comparison:
    return Comparison(
        "openai",
        day,
        model,
        GatewaySide(Tokens(input=1000, cached_input=200, output=10), 2, gateway, 0),
        ProviderSide(
            Tokens(input=1000, cached_input=200, output=10),
            2,
            provider,
            Tokens(input=50) if outside else Tokens(),
            outside,
        ),
        gateway - provider,
        "100.0 %" if gateway == provider else "99.0 %",
        Explained(outside=-outside, unexplained=unexplained),
    )


def result(*items: Comparison, day: dt.date = DAY) -> DayResult:
    return DayResult("openai", day, RECONCILED_AT, items)


# -- the query ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ([], ReconQuery(dt.date(2026, 12, 2), TODAY)),  # the 7 days the schedule reconciles
        ([("since", ""), ("until", "")], ReconQuery(dt.date(2026, 12, 2), TODAY)),  # the form's
        (
            [("since", "2026-11-01"), ("until", "2026-11-03"), ("provider", "openai")] * 2,
            ReconQuery(dt.date(2026, 11, 1), dt.date(2026, 11, 3), ("openai",)),
        ),
    ],
)
def test_parse_query(params: list[tuple[str, str]], expected: ReconQuery) -> None:
    assert recon_view.parse_query(params, TODAY) == expected
    assert recon_view.parse_query(expected.params(), TODAY) == expected  # a view is its link
    request = expected.request()
    assert (request.dates.since, request.dates.until) == (
        expected.since.isoformat(),
        expected.until.isoformat(),
    )
    assert list(request.providers) == list(expected.providers)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("since", "2026-11-01")], "together"),
        ([("since", "monday"), ("until", "2026-11-03")], "since: a date"),
        ([("since", "2026-11-03"), ("until", "2026-11-03")], "must be after"),
        ([("since", "2026-01-01"), ("until", "2026-12-01")], "at most 92 days"),
        ([("by", "model")], "by: unknown parameter"),
    ],
)
def test_bad_queries_name_the_parameter(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        recon_view.parse_query(params, TODAY)


# -- what the view shows --------------------------------------------------------------------------


def test_days_over_the_thresholds_are_highlighted_and_unreconciled_days_said_so() -> None:
    drifted = result(comparison("gpt-4o", 1010, 1000, 10, 50), comparison("gpt-4o-mini", 5, 5, 0))
    calm = result(comparison("gpt-4o", 7, 7, 0), day=DAY + dt.timedelta(days=1))
    never = DAY - dt.timedelta(days=1)
    alert = AlertThresholds(unexplained_pct=Decimal("0.5"), outside_micros=0)
    shown = recon_view.blocks([drifted, calm], [("openai", never)], alert)
    assert [(b.day, b.reconciled_at is None, b.over) for b in shown] == [
        (never.isoformat(), True, False),  # by day: the never-reconciled day first
        (DAY.isoformat(), False, True),
        ((DAY + dt.timedelta(days=1)).isoformat(), False, False),
    ]
    assert shown[0].rows == []
    over = shown[1]
    assert over.drifts == [
        "unexplained $0.000010 over 0.5 % of the provider's bill",
        "outside $0.000050 over $0 a day",
    ]
    assert over.reconciled_at == "2026-12-07 02:31 UTC"
    assert [r[0] for r in over.rows] == ["gpt-4o", "gpt-4o-mini", "*"]  # the total last
    header = dict(zip(recon_view.ROW_HEADERS, over.rows[0], strict=True))
    assert header["gateway"] == "$0.001010" and header["provider"] == "$0.001000"
    assert header["capture"] == "99.0 %" and header["unexplained"] == "$0.000010"
    assert header["outside"] == "-$0.000050"
    assert header["input tokens"] == "1,000 / 1,000 (+50 outside)"
    assert header["cached input tokens"] == "200 / 200"
    total = dict(zip(recon_view.ROW_HEADERS, over.rows[-1], strict=True))
    assert (
        total["gateway"] == "$0.001015" and total["input tokens"] == "2,000 / 2,000 (+50 outside)"
    )
    # no thresholds configured: nothing is highlighted, and the page says so
    assert not any(b.over for b in recon_view.blocks([drifted], [], AlertThresholds()))
    assert recon_view.thresholds(AlertThresholds()) == ""
    assert recon_view.thresholds(alert) == (
        "unexplained above 0.5 % of the provider's bill, "
        "spend outside the gateway above $0.000000 a day"
    )


def test_csv_is_gatewayctl_reconciles_csv() -> None:
    days = [result(comparison("gpt-4o", 1010, 1000, 10, 50))]
    text = recon_view.recon_csv(days)
    assert text == render_reconciliation([recon_api.day_pb(d) for d in days], [], "csv") + "\n"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [(r["model"], r["gateway_cost_micros"], r["unexplained_usd"]) for r in rows] == [
        ("gpt-4o", "1010", "0.000010"),
        ("*", "1010", "0.000010"),
    ]


# -- who sees it: the page's app on a real redis-server -------------------------------------------

CONFIG = """
identity:
  static_tokens:
{tokens}
admin_api:
  enabled: true
  read_groups: [finance]
  write_groups: [admins]
  static_tokens: [root, finance]
spend_page: {{enabled: true}}
budget_store:
  key_prefix: {prefix}
audit:
  stdout: false
{reconcile}
"""
RECONCILE = """
reconcile:
  providers:
    openai: {base_url: mock, projects: [proj_default]}
  alert: {unexplained_usd_per_day: 0}
"""
# root and finance are admin credentials (admin_api.static_tokens); alice is a data-plane token.
TOKENS = (("root", "admins"), ("finance", "finance"), ("alice", "finance"))


class Site:
    def __init__(self, ctx: GatewayContext, base: str) -> None:
        self.ctx, self.base = ctx, base

    def client(self, who: str) -> httpx.AsyncClient:
        headers = {"authorization": f"Bearer secret-{who}"}
        return httpx.AsyncClient(base_url=self.base, headers=headers, timeout=10)


async def _site(tmp_path: Path, node: RedisEndpoint, reconcile: str) -> AsyncIterator[Site]:
    tokens = "\n".join(
        f'    {n}: {{sha256: "{hashlib.sha256(f"secret-{n}".encode()).hexdigest()}", '
        f"groups: [{g}]}}"
        for n, g in TOKENS
    )
    config = tmp_path / "gateway.yaml"
    prefix = f"t{uuid.uuid4().hex[:8]}"
    config.write_text(CONFIG.format(tokens=tokens, prefix=prefix, reconcile=reconcile))
    env = {"GATEWAY_REDIS_URL": f"redis://{node.host}:{node.port}/0", **SIDECAR_ENV}
    ctx = build_context(config, env, "http://127.0.0.1:9/v1")
    await start_context(ctx)
    runner, port = await server.start(lambda: ctx, "127.0.0.1", 0, None, env)
    try:
        yield Site(ctx, f"http://127.0.0.1:{port}")
    finally:
        await runner.cleanup()
        await close_context(ctx)
        await ctx.budgets.services.close()
        ctx.audit.close()


@pytest.fixture
async def site(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, redis_standalone_server, RECONCILE):
        yield s


@pytest.fixture
async def unconfigured(
    tmp_path: Path,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> AsyncIterator[Site]:
    async for s in _site(tmp_path, redis_standalone_server, ""):
        yield s


async def test_admins_see_it_everyone_else_gets_403_and_no_link(site: Site) -> None:
    store = site.ctx.budgets.store
    assert store is not None
    today = dt.datetime.now(dt.UTC).date()
    day = today - dt.timedelta(days=2)
    stored = DayResult("openai", day, time.time(), (comparison("gpt-4o", 1010, 1000, 10, day=day),))
    expire = int(time.time() * 1000) + 3_600_000
    await recon_store.save_result(store.client, store.key_base, stored, expire)

    for who in ("root", "finance"):  # a write group or a read group of the admin API
        async with site.client(who) as admin:
            page = await admin.get("/ui/reconciliation")
            assert page.status_code == 200, page.text
            assert (
                '<a href="/ui/reconciliation" aria-current="page">Reconciliation</a>' in page.text
            )
            assert f'data-day="{day.isoformat()}"' in page.text
            assert "unexplained $0.000010 over $0 a day" in page.text  # highlighted
            never = (today - dt.timedelta(days=1)).isoformat()
            assert f'data-day="{never}"' in page.text and "never reconciled" in page.text
            assert '<a href="/ui/budgets"' in (await admin.get("/ui/")).text
            assert "/ui/reconciliation" in (await admin.get("/ui/")).text
    async with site.client("alice") as person:  # finance's group, but a data-plane token
        spend = await person.get("/ui/")
        assert spend.status_code == 200 and "your own view" in spend.text
        assert "/ui/reconciliation" not in spend.text  # no nav link
        page = await person.get("/ui/reconciliation")
        assert page.status_code == 403 and "admins only" in page.text
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert "gpt-4o" not in page.text
        exported = await person.get("/ui/reconciliation.csv")
        assert exported.status_code == 403 and "gpt-4o" not in exported.text
    async with httpx.AsyncClient(base_url=site.base) as nobody:
        assert (await nobody.get("/ui/reconciliation.csv")).status_code == 401


async def test_the_csv_is_getreconciliations_answer(site: Site) -> None:
    store = site.ctx.budgets.store
    assert store is not None
    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=n) for n in (3, 1)]
    expire = int(time.time() * 1000) + 3_600_000
    for n, day in enumerate(days):
        stored = DayResult(
            "openai", day, time.time(), (comparison("gpt-4o", 100 + n, 100, n, day=day),)
        )
        await recon_store.save_result(store.client, store.key_base, stored, expire)
    since, until = (today - dt.timedelta(days=4)).isoformat(), today.isoformat()
    request = pb.GetReconciliationRequest(dates=pb.DateRange(since=since, until=until))
    answer = await recon_api.get_reconciliation(request, site.ctx, store, time.time())
    assert len(answer.days) == 2 and len(answer.missing) == 2
    async with site.client("finance") as admin:
        exported = await admin.get(f"/ui/reconciliation.csv?since={since}&until={until}")
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert exported.text == render_reconciliation(answer.days, answer.missing, "csv") + "\n"
    assert [r["day"] for r in csv.DictReader(io.StringIO(exported.text))] == [
        days[0].isoformat(),
        days[0].isoformat(),
        days[1].isoformat(),
        days[1].isoformat(),
    ]


async def test_unconfigured_or_unknown_providers_say_so(site: Site, unconfigured: Site) -> None:
    async with unconfigured.client("root") as admin:
        assert "/ui/reconciliation" not in (await admin.get("/ui/")).text
        page = await admin.get("/ui/reconciliation")
        assert page.status_code == 404 and "no reconcile.providers" in page.text
    async with site.client("root") as admin:
        page = await admin.get("/ui/reconciliation?provider=anthropic")
        assert page.status_code == 400 and "not reconciled here" in page.text
        bad = await admin.get("/ui/reconciliation.csv?since=2026-12-01")
        assert bad.status_code == 400 and "together" in bad.text
