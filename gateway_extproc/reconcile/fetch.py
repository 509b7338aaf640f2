"""Fetch every page of one report: bounded retries with backoff on 429 and 5xx (honouring
`retry-after`), a timeout per request, a bound on pages. The thin I/O edge of `pull.py`; the
clock and the sleep are injected so tests run the backoff without waiting.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx

from gateway_extproc.reconcile.money import decimal_json

RETRIED_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


class FetchError(RuntimeError):
    """A report could not be read (the message names the provider and why; never the key)."""


class KeyRefused(FetchError):
    """The provider refused the admin key (401/403): retrying cannot help."""


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 5  # per page
    base_s: float = 0.5  # first backoff, doubled each retry
    max_backoff_s: float = 30.0
    max_retry_after_s: float = 120.0  # a longer retry-after gives up instead of waiting
    timeout_s: float = 30.0  # per request
    max_pages: int = 1000

    def backoff(self, retry: int) -> float:
        return float(min(self.base_s * (2**retry), self.max_backoff_s))


def retry_after_s(value: str | None, now: float) -> float | None:
    """`retry-after` as seconds: delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(float(when.timestamp()) - now, 0.0)


@dataclasses.dataclass
class Pager:
    client: httpx.AsyncClient
    provider: str
    headers: Mapping[str, str]
    policy: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    sleep: Sleep = asyncio.sleep
    clock: Clock = time.time
    requests: int = 0  # HTTP requests made (tests read it)

    async def pages(self, url: str, params: Mapping[str, Any]) -> list[Any]:
        """Every page of the report at `url`, following `next_page` while `has_more`."""
        out: list[Any] = []
        page: str | None = None
        for _ in range(self.policy.max_pages):
            query = dict(params) if page is None else {**params, "page": page}
            body = await self.get(url, query)
            out.append(body)
            if not isinstance(body, dict) or not body.get("has_more"):
                return out
            page = body.get("next_page")
            if not isinstance(page, str) or not page:
                raise FetchError(f"{self.provider}: has_more without a next_page at {url}")
        raise FetchError(f"{self.provider}: more than {self.policy.max_pages} pages at {url}")

    async def get(self, url: str, params: Mapping[str, Any]) -> Any:
        """One page, retried as the policy says."""
        last = ""
        for attempt in range(self.policy.attempts):
            wait: float | None
            try:
                self.requests += 1
                response = await self.client.get(
                    url, params=params, headers=dict(self.headers), timeout=self.policy.timeout_s
                )
            except httpx.TransportError as exc:  # timeouts, refused connections, resets
                last, wait = f"{type(exc).__name__}", None
            else:
                status = response.status_code
                if status == 200:
                    try:
                        return decimal_json(response.content)
                    except ValueError as exc:
                        raise FetchError(f"{self.provider}: {url} answered invalid JSON") from exc
                if status in (401, 403):
                    raise KeyRefused(
                        f"{self.provider}: the admin key was refused ({status}) at {url}: "
                        "reports need an admin key, not a serving key"
                    )
                if status not in RETRIED_STATUSES:
                    raise FetchError(
                        f"{self.provider}: {url} answered {status}: {response.text[:300]}"
                    )
                last = f"status {status}"
                wait = retry_after_s(response.headers.get("retry-after"), self.clock())
                if wait is not None and wait > self.policy.max_retry_after_s:
                    raise FetchError(f"{self.provider}: {url} asked to retry after {wait:.0f} s")
            if attempt + 1 < self.policy.attempts:
                await self.sleep(self.policy.backoff(attempt) if wait is None else wait)
        raise FetchError(
            f"{self.provider}: {url} failed {self.policy.attempts} times (last: {last})"
        )
