"""The OAuth 2.0 device authorization grant (RFC 8628) through Authlib's client: ask the IdP
for a device code, show the person where to enter it, poll the token endpoint at the IdP's pace.

`Pacer` is the pure part: the wait before each poll (`interval`, default 5 s; `slow_down` adds
5 s for every later poll, section 3.5) and when to give up (`expires_in`). The flow takes its
clock and sleep as arguments so tests pace it without waiting.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import httpx
from authlib.integrations.base_client.errors import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE

from gateway_extproc.login.document import HTTP_TIMEOUT_S, LoginError

DEFAULT_INTERVAL_S = 5  # RFC 8628 section 3.2: when the IdP names none
SLOW_DOWN_STEP_S = 5  # section 3.5


@dataclasses.dataclass
class Pacer:
    """When to poll next, and when the device code has run out."""

    interval_s: float
    deadline: float  # the clock's reading when the code expires

    @classmethod
    def start(cls, now: float, interval: object, expires_in: object) -> Pacer:
        step = interval if isinstance(interval, int | float) and interval >= 0 else None
        ttl = expires_in if isinstance(expires_in, int | float) and expires_in > 0 else None
        return cls(
            interval_s=DEFAULT_INTERVAL_S if step is None else float(step),
            deadline=now + (ttl if ttl is not None else 1800.0),
        )

    def slow_down(self) -> None:
        self.interval_s += SLOW_DOWN_STEP_S

    def wait(self, now: float) -> float | None:
        """How long to wait before the next poll, or None when that poll would come after the
        code expired (the IdP would only answer expired_token)."""
        if now + self.interval_s >= self.deadline:
            return None
        return self.interval_s


@dataclasses.dataclass(frozen=True)
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: Any
    interval: Any


def start(
    client: OAuth2Client, endpoint: str, scopes: tuple[str, ...], audience: str | None
) -> DeviceCode:
    """The device authorization request (section 3.1), authenticated as the client is at the
    token endpoint (a public client sends its client_id)."""
    form = {"scope": " ".join(scopes)}
    if audience:
        form["audience"] = audience
    try:
        answer = client.request(
            "POST",
            endpoint,
            data=form,
            withhold_token=True,
            auth=client.client_auth(client.token_endpoint_auth_method),
            timeout=HTTP_TIMEOUT_S,
        )
        doc = answer.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LoginError(f"the IdP's device authorization endpoint failed: {exc}") from exc
    if answer.status_code != 200 or not isinstance(doc, dict):
        error = doc.get("error") if isinstance(doc, dict) else None
        raise LoginError(
            f"the IdP refused the device authorization request (HTTP {answer.status_code}"
            + (f", {error}" if error else "")
            + "): is login.client_id registered for the device grant?"
        )
    uri = doc.get("verification_uri") or doc.get("verification_url")  # Google says _url
    if not all(
        isinstance(v, str) and v for v in (doc.get("device_code"), doc.get("user_code"), uri)
    ):
        raise LoginError("the IdP's device authorization answer lacks a code or a URI")
    return DeviceCode(
        device_code=doc["device_code"],
        user_code=doc["user_code"],
        verification_uri=str(uri),
        verification_uri_complete=doc.get("verification_uri_complete"),
        expires_in=doc.get("expires_in"),
        interval=doc.get("interval"),
    )


def poll(
    client: OAuth2Client,
    token_endpoint: str,
    code: DeviceCode,
    *,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Poll until the person approves (the token response), or raise LoginError on denial,
    expiry or any other refusal. Bounded by the code's lifetime."""
    pacer = Pacer.start(clock(), code.interval, code.expires_in)
    while (wait := pacer.wait(clock())) is not None:
        sleep(wait)
        try:
            token = client.fetch_token(
                token_endpoint,
                grant_type=DEVICE_CODE_GRANT_TYPE,
                device_code=code.device_code,
                timeout=HTTP_TIMEOUT_S,
            )
            return dict(token)
        except OAuthError as exc:
            if exc.error == "authorization_pending":
                continue
            if exc.error == "slow_down":
                pacer.slow_down()
                continue
            if exc.error == "access_denied":
                raise LoginError("the sign-in was denied at the IdP; nothing was stored") from None
            if exc.error == "expired_token":
                raise LoginError(_EXPIRED) from None
            raise LoginError(f"the IdP refused the device code: {exc.error}") from None
        except httpx.HTTPError as exc:
            raise LoginError(f"the IdP's token endpoint failed: {exc}") from exc
    raise LoginError(_EXPIRED)


_EXPIRED = "the code expired before it was approved; run gatewayctl login again"


def describe(code: DeviceCode) -> str:
    """What the person is shown: where to go and which code to enter."""
    lines = [
        f"To sign in, open {code.verification_uri}",
        f"and enter the code: {code.user_code}",
    ]
    if code.verification_uri_complete:
        lines.append(f"(or open {code.verification_uri_complete} , which carries the code)")
    if isinstance(code.expires_in, int | float):
        lines.append(f"The code is valid for {math.ceil(code.expires_in / 60)} minutes.")
    return "\n".join(lines)
