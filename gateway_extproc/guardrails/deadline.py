"""How long one request's scan may take. Pure: the clock is the caller's.

A prompt's scan time grows with its size and with how dense it is with candidates (~50 ms per MB
of prose, ~0.5 s per MB dense with findings: a 32 MiB prompt could hold the worker's one
body-parsing thread for ~16 s, and every other large prompt behind it). The scan checks its
deadline before each detector and before each candidate it validates; past it, `ScanTimeout`
ends the scan (the engine decides what that means for the request).
"""

from __future__ import annotations

from collections.abc import Callable


class ScanTimeout(Exception):
    """The scan ran past its deadline."""


class Deadline:
    """`check` runs per candidate, up to ~100,000 times per MB dense with them: it reads the
    clock on its first call and every 16th after it (~100 ns a check instead of ~220).
    `check_now` always reads it (per detector: a detector can pass over the whole text without
    a candidate)."""

    __slots__ = ("_checks", "at", "clock")

    def __init__(self, clock: Callable[[], float], seconds: float) -> None:
        self.clock = clock
        self.at = clock() + seconds
        self._checks = 0

    def check(self) -> None:
        checks = self._checks
        self._checks = checks + 1
        if not checks & 15 and self.clock() > self.at:
            raise ScanTimeout

    def check_now(self) -> None:
        if self.clock() > self.at:
            raise ScanTimeout


class _Never(Deadline):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(lambda: 0.0, 0.0)

    def check(self) -> None:
        pass

    def check_now(self) -> None:
        pass


NEVER: Deadline = _Never()
