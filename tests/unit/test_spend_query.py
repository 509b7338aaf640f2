"""Spend rollup rows and report queries: pure, table-driven."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio import Redis

from gateway_extproc.budgets.ratelimits.report import RateLimited
from gateway_extproc.budgets.refusals import BudgetExceeded, BudgetUnavailable
from gateway_extproc.budgets.store import BudgetStore
from gateway_extproc.errors import (
    ClientError,
    Forbidden,
    GuardrailBlocked,
    PayloadTooLarge,
    Unauthenticated,
    UnknownModel,
)
from gateway_extproc.identity.model import AuthMethod, Identity, Kind
from gateway_extproc.spend import query, rollup
from gateway_extproc.spend.outcome import Outcome, answered_outcome
from gateway_extproc.spend.query import DayRange, Dimension, QueryError, RetentionError
from gateway_extproc.spend.rollup import (
    Dimensions,
    RollupSettings,
    UsageRecord,
    day_key,
    expire_at_ms,
    script_args,
)
from gateway_extproc.tokens import Usage

UTC = dt.UTC
BERLIN = zoneinfo.ZoneInfo("Europe/Berlin")
NOW = dt.datetime(2026, 11, 26, 15, tzinfo=UTC).timestamp()  # a Thursday


def ident(**kw: object) -> Identity:
    base: dict[str, object] = dict(
        kind=Kind.USER,
        auth_method=AuthMethod.JWT,
        user="alice@example.com",
        service=None,
        groups=frozenset({"ml", "eng"}),
        issuer="corp",
        attributes={"team": "x|y", "cost_center": "42"},
        expires_at=None,
    )
    base.update(kw)
    return Identity(**base)  # type: ignore[arg-type]


def test_dimensions_round_trip_and_are_canonical() -> None:
    dims = Dimensions.of(ident(), "gpt-4o", "openai")
    assert dims.groups == ("eng", "ml")
    assert dims.attributes == (("cost_center", "42"), ("team", "x|y"))
    assert Dimensions.decode(dims.encode()) == dims
    assert Dimensions.of(None, "m", "p") == Dimensions(model="m", provider="p")


def test_metrics_leave_out_zeros_and_mark_estimates() -> None:
    usage = Usage(input_tokens=10, output_tokens=3, reasoning_tokens=0)
    rec = UsageRecord(NOW, Dimensions(), usage, 250, estimated=True)
    assert rec.metrics() == [("n", 1), ("in", 10), ("out", 3), ("c", 250), ("ce", 250)]
    reported = UsageRecord(NOW, Dimensions(), Usage(), 0, estimated=False)
    assert reported.metrics() == [("n", 1)]
    assert UsageRecord.from_json(rec.to_json()) == rec


def test_answered_requests_add_one_count_and_no_spend() -> None:
    dims = Dimensions(user="a", model="gpt-4o", provider="openai")
    hit = UsageRecord.answered(NOW, dims, Outcome.CACHE_HIT, saved_micros=1234)
    assert hit.metrics() == [("h", 1), ("hs", 1234)]
    free_hit = UsageRecord.answered(NOW, dims, Outcome.CACHE_HIT)  # a $0 model: no hs field
    assert free_hit.metrics() == [("h", 1)]
    for outcome, metric in (
        (Outcome.REFUSED_GUARDRAIL, "rg"),
        (Outcome.REFUSED_RATE_LIMIT, "rr"),
        (Outcome.REFUSED_BUDGET, "rb"),
        (Outcome.REFUSED_POLICY, "rp"),
    ):
        assert UsageRecord.answered(NOW, dims, outcome).metrics() == [(metric, 1)]
    with pytest.raises(ValueError, match="billed"):
        UsageRecord.answered(NOW, dims, Outcome.BILLED)
    # every metric written is one the reports read
    assert {m for o in Outcome if o is not Outcome.BILLED for m, _ in
            UsageRecord.answered(NOW, dims, o, 5).metrics()} <= set(rollup.METRICS)  # fmt: skip


def test_journal_form_keeps_the_outcome() -> None:
    dims = Dimensions(user="a", model="gpt-4o", provider="openai")
    hit = UsageRecord.answered(NOW, dims, Outcome.CACHE_HIT, saved_micros=99)
    assert UsageRecord.from_json(hit.to_json()) == hit
    billed = UsageRecord(NOW, dims, Usage(input_tokens=1), 5, estimated=False)
    assert "outcome" not in billed.to_json()  # as journals written before outcomes were
    assert UsageRecord.from_json(billed.to_json()) == billed


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (GuardrailBlocked("x"), Outcome.REFUSED_GUARDRAIL),
        (RateLimited("x"), Outcome.REFUSED_RATE_LIMIT),
        (BudgetExceeded("x"), Outcome.REFUSED_BUDGET),
        (Forbidden("x"), Outcome.REFUSED_POLICY),
        (UnknownModel("x"), None),
        (Unauthenticated("x"), None),
        (BudgetUnavailable("x"), None),
        (PayloadTooLarge("x"), None),
    ],
)
def test_refusals_are_told_apart_by_the_clients_error_code(
    error: ClientError, outcome: Outcome | None
) -> None:
    assert answered_outcome(error.code, cache_hit=False) is outcome
    assert answered_outcome(error.code, cache_hit=True) is Outcome.CACHE_HIT
    assert answered_outcome(None, cache_hit=False) is None


def test_day_key_and_expiry_follow_the_rollup_timezone() -> None:
    late = dt.datetime(2026, 11, 26, 23, 30, tzinfo=UTC).timestamp()  # 00:30 in Berlin
    rec = UsageRecord(late, Dimensions(), Usage(), 1, False)
    berlin = RollupSettings("Europe/Berlin", 10)
    assert script_args(rec, RollupSettings())[0] == expire_at_ms(
        dt.date(2026, 11, 26), RollupSettings()
    )
    end = dt.datetime(2026, 11, 28, tzinfo=BERLIN).timestamp() * 1000
    assert script_args(rec, berlin)[0] == int(end) + 10 * 86_400_000
    assert day_key("p:{t}", dt.date(2026, 1, 2)) == "p:{t}:spend:2026-01-02"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("user", Dimension("user")),
        ("day", Dimension("day")),
        ("attribute:cost_center", Dimension("attribute", "cost_center")),
    ],
)
def test_parse_dimension(text: str, expected: Dimension) -> None:
    assert query.parse_dimension(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize("text", ["users", "attribute:", "", "cost_center"])
def test_unknown_dimension_names_the_problem(text: str) -> None:
    with pytest.raises(QueryError, match="unknown dimension"):
        query.parse_dimension(text)


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("day", dt.date(2026, 11, 26), dt.date(2026, 11, 26)),
        ("week", dt.date(2026, 11, 23), dt.date(2026, 11, 26)),
        ("month", dt.date(2026, 11, 1), dt.date(2026, 11, 26)),
    ],
)
def test_named_windows(name: str, first: dt.date, last: dt.date) -> None:
    assert query.window_range(name, UTC, NOW) == DayRange(first, last)


def test_ranges() -> None:
    assert query.date_range("2026-11-01", "2026-11-03") == DayRange(
        dt.date(2026, 11, 1), dt.date(2026, 11, 2)
    )
    with pytest.raises(QueryError, match="inverted range"):
        query.date_range("2026-11-03", "2026-11-01")
    with pytest.raises(QueryError, match="YYYY-MM-DD"):
        query.date_range("yesterday", "2026-11-01")
    midnight = dt.datetime(2026, 11, 1, tzinfo=BERLIN).timestamp()
    got = query.time_range(midnight, midnight + 86_400, BERLIN, "Europe/Berlin")
    assert got == DayRange(dt.date(2026, 11, 1), dt.date(2026, 11, 1))
    with pytest.raises(QueryError, match="midnights"):
        query.time_range(midnight + 60, midnight + 86_400, BERLIN, "Europe/Berlin")
    with pytest.raises(QueryError, match="inverted"):
        query.time_range(midnight, midnight, BERLIN, "Europe/Berlin")


def test_retention() -> None:
    query.check_retention(DayRange(dt.date(2026, 11, 16), dt.date(2026, 11, 26)), UTC, NOW, 10)
    with pytest.raises(RetentionError, match="10-day retention"):
        query.check_retention(DayRange(dt.date(2026, 11, 15), dt.date(2026, 11, 26)), UTC, NOW, 10)


def _fields(*rows: tuple[Dimensions, dict[str, int]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for dims, metrics in rows:
        for metric, value in metrics.items():
            out[f"{dims.encode()}|{metric}"] = str(value)
    return out


A = Dimensions(user="a", groups=("eng", "ml"), model="m1", attributes=(("cc", "1"),))
B = Dimensions(user="b", groups=(), model="m2")
DAY1, DAY2 = dt.date(2026, 11, 1), dt.date(2026, 11, 2)
DATA = {
    DAY1: _fields((A, {"n": 1, "c": 100, "ce": 40}), (B, {"n": 2, "c": 7})),
    DAY2: _fields((A, {"n": 1, "c": 1, "in": 5}), (B, {"n": 1, "c": 50})),
}


def totals(rows: list[query.SpendRow]) -> dict[tuple[str, ...], int]:
    return {r.key: r.totals["cost_micros"] for r in rows}


def test_aggregate_groups_filters_and_sorts() -> None:
    d = query.parse_dimension
    assert totals(query.aggregate(DATA, [])) == {(): 158}
    assert totals(query.aggregate(DATA, [d("user")])) == {("a",): 101, ("b",): 57}
    assert totals(query.aggregate(DATA, [d("group")])) == {("eng",): 101, ("ml",): 101, ("",): 57}
    assert totals(query.aggregate(DATA, [d("day"), d("model")])) == {
        ("2026-11-01", "m1"): 100,
        ("2026-11-01", "m2"): 7,
        ("2026-11-02", "m1"): 1,
        ("2026-11-02", "m2"): 50,
    }
    assert totals(query.aggregate(DATA, [d("attribute:cc")])) == {("1",): 101, ("",): 57}
    assert totals(query.aggregate(DATA, [d("user")], [(d("group"), "ml")])) == {("a",): 101}
    either = [(d("user"), "a"), (d("user"), "b")]
    assert totals(query.aggregate(DATA, [], either)) == {(): 158}
    both = [(d("user"), "b"), (d("model"), "m1")]
    assert query.aggregate(DATA, [], both) == []
    rows = query.aggregate(DATA, [d("user")])
    assert [r.key for r in rows] == [("a",), ("b",)]  # dearest first
    assert rows[0].totals["estimated_cost_micros"] == 40
    assert rows[0].totals["input_tokens"] == 5 and rows[1].totals["requests"] == 3


def test_rows_of_hits_and_refusals_group_filter_and_appear_without_spend() -> None:
    d = query.parse_dimension
    c = Dimensions(user="c", groups=("ml",), model="m1", provider="p")
    data = {
        DAY1: DATA[DAY1] | _fields((A, {"h": 2, "hs": 30, "rr": 1}), (c, {"rg": 1, "rb": 2})),
        DAY2: DATA[DAY2] | _fields((c, {"rp": 1, "rg": 1})),
    }
    by_user = {r.key: r.totals for r in query.aggregate(data, [d("user")])}
    assert by_user[("c",)] == dict.fromkeys(rollup.METRICS.values(), 0) | {
        "refused_guardrail": 2,
        "refused_budget": 2,
        "refused_policy": 1,
    }  # a row with refusals only: no requests, no cost, still reported
    assert by_user[("a",)]["cache_hits"] == 2 and by_user[("a",)]["cache_saved_micros"] == 30
    assert by_user[("a",)]["refused_rate_limit"] == 1 and by_user[("a",)]["requests"] == 2
    [ml] = query.aggregate(data, [], [(d("group"), "ml")])  # a: eng+ml, c: ml
    assert ml.totals["refused_guardrail"] == 2 and ml.totals["cache_hits"] == 2
    by_day = {r.key: r.totals["refused_guardrail"] for r in query.aggregate(data, [d("day")])}
    assert by_day == {("2026-11-01",): 1, ("2026-11-02",): 1}


@given(
    st.lists(st.floats(min_value=1.6e9, max_value=1.9e9), min_size=1, max_size=20),
    st.sampled_from(["UTC", "Europe/Berlin", "America/Santiago", "America/Havana", "Asia/Beirut"]),
)
def test_the_stores_remembered_rollup_day_is_always_the_day_of_the_record(
    moments: list[float], timezone: str
) -> None:
    """BudgetStore keeps the last rollup day (computing one builds datetimes in the timezone on
    every settle): whatever order the records come in, across midnights and DST changes (some
    of these zones change at midnight), a record rolls up into its own day with its expiry."""
    settings = RollupSettings(timezone=timezone)
    store = BudgetStore(Redis(), rollups=settings)
    for ts in moments:
        for t in (ts, ts + 1, ts + 3600):
            day = rollup.day_of(t, settings.zone)
            assert store.rollup_key(_record_at(t)) == rollup.day_key(store.key_base, day)
            args = rollup.script_args(_record_at(t), settings, store.rollup_day(t))
            assert args[0] == rollup.expire_at_ms(day, settings)


def _record_at(ts: float) -> rollup.UsageRecord:
    dims = rollup.Dimensions(user="alice", model="gpt-4o", provider="openai")
    return rollup.UsageRecord(ts, dims, Usage(input_tokens=1), 1, False)
