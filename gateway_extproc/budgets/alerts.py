"""Budget alert delivery, off the request path.

The budget store's Lua scripts report each threshold crossing exactly once per (budget, scope
value, window, threshold) across all replicas. `AlertSender.send` logs every crossing and queues
one webhook POST per crossing whose budget has a webhook; a single worker task delivers them with
bounded retries. Nothing here ever blocks or fails the request that caused the crossing.

Delivery outcome per POST: 2xx is done; 408, 429, 5xx, timeouts and connection errors are retried
(`attempts` in total, exponential backoff capped at `MAX_BACKOFF_S`); any other status (3xx are not
followed, 4xx) is a permanent failure. Webhook URLs often carry tokens, so logs show only
`loggable_url(url)`: scheme, host, port and path - never userinfo, query or fragment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping

import aiohttp
import orjson

from gateway_extproc.budgets.model import BudgetConfig
from gateway_extproc.budgets.results import AlertCrossing
from gateway_extproc.catalog.pricing import format_usd

log = logging.getLogger("gateway.budgets.alerts")

PAYLOAD_TYPE = "gateway.budget_alert.v1"
MAX_BACKOFF_S = 30.0
RETRY_STATUSES = frozenset({408, 429})

Post = Callable[[str, bytes], Awaitable[int]]


def webhooks_of(budgets: Iterable[BudgetConfig]) -> dict[str, str | None]:
    """The `webhooks` argument of `AlertSender` for a set of budgets."""
    return {b.name: b.alerts.webhook for b in budgets}


def loggable_url(url: str) -> str:
    """`scheme://host[:port]` of `url`: no userinfo, path, query or fragment. Webhook services
    put their secret in any of them (Slack-style URLs carry it in the path)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, "", "", ""))


def alert_payload(crossing: AlertCrossing, now: float) -> bytes:
    """The webhook body for one crossing; `now` is wall time in seconds."""
    stamp = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="milliseconds")
    return orjson.dumps(
        {
            "type": PAYLOAD_TYPE,
            "time": stamp.replace("+00:00", "Z"),
            "budget": crossing.budget,
            "scope_value": crossing.scope_value,
            "window": crossing.window_id,
            "threshold_percent": crossing.threshold_percent,
            "spent_micros": crossing.spent_micros,
            "limit_micros": crossing.limit_micros,
            "spent_usd": format_usd(crossing.spent_micros),
            "limit_usd": format_usd(crossing.limit_micros),
        }
    )


@dataclasses.dataclass(frozen=True, slots=True)
class _Delivery:
    what: str  # for the log: which alert (never the URL's secret parts)
    url: str
    shown_url: str  # loggable_url(url)
    body: bytes


def _describe(c: AlertCrossing) -> str:
    return (
        f"budget {c.budget}, scope value {c.scope_value!r}, window {c.window_id}, "
        f"threshold {c.threshold_percent}%"
    )


