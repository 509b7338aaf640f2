"""The bench's LiteLLM yardstick (issue 24): the proxy's config and environment, the lock it is
installed from, and the gateway ÷ LiteLLM ratios and their report lines. Pure logic only: the
bench itself (and LiteLLM's install) is not part of `make test`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bench import litellm, report, report_text, versus
from bench.rows import Row
from gateway_extproc.stack import StackError


def test_config_routes_the_bench_model_to_the_upstream_without_a_master_key() -> None:
    config = litellm.render_config("http://127.0.0.1:4321/v1")
    [entry] = config["model_list"]
    assert entry["model_name"] == "gpt-4o-mini"
    params = entry["litellm_params"]
    assert params["model"] == "openai/gpt-4o-mini"  # OpenAI-compatible upstream
    assert params["api_base"] == "http://127.0.0.1:4321/v1"
    general = config["general_settings"]
    assert "master_key" not in general and "database_url" not in general
    # Without this, recent releases refuse to start with no master key.
    assert general["dangerously_permit_weak_or_unset_master_key"] is True
    assert config["litellm_settings"]["set_verbose"] is False


def test_proxy_environment_has_no_database_no_keys_and_no_network_lookups() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "DATABASE_URL": "postgresql://x",
        "LITELLM_MASTER_KEY": "sk-secret",
        "OPENAI_API_KEY": "sk-real",
        "OPENAI_BASE_URL": "https://elsewhere",
        "VIRTUAL_ENV": "/work/.venv",
    }
    env = litellm.proxy_environ(environ, Path("/cache/venv"))
    for gone in ("DATABASE_URL", "LITELLM_MASTER_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        assert gone not in env
    assert "VIRTUAL_ENV" not in env
    assert env["HOME"] == "/root"
    assert env["PATH"] == "/cache/venv/bin:/usr/bin"
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"  # no price map fetched at start
    assert env["LITELLM_TELEMETRY"] == "False"
    assert env["LITELLM_LOG"] == "ERROR"


def test_a_venv_counts_as_installed_only_from_the_same_lock(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("litellm==1.0 --hash=sha256:00\n")
    venv = tmp_path / "venv"
    assert not litellm.installed(venv, lock)  # never made
    venv.mkdir()
    assert not litellm.installed(venv, lock)  # made, but the install did not finish
    (venv / litellm.STAMP).write_text(litellm.lock_digest(lock) + "\n")
    assert litellm.installed(venv, lock)
    lock.write_text("litellm==1.1 --hash=sha256:01\n")
    assert not litellm.installed(venv, lock)  # the lock moved on: made again


def _requirements(text: str) -> list[str]:
    """The `name==version` lines of a pip requirements file (continuations joined)."""
    joined = text.replace("\\\n", " ")
    lines = (ln.strip() for ln in joined.splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def test_the_committed_lock_pins_the_in_files_release_with_hashes() -> None:
    pinned = [
        ln for ln in Path(litellm.LOCK.with_suffix(".in")).read_text().splitlines() if "==" in ln
    ]
    assert len(pinned) == 1
    release = pinned[0].split("==")[1].strip()
    requirements = _requirements(litellm.LOCK.read_text())
    assert any(r.startswith(f"litellm=={release} ") for r in requirements)
    for requirement in requirements:
        spec = requirement.split(";")[0].split()[0]
        assert re.fullmatch(r"[A-Za-z0-9_.\-]+(\[[a-z,]+\])?==[^ ]+", spec), requirement
        assert "--hash=sha256:" in requirement, f"{spec} has no hash"
    assert not any(r.startswith("litellm==1.107.0 ") for r in requirements)


@pytest.mark.parametrize(
    ("load", "saturating", "expected"),
    [("json", 32, (1, 16, 32)), ("json", 16, (1, 16)), ("json", 8, (1, 8, 16)), ("sse", 32, (1,))],
)
def test_concurrencies(load: str, saturating: int, expected: tuple[int, ...]) -> None:
    assert versus.concurrencies(load, saturating) == expected


def _row(
    setup: str,
    load: str,
    c: int,
    rps: float | None,
    workers: int = 1,
    mean_ms: float | None = None,
) -> Row:
    return Row(setup=setup, workers=workers, load=load, connections=c, rps=rps, mean_ms=mean_ms)


ROWS = [
    _row("gateway", "json", 1, 400.0, mean_ms=2.5),
    _row("gateway", "json", 16, 600.0, mean_ms=16_000 / 600),
    _row("gateway", "json", 32, 640.0),
    _row("gateway", "sse", 1, 150.0, mean_ms=1000 / 150),
    _row("gateway", "sse", 32, 300.0),  # LiteLLM has no sse c=32 row: no ratio
    _row("gateway", "sse-paced", 32, 90.0),  # not a compared load
    _row("gateway-sync", "json", 1, 300.0),  # only the default mode is compared
    _row("gateway", "json", 1, 500.0, workers=2),
    _row("litellm", "json", 1, 50.0, workers=0, mean_ms=20.0),
    # wrk's count is low when a request lasts a sizeable part of the run: 60 completed per
    # second, while 16 connections at 200 ms each are a steady 80 per second.
    _row("litellm", "json", 16, 60.0, workers=0, mean_ms=200.0),
    _row("litellm", "json", 32, 0.0, workers=0),  # nothing completed: no ratio, no division
    _row("litellm", "sse", 1, 3.0, workers=0),  # no mean latency: the wrk ratio alone
    _row("plain", "json", 1, 4000.0, workers=0),
]


@pytest.mark.parametrize(
    ("connections", "mean_ms", "expected"),
    [(1, 20.0, 50.0), (16, 200.0, 80.0), (32, 64.0, 500.0), (16, None, None), (16, 0.0, None)],
)
def test_steady_rps_is_littles_law(
    connections: int, mean_ms: float | None, expected: float | None
) -> None:
    assert versus.steady_rps(connections, mean_ms) == expected


def _approx(entry: dict[str, object], key: str) -> object:
    value = entry[key]
    return None if value is None else pytest.approx(value)


def test_ratios_pair_the_gateway_with_litellm_by_load_and_concurrency() -> None:
    entries = versus.ratios(ROWS)
    got = [(e["workers"], e["load"], e["connections"], e["ratio"]) for e in entries]
    assert got == [
        (1, "json", 1, 8.0),
        (1, "json", 16, 10.0),
        (1, "sse", 1, 50.0),
        (2, "json", 1, 10.0),
    ]
    steady = [e["steady_ratio"] for e in entries]
    assert steady == [pytest.approx(8.0), pytest.approx(7.5), None, None]
    first = entries[0]
    assert (first["gateway_rps"], first["litellm_rps"]) == (400.0, 50.0)
    assert first["gateway_steady_rps"] == pytest.approx(400.0)
    assert first["litellm_steady_rps"] == pytest.approx(50.0)


def test_the_verdict_is_on_the_steady_ratio_where_there_is_one() -> None:
    doc = versus.summary(versus.ratios(ROWS), "1.108.7")
    assert doc["litellm"] == "1.108.7"
    assert doc["goal"] == versus.GOAL == 10.0
    # json c=16 is 10x by wrk's count but 7.5x in the steady state: the lowest, not met.
    assert (doc["lowest"]["connections"], versus.judged(doc["lowest"])) == (16, pytest.approx(7.5))
    assert doc["met"] is False
    # Where no mean latency was recorded, wrk's ratio is judged: W=2 json c=1 is 10x.
    only_w2 = versus.summary([e for e in doc["ratios"] if e["workers"] == 2], None)
    assert versus.judged(only_w2["lowest"]) == 10.0 and only_w2["met"] is True  # the edge meets
    empty = versus.summary(versus.ratios(ROWS[:8]), None)  # no LiteLLM rows
    assert empty["ratios"] == [] and empty["lowest"] is None and empty["met"] is None


def test_render_prints_every_ratio_and_the_verdict_line() -> None:
    lines = versus.render(versus.summary(versus.ratios(ROWS), "1.108.7"))
    assert lines[0].startswith("Against LiteLLM 1.108.7 (one worker, no database)")
    body = lines[2:-1]
    assert body == [
        "  json  W=1 c=1   wrk   8.00x (400 / 50.0)   steady   8.00x (400 / 50.0)",
        "  json  W=1 c=16  wrk  10.00x (600 / 60.0)   steady   7.50x (600 / 80.0)",
        "  sse   W=1 c=1   wrk  50.00x (150 / 3.0)",
        "  json  W=2 c=1   wrk  10.00x (500 / 50.0)",
    ]
    assert lines[-1] == "  goal >= 10x LiteLLM's req/s: NOT MET (lowest 7.50x, json c=16 W=1)"
    assert versus.render(versus.summary([], None)) == []
    assert versus.render({}) == []


def test_the_bench_report_carries_the_comparison_into_json_and_text() -> None:
    settings = {"connections": 32, "gap_ms": 1.0, "runs": 3, "duration_s": 4, "chunks": 200}
    machine = {"cpus": 2, "envoy": "1.40", "envoy_concurrency": 1, "litellm": "1.108.7"}
    result = report.build(
        ROWS, redis_round_trips={}, settings=settings, machine=machine, elapsed_s=1.0
    )
    against = result["versus_litellm"]
    assert against["litellm"] == "1.108.7" and against["met"] is False
    assert len(against["ratios"]) == 4
    assert versus.judged(against["lowest"]) == pytest.approx(7.5)
    text = report_text.render(result)
    assert "Against LiteLLM 1.108.7" in text
    assert "goal >= 10x LiteLLM's req/s: NOT MET" in text
    assert "LiteLLM proxy, 1 worker, no DB" in text  # the rows' setup name
    without = report.build(
        ROWS[:8], redis_round_trips={}, settings=settings, machine=machine, elapsed_s=1.0
    )
    assert "Against LiteLLM" not in report_text.render(without)


def test_make_lock_recompiles_the_bench_lock_with_hashes() -> None:
    makefile = (litellm.REPO / "Makefile").read_text()
    recipe = makefile.split("\nlock:\n", 1)[1].split("\n\n", 1)[0].replace("\\\n", " ")
    [compile_line] = [ln for ln in recipe.splitlines() if "pip compile" in ln]
    for part in ("--generate-hashes", "-o bench/litellm.lock", "bench/litellm.in"):
        assert part in compile_line
    assert "#    make lock" in litellm.LOCK.read_text().splitlines()[1]


class _Runs:
    """subprocess.run as ensure_venv calls it: records argv, fails `uv pip sync` on demand."""

    def __init__(self, fail_sync: bool) -> None:
        self.fail_sync = fail_sync
        self.argvs: list[list[str]] = []

    def __call__(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.argvs.append(argv)
        if argv[1] == "venv":
            Path(argv[-1], "bin").mkdir(parents=True)
        if argv[1:3] == ["pip", "sync"] and self.fail_sync:
            raise subprocess.CalledProcessError(2, argv)
        return subprocess.CompletedProcess(argv, 0)


def test_ensure_venv_syncs_the_lock_with_hashes_required_and_stamps_it_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "litellm.lock"
    lock.write_text("litellm==1.0 --hash=sha256:00\n")
    cache = tmp_path / "cache"
    failing = _Runs(fail_sync=True)
    monkeypatch.setattr(litellm.subprocess, "run", failing)
    with pytest.raises(StackError, match="installing LiteLLM"):
        litellm.ensure_venv(lambda _: None, cache, lock)
    assert not litellm.installed(cache / "venv", lock)  # a failed sync leaves no stamp

    runs = _Runs(fail_sync=False)
    monkeypatch.setattr(litellm.subprocess, "run", runs)
    venv = litellm.ensure_venv(lambda _: None, cache, lock)
    assert venv == cache / "venv" and litellm.installed(venv, lock)
    [_make, sync] = runs.argvs
    assert sync[1:3] == ["pip", "sync"] and "--require-hashes" in sync and sync[-1] == str(lock)
    assert sync[sync.index("--python") + 1] == str(venv / "bin/python")
    litellm.ensure_venv(lambda _: None, cache, lock)
    assert len(runs.argvs) == 2  # the same lock: nothing installed again
