"""Dollar budgets through real Envoy, the sidecar and redis-server: block, downgrade, monitor,
exact admission under 200 concurrent requests, disconnects, a killed sidecar, a Redis outage."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
import redis

from gateway_extproc.identity.devissuer import DevIssuer, ensure_dev_issuer
from gateway_extproc.stack import Stack
from tests.e2e.conftest import start_stack
from tests.e2e.harness import AuditLog, MockLog, eventually
from tests.e2e.worst_case import (
    GPT4O,
    GPT4O_MINI,
    cost_micros,
    estimate_micros,
    held,
    held_burst,
    input_bound,
    mock_input_tokens,
    release,
)

pytestmark = pytest.mark.e2e
CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Count the stars, please."}]
CROWD_N = 10
CROWD_MAX_TOKENS = 500


CROWD_BODY = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": CROWD_MAX_TOKENS}


def crowd_estimate() -> int:
    """The documented worst case from literal prices (tests/e2e/worst_case.py)."""
    return estimate_micros(input_bound(CROWD_BODY), CROWD_MAX_TOKENS, GPT4O_MINI)


def stack_mock(gw: Budgeted) -> str:
    assert gw.stack.mock_url is not None
    return gw.stack.mock_url.removesuffix("/v1")


def usd(micros: int) -> str:
    return f"{micros / 1_000_000:.6f}"


BUDGETS = f"""
identity: {{dev_issuer: true}}
sidecar: {{workers: 1}}  # the SIGKILL test kills the one sidecar the stream is on
budget_store: {{lease_s: 6, reap_interval_s: 1, deadline_ms: 250, breaker_open_s: 1}}
budgets:
  - name: tight
    scope: {{kind: user}}
    match: {{groups: [tight]}}
    limit_usd: 0.003
    window: {{type: calendar, period: month}}
    action: block
  - name: saver
    scope: {{kind: user}}
    match: {{groups: [saver], models: [gpt-4o]}}
    limit_usd: 0.003
    window: {{type: calendar, period: day, timezone: Europe/Berlin}}
    action: downgrade
    downgrade_to: gpt-4o-mini
  - name: watch
    scope: {{kind: global}}
    match: {{groups: [watched]}}
    limit_usd: 0.000001
    window: {{type: rolling, duration: 1h, bucket: 5m}}
    action: monitor
  - name: crowd
    scope: {{kind: group, value: crowd}}
    limit_usd: {usd(CROWD_N * crowd_estimate() + crowd_estimate() // 2)}
    window: {{type: calendar, period: week}}
    action: block
  - name: streamers
    scope: {{kind: user}}
    match: {{groups: [streamers, reap]}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
  - name: alerted
    scope: {{kind: user}}
    match: {{groups: [alerted]}}
    limit_usd: 0.002
    window: {{type: calendar, period: month}}
    action: monitor
    alerts: {{thresholds_percent: [50, 100], webhook: "WEBHOOK_URL"}}
  - name: closed
    scope: {{kind: group, value: closed}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
    on_redis_error: fail_closed
  - name: open
    scope: {{kind: group, value: open}}
    limit_usd: 5
    window: {{type: calendar, period: month}}
    action: block
    on_redis_error: fail_open
"""


class Budgeted:
    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack = stack
        self.issuer = issuer
        self.audit = AuditLog(stack.run_dir / "audit.jsonl")
        assert stack.mock_url is not None
        self.mock = MockLog(stack.mock_url.removesuffix("/v1"))
        self.redis = redis.Redis.from_url(stack.redis_url)

    def token(self, user: str, *groups: str) -> str:
        return self.issuer.mint(user, list(groups), None, 3600, {}, time.time())

    def post(self, token: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(
            self.stack.gateway_url + CHAT,
            json=body,
            headers={"authorization": f"Bearer {token}", **headers},
            timeout=60,
        )

    def counters(self, budget: str, scope_value: str) -> tuple[int, int]:
        """(spent, held) summed over the budget's counters for one scope value."""
        spent = held = 0
        for key in self.redis.scan_iter(f"llmgw:{{gwb}}:[cr]:{budget}:{scope_value}:*"):
            fields = {k.decode(): int(v) for k, v in self.redis.hgetall(key).items()}
            spent += fields.get("spent", 0) + sum(
                v for k, v in fields.items() if k.startswith("b:")
            )
            held += fields.get("held", 0)
        return spent, held

    def reservation(self, reservation_id: str) -> dict[str, str]:
        """One reservation record ({} if there is none)."""
        record = self.redis.hgetall(f"llmgw:{{gwb}}:res:{reservation_id}")
        return {k.decode(): v.decode() for k, v in record.items()}

    def reservation_of(self, request_id: str) -> str:
        """A request's reservation id, from its audit record (random, not the request id)."""
        reservation_id = self.audit.wait_for(request_id)["budget"]["reservation_id"]
        assert isinstance(reservation_id, str) and len(reservation_id) == 32, reservation_id
        assert reservation_id != request_id
        return reservation_id

    def reservations_for(self, budget: str, scope_value: str) -> list[str]:
        """Ids of the reservations whose first charge is this budget and scope value."""
        found = []
        for key in self.redis.scan_iter("llmgw:{gwb}:res:*"):
            record = {k.decode(): v.decode() for k, v in self.redis.hgetall(key).items()}
            if (record.get("b:1"), record.get("s:1")) == (budget, scope_value):
                found.append(key.decode().rsplit(":", 1)[1])
        return found

    def leased(self, reservation_id: str) -> bool:
        """Whether the reservation is still in the lease set (a reaper could still charge it)."""
        return self.redis.zscore("llmgw:{gwb}:leases", reservation_id) is not None

    def close(self) -> None:
        self.redis.close()


class Webhook:
    """Records the JSON bodies POSTed to it (budget alerts)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["content-length"])
                outer.posts.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hooks/budgets"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[Budgeted]:
    tmp_path = tmp_path_factory.mktemp("budgets")
    run_dir = tmp_path / "run"
    issuer = ensure_dev_issuer(run_dir / "dev-issuer")  # the sidecar loads the same key
    config = tmp_path / "gateway.yaml"
    config.write_text(BUDGETS.replace("WEBHOOK_URL", webhook.url))
    b = Budgeted(start_stack(run_dir, config_path=config), issuer)
    yield b
    b.close()
    b.stack.stop()


def stays_at(count: Callable[[], int], expected: int, quiet_s: float = 1.0) -> None:
    """Wait until `count()` reaches `expected`, then check it stays there for `quiet_s` (a
    duplicate that would arrive later fails the test as soon as it arrives)."""
    eventually(lambda: count() >= expected)
    quiet_until = time.monotonic() + quiet_s
    while True:
        assert count() == expected, f"{count()} instead of {expected}"
        if time.monotonic() >= quiet_until:
            return
        time.sleep(0.05)


def test_block_with_a_clear_429_and_retry_after(gw: Budgeted) -> None:
    token = gw.token("tina@example.com", "tight")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000}
    # From literal prices: each request reserves its worst case and costs its real price; one is
    # admitted while what was spent plus that worst case fits in $0.003.
    estimate = estimate_micros(input_bound(body), 1000, GPT4O_MINI)
    cost = cost_micros(mock_input_tokens(MESSAGES), 1000, GPT4O_MINI)
    admitted = (3000 - estimate) // cost + 1
    statuses = []
    for _ in range(10):
        r = gw.post(token, body, **{"x-mock-output-tokens": "1000"})
        statuses.append(r.status_code)
        if r.status_code == 429:
            break
        assert r.headers["x-gateway-budget-name"] == "tight"
        eventually(lambda: gw.counters("tight", "tina@example.com")[1] == 0)  # settled
    assert statuses[-1] == 429 and statuses.count(200) == admitted == 4, statuses
    err = r.json()["error"]
    assert err["code"] == "budget_exceeded"
    assert "'tight'" in err["message"] and "tina@example.com" in err["message"]
    assert int(r.headers["retry-after"]) > 0
    rec = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    assert rec["status"] == 429 and rec["error_code"] == "budget_exceeded"
    eventually(lambda: gw.counters("tight", "tina@example.com")[1] == 0)
    assert gw.counters("tight", "tina@example.com") == (admitted * cost, 0)
    oai = openai.OpenAI(base_url=gw.stack.gateway_url + "/v1", api_key=token, max_retries=0)
    with oai, pytest.raises(openai.RateLimitError):
        oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=1000)  # type: ignore[arg-type]


def test_downgrade_end_to_end(gw: Budgeted) -> None:
    token = gw.token("sam@example.com", "saver")
    body = {"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 100}
    for _ in range(10):
        r = gw.post(token, body, **{"x-mock-output-tokens": "100"})
        assert r.status_code == 200, r.text
        if "x-gateway-downgraded-from" in r.headers:
            break
    assert r.headers["x-gateway-downgraded-from"] == "gpt-4o"
    assert gw.mock.last()["body"]["model"] == "gpt-4o-mini"  # the fallback upstream got it
    assert r.json()["model"] == "gpt-4o-mini"
    rec = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    assert rec["requested_model"] == "gpt-4o" and rec["served_model"] == "gpt-4o-mini"
    assert (
        rec["budget"]["decision"] == "downgraded" and rec["budget"]["downgrade_budget"] == "saver"
    )


def test_monitor_budget_reports_but_never_blocks(gw: Budgeted) -> None:
    token = gw.token("wendy@example.com", "watched")
    for _ in range(3):
        r = gw.post(token, {"model": "gpt-4o-mini", "messages": MESSAGES})
        assert r.status_code == 200
        assert r.headers["x-gateway-budget-would-block"] == "true"
        assert r.headers["x-gateway-budget-name"] == "watch"
        assert r.headers["x-gateway-budget-remaining-usd"] == "0.000000"
    rec = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    assert (
        rec["budget"]["would_block"] is True and rec["budget"]["budgets"][0]["action"] == "monitor"
    )


def test_alerts_post_once_per_threshold_per_window(gw: Budgeted, webhook: Webhook) -> None:
    token = gw.token("alma@example.com", "alerted")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 1000}
    for _ in range(6):  # ~$0.0006 each against $0.002: crosses 50 % and then 100 %
        assert gw.post(token, body, **{"x-mock-output-tokens": "1000"}).status_code == 200
    eventually(lambda: gw.counters("alerted", "alma@example.com")[1] == 0)  # all 6 settled
    # Every crossing has been reported by a settle; the two alerts arrive and no duplicate follows.
    stays_at(lambda: sum(p["budget"] == "alerted" for p in webhook.posts), 2)
    mine = [p for p in webhook.posts if p["budget"] == "alerted"]
    assert sorted(p["threshold_percent"] for p in mine) == [50, 100]
    first = min(mine, key=lambda p: p["threshold_percent"])
    assert first["scope_value"] == "alma@example.com" and first["limit_usd"] == "0.002000"
    assert first["spent_micros"] >= 1000 and first["window"] == time.strftime(
        "%Y-%m", time.gmtime()
    )
    assert b"budget alert" in (gw.stack.run_dir / "stack.log").read_bytes()


def test_200_concurrent_requests_admit_exactly_n(gw: Budgeted) -> None:
    token = gw.token("carl@example.com", "crowd")
    # The mock holds every admitted response until all 200 are decided: every hold is in place
    # while the others arrive, so exactly CROWD_N fit (room for 10.5 worst cases).
    assert stack_mock(gw)
    responses = held_burst(
        gw.stack.gateway_url + CHAT,
        CROWD_BODY,
        {"authorization": f"Bearer {token}", "x-mock-output-tokens": "40"},
        200,
        stack_mock(gw),
        "crowd",
    )
    statuses = [r.status_code for r in responses]
    others = sorted({r.text[:300] for r in responses if r.status_code not in (200, 429)})[:3]
    assert set(statuses) <= {200, 429}, ({s: statuses.count(s) for s in set(statuses)}, others)
    assert statuses.count(200) == CROWD_N
    eventually(lambda: gw.counters("crowd", "crowd")[1] == 0)  # every hold released or settled
    cost = cost_micros(mock_input_tokens(MESSAGES), 40, GPT4O_MINI)
    assert gw.counters("crowd", "crowd") == (CROWD_N * cost, 0)


def test_client_disconnect_charges_what_was_streamed_and_releases_the_hold(gw: Budgeted) -> None:
    token = gw.token("dora@example.com", "streamers")
    oai = openai.OpenAI(base_url=gw.stack.gateway_url + "/v1", api_key=token, max_retries=0)
    with (
        oai,
        oai.chat.completions.with_streaming_response.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            max_tokens=2000,  # type: ignore[arg-type]
            extra_headers={"x-mock-output-tokens": "2000", "x-mock-chunk-delay-ms": "10"},
        ) as response,
    ):
        rid = response.headers["x-gateway-request-id"]
        stream = response.parse()
        for n, _ in enumerate(stream):
            if n == 20:
                break
        stream.close()
    rec = gw.audit.wait_for(rid)
    assert rec["usage_source"] == "bound" and rec["completed"] is False
    eventually(lambda: gw.counters("streamers", "dora@example.com")[1] == 0)
    spent, _ = gw.counters("streamers", "dora@example.com")
    # Charged what was streamed + metering.unseen_output_tokens, not the 2000-token estimate.
    assert spent == rec["cost_micros"]
    assert 0 < spent < rec["budget"]["estimate_micros"]


def test_client_disconnect_before_the_response_charges_the_whole_bound(gw: Budgeted) -> None:
    """Observe mode: the observer saw the request headers (with the request's state) and no
    response; when Envoy closes its stream after the client left, the request is charged an
    upper bound of what the provider may bill - a JSON answer is generated whole before it is
    sent, so its whole worst case - and the reservation is settled at that."""
    token = gw.token("cara@example.com", "streamers")
    body = json.dumps({"model": "gpt-4o", "messages": MESSAGES, "max_tokens": 100}).encode()
    host, port = gw.stack.gateway_url.removeprefix("http://").split(":")
    request = (
        f"POST {CHAT} HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n"
        f"content-type: application/json\r\nx-mock-hold: cut-before\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body
    mock = stack_mock(gw)
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(request)
        eventually(lambda: held(mock, "cut-before") == 1)  # at the provider, no answer yet
    (rid,) = gw.reservations_for("streamers", "cara@example.com")
    release(mock, "cut-before")

    def audited() -> bool:
        return any((r.get("budget") or {}).get("reservation_id") == rid for r in gw.audit.records())

    eventually(audited)
    (rec,) = [r for r in gw.audit.records() if (r.get("budget") or {}).get("reservation_id") == rid]
    assert (rec["status"], rec["completed"], rec["usage_source"]) == (0, False, "bound")
    assert rec["tokens"]["output_tokens"] == 100  # its max_tokens
    assert rec["tokens"]["input_tokens"] == input_bound(json.loads(body))
    eventually(lambda: gw.counters("streamers", "cara@example.com")[1] == 0)
    assert gw.counters("streamers", "cara@example.com") == (rec["cost_micros"], 0)
    assert rec["cost_micros"] <= rec["budget"]["estimate_micros"]  # the reservation's bound
    assert gw.reservation(rid)["state"] == "SETTLED"


def test_sidecar_killed_mid_stream_is_charged_once_by_the_reaper(gw: Budgeted) -> None:
    token = gw.token("rex@example.com", "reap")
    request_ids: list[str] = []
    received = bytearray()
    errors: list[BaseException] = []

    def stream() -> None:
        try:
            with httpx.stream(
                "POST",
                gw.stack.gateway_url + CHAT,
                timeout=60,
                json={"model": "gpt-4o", "messages": MESSAGES, "stream": True, "max_tokens": 3000},
                headers={
                    "authorization": f"Bearer {token}",
                    "x-mock-output-tokens": "3000",
                    "x-mock-chunk-delay-ms": "25",
                },
            ) as r:
                request_ids.append(r.headers["x-gateway-request-id"])
                for data in r.iter_raw():
                    received.extend(data)
        except BaseException as exc:  # the cut is expected, and asserted below
            errors.append(exc)

    thread = threading.Thread(target=stream)
    thread.start()
    eventually(lambda: bool(request_ids))
    # The sidecar dies before it writes an audit record: find the stream's reservation in Redis.
    eventually(lambda: len(gw.reservations_for("streamers", "rex@example.com")) == 1)
    (rid,) = gw.reservations_for("streamers", "rex@example.com")
    # The sidecar checkpoints the cost so far every lease_s / 3: wait for one to land in Redis.
    eventually(lambda: int(gw.reservation(rid).get("partial", 0)) > 0)
    gw.stack.process("sidecar").kill()  # SIGKILL: no finally, no settle
    gw.stack.process("sidecar").wait(10)  # gone before restart() looks (it refuses a live one)
    thread.join(30)
    assert not thread.is_alive(), "the client's stream outlived the sidecar"
    gw.stack.restart("sidecar")
    # The client's stream was cut, not completed: a transport error, and no end of stream.
    assert len(errors) == 1 and isinstance(errors[0], httpx.TransportError), errors
    assert b"data: [DONE]" not in received and len(received) > 0
    # The restarted sidecar's reaper charges the expired lease: its last checkpoint, exactly once
    # (the record is final and out of the lease set, so no later reaper round can charge it).
    eventually(lambda: gw.reservation(rid).get("state") == "EXPIRED", timeout=30)
    record = gw.reservation(rid)
    assert not gw.leased(rid)
    partial = int(record["partial"])
    assert record["charged"] == str(partial)
    assert gw.counters("streamers", "rex@example.com") == (partial, 0)
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "max_tokens": 3000}
    estimate = estimate_micros(input_bound(body), 3000, GPT4O)
    assert 0 < partial < estimate  # the checkpoint's partial cost, not the whole estimate


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_upstream_error_releases_the_hold_and_charges_nothing(gw: Budgeted, stream: bool) -> None:
    user = f"ursula-{'stream' if stream else 'json'}@example.com"
    token = gw.token(user, "streamers")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 500, "stream": stream}
    r = gw.post(token, body, **{"x-mock-status": "500"})
    assert r.status_code == 500, r.text
    rec = gw.audit.wait_for(r.headers["x-gateway-request-id"])
    rid = gw.reservation_of(rec["request_id"])
    assert (rec["status"], rec["usage_source"], rec["cost_micros"]) == (500, "none", 0)
    assert rec["budget"]["decision"] == "admitted" and rec["budget"]["estimate_micros"] > 0
    # The admission held the estimate; the error released it: nothing spent, nothing held.
    eventually(lambda: gw.reservation(rid).get("state") == "RELEASED")
    assert not gw.leased(rid)
    assert len(list(gw.redis.scan_iter(f"llmgw:{{gwb}}:c:streamers:{user}:*"))) == 1  # it held
    assert gw.counters("streamers", user) == (0, 0)


def test_redis_outage_fail_closed_and_fail_open_then_recovery(gw: Budgeted) -> None:
    closed = gw.token("cleo@example.com", "closed")
    opened = gw.token("otto@example.com", "open")
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "max_tokens": 50}
    assert gw.post(closed, body).status_code == 200
    gw.stack.process("redis-server").terminate()
    gw.stack.process("redis-server").wait(10)
    admitted_open: list[str] = []
    try:
        for _ in range(3):
            r = gw.post(closed, body)  # answered, not hung (gw.post would time out)
            assert r.status_code == 503 and r.json()["error"]["code"] == "budget_store_unavailable"
            r = gw.post(opened, body)
            assert r.status_code == 200 and r.headers["x-gateway-budget-unchecked"] == "true"
            admitted_open.append(r.headers["x-gateway-request-id"])
        records = [gw.audit.wait_for(rid) for rid in admitted_open]
        assert all(rec["budget"]["decision"] == "fail_open" for rec in records)
    finally:
        gw.stack.restart("redis-server")
    eventually(lambda: gw.post(closed, body).status_code == 200)  # no restart of the gateway
    # The fail-open spend is charged once Redis is back: exactly what those requests cost.
    owed = sum(rec["cost_micros"] for rec in records)
    assert owed > 0
    eventually(lambda: gw.counters("open", "open") == (owed, 0))

    # Each request was charged under a settled record of its own, at its own cost: a later
    # reconcile round replays that record and changes nothing.
    def charge_record(rid: str) -> dict[str, str]:  # see BudgetServices.reconcile
        return gw.reservation(f"{gw.reservation_of(rid)}:fail-open")

    for rec in records:
        charged = charge_record(rec["request_id"])
        assert (charged["state"], charged["charged"]) == ("SETTLED", str(rec["cost_micros"]))
    assert gw.counters("open", "open") == (owed, 0)
