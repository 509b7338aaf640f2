"""The Entra ID token source after a refused fetch (providers/azure/entra.py): no fetch starts
during a backoff (1 s, doubling per failure up to 30 s, reset by a success), requests without a
valid token fail fast with the 503 meanwhile, the refresh ahead of expiry respects it too, and
close() cancels a fetch in flight and waits for it. A fake clock; a fake credential."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from gateway_extproc.errors import ProviderUnavailable
from gateway_extproc.providers.azure import entra
from gateway_extproc.providers.azure.entra import TokenSource


@dataclass
class _Token:
    token: str
    expires_on: int


class _Credential:
    """Refuses while `fail` is set; `gate` holds a fetch in flight; records what it saw."""

    def __init__(self, clock: list[float]) -> None:
        self.clock, self.calls, self.fail, self.closed = clock, 0, True, False
        self.gate = asyncio.Event()
        self.gate.set()
        self.cancelled = False

    async def get_token(self, *scopes: str) -> _Token:
        self.calls += 1
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail:
            raise RuntimeError("refused")
        return _Token(f"tok{self.calls}", int(self.clock[0]) + 3600)

    async def close(self) -> None:
        self.closed = True


def _source() -> tuple[TokenSource, _Credential, list[float]]:
    clock = [1000.0]
    cred = _Credential(clock)
    return TokenSource(lambda: cred, clock=lambda: clock[0], refresh_before_s=300), cred, clock


async def _refused(source: TokenSource) -> None:
    with pytest.raises(ProviderUnavailable):
        await source.ensure()


async def test_requests_fail_fast_during_the_backoff_and_retry_after() -> None:
    source, cred, clock = _source()
    await _refused(source)
    assert cred.calls == 1
    for _ in range(5):  # back to back within the first second: 503 at once, no fetch
        await _refused(source)
    clock[0] += 0.9
    await _refused(source)
    assert cred.calls == 1 and source.backing_off()
    clock[0] += 0.1  # the 1 s backoff is over: the next request asks again
    await _refused(source)
    assert cred.calls == 2


async def test_the_backoff_doubles_up_to_its_cap_and_a_success_resets_it() -> None:
    source, cred, clock = _source()
    waits = []
    for _ in range(8):
        await _refused(source)
        calls, start = cred.calls, clock[0]
        for _ in range(int(entra.BACKOFF_MAX_S / 0.5)):  # 0.5 s steps up to the cap
            clock[0] += 0.5
            await _refused(source)
            if cred.calls > calls:
                break
        waits.append(clock[0] - start)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    cred.fail = False
    clock[0] += entra.BACKOFF_MAX_S
    assert await source.ensure() == f"tok{cred.calls}"
    assert not source.backing_off()
    # expired again, refused again: the backoff starts over at 1 s
    cred.fail = True
    clock[0] += 3600
    await _refused(source)
    calls = cred.calls
    clock[0] += 1.0
    await _refused(source)
    assert cred.calls == calls + 1


async def test_the_refresh_ahead_of_expiry_respects_the_backoff() -> None:
    source, cred, clock = _source()
    cred.fail = False
    assert await source.ensure() == "tok1"
    cred.fail = True
    clock[0] += 3400  # 200 s left: a refresh starts behind the request, and is refused
    assert await source.ensure() == "tok1"
    await asyncio.sleep(0)
    assert cred.calls == 2 and source.backing_off()
    for _ in range(5):  # the cached token still serves; no refresh starts during the backoff
        assert await source.ensure() == "tok1"
        await asyncio.sleep(0)
    assert cred.calls == 2
    clock[0] += 1.0
    assert await source.ensure() == "tok1"
    await asyncio.sleep(0)
    assert cred.calls == 3


async def test_a_clock_stepped_back_ends_the_backoff() -> None:
    source, cred, clock = _source()
    await _refused(source)
    await _refused(source)
    assert cred.calls == 1  # backing off
    clock[0] -= 60  # a backoff measured against this clock would last a minute
    await _refused(source)
    assert cred.calls == 2


async def test_close_cancels_and_awaits_the_fetch_in_flight() -> None:
    source, cred, _ = _source()
    cred.gate.clear()
    waiting = asyncio.ensure_future(source.ensure())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert cred.calls == 1 and not waiting.done()
    await source.close()
    # close() returned only once the fetch had ended: it saw its cancellation, and the
    # credential was closed after it
    assert cred.cancelled and cred.closed
    assert source._fetch is None
    with pytest.raises(ProviderUnavailable):  # the waiting request: a 503, not a CancelledError
        await waiting
