"""Reconciliation end to end (issue 28): JSON and streamed requests through the real stack
(Envoy, the sidecar, redis-server, the mock provider) with the official openai and anthropic SDKs;
then the mock's own usage and cost reports pulled with the reconciliation clients (admin keys,
pagination) and compared with the spend rollups read from Redis: 100.0 % capture and zero
difference for exact endings, and each injected discrepancy - a price change, a dropped day,
traffic for a key the gateway never held - reported as the right difference. One stack."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import openai
import pytest
from redis.asyncio import Redis

from gateway_extproc.admin.spend_reader import read_days
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.catalog.models import Catalog
from gateway_extproc.identity.devissuer import ensure_dev_issuer
from gateway_extproc.reconcile.compare import Comparison, Explained, reconcile_day
from gateway_extproc.reconcile.pull import pull_day
from gateway_extproc.reconcile.settings import ProviderReports
from gateway_extproc.spend.query import DayRange
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import eventually

pytestmark = pytest.mark.e2e
CONFIG = """
identity: {dev_issuer: true}
admin_api: {enabled: true}
reconcile:
  providers:
    openai: {base_url: mock, projects: [proj_default]}
    anthropic: {base_url: mock, workspaces: [default]}
"""
ENV = {"OPENAI_ADMIN_KEY": "sk-admin-mock-openai", "ANTHROPIC_ADMIN_KEY": "sk-ant-admin01-mock"}
# Token counts whose cost is a whole number of micro-dollars at list price (no rounding).
EXACT = {"x-mock-input-tokens": "100", "x-mock-output-tokens": "10"}
MESSAGES: list[Any] = [{"role": "user", "content": "Count the stars, please."}]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("reconcile")
    run_dir = tmp / "run"
    ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp / "gateway.yaml"
    config.write_text(CONFIG)
    s = start_stack(run_dir, config_path=config, admin_api_port=0)
    yield s
    s.stop()


def settings(stack: Stack) -> dict[str, ProviderReports]:
    """The stack's own `reconcile:` section, `base_url: mock` resolved to its mock."""
    return {p.provider: p.resolved(stack.mock_url) for p in stack.config.reconcile.providers}


async def _rollup_day(stack: Stack, day: dt.date) -> dict[dt.date, dict[str, str]]:
    client = Redis.from_url(stack.redis_url)
    try:
        store = BudgetStore(
            client, stack.config.budget_store.key_prefix, rollups=stack.config.spend
        )
        return await read_days(store, DayRange(day, day))
    finally:
        await client.aclose()


def rollup_requests(stack: Stack, day: dt.date) -> int:
    days = asyncio.run(_rollup_day(stack, day))
    return sum(int(v) for k, v in days[day].items() if k.endswith("|n"))


def reconcile(stack: Stack, provider: str, day: dt.date) -> list[Comparison]:
    catalog = Catalog.load()

    def canonical(model: str) -> str:
        entry = catalog.lookup(model)
        return model if entry is None else entry.name

    async def run() -> list[Comparison]:
        reports = settings(stack)[provider]
        async with httpx.AsyncClient() as client:
            rows = await pull_day(reports, day, client, ENV)
        return reconcile_day(await _rollup_day(stack, day), rows, reports, canonical)

    return asyncio.run(run())


def switches(stack: Stack, **doc: Any) -> None:
    assert stack.mock_url is not None
    root = stack.mock_url.removesuffix("/v1")
    r = (
        httpx.post(root + "/_mock/reports", json=doc)
        if doc
        else httpx.delete(root + "/_mock/reports")
    )
    assert r.status_code == 200, r.text


def test_reconciliation_end_to_end(stack: Stack) -> None:
    issuer = ensure_dev_issuer(stack.run_dir / "dev-issuer")
    token = issuer.mint("alice@example.com", ["eng"], None, 3600, {}, time.time())
    oai = openai.OpenAI(base_url=stack.gateway_url + "/v1", api_key=token, max_retries=0)
    claude = anthropic.Anthropic(base_url=stack.gateway_url, api_key=token, max_retries=0)
    day = dt.datetime.now(dt.UTC).date()
    before = rollup_requests(stack, day)

    oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=EXACT)
    with oai.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=EXACT
    ) as stream:
        assert [c for c in stream]
    claude.messages.create(
        model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES, extra_headers=EXACT
    )
    cached = {**EXACT, "x-mock-cached-tokens": "1000", "x-mock-cache-write-tokens": "200"}
    with claude.messages.stream(
        model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES, extra_headers=cached
    ) as s:
        s.get_final_message()
    eventually(lambda: rollup_requests(stack, day) == before + 4, what="4 requests rolled up")
    if day != dt.datetime.now(dt.UTC).date():
        pytest.fail("the UTC day turned during the test: run it again")

    # Exact endings: everything captured, to the micro-dollar and the token.
    for provider, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5")):
        (c,) = reconcile(stack, provider, day)
        assert (c.model, c.capture_rate, c.difference_micros) == (model, "100.0 %", 0), c
        assert set(c.token_differences.values()) == {0}, c
        assert c.explained == Explained()
        assert c.gateway.cost_micros > 0 and c.reported.outside_cost_micros == 0
    (oc,) = reconcile(stack, "openai", day)
    assert oc.reported.requests == oc.gateway.requests == 2
    assert oc.gateway.cost_micros == 2 * (100 * 15 // 100 + 10 * 60 // 100)  # 2 x 21
    (ac,) = reconcile(stack, "anthropic", day)
    # 150 + (100 + 1000 x 0.1 + 200 x 1.25 + 10 x 5 = 500)
    assert ac.gateway.cost_micros == 650 and ac.gateway.tokens.cache_write == 200

    # A price change the catalog missed: tokens agree, dollars do not - all of it unexplained.
    switches(stack, price_factor={"openai": "1.5"})
    (c,) = reconcile(stack, "openai", day)
    assert c.capture_rate == "66.7 %" and c.difference_micros == 42 - 63
    assert c.explained == Explained(unexplained=-21)
    assert set(c.token_differences.values()) == {0}

    # A dropped day: the provider reports nothing; the gateway's spend is unexplained.
    switches(stack, dropped_days=[["anthropic", day.isoformat()]])
    (c,) = reconcile(stack, "anthropic", day)
    assert c.capture_rate is None and c.reported.cost_micros == 0
    assert c.difference_micros == 650 and c.explained == Explained(unexplained=650)
    switches(stack)

    # Unseen traffic: a key the gateway never held, in another workspace - explained as outside.
    assert stack.mock_url is not None
    r = httpx.post(
        stack.mock_url.removesuffix("/v1") + "/_mock/reports/served",
        json={
            "provider": "anthropic",
            "day": day.isoformat(),
            "model": "claude-haiku-4-5-20251001",
            "api_key": "sk-ant-api03-leaked",
            "project": "wrkspc_shadow",
            "tokens": {"input_tokens": 1000, "output_tokens": 100},
        },
    )
    assert r.status_code == 200, r.text
    (c,) = reconcile(stack, "anthropic", day)
    assert c.reported.outside_cost_micros == 1000 + 500
    assert c.difference_micros == -1500 and c.capture_rate == "30.2 %"  # 650 / 2150
    assert c.explained == Explained(outside=-1500)
    assert c.reported.outside_tokens.input == 1000
    assert set(c.token_differences.values()) == {0}  # the gateway's own workspace still agrees
    oai.close()
    claude.close()
