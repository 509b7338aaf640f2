"""The reconciliation clients' pure parts: the documented response shapes of OpenAI's and
Anthropic's report APIs parsed into rows, exact money, and the pager's pagination and bounded
backoff (an injected sleep and clock; responses from httpx.MockTransport)."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any

import httpx
import pytest

from gateway_extproc.reconcile import anthropic_report, openai_report
from gateway_extproc.reconcile.fetch import (
    FetchError,
    KeyRefused,
    Pager,
    RetryPolicy,
    retry_after_s,
)
from gateway_extproc.reconcile.money import MoneyError, cents, decimal_json, to_micros, usd
from gateway_extproc.reconcile.openai_report import ReportShapeError
from gateway_extproc.reconcile.rows import KeyUsage, ProviderRow, Tokens, merge

DAY = dt.date(2024, 11, 1)  # 1730419200, the documented examples' bucket
START = 1730419200

# OpenAI's documented example page (GET /v1/organization/usage/completions), grouped.
OPENAI_USAGE = {
    "object": "page",
    "data": [
        {
            "object": "bucket",
            "start_time": START,
            "end_time": START + 86400,
            "results": [
                {
                    "object": "organization.usage.completions.result",
                    "input_tokens": 1000,
                    "output_tokens": 500,
                    "input_cached_tokens": 800,
                    "input_audio_tokens": 0,
                    "output_audio_tokens": 0,
                    "num_model_requests": 5,
                    "project_id": "proj_abc",
                    "user_id": None,
                    "api_key_id": "key_abc",
                    "model": "gpt-4o-mini-2024-07-18",
                    "batch": None,
                }
            ],
        }
    ],
    "has_more": True,
    "next_page": "AAAAAGdGxdEiJdKOAAAAAGcqsYA=",
}
OPENAI_COSTS_BODY = (
    '{"object": "page", "data": [{"object": "bucket", "start_time": 1730419200,'
    ' "end_time": 1730505600, "results": [{"object": "organization.costs.result",'
    ' "amount": {"value": 0.06, "currency": "usd"}, "line_item": "gpt-4o-mini-2024-07-18, input",'
    ' "project_id": "proj_abc"}, {"object": "organization.costs.result",'
    ' "amount": {"value": 0.0000001234567, "currency": "usd"}, "line_item": null,'
    ' "project_id": null}]}], "has_more": false, "next_page": null}'
)
# Anthropic's documented example (GET /v1/organizations/usage_report/messages).
ANTHROPIC_USAGE = {
    "data": [
        {
            "starting_at": "2024-11-01T00:00:00Z",
            "ending_at": "2024-11-02T00:00:00Z",
            "results": [
                {
                    "uncached_input_tokens": 123,
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": 7,
                        "ephemeral_5m_input_tokens": 11,
                    },
                    "cache_read_input_tokens": 13,
                    "output_tokens": 17,
                    "server_tool_use": {"web_search_requests": 0},
                    "api_key_id": "apikey_01Rj2N8SVvo6BePZj99NhmiT",
                    "workspace_id": "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ",
                    "model": "claude-sonnet-4-20250514",
                    "service_tier": "standard",
                    "context_window": "0-200k",
                }
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}
ANTHROPIC_COSTS = {
    "data": [
        {
            "starting_at": "2024-11-01T00:00:00Z",
            "ending_at": "2024-11-02T00:00:00Z",
            "results": [
                {
                    "currency": "USD",
                    "amount": "123.45",
                    "workspace_id": None,
                    "description": "Claude Sonnet 4 Usage - Input Tokens",
                    "cost_type": "tokens",
                    "model": "claude-sonnet-4-20250514",
                    "token_type": "uncached_input_tokens",
                },
                {
                    "currency": "USD",
                    "amount": "0.5",
                    "workspace_id": None,
                    "description": "Web Search",
                    "cost_type": "web_search",
                    "model": None,
                    "token_type": None,
                },
            ],
        }
    ],
    "has_more": False,
    "next_page": None,
}


def test_openai_usage_result_normalised() -> None:
    ((model, project, share),) = openai_report.usage_entries(OPENAI_USAGE, DAY)
    assert (model, project) == ("gpt-4o-mini-2024-07-18", "proj_abc")
    # input_tokens includes the cached ones: uncached input is the rest
    assert share == KeyUsage("key_abc", Tokens(input=200, cached_input=800, output=500), 5)


def test_openai_costs_exact_from_a_json_number() -> None:
    entries = openai_report.cost_entries(decimal_json(OPENAI_COSTS_BODY), DAY)
    assert entries == [
        ("gpt-4o-mini-2024-07-18", "proj_abc", Decimal("0.06")),
        ("", None, Decimal("0.0000001234567")),
    ]
    assert to_micros(entries[0][2]) == 60_000  # not 59_999 (0.06 is no float here)


def test_other_days_buckets_are_not_this_pull() -> None:
    assert openai_report.usage_entries(OPENAI_USAGE, DAY + dt.timedelta(days=1)) == []
    assert anthropic_report.usage_entries(ANTHROPIC_USAGE, DAY - dt.timedelta(days=1)) == []


def test_anthropic_usage_and_costs() -> None:
    ((model, workspace, share),) = anthropic_report.usage_entries(ANTHROPIC_USAGE, DAY)
    assert (model, workspace) == ("claude-sonnet-4-20250514", "wrkspc_01JwQvzr7rXLA5AGx3HKfFUJ")
    assert share == KeyUsage("apikey_01Rj2N8SVvo6BePZj99NhmiT", Tokens(123, 13, 11, 7, 17), None)
    costs = anthropic_report.cost_entries(ANTHROPIC_COSTS, DAY)
    # "123.45" in cents is $1.2345; a non-token cost stays under model ""
    assert costs == [
        ("claude-sonnet-4-20250514", None, Decimal("1.2345")),
        ("", None, Decimal("0.005")),
    ]


@pytest.mark.parametrize(
    "page",
    [
        {},
        {"data": []},
        {"data": {}, "has_more": False},
        {"data": [{}], "has_more": False},
        {"data": [{"start_time": START, "results": [{"input_tokens": -1}]}], "has_more": False},
        {"data": [{"start_time": START, "results": [{"input_tokens": "1"}]}], "has_more": False},
    ],
)
def test_a_page_of_another_shape_is_an_error_never_zero(page: Any) -> None:
    with pytest.raises(ReportShapeError):
        openai_report.usage_entries(page, DAY)


@pytest.mark.parametrize(
    ("amount", "micros"),
    [
        ("123.45", 1_234_500),
        ("0.00005", 1),
        ("0.000049", 0),
        ("100", 1_000_000),
        ("-50", -500_000),
        ("1e2", 1_000_000),
        ("0.0000000001", 0),
    ],
)
def test_cents_to_micros(amount: str, micros: int) -> None:
    assert to_micros(cents(amount)) == micros


@pytest.mark.parametrize("bad", ["", "abc", "NaN", "Infinity", 1.5, True, None, [1]])
def test_money_refuses_what_is_not_a_decimal(bad: object) -> None:
    with pytest.raises(MoneyError):
        cents(bad)
    with pytest.raises(MoneyError):
        usd(bad)


def test_usd_half_up_once() -> None:
    assert to_micros(usd(Decimal("0.0000005"))) == 1
    assert to_micros(usd(Decimal("0.00000049999"))) == 0
    assert to_micros(usd(Decimal("12.3456785"))) == 12_345_679


def test_merge_sums_keys_and_is_order_free() -> None:
    a = ("m", "p", KeyUsage("k1", Tokens(input=1), 1))
    b = ("m", "p", KeyUsage("k2", Tokens(output=2), 2))
    c = ("m", "p", KeyUsage("k1", Tokens(input=3), 4))
    one = merge("openai", DAY, [a, b, c], {("m", "p"): 7, ("x", None): 1})
    two = merge("openai", DAY, [c, b, a], {("x", None): 1, ("m", "p"): 7})
    assert one == two
    row = one[0]
    assert row.tokens == Tokens(input=4, output=2) and row.requests == 7 and row.cost_micros == 7
    assert [k.api_key_id for k in row.keys] == ["k1", "k2"]
    assert one[1] == ProviderRow("openai", DAY, "x", None, Tokens(), None, 1, ())
    assert [ProviderRow.from_json(r.to_json()) for r in one] == one


# -- the pager ----------------------------------------------------------------------------------


class Script:
    """Answers in order; records what was asked and how long the pager slept."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.asked: list[httpx.Request] = []
        self.slept: list[float] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.asked.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def pager(self, policy: RetryPolicy | None = None) -> Pager:
        client = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return Pager(
            client,
            "openai",
            {"authorization": "Bearer sk-admin-x"},
            policy or RetryPolicy(),
            self.sleep,
            lambda: 1_000_000.0,
        )


