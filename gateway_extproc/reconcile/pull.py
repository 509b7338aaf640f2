"""Pull one UTC day of a provider's usage and cost reports and normalise them into rows.

`pull_day` is the whole client: the provider's admin key from the environment variable its
settings name, its base URL (the real API, or the mock's in tests and `make run`), both reports
paginated (`fetch.Pager`), merged per model and project (`rows.merge`). Pulling a day twice gives
equal rows (sorted, summed exactly), so storing it is idempotent (`store.py`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from decimal import Decimal

import httpx

from gateway_extproc.reconcile import anthropic_report, openai_report
from gateway_extproc.reconcile.fetch import FetchError, Pager, RetryPolicy, Sleep
from gateway_extproc.reconcile.money import to_micros
from gateway_extproc.reconcile.rows import ProviderRow, merge
from gateway_extproc.reconcile.settings import ProviderReports


def headers_for(provider: str, admin_key: str) -> dict[str, str]:
    if provider == "anthropic":
        return {"x-api-key": admin_key, "anthropic-version": anthropic_report.API_VERSION}
    return {"authorization": f"Bearer {admin_key}"}


def admin_key(settings: ProviderReports, environ: Mapping[str, str]) -> str:
    key = environ.get(settings.admin_key_env, "").strip()
    if not key:
        raise FetchError(f"{settings.provider}: ${settings.admin_key_env} is not set")
    return key


async def pull_day(
    settings: ProviderReports,
    day: dt.date,
    client: httpx.AsyncClient,
    environ: Mapping[str, str],
    policy: RetryPolicy | None = None,
    sleep: Sleep | None = None,
) -> list[ProviderRow]:
    """The provider's rows for `day` (UTC)."""
    provider = settings.provider
    pager = Pager(
        client,
        provider,
        headers_for(provider, admin_key(settings, environ)),
        policy or RetryPolicy(),
    )
    if sleep is not None:
        pager.sleep = sleep
    report = openai_report if provider == "openai" else anthropic_report
    base = settings.base_url.rstrip("/")
    usage_pages = await pager.pages(base + report.USAGE_PATH, report.usage_params(day))
    cost_pages = await pager.pages(base + report.COSTS_PATH, report.costs_params(day))
    usage = [entry for page in usage_pages for entry in report.usage_entries(page, day)]
    exact: dict[tuple[str, str | None], Decimal] = {}
    for page in cost_pages:
        for model, project, amount in report.cost_entries(page, day):
            exact[(model, project)] = exact.get((model, project), Decimal(0)) + amount
    costs = {key: to_micros(amount) for key, amount in exact.items()}
    return merge(provider, day, usage, costs)
