"""Journals of workers that are gone are taken over by a live one (journal.py `adopt`): a journal
whose lock is held is left alone, a dead owner's is adopted once, two adopters never both take
one, and a crash at any step of an adoption leaves every entry in at least one journal - replayed
again and charged once by Redis (a real redis-server)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from gateway_extproc.budgets import journal as journal_module
from gateway_extproc.budgets.journal import Journal, adopt
from gateway_extproc.budgets.model import (
    Action,
    BudgetConfig,
    CalendarWindow,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.services import BudgetServices, GateSettings
from gateway_extproc.budgets.store import BudgetStore
from tests.redis_servers import RedisEndpoint, redis_standalone_server  # noqa: F401

BUDGET = BudgetConfig(
    name="team",
    scope=Scope(ScopeKind.GROUP),
    limit_micros=10_000_000,
    window=CalendarWindow(Period.MONTH),
    action=Action.BLOCK,
)


def fail_open(key: str, cost: int = 700) -> dict[str, Any]:
    return {
        "op": "fail_open",
        "id": key,
        "cost": cost,
        "arrived": time.time(),
        "charges": [["team", "eng"]],
        "usage": None,
    }


def orphan(path: Path, *entries: dict[str, Any], done: tuple[str, ...] = ()) -> None:
    """A journal left by a worker that is gone (written, then closed: its lock is free)."""
    j = Journal(path)
    for entry in entries:
        j.owe(entry)
    for key in done:
        j.done(key)
    j.close()


def ids(entries: list[dict[str, Any]]) -> list[str]:
    return sorted(str(e["id"]) for e in entries)


OWNER = """
import sys, time
from pathlib import Path
from gateway_extproc.budgets.journal import Journal
j = Journal(Path(sys.argv[1]))
j.owe({"op": "fail_open", "id": "r1", "cost": 5, "arrived": time.time(),
       "charges": [["team", "eng"]]})
j.owe({"op": "fail_open", "id": "r2", "cost": 6, "arrived": time.time(),
       "charges": [["team", "eng"]]})
j.done("r2", "fail_open")
j.sync()
print("ready", flush=True)
sys.stdin.read()
"""


def test_a_live_owners_journal_is_left_alone_and_a_dead_ones_adopted_once(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "journal"
    shared.mkdir()
    owner_path = shared / "pod-a-sidecar.jsonl"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(owner_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert owner.stdout is not None and owner.stdout.readline() == b"ready\n"
        mine = Journal(shared / "pod-b-sidecar.jsonl")
        assert adopt(mine, shared) == []  # its worker is alive: its lock is held
        assert owner_path.exists() and mine.outstanding() == []
    finally:
        owner.kill()  # SIGKILL: no finally, no close; the kernel drops the lock
        owner.wait(10)
        for pipe in (owner.stdin, owner.stdout):
            if pipe is not None:
                pipe.close()
    taken = adopt(mine, shared)
    assert ids(taken) == ["r1"]  # the outstanding entry only (r2 was done)
    assert not owner_path.exists()
    assert ids(mine.outstanding()) == ["r1"]  # in the adopter's own journal, fsync'd
    assert adopt(mine, shared) == []  # adopted once
    mine.close()


def test_a_compacted_journal_stays_locked(tmp_path: Path) -> None:
    owner = Journal(tmp_path / "a.jsonl")
    owner.owe(fail_open("r1"))
    owner.compact(owner.outstanding())  # the new file replaces the old under its name
    mine = Journal(tmp_path / "b.jsonl")
    assert adopt(mine, tmp_path) == []
    assert ids(owner.outstanding()) == ["r1"]
    owner.close()
    assert ids(adopt(mine, tmp_path)) == ["r1"]
    mine.close()


def test_two_adopters_racing_for_one_journal_only_the_lock_winner_takes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Adopter 1 opened the file; before it takes the lock, adopter 2 adopts and removes it.
    Adopter 1 then gets the lock of a removed file: it takes nothing."""
    orphan(tmp_path / "gone.jsonl", fail_open("r1"), fail_open("r2"))
    first = Journal(tmp_path / "first.jsonl")
    second = Journal(tmp_path / "second.jsonl")
    real_flock = journal_module.fcntl.flock
    raced: list[list[dict[str, Any]]] = []

    def flock(f: Any, op: int) -> None:
        if not raced and getattr(f, "name", "").endswith("gone.jsonl"):
            monkeypatch.setattr(journal_module.fcntl, "flock", real_flock)
            raced.append(adopt(second, tmp_path))  # wins the race between open and flock
        real_flock(f, op)

    monkeypatch.setattr(journal_module.fcntl, "flock", flock)
    assert adopt(first, tmp_path) == []
    assert [ids(r) for r in raced] == [["r1", "r2"]]
    assert first.outstanding() == [] and ids(second.outstanding()) == ["r1", "r2"]
    first.close()
    second.close()