def page(has_more: bool, next_page: str | None = None) -> httpx.Response:
    return httpx.Response(200, json={"data": [], "has_more": has_more, "next_page": next_page})


async def test_pages_followed_with_the_cursor() -> None:
    script = Script(page(True, "c1"), page(True, "c2"), page(False))
    pages = await script.pager().pages("https://x/v1/organization/costs", {"limit": 1})
    assert len(pages) == 3
    assert [r.url.params.get("page") for r in script.asked] == [None, "c1", "c2"]
    assert all(r.headers["authorization"] == "Bearer sk-admin-x" for r in script.asked)


async def test_429_and_5xx_retried_with_backoff_and_retry_after() -> None:
    script = Script(
        httpx.Response(429, headers={"retry-after": "7"}),
        httpx.Response(503),
        httpx.ConnectTimeout("slow"),
        httpx.Response(500),
        page(False),
    )
    await script.pager().pages("https://x/r", {})
    assert script.slept == [7.0, 1.0, 2.0, 4.0]  # retry-after, then 0.5 x 2^attempt


async def test_retries_are_bounded() -> None:
    script = Script(*[httpx.Response(502) for _ in range(3)])
    with pytest.raises(FetchError, match="failed 3 times \\(last: status 502\\)"):
        await script.pager(RetryPolicy(attempts=3)).pages("https://x/r", {})
    assert len(script.asked) == 3 and len(script.slept) == 2


