"""bench/guard.py: the verdict on the gateway's sidecar CPU per request ÷ the no-op's, against the
committed baseline. Pure logic only: no timed assertion (the bench itself is not in `make test`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import guard
from bench.guard import IMPROVED, NO_BASELINE, NOT_MEASURED, REGRESSED, WITHIN


@pytest.mark.parametrize(
    ("ratio", "baseline", "noise", "expected"),
    [
        (4.5, 4.5, 0.15, WITHIN),
        # The band's edges are within it; just past them is out.
        (4.0 * 1.15, 4.0, 0.15, WITHIN),
        (4.0 * 0.85, 4.0, 0.15, WITHIN),
        (4.0 * 1.15 + 1e-9, 4.0, 0.15, REGRESSED),
        (4.0 * 0.85 - 1e-9, 4.0, 0.15, IMPROVED),
        (9.0, 4.5, 0.15, REGRESSED),
        (2.0, 4.5, 0.15, IMPROVED),
        # No band: any change is a change.
        (4.5, 4.5, 0.0, WITHIN),
        (4.5001, 4.5, 0.0, REGRESSED),
        (4.4999, 4.5, 0.0, IMPROVED),
        # A band of 100 %: nothing is an improvement, only doubling regresses.
        (0.0001, 4.5, 1.0, WITHIN),
        (9.0, 4.5, 1.0, WITHIN),
        (9.01, 4.5, 1.0, REGRESSED),
        # Missing data.
        (None, 4.5, 0.15, NOT_MEASURED),
        (None, None, 0.15, NOT_MEASURED),
        (4.5, None, 0.15, NO_BASELINE),
        (4.5, 0.0, 0.15, NO_BASELINE),
        (4.5, -1.0, 0.15, NO_BASELINE),
    ],
)
def test_judge(ratio: float | None, baseline: float | None, noise: float, expected: str) -> None:
    assert guard.judge(ratio, baseline, noise) == expected


def test_judge_refuses_a_negative_band() -> None:
    with pytest.raises(ValueError, match="noise band"):
        guard.judge(4.5, 4.5, -0.1)


@pytest.mark.parametrize(
    ("ratio", "goal", "expected"),
    [
        (2.2, 2.2, "met"),
        (2.0, 2.2, "met"),
        (2.21, 2.2, "not met"),
        (None, 2.2, ""),
        (4.0, None, ""),
    ],
)
def test_goal_status(ratio: float | None, goal: float | None, expected: str) -> None:
    assert guard.goal_status(ratio, goal) == expected


def test_verdict_lines() -> None:
    baseline = {
        "ratios": {"json": 4.5, "sse-paced": 3.0},
        "goals": {"json": 2.2, "sse-paced": None},
        "noise": 0.15,
        "date": "2026-12-07",
        "commit": "abc1234",
    }
    vs = guard.verdicts({"json": 4.4, "sse-paced": 3.9}, baseline)
    assert [v.status for v in vs] == [WITHIN, REGRESSED]
    assert vs[0].line() == (
        "verdict: JSON 4.40x the no-op floor (baseline 4.50x ±15 %, goal <= 2.2x: not met): "
        "within noise"
    )
    assert vs[1].line() == (
        "verdict: paced SSE 3.90x the no-op floor (baseline 3.00x ±15 %, no goal): REGRESSED"
    )
    text = guard.render(vs, baseline)
    assert "baseline of 2026-12-07, commit abc1234" in text
    # After the work: the goal met, an improvement.
    [json_verdict, _] = guard.verdicts({"json": 2.1, "sse-paced": None}, baseline)
    assert json_verdict.line().endswith("goal <= 2.2x: met): improved")
    # No baseline file at all, nothing measured.
    vs = guard.verdicts({"json": None, "sse-paced": None}, {})
    assert [v.status for v in vs] == [NOT_MEASURED, NOT_MEASURED]
    assert (
        vs[0].line() == "verdict: JSON - the no-op floor (baseline - ±0 %, no goal): not measured"
    )
    assert guard.render(vs, {}).count("\n") == 1  # two lines, no baseline note


def test_a_noise_band_per_load() -> None:
    baseline = {"ratios": {"json": 3.4, "sse-paced": 1.3}, "noise": {"json": 0.4}}
    json_verdict, sse_verdict = guard.verdicts({"json": 4.6, "sse-paced": 1.4}, baseline)
    assert (json_verdict.noise, json_verdict.status) == (0.4, WITHIN)
    assert (sse_verdict.noise, sse_verdict.status) == (0.0, REGRESSED)  # no band named: none
    assert "±40 %" in json_verdict.line()


def _row(setup: str, workers: int, load: str, c: int, cpu: float | None) -> dict[str, object]:
    return {
        "setup": setup,
        "workers": workers,
        "load": load,
        "connections": c,
        "sidecar_ms_per_req": cpu,
    }


def test_floor_ratios_take_w1_at_the_saturating_concurrency() -> None:
    rows = [
        _row("plain", 0, "json", 32, None),
        _row("noop", 1, "json", 1, 9.0),  # c=1: not guarded
        _row("noop", 1, "json", 32, 0.5),
        _row("noop", 2, "json", 32, 5.0),  # W=2: not guarded
        _row("gateway", 1, "json", 1, 99.0),
        _row("gateway", 1, "json", 32, 2.0),
        _row("gateway", 2, "json", 32, 50.0),
        _row("noop", 1, "sse-paced", 32, 4.0),
        _row("gateway", 1, "sse-paced", 32, 10.0),
        _row("gateway-sync", 1, "json", 32, 1.0),  # not the guarded gateway
    ]
    assert guard.floor_ratios(rows, 32) == {"json": 4.0, "sse-paced": 2.5}


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [_row("gateway", 1, "json", 32, 2.0)],  # no floor in this run
        [_row("noop", 1, "json", 32, 0.5)],  # no gateway
        [_row("noop", 1, "json", 32, 0.0), _row("gateway", 1, "json", 32, 2.0)],
        [_row("noop", 1, "json", 32, None), _row("gateway", 1, "json", 32, 2.0)],
        [_row("noop", 1, "json", 32, 0.5), _row("gateway", 1, "json", 32, None)],
        [_row("noop", 1, "json", 16, 0.5), _row("gateway", 1, "json", 16, 2.0)],  # other c
    ],
)
def test_floor_ratios_missing(rows: list[dict[str, object]]) -> None:
    assert guard.floor_ratios(rows, 32)["json"] is None


def test_updated_baseline_keeps_band_goals_and_unmeasured_loads() -> None:
    old = {
        "ratios": {"json": 4.5, "sse-paced": 3.0},
        "goals": {"json": 2.2},
        "noise": 0.15,
        "note": "kept",
        "date": "old",
        "commit": "old",
    }
    new = guard.updated_baseline(
        old, {"json": 2.123456, "sse-paced": None}, date="2026-12-08", commit="def5678"
    )
    assert new == {
        "ratios": {"json": 2.12, "sse-paced": 3.0},
        "goals": {"json": 2.2},
        "noise": 0.15,
        "note": "kept",
        "date": "2026-12-08",
        "commit": "def5678",
    }
    assert old["ratios"] == {"json": 4.5, "sse-paced": 3.0}  # not mutated
    assert guard.updated_baseline({}, {"json": 4.0}, date="d", commit="c") == {
        "ratios": {"json": 4.0},
        "date": "d",
        "commit": "c",
    }


def test_read_baseline(tmp_path: Path) -> None:
    assert guard.read_baseline(tmp_path / "absent.json") == {}
    path = tmp_path / "b.json"
    path.write_text("[1]")
    with pytest.raises(ValueError, match="not a JSON object"):
        guard.read_baseline(path)


def test_the_committed_baseline() -> None:
    doc = json.loads(guard.BASELINE.read_text())
    assert set(doc["ratios"]) == {key for key, _, _ in guard.LOADS}
    assert all(r > 1 for r in doc["ratios"].values())  # the gateway does more than nothing
    assert {key: 0 < band < 1 for key, band in doc["noise"].items()} == {
        key: True for key, _, _ in guard.LOADS
    }
    assert doc["goals"]["json"] == 2.2  # issue 24's goal
    assert doc["date"] and doc["commit"]
