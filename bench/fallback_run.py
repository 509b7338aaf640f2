"""Issue 26's rows through Envoy (the `fallback` setup): one gateway stack whose configuration
chains one model (CHAIN), loaded with JSON requests at c=1 and c=sat for a model without
a chain, the chained model answered by its first target, and the chained model whose first
target answers 500 (the bench upstream's `x-bench-fail-model`). bench/fallback.py pairs the rows;
the audit records prove each case took the attempts it is named for."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bench import load, setups
from bench.fallback import CASES, FIRST, SECOND, UNCHAINED
from bench.measure import Bench, Load
from bench.probes import check_audit
from bench.setup_configs import CHAIN, CHAINED_MODEL

FIRST_TARGET, SECOND_TARGET = CHAIN
FIRST_MODEL = FIRST_TARGET.split("/", 1)[1]  # what the first attempt's body asks for


def loads() -> dict[str, Load]:
    """Each case's load: the same JSON request, its model and the upstream's failure switch."""
    return {
        UNCHAINED: Load("json", False),  # load.NATIVE_MODEL: not chained
        FIRST: Load("json", False, model=CHAINED_MODEL),
        SECOND: Load("json", False, model=CHAINED_MODEL, fail_model=FIRST_MODEL),
    }


def fallback(bench: Bench, running: setups.Running) -> None:
    """Every case at c=1 and at the saturating concurrency, then the audit check."""
    assert running.chain_cluster is not None, "the fallback setup has no chain cluster"
    # The chained model's responses come from the chain cluster: its bytes count them.
    chained = dataclasses.replace(running, upstream_cluster=running.chain_cluster)
    specs = loads()
    measured: dict[str, int] = {}
    for name in CASES:
        target = running if name == UNCHAINED else chained
        for c in (1, bench.settings.connections):
            row = bench.wrk_row(target, specs[name], c, name)
            bench.rows.append(row)
            measured[name] = measured.get(name, 0) + row.requests
    assert running.audit_path is not None
    load.wait_idle(running.admin_url)  # every measured request metered and audited
    check_audit(running.audit_path)
    found = check_attempts(running.audit_path, measured)
    bench.progress(
        "fallback audit: " + ", ".join(f"{name} {n} records" for name, n in found.items())
    )


def case_of(record: dict[str, object]) -> str | None:
    """Which case a completed audit record's attempts show (None: none of them)."""
    attempts = record.get("attempts")
    if record.get("requested_model") == load.NATIVE_MODEL:
        return UNCHAINED if attempts is None else None
    if record.get("requested_model") != CHAINED_MODEL or not isinstance(attempts, list):
        return None
    shape = [(a.get("target"), a.get("status")) for a in attempts]
    served = record.get("served_by")
    if shape == [(FIRST_TARGET, 200)] and served == FIRST_TARGET:
        return FIRST
    if shape == [(FIRST_TARGET, 500), (SECOND_TARGET, 200)] and served == SECOND_TARGET:
        return SECOND
    return None


def check_attempts(path: Path, measured: dict[str, int]) -> dict[str, int]:
    """Every completed request took the attempts of its case, and each case has at least the
    requests wrk completed in its measured runs (warm-ups add more): a chained request that
    was not chained, or a 500 that was not retried, fails the bench."""
    records = [json.loads(line) for line in path.read_bytes().splitlines() if line]
    completed = [r for r in records if r.get("completed") and r.get("status") == 200]
    found = dict.fromkeys(CASES, 0)
    for record in completed:
        case = case_of(record)
        if case is None:
            raise load.BenchError(
                "fallback: an audit record fits no case: "
                f"{ {k: record.get(k) for k in ('requested_model', 'served_by', 'attempts')} }"
            )
        found[case] += 1
    short = [name for name in CASES if found[name] < measured.get(name, 0)]
    if short:
        raise load.BenchError(
            f"fallback: fewer audited requests than measured for {short}: {found} < {measured}"
        )
    return found
