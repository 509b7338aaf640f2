"""`gatewayctl spend` / `budgets` output and request building: pure."""

from __future__ import annotations

import argparse
import json

import pytest

from gateway_extproc.admin import cli, output
from gateway_extproc.admin._generated.gateway.admin.v1 import admin_pb2 as pb
from gateway_extproc.cli import main

RESPONSE = pb.GetSpendResponse(
    group_by=["user", "model"],
    first_day="2026-11-01",
    last_day="2026-11-26",
    timezone="UTC",
    rows=[
        pb.SpendRow(
            key=["alice", "gpt-4o"],
            requests=3,
            tokens=pb.Tokens(input=10, output=5),
            cost_micros=1_500_000,
            estimated_cost_micros=500_000,
            reported_cost_micros=1_000_000,
        ),
        pb.SpendRow(key=["", "m"], requests=1, tokens=pb.Tokens(), cost_micros=7),
        pb.SpendRow(  # refusals and hits only: no spend
            key=["bob", "gpt-4o"],
            tokens=pb.Tokens(),
            cache_hits=2,
            cache_saved_micros=250,
            refused=pb.Refusals(guardrail=1, rate_limit=2, budget=3, policy=4),
        ),
    ],
    total=pb.SpendRow(
        requests=4,
        tokens=pb.Tokens(input=10, output=5),
        cost_micros=1_500_007,
        cache_hits=2,
        cache_saved_micros=250,
        refused=pb.Refusals(guardrail=1, rate_limit=2, budget=3, policy=4),
    ),
)


def test_spend_table_json_csv() -> None:
    table = output.render_spend(RESPONSE, "table").splitlines()
    assert table[0].split() == [
        "USER",
        "MODEL",
        "REQUESTS",
        "INPUT_TOKENS",
        "OUTPUT_TOKENS",
        "COST_USD",
        "ESTIMATED_COST_USD",
        "CACHE_HITS",
        "CACHE_SAVED_USD",
        "REFUSED",
    ]
    assert table[1].split() == [
        "alice", "gpt-4o", "3", "10", "5", "1.500000", "0.500000", "0", "0.000000", "0"
    ]  # fmt: skip
    assert table[2].split()[:2] == ["-", "m"]  # no value: "-" in a table
    assert table[3].split()[-3:] == ["2", "0.000250", "10"]  # every kind of refusal
    assert table[-1] == (
        "2026-11-01 to 2026-11-26 (UTC): 4 requests, $1.500007 ($0.000000 estimated); "
        "2 cache hits ($0.000250 saved); 10 refused"
    )
    doc = json.loads(output.render_spend(RESPONSE, "json"))
    assert doc["rows"][0]["user"] == "alice" and doc["rows"][0]["cost_micros"] == 1_500_000
    assert doc["rows"][1]["user"] == "" and doc["total"]["requests"] == 4
    assert {
        k: v
        for k, v in doc["rows"][2].items()
        if k.startswith(("cache_hits", "cache_saved", "refused_"))
    } == {
        "cache_hits": 2,
        "cache_saved_usd": "0.000250",
        "cache_saved_micros": 250,
        "refused_guardrail": 1,
        "refused_rate_limit": 2,
        "refused_budget": 3,
        "refused_policy": 4,
    }
    csv_lines = output.render_spend(RESPONSE, "csv").splitlines()
    assert csv_lines[0].startswith("user,model,requests,input_tokens,")
    assert csv_lines[0].endswith(
        ",cache_hits,cache_saved_usd,refused_guardrail,refused_rate_limit,refused_budget,"
        "refused_policy"
    )
    assert csv_lines[2].startswith(",m,1,")
    assert csv_lines[3].endswith(",2,0.000250,1,2,3,4")


def args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        by=None, where=None, since=None, until=None, window="month", timezone=None
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_spend_request_from_flags() -> None:
    req = cli.spend_request(args(by=["user"], where=[("model", "gpt-4o")], window="week"))
    assert list(req.group_by) == ["user"] and req.window.name == "week"
    assert [(f.dimension, f.value) for f in req.filters] == [("model", "gpt-4o")]
    dates = cli.spend_request(args(since="2026-11-01", until="2026-12-01"))
    assert (dates.dates.since, dates.dates.until) == ("2026-11-01", "2026-12-01")
    moment = cli._instant("2026-11-01T00:00:00Z")
    times = cli.spend_request(args(since=moment, until=cli._instant("2026-11-02T00:00:00+00:00")))
    assert times.WhichOneof("period") == "time" and times.time.since.seconds == moment.seconds
    with pytest.raises(cli.CliError, match="both --since and --until"):
        cli.spend_request(args(since="2026-11-01"))
    with pytest.raises(argparse.ArgumentTypeError, match="time zone offset"):
        cli._instant("2026-11-01T00:00:00")


def test_no_credential_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: object
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN", raising=False)
    monkeypatch.setenv("GATEWAY_RUN_DIR", str(tmp_path))
    assert main(["spend", "--by", "user"]) == 1
    assert "no admin credential" in capsys.readouterr().err
