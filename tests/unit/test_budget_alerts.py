"""Budget alert delivery against a real webhook server on 127.0.0.1: payload, retries, permanent
failures, timeouts, the bounded queue, draining on close, and URLs with tokens kept out of logs.
Status classification and the worker's robustness are also checked with a `post` hook."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from gateway_extproc.budgets.alerts import AlertSender, loggable_url, webhooks_of
from gateway_extproc.budgets.model import (
    Action,
    Alerts,
    BudgetConfig,
    CalendarWindow,
    Period,
    Scope,
    ScopeKind,
)
from gateway_extproc.budgets.results import AlertCrossing

NOW = 1_800_000_000.0  # 2027-01-15T08:00:00Z
LOGGER = "gateway.budgets.alerts"
CROSSING = AlertCrossing(
    budget="team-eng",
    scope_value="eng",
    window_id="2027-01",
    threshold_percent=80,
    spent_micros=160_000_000,
    limit_micros=200_000_000,
)
FAST: dict[str, Any] = {"timeout_s": 1.0, "backoff_s": 0.001, "clock": lambda: NOW}


def crossing(n: int = 0, budget: str = "team-eng") -> AlertCrossing:
    return AlertCrossing(
        budget, f"user{n}@example.com", "2027-01", 50, 100_000_000 + n, 200_000_000
    )


class HookServer:
    """Records POSTs to /hook. Answers `fail_status` for the first `fail_times` requests, then
    `status`; with `hang`, holds every request until the test ends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []  # (query, headers, body)
        self.status = 200
        self.fail_times = 0
        self.fail_status = 500
        self.hang = False
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.query_string, dict(request.headers), await request.read()))
        if self.hang:
            await self.release.wait()
        if len(self.requests) <= self.fail_times:
            return web.Response(status=self.fail_status)
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)  # the access log would show the query
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, _, body in self.requests]


@pytest.fixture
async def server() -> AsyncIterator[HookServer]:
    srv = HookServer()
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def make() -> AsyncIterator[Any]:
    """Makes senders with small timeouts and backoff; closes them all, even after a failure."""
    made: list[AlertSender] = []

    def _make(**kw: Any) -> AlertSender:
        sender = AlertSender(**{**FAST, **kw})
        made.append(sender)
        return sender

    yield _make
    for sender in made:
        await sender.close(drain_timeout_s=0)


def counters(sender: AlertSender) -> tuple[int, int, int, int]:
    return sender.delivered, sender.failed, sender.dropped, sender.retries


async def test_payload_shape_and_usd_strings(server: HookServer, make: Any) -> None:
    sender = make(webhooks={"team-eng": server.url})
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert counters(sender) == (1, 0, 0, 0)
    [(_, headers, _)] = server.requests
    assert headers["Content-Type"] == "application/json"
    assert server.bodies == [
        {
            "type": "gateway.budget_alert.v1",
            "time": "2027-01-15T08:00:00.000Z",
            "budget": "team-eng",
            "scope_value": "eng",
            "window": "2027-01",
            "threshold_percent": 80,
            "spent_micros": 160_000_000,
            "limit_micros": 200_000_000,
            "spent_usd": "160.000000",
            "limit_usd": "200.000000",
        }
    ]


async def test_one_post_per_crossing_in_order(server: HookServer, make: Any) -> None:
    sender = make(webhooks={"team-eng": server.url})
    await sender.start()
    sender.send(crossing(n) for n in range(3))
    await sender.close()
    assert [b["scope_value"] for b in server.bodies] == [f"user{n}@example.com" for n in range(3)]
    assert server.bodies[1]["spent_usd"] == "100.000001"
    assert counters(sender) == (3, 0, 0, 0)


async def test_5xx_is_retried_then_delivered(server: HookServer, make: Any) -> None:
    server.fail_times = 2
    sender = make(webhooks={"team-eng": server.url}, attempts=4)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert len(server.requests) == 3
    assert counters(sender) == (1, 0, 0, 2)


