"""The comparison core (gateway_extproc/reconcile/compare.py): rollup day hashes and a provider's
rows in, per-model comparisons out - capture rate, difference and its explanations - in exact
integers; and the `reconcile:` settings."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_extproc.config.gateway import load_config
from gateway_extproc.errors import ConfigError
from gateway_extproc.reconcile.compare import (
    Explained,
    capture_rate,
    explain,
    reconcile_day,
    totals,
)
from gateway_extproc.reconcile.rows import KeyUsage, ProviderRow, Tokens
from gateway_extproc.reconcile.settings import ProviderReports, parse_reconcile
from gateway_extproc.spend.rollup import Dimensions, UsageRecord
from gateway_extproc.tokens import Usage

DAY = dt.date(2026, 12, 6)
NOON = dt.datetime(2026, 12, 6, 12, tzinfo=dt.UTC).timestamp()
OPENAI = ProviderReports("openai", "K", "https://x", frozenset({"proj_gw"}))
ANTHROPIC = ProviderReports("anthropic", "K", "https://x", frozenset({None}))
ALIASES = {"gpt-4o-mini-2024-07-18": "gpt-4o-mini"}


def canonical(model: str) -> str:
    return ALIASES.get(model, model)


def rollups(*records: UsageRecord) -> dict[dt.date, dict[str, str]]:
    """Day hashes as the settle script writes them (HINCRBY of each record's metrics)."""
    days: dict[dt.date, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        day = dt.datetime.fromtimestamp(r.arrived, dt.UTC).date()
        for metric, value in r.metrics():
            days[day][f"{r.dimensions.encode()}|{metric}"] += value
    return {d: {k: str(v) for k, v in fields.items()} for d, fields in days.items()}


def record(
    model: str, provider: str, usage: Usage, cost: int, estimated: bool = False, user: str = "u"
) -> UsageRecord:
    return UsageRecord(
        NOON, Dimensions(user=user, model=model, provider=provider), usage, cost, estimated
    )


def row(
    model: str,
    tokens: Tokens,
    cost: int,
    project: str | None = "proj_gw",
    key: str = "key_gw",
    requests: int | None = 1,
) -> ProviderRow:
    return ProviderRow(
        "openai", DAY, model, project, tokens, requests, cost, (KeyUsage(key, tokens, requests),)
    )


def test_exact_match_is_full_capture_and_no_difference() -> None:
    days = rollups(
        record("gpt-4o-mini", "openai", Usage(input_tokens=100, output_tokens=10), 21),
        record(
            "gpt-4o-mini",
            "openai",
            Usage(input_tokens=60, cached_input_tokens=40, output_tokens=10),
            18,
        ),
        record("claude-haiku-4-5", "anthropic", Usage(input_tokens=5), 5),  # another provider
    )
    rows = [
        row("gpt-4o-mini-2024-07-18", Tokens(input=160, cached_input=40, output=20), 39, requests=2)
    ]
    (c,) = reconcile_day(days, rows, OPENAI, canonical)
    assert (c.model, c.day, c.capture_rate, c.difference_micros) == (
        "gpt-4o-mini",
        DAY,
        "100.0 %",
        0,
    )
    assert c.gateway.requests == c.reported.requests == 2
    assert c.token_differences == dict.fromkeys(c.token_differences, 0)
    assert c.explained == Explained()


def test_openai_cache_writes_compared_as_input() -> None:
    days = rollups(
        record("gpt-4o-mini", "openai", Usage(input_tokens=10, cache_write_input_tokens=5), 2)
    )
    (c,) = reconcile_day(days, [row("gpt-4o-mini", Tokens(input=15), 2)], OPENAI, canonical)
    assert c.token_differences["input"] == 0 and c.gateway.tokens.cache_write == 0


def test_price_change_is_unexplained_with_tokens_equal() -> None:
    days = rollups(record("gpt-4o-mini", "openai", Usage(input_tokens=1000), 150))
    (c,) = reconcile_day(days, [row("gpt-4o-mini", Tokens(input=1000), 300)], OPENAI, canonical)
    assert c.capture_rate == "50.0 %" and c.difference_micros == -150
    assert c.explained == Explained(unexplained=-150)
    assert set(c.token_differences.values()) == {0}


def test_unseen_key_explained_as_outside() -> None:
    days = rollups(record("gpt-4o-mini", "openai", Usage(input_tokens=1000), 150))
    rows = [
        row("gpt-4o-mini", Tokens(input=1000), 150),
        row("gpt-4o-mini", Tokens(input=2000), 300, project="proj_shadow", key="key_x"),
    ]
    (c,) = reconcile_day(days, rows, OPENAI, canonical)
    assert c.capture_rate == "33.3 %" and c.difference_micros == -300
    assert c.explained == Explained(outside=-300)
    assert c.reported.tokens == Tokens(input=1000)  # the gateway's projects only
    assert c.reported.outside_tokens == Tokens(input=2000)


def test_a_foreign_key_inside_the_gateways_project_when_keys_are_named() -> None:
    keyed = ProviderReports(
        "openai", "K", "https://x", frozenset({"proj_gw"}), frozenset({"key_gw"})
    )
    rows = [
        ProviderRow(
            "openai",
            DAY,
            "gpt-4o",
            "proj_gw",
            Tokens(input=30),
            3,
            0,
            (KeyUsage("key_gw", Tokens(input=10), 1), KeyUsage("key_leak", Tokens(input=20), 2)),
        )
    ]
    (c,) = reconcile_day({}, rows, keyed, canonical)
    assert c.reported.tokens == Tokens(input=10) and c.reported.requests == 1
    assert c.reported.outside_tokens == Tokens(input=20)


def test_dropped_day_and_a_model_only_one_side_has() -> None:
    days = rollups(record("gpt-4o", "openai", Usage(input_tokens=100), 250))
    (gw_only,) = reconcile_day(days, [], OPENAI, canonical)
    assert gw_only.capture_rate is None and gw_only.difference_micros == 250
    assert gw_only.explained == Explained(unexplained=250)
    (prov_only,) = reconcile_day({}, [row("o3", Tokens(output=5), 40)], OPENAI, canonical)
    assert prov_only.capture_rate == "0.0 %" and prov_only.explained.unexplained == -40


def test_an_estimated_ending_explains_up_to_its_bound() -> None:
    days = rollups(
        record("claude-haiku-4-5", "anthropic", Usage(input_tokens=100, output_tokens=50), 350),
        record(
            "claude-haiku-4-5",
            "anthropic",
            Usage(input_tokens=100, output_tokens=400),
            2100,
            estimated=True,
        ),  # a cut stream charged its bound
    )
    provider = [
        ProviderRow(
            "anthropic",
            DAY,
            "claude-haiku-4-5",
            None,
            Tokens(input=200, output=80),
            None,
            600,
            (KeyUsage("apikey_x", Tokens(input=200, output=80), None),),
        )
    ]
    (c,) = reconcile_day(days, provider, ANTHROPIC, canonical)
    assert c.difference_micros == 1850
    assert c.explained == Explained(estimates=1850)  # within the 2100 estimated
    assert c.reported.requests is None
    assert c.token_differences["output"] == 370


def test_rounding_per_request_is_explained_not_unexplained() -> None:
    days = rollups(
        *[record("gpt-4o-mini", "openai", Usage(output_tokens=1), 1) for _ in range(10)]
    )  # 0.6 micros each, rounded up to 1
    (c,) = reconcile_day(
        days, [row("gpt-4o-mini", Tokens(output=10), 6, requests=10)], OPENAI, canonical
    )
    assert c.explained == Explained(rounding=4)


def test_totals_sum_the_models() -> None:
    days = rollups(
        record("gpt-4o", "openai", Usage(input_tokens=100), 250),
        record("gpt-4o-mini", "openai", Usage(input_tokens=100), 15),
    )
    rows = [row("gpt-4o", Tokens(input=100), 250), row("gpt-4o-mini", Tokens(input=100), 30)]
    total = totals(reconcile_day(days, rows, OPENAI, canonical))
    assert total is not None
    assert (total.model, total.gateway.cost_micros, total.reported.cost_micros) == ("*", 265, 280)
    assert total.capture_rate == "94.6 %" and total.explained.unexplained == -15
    assert totals([]) is None


@pytest.mark.parametrize(
    ("gateway", "provider", "rate"),
    [
        (1, 1, "100.0 %"),
        (999, 1000, "99.9 %"),
        (9995, 10000, "100.0 %"),
        (9994, 10000, "99.9 %"),
        (1, 3, "33.3 %"),
        (2, 3, "66.7 %"),
        (5, 2, "250.0 %"),
        (0, 7, "0.0 %"),
        (3, 0, None),
        (-1, 1000, "-0.1 %"),
    ],
)
def test_capture_rate(gateway: int, provider: int, rate: str | None) -> None:
    assert capture_rate(gateway, provider) == rate


@given(
    st.integers(-(10**9), 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**9),
    st.integers(0, 10**6),
)
def test_explanations_always_add_up(
    difference: int, outside: int, estimated: int, requests: int
) -> None:
    e = explain(difference, outside, estimated, requests)
    assert e.outside + e.estimates + e.rounding + e.unexplained == difference
    assert e.outside == -outside
    assert 0 <= e.estimates <= estimated
    assert abs(e.rounding) <= (requests + 1) // 2 + 1


@given(st.integers(0, 10**12), st.integers(1, 10**12))
def test_capture_rate_is_the_exact_ratio_to_a_tenth(gateway: int, provider: int) -> None:
    rate = capture_rate(gateway, provider)
    assert rate is not None and rate.endswith(" %")
    shown = float(rate.removesuffix(" %"))
    assert abs(shown - gateway * 100 / provider) <= 0.05 + 1e-9 * max(1.0, shown)


# -- settings -----------------------------------------------------------------------------------


def test_settings_parsed_and_defaulted() -> None:
    problems: list[str] = []
    s = parse_reconcile(
        {
            "schedule": "03:15",
            "providers": {
                "openai": {"projects": ["proj_gw"], "api_key_ids": ["key_1"]},
                "anthropic": {
                    "workspaces": ["default", "wrkspc_1"],
                    "base_url": "mock",
                    "admin_key_env": "ANT_ADMIN",
                },
            },
        },
        problems,
    )
    assert problems == []
    assert s.schedule == dt.time(3, 15)
    o, a = s.provider("openai"), s.provider("anthropic")
    assert o is not None and a is not None
    assert (o.base_url, o.admin_key_env) == ("https://api.openai.com", "OPENAI_ADMIN_KEY")
    assert a.projects == frozenset({None, "wrkspc_1"})
    assert a.resolved("http://127.0.0.1:9/v1").base_url == "http://127.0.0.1:9"
    assert parse_reconcile(None, problems).enabled is False


def test_every_settings_problem_at_once() -> None:
    problems: list[str] = []
    parse_reconcile(
        {
            "schedule": "25:00",
            "extra": 1,
            "providers": {
                "gemini": {},
                "openai": {
                    "admin_key_env": "no-dash-ok?",
                    "base_url": "ftp://x",
                    "projects": [],
                    "colour": "red",
                },
                "anthropic": "yes",
            },
        },
        problems,
    )
    assert problems == [
        "reconcile.extra: unknown key",
        "reconcile.schedule: must be HH:MM (UTC), got '25:00'",
        "reconcile.providers.gemini: reports are pulled from openai and anthropic only",
        "reconcile.providers.openai.colour: unknown key",
        "reconcile.providers.openai.admin_key_env: must be an environment variable name",
        "reconcile.providers.openai.base_url: must be an http(s) URL or `mock`",
        "reconcile.providers.openai.projects: name the projects the gateway's serving keys "
        "belong to (usage elsewhere is reported as traffic that bypassed the gateway)",
        "reconcile.providers.anthropic: must be a mapping",
    ]


def test_the_gateway_config_takes_the_section_and_wants_utc_rollups(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("reconcile: {providers: {openai: {projects: [p]}}}\n")
    assert load_config(path, {}).reconcile.enabled
    path.write_text(
        "spend: {timezone: Europe/Berlin}\nreconcile: {providers: {openai: {projects: [p]}}}\n"
    )
    with pytest.raises(ConfigError, match=r"spend\.timezone is 'Europe/Berlin'"):
        load_config(path, {})
