"""No money is lost on any fault path, through real Envoy, the sidecar, redis-server and the mock:
fail-open spend survives a reload and a crash (the journal), a settle that cannot reach Redis is
retried, survives SIGTERM (journaled) and lands exactly once when Redis is back."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from gateway_extproc.budgets.journal import kind_of
from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack, find_binary, free_port
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, complete_lines, eventually
from tests.e2e.worst_case import release

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Count the waves, please."}]
BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}

CONFIG = """
identity: {dev_issuer: true}
sidecar: {workers: 1, reload_poll_s: 0}
budget_store: {lease_s: 6, reap_interval_s: 1, deadline_ms: 250, breaker_open_s: 1}
budgets:
  - name: open
    scope: {kind: user}
    match: {groups: [open]}
    limit_usd: 5
    window: {type: calendar, period: month}
    action: block
    on_redis_error: fail_open
  - name: steady
    scope: {kind: user}
    match: {groups: [steady]}
    limit_usd: 5
    window: {type: calendar, period: month}
    action: block
"""


class Durable:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        self.journal = stack.run_dir / "journal" / "sidecar.jsonl"

    def token(self, user: str, group: str) -> str:
        return self.issuer.mint(user, [group], None, 3600, {}, time.time())

    def post(self, token: str, **headers: str) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + CHAT,
            json=BODY,
            headers={"authorization": f"Bearer {token}", **headers},
            timeout=60,
        )

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.stack.redis_url)

    def spent_held(self, budget: str, user: str) -> tuple[int, int]:
        with self.client() as r:
            spent = held = 0
            for key in r.scan_iter(f"llmgw:{{gwb}}:c:{budget}:{user}:*"):
                fields = {k.decode(): int(v) for k, v in r.hgetall(key).items()}
                spent += fields.get("spent", 0)
                held += fields.get("held", 0)
            return spent, held

    def record(self, key: str) -> dict[str, str]:
        with self.client() as r:
            raw = r.hgetall(f"llmgw:{{gwb}}:res:{key}")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def journal_entries(self) -> list[dict[str, Any]]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in complete_lines(self.journal.read_text())]

    def stop_redis(self) -> None:
        self.stack.process("redis-server").terminate()
        self.stack.process("redis-server").wait(10)


@pytest.fixture
def gw(tmp_path: Path) -> Iterator[Durable]:
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)
    d = Durable(start_stack(run_dir, config_path=config), issuer)
    yield d
    d.stack.stop()


def test_fail_open_spend_survives_a_reload_and_a_crash(gw: Durable) -> None:
    token = gw.token("otto@example.com", "open")
    gw.stop_redis()
    records = []
    for i in range(3):
        if i == 2:  # a reload builds a new configuration over the same services and journal
            gw.stack.signal_sidecars(signal.SIGHUP)
            eventually(
                lambda: "configuration reloaded" in (gw.stack.run_dir / "stack.log").read_text(),
                what="the reload",
            )
        r = gw.post(token)
        assert r.status_code == 200 and r.headers["x-gateway-budget-unchecked"] == "true", r.text
        records.append(gw.audit.wait_for(r.headers["x-gateway-request-id"]))
    reservations = [rec["budget"]["reservation_id"] for rec in records]
    # Each fail-open charge is in the journal (written at once, fsync'd within 0.2 s)...
    eventually(
        lambda: (
            {e["id"] for e in gw.journal_entries() if e["op"] == "fail_open"} == set(reservations)
        ),
        what="three fail-open entries in the journal",
    )
    gw.stack.process("sidecar").kill()  # ... so a crash loses nothing (no finally runs)
    gw.stack.process("sidecar").wait(10)
    gw.stack.restart("redis-server")
    gw.stack.restart("sidecar")  # replays the journal and charges what it owes
    owed = sum(rec["cost_micros"] for rec in records)
    assert owed > 0
    eventually(lambda: gw.spent_held("open", "otto@example.com") == (owed, 0), what="charged")
    for rec, rid in zip(records, reservations, strict=True):
        charged = gw.record(f"{rid}:fail-open")
        assert (charged["state"], charged["charged"]) == ("SETTLED", str(rec["cost_micros"]))
    eventually(
        lambda: {e["id"] for e in gw.journal_entries() if e["op"] == "done"} == set(reservations),
        what="every journal entry marked done",
    )
    # A second restart replays nothing: exactly once.
    gw.stack.process("sidecar").terminate()
    gw.stack.process("sidecar").wait(30)
    gw.stack.restart("sidecar")
    assert gw.post(token).status_code == 200
    eventually(lambda: gw.spent_held("open", "otto@example.com")[1] == 0, what="settled")
    spent, _ = gw.spent_held("open", "otto@example.com")
    last = gw.audit.records()[-1]
    assert spent == owed + last["cost_micros"]


def test_a_settle_outlives_a_redis_outage_and_a_sigterm(gw: Durable) -> None:
    """A stream admitted while Redis was up ends while it is down: the settle is retried, the
    SIGTERMed worker journals it, its successor settles it exactly once when Redis is back."""
    token = gw.token("stella@example.com", "steady")
    request_ids: list[str] = []
    body = {**BODY, "stream": True, "max_tokens": 400}
    started = threading.Event()
    # The mock holds the stream after its first event until Redis is down: its settle, at the
    # end, finds Redis down however long stopping it takes.
    hold = f"durable-{uuid.uuid4().hex}"

    def stream() -> None:
        with httpx.stream(
            "POST",
            gw.stack.gateway_url + CHAT,
            json=body,
            timeout=60,
            headers={
                "authorization": f"Bearer {token}",
                "x-mock-output-tokens": "400",
                "x-mock-hold-after-events": f"{hold}@1",
            },
        ) as r:
            request_ids.append(r.headers["x-gateway-request-id"])
            for _ in r.iter_raw():
                started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert started.wait(30)  # the first event arrived: admitted and running, held at the mock
    gw.stop_redis()
    assert thread.is_alive()  # the stream has not ended yet: its settle comes after Redis left
    release(str(gw.stack.mock_url).removesuffix("/v1"), hold)
    thread.join(60)
    rec = gw.audit.wait_for(request_ids[0])
    assert rec["status"] == 200 and rec["completed"] and rec["usage_source"] == "provider"
    rid = rec["budget"]["reservation_id"]
    eventually(
        lambda: "settle failed" in (gw.stack.run_dir / "stack.log").read_text(),
        what="a failed settle attempt",
    )
    gw.stack.process("sidecar").terminate()  # SIGTERM: drains, then journals the settle
    gw.stack.process("sidecar").wait(60)
    owed = [e for e in gw.journal_entries() if e["op"] == "settle"]
    assert [(e["id"], e["cost"]) for e in owed] == [(rid, rec["cost_micros"])]
    gw.stack.restart("redis-server")
    gw.stack.restart("sidecar")
    # The real cost lands once, whether the settle or the reaper (lease 6 s) got there first.
    eventually(
        lambda: gw.spent_held("steady", "stella@example.com") == (rec["cost_micros"], 0),
        what="settled at the real cost",
    )
    assert gw.record(rid)["state"] == "SETTLED"


@contextlib.contextmanager
def redis_on(port: int, directory: Path) -> Iterator[None]:
    """A redis-server on `port` for as long as the block runs (Redis coming back)."""
    directory.mkdir(parents=True, exist_ok=True)
    argv = [find_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: _pings(port), what="redis-server up")
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _pings(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=0.5) as r:
            return bool(r.ping())
    except redis.ConnectionError:
        return False


def test_a_replaced_pods_fail_open_spend_is_adopted_by_the_next_pod(tmp_path: Path) -> None:
    """A rolling deploy while Redis is down: pod A admits a request fail-open and is stopped
    with Redis still down; pod B starts with its own journal file in the same (shared) directory
    and --adopt-journals, takes pod A's over, and charges it once when Redis is back. A third
    pod finds nothing left to adopt."""
    shared = tmp_path / "journals"  # the chart's ReadWriteMany volume
    port = free_port()
    redis_url = f"redis://127.0.0.1:{port}/0"  # nothing listens there yet: Redis is down
    config = tmp_path / "gateway.yaml"
    config.write_text(CONFIG)

    def pod(name: str) -> Stack:
        run_dir = tmp_path / name
        ensure_dev_issuer(run_dir / "dev-issuer")
        return start_stack(
            run_dir,
            config_path=config,
            redis_url=redis_url,
            journal_dir=shared,
            journal_prefix=f"{name}-",
            adopt_journals=shared,
        )

    a = pod("pod-a")
    try:
        issuer = ensure_dev_issuer(a.run_dir / "dev-issuer")
        token = issuer.mint("ada@example.com", ["open"], None, 3600, {}, time.time())
        r = httpx.post(
            a.gateway_url + CHAT,
            json=BODY,
            headers={"authorization": f"Bearer {token}"},
            timeout=60,
        )
        assert r.status_code == 200 and r.headers["x-gateway-budget-unchecked"] == "true", r.text
        rec = AuditLog(a.run_dir / "audit.jsonl").wait_for(r.headers["x-gateway-request-id"])
        rid, cost = rec["budget"]["reservation_id"], rec["cost_micros"]
        assert cost > 0
    finally:
        a.stop(timeout=30)  # SIGTERM with Redis still down: close() cannot charge it
    # owed: the fail-open charge (and the release of the reserve that timed out, if it may have
    # reached Redis: a tombstone for a reserve still on the wire)
    owed = _outstanding(shared / "pod-a-sidecar.jsonl")
    assert [e["id"] for e in owed if e["op"] == "fail_open"] == [rid]

    b = pod("pod-b")  # Redis still down: adopts at start, charges when it is back
    try:
        assert not (shared / "pod-a-sidecar.jsonl").exists()
        adopted = _outstanding(shared / "pod-b-sidecar.jsonl")
        assert sorted(e["op"] for e in adopted) == sorted(e["op"] for e in owed)
        with redis_on(port, tmp_path / "redis"):
            with redis.Redis(port=port) as client:

                def charged() -> dict[str, str]:
                    raw = client.hgetall(f"llmgw:{{gwb}}:res:{rid}:fail-open")
                    return {k.decode(): v.decode() for k, v in raw.items()}

                eventually(lambda: charged().get("state") == "SETTLED", what="charged")
                assert charged()["charged"] == str(cost)
                spent = sum(
                    int(client.hget(key, "spent") or 0)
                    for key in client.scan_iter("llmgw:{gwb}:c:open:ada@example.com:*")
                )
                assert spent == cost
            eventually(
                lambda: _outstanding(shared / "pod-b-sidecar.jsonl") == [], what="marked done"
            )
            b.stop(timeout=30)
            c = pod("pod-c")  # nothing owed is left: it adopts pod B's journal, empty
            try:
                assert sorted(p.name for p in shared.glob("*.jsonl")) == ["pod-c-sidecar.jsonl"]
                assert _outstanding(shared / "pod-c-sidecar.jsonl") == []
                assert "adopted" not in (c.run_dir / "stack.log").read_text()
            finally:
                c.stop(timeout=30)
    finally:
        b.stop(timeout=30)


def _outstanding(path: Path) -> list[dict[str, Any]]:
    """The journal's entries not marked done (read like the sidecar reads it)."""
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for line in complete_lines(path.read_text()):
        entry = json.loads(line)
        if entry["op"] == "done":
            entries.pop((entry["of"], entry["id"]), None)
        else:
            entries[(kind_of(entry["op"]), entry["id"])] = entry
    return list(entries.values())