async def test_400_is_not_retried(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.status = 400
    sender = make(webhooks={"team-eng": server.url}, attempts=4)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert len(server.requests) == 1
    assert counters(sender) == (0, 1, 0, 0)
    assert "failed permanently (HTTP 400)" in caplog.text


async def test_5xx_every_time_fails_after_attempts(server: HookServer, make: Any) -> None:
    server.fail_times = 100
    sender = make(webhooks={"team-eng": server.url}, attempts=3)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert len(server.requests) == 3
    assert counters(sender) == (0, 1, 0, 2)


async def test_hang_times_out_is_retried_then_fails(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.hang = True
    sender = make(webhooks={"team-eng": server.url}, timeout_s=0.1, attempts=3)
    await sender.start()
    sender.send([CROSSING])
    await sender.close(drain_timeout_s=5)
    assert "not delivered before shutdown" not in caplog.text  # ended by the 3 timeouts
    assert len(server.requests) == 3
    assert counters(sender) == (0, 1, 0, 2)
    assert "timed out after 0.1s" in caplog.text
    assert "failed after 3 attempts" in caplog.text


async def test_connection_refused_is_retried_then_fails(make: Any) -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = make(webhooks={"team-eng": f"http://127.0.0.1:{port}/hook"}, attempts=2)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert counters(sender) == (0, 1, 0, 1)


async def test_budget_without_webhook_is_logged_only(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, LOGGER)
    sender = make(webhooks={"team-eng": None, "other": server.url})
    await sender.start()
    sender.send([CROSSING, crossing(1, budget="not-configured")])
    assert sender.queued == 0
    await sender.close()
    assert server.requests == []
    assert counters(sender) == (0, 0, 0, 0)
    alerts = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in alerts] == [
        "budget alert: budget team-eng, scope value 'eng', window 2027-01 crossed 80% "
        "(spent $160.000000 of $200.000000)",
        "budget alert: budget not-configured, scope value 'user1@example.com', window 2027-01 "
        "crossed 50% (spent $100.000001 of $200.000000)",
    ]


async def test_full_queue_drops_the_new_alert(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sender = make(webhooks={"team-eng": server.url}, queue_size=2)
    sender.send(crossing(n) for n in range(5))  # not started: nothing leaves the queue
    assert sender.queued == 2
    assert sender.dropped == 3
    assert caplog.text.count("budget alert dropped, 2 deliveries already queued") == 3
    await sender.start()
    await sender.close()
    assert [b["scope_value"] for b in server.bodies] == ["user0@example.com", "user1@example.com"]
    assert counters(sender) == (2, 0, 3, 0)


async def test_close_drains_the_queue(server: HookServer, make: Any) -> None:
    sender = make(webhooks={"team-eng": server.url})
    sender.send(crossing(n) for n in range(5))
    await sender.start()
    await sender.close()
    assert len(server.requests) == 5
    assert counters(sender) == (5, 0, 0, 0)


async def test_close_without_start_still_drains(server: HookServer, make: Any) -> None:
    sender = make(webhooks={"team-eng": server.url})
    sender.send([CROSSING])
    await sender.close()
    assert len(server.requests) == 1
    assert counters(sender) == (1, 0, 0, 0)


async def test_close_gives_up_after_drain_timeout(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    server.hang = True
    sender = make(webhooks={"team-eng": server.url}, timeout_s=30)
    await sender.start()
    sender.send(crossing(n) for n in range(3))
    started = time.monotonic()
    await sender.close(drain_timeout_s=0.2)
    assert time.monotonic() - started < 15  # gave up long before the 30 s request timeout
    assert len(server.requests) == 1  # the first one is in flight, two still queued
    assert counters(sender) == (0, 0, 3, 0)
    assert caplog.text.count("not delivered before shutdown") == 3


async def test_send_after_close_is_logged_and_dropped(server: HookServer, make: Any) -> None:
    sender = make(webhooks={"team-eng": server.url})
    await sender.start()
    await sender.close()
    sender.send([CROSSING])
    assert counters(sender) == (0, 0, 1, 0)
    with pytest.raises(RuntimeError, match="closed"):
        await sender.start()


async def test_url_userinfo_and_query_never_logged(
    server: HookServer, make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = f"http://alertbot:hunter2@127.0.0.1:{server.port}/hook?token=s3cr3t#frag"
    server.fail_times = 1
    server.fail_status = 503
    server.status = 403
    sender = make(webhooks={"team-eng": secret}, attempts=3)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert [q for q, _, _ in server.requests] == ["token=s3cr3t", "token=s3cr3t"]
    assert counters(sender) == (0, 1, 0, 1)
    text = caplog.text
    assert f"http://127.0.0.1:{server.port}" in text and "/hook" not in text
    for leak in ("alertbot", "hunter2", "s3cr3t", "token", "frag"):
        assert leak not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example.com/services/T0/B0/s3cr3t", "https://hooks.example.com"),
        ("https://u:p@hooks.example.com:8443/a/b?sig=abc#f", "https://hooks.example.com:8443"),
        ("http://user@[::1]:9000/h?k=v", "http://[::1]:9000"),
        ("https://HOOKS.example.com?token=x", "https://hooks.example.com"),
        ("http://[::1/broken", "<unparseable URL>"),
    ],
)
def test_loggable_url(url: str, shown: str) -> None:
    assert loggable_url(url) == shown


class FakePost:
    """A `post` hook answering from a script of statuses (or exceptions to raise)."""

    def __init__(self, *script: int | BaseException) -> None:
        self.script = list(script)
        self.calls = 0

    async def __call__(self, url: str, body: bytes) -> int:
        self.calls += 1
        answer = self.script.pop(0) if self.script else 200
        if isinstance(answer, BaseException):
            raise answer
        return answer


@pytest.mark.parametrize(
    ("status", "calls", "expected"),
    [
        (200, 1, (1, 0, 0, 0)),
        (204, 1, (1, 0, 0, 0)),
        (301, 1, (0, 1, 0, 0)),  # redirects are not followed
        (400, 1, (0, 1, 0, 0)),
        (401, 1, (0, 1, 0, 0)),
        (404, 1, (0, 1, 0, 0)),
        (408, 3, (0, 1, 0, 2)),
        (429, 3, (0, 1, 0, 2)),
        (500, 3, (0, 1, 0, 2)),
        (502, 3, (0, 1, 0, 2)),
        (503, 3, (0, 1, 0, 2)),
    ],
)
async def test_status_classification(
    status: int, calls: int, expected: tuple[int, int, int, int], make: Any
) -> None:
    post = FakePost(*[status] * 3)
    sender = make(webhooks={"team-eng": "https://hooks.example.com/x"}, attempts=3, post=post)
    await sender.start()
    sender.send([CROSSING])
    await sender.close()
    assert post.calls == calls
    assert counters(sender) == expected


async def test_connection_errors_retry_and_a_broken_hook_does_not_stop_the_worker(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    post = FakePost(ConnectionResetError(104, "Connection reset by peer"), 200, ValueError("bug"))
    sender = make(webhooks={"team-eng": "https://hooks.example.com/x"}, attempts=2, post=post)
    await sender.start()
    sender.send(crossing(n) for n in range(3))
    await sender.close()
    assert post.calls == 4  # reset, 200 | ValueError | 200
    assert counters(sender) == (2, 1, 0, 1)
    assert "ConnectionResetError: Connection reset by peer" in caplog.text
    assert "(ValueError)" in caplog.text


def test_backoff_is_exponential_and_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[float] = []

    async def fake_sleep(delay: float) -> None:
        delays.append(delay)

    async def scenario() -> AlertSender:
        sender = AlertSender(
            webhooks={"team-eng": "https://hooks.example.com/x"},
            attempts=8,
            backoff_s=1.0,
            post=FakePost(*[500] * 8),
        )
        sender.send([CROSSING])
        monkeypatch.setattr(asyncio, "sleep", fake_sleep)
        await sender.close()
        return sender

    sender = asyncio.run(scenario())
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert counters(sender) == (0, 1, 0, 7)


def test_send_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    def broken() -> Iterator[AlertCrossing]:
        yield CROSSING
        raise RuntimeError("the iterable broke")

    sender = AlertSender(webhooks={})
    sender.send(broken())
    assert "could not process the crossings (RuntimeError)" in caplog.text


def test_rejects_bad_settings() -> None:
    bad: list[dict[str, Any]] = [
        {"timeout_s": 0},
        {"attempts": 0},
        {"backoff_s": -1},
        {"queue_size": 0},
    ]
    for kw in bad:
        with pytest.raises(ValueError):
            AlertSender(webhooks={}, **kw)


def test_webhooks_of_budgets() -> None:
    def budget(name: str, webhook: str | None) -> BudgetConfig:
        return BudgetConfig(
            name=name,
            scope=Scope(ScopeKind.GLOBAL),
            limit_micros=1,
            window=CalendarWindow(Period.MONTH),
            action=Action.MONITOR,
            alerts=Alerts((80,), webhook),
        )

    assert webhooks_of([budget("a", "https://h/x"), budget("b", None)]) == {
        "a": "https://h/x",
        "b": None,
    }
