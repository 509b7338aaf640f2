"""A circuit breaker for the budget store: stop waiting on a Redis that is down. Pure."""

from __future__ import annotations


class CircuitBreaker:
    """Open after N consecutive failures; half-open (one trial call) after `open_s`."""

    def __init__(self, failures: int, open_s: float) -> None:
        self.failures_to_open = failures
        self.open_s = open_s
        self.consecutive = 0
        self.opened_at: float | None = None
        self.opened = 0  # times it opened (a counter for metrics)

    def allow(self, now: float) -> bool:
        if self.opened_at is None:
            return True
        if now - self.opened_at >= self.open_s:
            self.opened_at = now  # half-open: let this call try; a failure re-opens for open_s
            return True
        return False

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None

    def failure(self, now: float) -> None:
        self.consecutive += 1
        if self.consecutive >= self.failures_to_open:
            if self.opened_at is None:
                self.opened += 1
            self.opened_at = now