class Crash(BaseException):
    """The process dies here (nothing after it runs; its descriptors close)."""


def test_a_crash_before_the_copy_is_durable_leaves_the_journal_to_adopt_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphan(tmp_path / "gone.jsonl", fail_open("r1"))
    mine = Journal(tmp_path / "mine.jsonl")

    def fsync_fails(*, force: bool = False) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(mine, "sync", fsync_fails)
    assert adopt(mine, tmp_path) == []  # logged; tried again next time
    assert (tmp_path / "gone.jsonl").exists()
    monkeypatch.undo()
    assert ids(adopt(mine, tmp_path)) == ["r1"]
    assert not (tmp_path / "gone.jsonl").exists()
    mine.close()


async def test_a_crash_between_copy_and_removal_is_adopted_twice_and_charged_once(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_standalone_server: RedisEndpoint,  # noqa: F811
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    orphan(shared / "pod-a.jsonl", fail_open("r1", cost=700), fail_open("r2", cost=300))
    crashed = Journal(shared / "pod-b.jsonl")

    def crash(self: Path, missing_ok: bool = False) -> None:
        raise Crash

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(Crash):
        adopt(crashed, shared)
    monkeypatch.undo()
    crashed.close()  # pod-b died after copying pod-a's entries: both journals hold them
    assert (shared / "pod-a.jsonl").exists()

    tag = uuid.uuid4().hex[:8]
    client = Redis(port=redis_standalone_server.port)
    store = BudgetStore(client, prefix=f"t{tag}", hash_tag=tag)
    services = BudgetServices(store, GateSettings())
    services.configure(GateSettings(), [BUDGET], webhooks=False)
    services.use_journal(Journal(shared / "pod-c.jsonl"), adopt_from=shared)
    await services.start()  # adopts pod-a and pod-b: r1 and r2 twice each
    assert sorted(p.name for p in shared.glob("*.jsonl")) == ["pod-c.jsonl"]
    assert await services.reconcile() == 4
    spent = (await store.status(BUDGET, "eng", time.time())).spent_micros
    assert spent == 1000  # each request charged once (`<id>:fail-open` is idempotent)
    await services.close()
    last = Journal(shared / "pod-d.jsonl")
    assert ids(adopt(last, shared)) == []  # pod-c's journal: every entry done, nothing owed
    assert sorted(p.name for p in shared.glob("*.jsonl")) == ["pod-d.jsonl"]
    last.close()
    await client.aclose()


def test_a_restarted_worker_waits_for_an_adopter_then_opens_a_fresh_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An adopter holds the lock of a file by our name (our previous run's) while we start:
    we wait, and append to a new file once it removed the old one."""
    path = tmp_path / "pod-a.jsonl"
    orphan(path, fail_open("r1"))
    adopter = Journal(tmp_path / "pod-b.jsonl")
    real_flock = journal_module.fcntl.flock
    calls: list[int] = []

    def flock(f: Any, op: int) -> None:
        if getattr(f, "name", "") == str(path) and not calls:
            calls.append(op)
            monkeypatch.setattr(journal_module.fcntl, "flock", real_flock)
            adopt(adopter, tmp_path)  # the adopter got there first
        real_flock(f, op)

    monkeypatch.setattr(journal_module.fcntl, "flock", flock)
    restarted = Journal(path)
    assert restarted.outstanding() == []  # a fresh file: the old entries are the adopter's
    assert ids(adopter.outstanding()) == ["r1"]
    restarted.close()
    adopter.close()


def test_one_request_can_owe_a_release_and_fail_open_spend(tmp_path: Path) -> None:
    """A reserve that timed out is released (it may have run) and its request served
    fail-open: both are owed under one id, and settling one leaves the other owed."""
    j = Journal(tmp_path / "j.jsonl")
    j.owe(fail_open("r1"))
    j.owe({"op": "settle", "id": "r1", "cost": None, "reserved": True})
    assert sorted(e["op"] for e in j.outstanding()) == ["fail_open", "settle"]
    j.done("r1")  # the release landed
    assert [e["op"] for e in j.outstanding()] == ["fail_open"]
    j.owe({"op": "settle", "id": "r2", "cost": 5})
    j.done("r1", "fail_open")
    assert [e["id"] for e in j.outstanding()] == ["r2"]
    j.close()
    with open(tmp_path / "j.jsonl", "ab") as f:  # a journal from before kinds: done ends both
        f.write(b'{"op": "done", "id": "r2"}\n')
    again = Journal(tmp_path / "j.jsonl")
    assert again.outstanding() == []
    again.close()