def _describe_error(exc: BaseException) -> str:
    """An exception without its message: aiohttp puts the full URL in some of them."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


class AlertSender:
    """Logs budget threshold crossings and delivers them to the budgets' webhooks.

    `send` is synchronous and safe to call from the request path. Deliveries wait in a bounded
    queue (a full queue drops the new alert) until the worker started by `start` posts them;
    `close` drains the queue for a while, then cancels. Counters: `delivered`, `failed` (permanent
    status or out of attempts), `dropped` (queue full, sent after close, or abandoned by close) and
    `retries` (attempts after the first). `post` replaces the HTTP POST in tests; it returns the
    status code. `clock` is wall time in seconds, for the payload's `time`.
    """

    def __init__(
        self,
        *,
        webhooks: Mapping[str, str | None],
        timeout_s: float = 5.0,
        attempts: int = 4,
        backoff_s: float = 0.5,
        queue_size: int = 10_000,
        post: Post | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff_s < 0:
            raise ValueError("backoff_s must not be negative")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._webhooks: dict[str, tuple[str, str]] = {}
        self.set_webhooks(webhooks)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._queue_size = queue_size
        self._queue: asyncio.Queue[_Delivery] = asyncio.Queue(maxsize=queue_size)
        self._post: Post = post or self._http_post
        self._own_http = post is None
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._current: _Delivery | None = None
        self._closed = False
        self.delivered = 0
        self.failed = 0
        self.dropped = 0
        self.retries = 0

    def set_webhooks(self, webhooks: Mapping[str, str | None]) -> None:
        """Replace the budget -> webhook map (on a configuration reload). Queued alerts keep the
        URL they were queued with."""
        self._webhooks = {
            name: (url, loggable_url(url)) for name, url in webhooks.items() if url is not None
        }

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    # -- request path --------------------------------------------------------------------------

    def send(self, crossings: Iterable[AlertCrossing]) -> None:
        """Log every crossing and queue a delivery for those whose budget has a webhook.
        Never blocks, never raises."""
        try:
            for crossing in crossings:
                self._send_one(crossing)
        except Exception as exc:  # never fail the request that crossed a threshold
            log.error("budget alert: could not process the crossings (%s)", _describe_error(exc))

    def _send_one(self, c: AlertCrossing) -> None:
        log.warning(
            "budget alert: budget %s, scope value %r, window %s crossed %d%% (spent $%s of $%s)",
            c.budget,
            c.scope_value,
            c.window_id,
            c.threshold_percent,
            format_usd(c.spent_micros),
            format_usd(c.limit_micros),
        )
        hook = self._webhooks.get(c.budget)
        if hook is None:
            return
        if self._closed:
            self.dropped += 1
            log.warning("budget alert not delivered, the sender is closed: %s", _describe(c))
            return
        url, shown = hook
        self._queue_one(_Delivery(_describe(c), url, shown, alert_payload(c, self._clock())))

    def post(self, url: str, body: bytes, what: str) -> None:
        """Queue one webhook POST of an alert that is not a budget's (reconciliation drift:
        the same delivery, retries and logging). Never blocks, never raises."""
        if self._closed:
            self.dropped += 1
            log.warning("alert not delivered, the sender is closed: %s", what)
            return
        self._queue_one(_Delivery(what, url, loggable_url(url), body))

    def _queue_one(self, delivery: _Delivery) -> None:
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning(
                "budget alert dropped, %d deliveries already queued: %s",
                self._queue_size,
                delivery.what,
            )

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery worker (once; later calls do nothing)."""
        if self._closed:
            raise RuntimeError("the alert sender is closed")
        self._start_worker()

    def _start_worker(self) -> None:
        if self._worker is not None:
            return
        if self._own_http and self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                headers={"content-type": "application/json", "user-agent": "llm-spend-gateway"},
            )
        self._worker = asyncio.create_task(self._run(), name="budget-alert-sender")

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Deliver what is queued (even if `start` was never called) for up to `drain_timeout_s`,
        then cancel the worker. Alerts still queued or in flight then are counted as dropped."""
        if self._closed and self._worker is None:
            return
        self._closed = True
        try:
            if self._worker is None and not self._queue.empty():
                self._start_worker()
            if self._worker is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(drain_timeout_s):
                        await self._queue.join()
        finally:
            if self._worker is not None:
                self._worker.cancel()
                await asyncio.wait([self._worker])
                self._worker = None
            self._abandon_rest()
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _abandon_rest(self) -> None:
        abandoned: list[_Delivery] = [] if self._current is None else [self._current]
        self._current = None
        while not self._queue.empty():
            abandoned.append(self._queue.get_nowait())
            self._queue.task_done()
        self.dropped += len(abandoned)
        for d in abandoned:
            log.warning("budget alert not delivered before shutdown: %s", d.what)

    # -- delivery ------------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            delivery = await self._queue.get()
            self._current = delivery
            try:
                await self._deliver(delivery)
            except Exception as exc:  # a broken `post` hook must not stop the worker
                self.failed += 1
                log.error(
                    "budget alert to %s failed: %s (%s)",
                    delivery.shown_url,
                    delivery.what,
                    _describe_error(exc),
                )
            finally:
                self._queue.task_done()
            self._current = None  # not reached when cancelled: close() counts it as abandoned

    async def _deliver(self, d: _Delivery) -> None:
        for attempt in range(1, self._attempts + 1):
            retry, outcome = await self._attempt(d)
            if outcome is None:
                self.delivered += 1
                log.info("budget alert delivered to %s: %s", d.shown_url, d.what)
                return
            if not retry:
                self.failed += 1
                log.error(
                    "budget alert to %s failed permanently (%s): %s",
                    d.shown_url,
                    outcome,
                    d.what,
                )
                return
            if attempt == self._attempts:
                break
            delay = min(self._backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
            log.warning(
                "budget alert to %s: attempt %d of %d failed (%s), retrying in %.3gs",
                d.shown_url,
                attempt,
                self._attempts,
                outcome,
                delay,
            )
            self.retries += 1
            await asyncio.sleep(delay)
        self.failed += 1
        log.error(
            "budget alert to %s failed after %d attempts (%s): %s",
            d.shown_url,
            self._attempts,
            outcome,
            d.what,
        )

    async def _attempt(self, d: _Delivery) -> tuple[bool, str | None]:
        """One POST: (retryable, None) when delivered, else (retryable, what went wrong)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                status = await self._post(d.url, d.body)
        except TimeoutError:
            return True, f"timed out after {self._timeout_s:g}s"
        except (aiohttp.ClientError, OSError) as exc:
            return True, _describe_error(exc)
        if 200 <= status < 300:
            return False, None
        return status in RETRY_STATUSES or status >= 500, f"HTTP {status}"

    async def _http_post(self, url: str, body: bytes) -> int:
        if self._session is None:
            raise RuntimeError("the alert sender is not started")
        async with self._session.post(url, data=body, allow_redirects=False) as response:
            return response.status