async def test_a_retry_after_too_long_gives_up_at_once() -> None:
    script = Script(httpx.Response(429, headers={"retry-after": "3600"}))
    with pytest.raises(FetchError, match="retry after 3600 s"):
        await script.pager().pages("https://x/r", {})
    assert script.slept == []


@pytest.mark.parametrize("status", [401, 403])
async def test_a_refused_key_is_not_retried(status: int) -> None:
    script = Script(httpx.Response(status, json={"error": {"message": "no"}}))
    with pytest.raises(KeyRefused) as info:
        await script.pager().pages("https://x/r", {})
    assert "sk-admin-x" not in str(info.value)  # the key never reaches a message
    assert len(script.asked) == 1


async def test_has_more_without_a_cursor_and_endless_pages_are_errors() -> None:
    with pytest.raises(FetchError, match="has_more without a next_page"):
        await Script(page(True)).pager().pages("https://x/r", {})
    endless = Script(*[page(True, f"c{i}") for i in range(5)])
    with pytest.raises(FetchError, match="more than 4 pages"):
        await endless.pager(RetryPolicy(max_pages=4)).pages("https://x/r", {})


def test_retry_after_forms() -> None:
    assert retry_after_s("12", 0) == 12.0
    assert retry_after_s("Thu, 01 Jan 1970 00:00:30 GMT", 10.0) == 20.0
    assert retry_after_s("soon", 0) is None and retry_after_s(None, 0) is None


def test_documented_query_parameters() -> None:
    assert openai_report.usage_params(DAY) == {
        "start_time": START,
        "end_time": START + 86400,
        "bucket_width": "1d",
        "limit": 1,
        "group_by": ["model", "project_id", "api_key_id"],
    }
    assert anthropic_report.costs_params(DAY)["group_by[]"] == ["workspace_id", "description"]
    assert anthropic_report.usage_params(DAY)["ending_at"] == "2024-11-02T00:00:00Z"
    assert json.dumps(openai_report.costs_params(DAY)["group_by"]) == '["project_id", "line_item"]'
