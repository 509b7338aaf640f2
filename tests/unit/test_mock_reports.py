"""The mock provider serves OpenAI's and Anthropic's usage and cost reports from what it actually
billed (gateway_extproc/mock/reports.py), and the reconciliation clients read them
(gateway_extproc/reconcile/pull.py): the mock on an ephemeral port, real HTTP both ways."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway_extproc.catalog.models import Catalog
from gateway_extproc.catalog.pricing import PICO_PER_MICRO
from gateway_extproc.mock.ledger import key_id
from gateway_extproc.mock.prices import PRICES, per_token
from gateway_extproc.mock.testing import RunningMock, running_mock
from gateway_extproc.reconcile.fetch import KeyRefused, RetryPolicy
from gateway_extproc.reconcile.pull import pull_day
from gateway_extproc.reconcile.rows import Tokens
from gateway_extproc.reconcile.settings import ProviderReports

OPENAI_ADMIN, ANTHROPIC_ADMIN = "sk-admin-mock-openai", "sk-ant-admin01-mock"
ENV = {"OPENAI_ADMIN_KEY": OPENAI_ADMIN, "ANTHROPIC_ADMIN_KEY": ANTHROPIC_ADMIN}
TODAY = dt.datetime.now(dt.UTC).date()


def reports(provider: str, mock: RunningMock) -> ProviderReports:
    env = "OPENAI_ADMIN_KEY" if provider == "openai" else "ANTHROPIC_ADMIN_KEY"
    project = "proj_default" if provider == "openai" else None
    return ProviderReports(provider, env, mock.url, frozenset({project}))


@pytest.fixture
async def mock() -> AsyncIterator[RunningMock]:
    async with running_mock() as m:
        yield m


async def chat(client: httpx.AsyncClient, model: str, key: str | None = None, **h: str) -> None:
    headers = {"x-mock-input-tokens": "100", "x-mock-output-tokens": "10", **h}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    r = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text


async def message(client: httpx.AsyncClient, model: str, stream: bool = False, **h: str) -> None:
    headers = {"x-mock-input-tokens": "100", "x-mock-output-tokens": "10", **h}
    body = {
        "model": model,
        "max_tokens": 50,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    }
    r = await client.post("/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text


async def test_openai_reports_are_what_was_billed_paginated(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        for _ in range(3):
            await chat(client, "gpt-4o-mini", **{"x-mock-cached-tokens": "40"})
        await chat(client, "gpt-4o")
        for i in range(4):  # four more keys: more results than one page holds (3)
            await chat(client, "gpt-4o-mini", key=f"sk-other-{i}")
        rows = await pull_day(reports("openai", mock), TODAY, client, ENV)
        # pagination ran: more than one request per report
        bills = (await client.get("/_mock/bills")).json()
    assert len(bills) == 8
    mini = next(r for r in rows if r.model == "gpt-4o-mini" and r.project == "proj_default")
    # 100 uncached input (cached 40 is reported beside: x-mock-input-tokens is uncached input)
    assert mini.tokens == Tokens(input=7 * 100, cached_input=3 * 40, output=7 * 10)
    assert mini.requests == 7
    assert len(mini.keys) == 5  # the anonymous key and four others
    # cost: exact list price, rounded once: 700 x 0.15 + 120 x 0.075 + 70 x 0.60 = 156 micros
    assert mini.cost_micros == 156
    big = next(r for r in rows if r.model == "gpt-4o")
    assert big.cost_micros == 100 * 2.5 + 10 * 10  # 350 micros, exact
    assert {k.api_key_id for k in mini.keys} >= {key_id("openai", None)}


async def test_pages_are_small_and_followed(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        for i in range(7):
            await chat(client, "gpt-4o-mini", key=f"sk-k{i}")
        params = {
            "start_time": int(dt.datetime.combine(TODAY, dt.time(), dt.UTC).timestamp()),
            "group_by": ["api_key_id"],
            "limit": 1,
        }
        headers = {"authorization": f"Bearer {OPENAI_ADMIN}"}
        first = (
            await client.get("/v1/organization/usage/completions", params=params, headers=headers)
        ).json()
        assert first["has_more"] is True and len(first["data"][0]["results"]) == 3
        second = (
            await client.get(
                "/v1/organization/usage/completions",
                params={**params, "page": first["next_page"]},
                headers=headers,
            )
        ).json()
        third = (
            await client.get(
                "/v1/organization/usage/completions",
                params={**params, "page": second["next_page"]},
                headers=headers,
            )
        ).json()
    assert third["has_more"] is False and third["next_page"] is None
    ids = [r["api_key_id"] for p in (first, second, third) for r in p["data"][0]["results"]]
    assert len(ids) == len(set(ids)) == 7


async def test_anthropic_reports_cache_kinds_and_cents(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        await message(
            client,
            "claude-haiku-4-5",
            **{
                "x-mock-cached-tokens": "1000",
                "x-mock-cache-write-tokens": "200",
                "x-mock-cache-write-1h-tokens": "100",
            },
        )
        await message(client, "claude-haiku-4-5", stream=True)
        rows = await pull_day(reports("anthropic", mock), TODAY, client, ENV)
    (row,) = rows
    assert row.project is None  # the Default Workspace: reported with a null id
    assert row.tokens == Tokens(200, 1000, 200, 100, 20)
    assert row.requests is None  # Anthropic's usage report counts no requests
    # 200 x 1 + 1000 x 0.1 + 200 x 1.25 + 100 x 2 + 20 x 5 = 850 micros
    assert row.cost_micros == 850


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_serving_key_is_refused(mock: RunningMock, provider: str) -> None:
    env = {**ENV, "OPENAI_ADMIN_KEY": "sk-proj-serving", "ANTHROPIC_ADMIN_KEY": "sk-ant-api03-x"}
    async with httpx.AsyncClient(base_url=mock.url) as client:
        with pytest.raises(KeyRefused, match="admin key was refused \\(401\\)"):
            await pull_day(reports(provider, mock), TODAY, client, env, RetryPolicy(attempts=1))
        path = (
            "/v1/organization/costs?start_time=0"
            if provider == "openai"
            else "/v1/organizations/cost_report?starting_at=2026-01-01T00:00:00Z"
        )
        headers = (
            {"authorization": "Bearer sk-proj-serving"}
            if provider == "openai"
            else {"x-api-key": "sk-ant-api03-x"}
        )
        body = (await client.get(path, headers=headers)).json()
    if provider == "openai":
        assert "Missing scopes: api.usage.read" in body["error"]["message"]
    else:
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"


async def test_switches_price_change_dropped_day_unseen_key(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        await chat(client, "gpt-4o-mini")
        await message(client, "claude-haiku-4-5")
        r = await client.post(
            "/_mock/reports",
            json={
                "price_factor": {"openai": "2"},
                "dropped_days": [["anthropic", TODAY.isoformat()]],
            },
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/_mock/reports/served",
            json={
                "provider": "openai",
                "day": TODAY.isoformat(),
                "model": "gpt-4o-mini",
                "api_key": "sk-leaked",
                "project": "proj_shadow",
                "tokens": {"input_tokens": 1000, "output_tokens": 100},
                "requests": 2,
            },
        )
        assert r.status_code == 200, r.text
        openai_rows = await pull_day(reports("openai", mock), TODAY, client, ENV)
        anthropic_rows = await pull_day(reports("anthropic", mock), TODAY, client, ENV)
        bad = await client.post("/_mock/reports", json={"price_factr": 1})
    assert anthropic_rows == []  # the dropped day: nothing at all
    mine = next(r for r in openai_rows if r.project == "proj_default")
    shadow = next(r for r in openai_rows if r.project == "proj_shadow")
    assert mine.cost_micros == 2 * 21  # 100 x 0.15 + 10 x 0.60 = 21, doubled
    assert shadow.tokens == Tokens(input=1000, output=100) and shadow.requests == 2
    assert shadow.keys[0].api_key_id == key_id("openai", "sk-leaked")
    assert bad.status_code == 400 and "price_factr: unknown switch" in bad.text


async def test_pulling_a_day_twice_gives_the_same_rows(mock: RunningMock) -> None:
    async with httpx.AsyncClient(base_url=mock.url) as client:
        for model in ("gpt-4o", "gpt-4o-mini", "gpt-4o"):
            await chat(client, model, key="sk-a")
        first = await pull_day(reports("openai", mock), TODAY, client, ENV)
        second = await pull_day(reports("openai", mock), TODAY, client, ENV)
    assert first == second and len(first) == 2


def test_the_mocks_prices_are_the_catalogs() -> None:
    """The mock keeps its own price list; it agrees with the catalog for every model it lists."""
    catalog = Catalog.load()
    for model, listed in PRICES.items():
        entry = catalog.lookup(model)
        assert entry is not None, model
        rates = per_token(listed)
        pico = {k: int(v * PICO_PER_MICRO * 1_000_000) for k, v in rates.items()}
        price: Any = entry.price
        assert pico["input"] == price.input, model
        assert pico["cached_input"] == price.cached_input, model
        assert pico["output"] == price.output, model
        if entry.provider == "anthropic":  # OpenAI reports no cache writes apart from input
            assert pico["cache_write"] == price.cache_write, model
            assert pico["cache_write_1h"] == price.write_1h, model
        assert all(v == v.to_integral_value() for v in (Decimal(p) for p in pico.values()))
