"""The device grant's pace (login/device.py): the interval, slow_down's +5 s for every later
poll, the code's lifetime; denial and expiry. A scripted token endpoint and a fake clock: no
waiting."""

from __future__ import annotations

from typing import Any

import pytest
from authlib.integrations.base_client.errors import OAuthError

from gateway_extproc.login.device import DeviceCode, Pacer, poll
from gateway_extproc.login.document import LoginError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class ScriptedIdp:
    """`fetch_token` answers from a script: an OAuth error code, or "ok"."""

    def __init__(self, clock: Clock, answers: list[str]) -> None:
        self.clock, self.answers, self.polls = clock, list(answers), []

    def fetch_token(self, url: str, **form: Any) -> dict[str, Any]:
        self.polls.append(self.clock.now)
        assert form["grant_type"] == "urn:ietf:params:oauth:grant-type:device_code"
        answer = self.answers.pop(0)
        if answer != "ok":
            raise OAuthError(error=answer)
        return {"access_token": "at", "expires_in": 60}


def code(interval: object = 5, expires_in: object = 600) -> DeviceCode:
    return DeviceCode("dc", "ABCD-EFGH", "https://idp/device", None, expires_in, interval)


def run(answers: list[str], **kw: object) -> tuple[Clock, ScriptedIdp, dict[str, Any] | None]:
    clock = Clock()
    idp = ScriptedIdp(clock, answers)
    token = poll(idp, "https://idp/token", code(**kw), clock=lambda: clock.now, sleep=clock.sleep)  # type: ignore[arg-type]
    return clock, idp, token


def test_polls_at_the_interval_until_approved() -> None:
    clock, _, token = run(["authorization_pending", "authorization_pending", "ok"], interval=3)
    assert token == {"access_token": "at", "expires_in": 60}
    assert clock.sleeps == [3, 3, 3]


def test_slow_down_adds_five_seconds_to_every_later_poll() -> None:
    answers = ["authorization_pending", "slow_down", "authorization_pending", "slow_down", "ok"]
    clock, idp, _ = run(answers, interval=2)
    assert clock.sleeps == [2, 2, 7, 7, 12]
    gaps = [b - a for a, b in zip(idp.polls, idp.polls[1:], strict=False)]
    assert gaps == [2, 7, 7, 12]


@pytest.mark.parametrize("interval", [None, "soon", -1])
def test_the_default_interval_is_five_seconds(interval: object) -> None:
    clock, _, _ = run(["authorization_pending", "ok"], interval=interval)
    assert clock.sleeps == [5, 5]


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ("access_denied", "the sign-in was denied at the IdP; nothing was stored"),
        ("expired_token", "the code expired before it was approved; run gatewayctl login again"),
        ("invalid_client", "the IdP refused the device code: invalid_client"),
    ],
)
def test_denial_and_expiry_end_the_flow(answer: str, message: str) -> None:
    with pytest.raises(LoginError, match=message):
        run(["authorization_pending", answer])


def test_expires_in_bounds_the_polling() -> None:
    """A code valid 12 s, polled every 5 s: polls at 5 and 10 s, then no more (a poll at 15 s
    would only hear expired_token)."""
    clock = Clock()
    idp = ScriptedIdp(clock, ["authorization_pending"] * 10)
    with pytest.raises(LoginError, match="the code expired"):
        poll(idp, "t", code(5, 12), clock=lambda: clock.now, sleep=clock.sleep)  # type: ignore[arg-type]
    assert [p - 1000 for p in idp.polls] == [5, 10]


def test_pacer_arithmetic() -> None:
    pacer = Pacer.start(0.0, 1, 20)
    assert pacer.wait(0.0) == 1
    pacer.slow_down()
    pacer.slow_down()
    assert pacer.wait(5.0) == 11
    assert pacer.wait(9.0) is None  # 9 + 11 reaches the deadline
    assert Pacer.start(0.0, 0, None).deadline == 1800.0  # no expires_in: 30 minutes
