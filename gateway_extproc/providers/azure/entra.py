"""Entra ID access tokens for Azure OpenAI (`Authorization: Bearer`), from azure-identity.

One `TokenSource` per Azure provider: an async azure-identity credential
(`DefaultAzureCredential`: a service principal from `AZURE_TENANT_ID` / `AZURE_CLIENT_ID` /
`AZURE_CLIENT_SECRET`, workload identity from `AZURE_FEDERATED_TOKEN_FILE`, or a managed
identity) asked for the Cognitive Services scope. The token is cached; a request never waits for
a fetch while the cached one has more than `refresh_before_s` left. Within that margin the first
request starts one refresh in the background and goes on with the cached token; only when no
valid token is held (the first request, or after fetches failed until it expired) do requests
wait, all of them for the same single fetch, on the event loop (the credential is async: no
thread and no blocking call). The token is never logged.

A failed fetch starts a backoff (`BACKOFF_MIN_S`, doubling per failure up to `BACKOFF_MAX_S`,
reset by a success): until it ends no fetch starts, neither for a request nor ahead of expiry,
so a refusing token endpoint is asked at most once per backoff and requests without a valid
token get their 503 at once instead of one fetch each. `close()` cancels a fetch in flight and
waits for it to end before closing the credential, so nothing runs on after shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway_extproc.errors import ProviderUnavailable

log = logging.getLogger("gateway.azure")

SCOPE = "https://cognitiveservices.azure.com/.default"
REFRESH_BEFORE_S = 300.0  # Entra ID tokens live 60-90 minutes; refresh 5 minutes ahead
MIN_VALID_S = 30.0  # a token closer than this to its expiry is not sent
BACKOFF_MIN_S = 1.0  # after a failed fetch, none starts for this long; doubled per failure
BACKOFF_MAX_S = 30.0


class AccessTokenLike(Protocol):
    @property
    def token(self) -> str: ...
    @property
    def expires_on(self) -> int: ...


class AsyncCredential(Protocol):
    """What azure-identity's async credentials offer (`azure.core.credentials_async`)."""

    async def get_token(self, *scopes: str) -> AccessTokenLike: ...

    async def close(self) -> None: ...


def default_credential() -> AsyncCredential:
    """azure-identity's default chain, imported on first use (only Entra-ID providers load it)."""
    from azure.identity.aio import DefaultAzureCredential

    return DefaultAzureCredential()


class TokenSource:
    def __init__(
        self,
        make_credential: Callable[[], AsyncCredential] = default_credential,
        *,
        clock: Callable[[], float] = time.time,
        refresh_before_s: float = REFRESH_BEFORE_S,
    ) -> None:
        self._make_credential = make_credential
        self._credential: AsyncCredential | None = None
        self._clock = clock
        self._refresh_before_s = refresh_before_s
        self._token: str | None = None
        self._expires_on = 0.0
        self._fetch: asyncio.Task[None] | None = None
        self._failed_at: float | None = None  # the last failed fetch's end, None after a success
        self._backoff_s = BACKOFF_MIN_S  # how long no fetch starts after _failed_at
        self.fetches = 0  # for tests and logs: how many times a token was asked for

    def __repr__(self) -> str:  # never the token
        return f"TokenSource(expires_on={self._expires_on:.0f})"

    def current(self) -> str | None:
        """The cached token if it may still be sent, else None. Never waits."""
        if self._token is None or self._expires_on - self._clock() < MIN_VALID_S:
            return None
        return self._token

    async def ensure(self) -> str:
        """A token to send now. Waits only when none is valid (see the module's docstring);
        raises ProviderUnavailable (503) when none can be had, at once during a backoff."""
        left = self._expires_on - self._clock()
        if self._token is not None and left >= MIN_VALID_S:
            if left < self._refresh_before_s:
                self._start_fetch()  # ahead of expiry; this request keeps the cached one
            return self._token
        task = self._start_fetch()
        if task is not None:
            # wait() neither cancels the shared fetch when this request is cancelled nor raises
            # when close() cancelled the fetch: both end here as "no token".
            await asyncio.wait((task,))
        token = self.current()
        if token is None:
            raise ProviderUnavailable("the gateway could not obtain its Entra ID token for Azure")
        return token

    def backing_off(self) -> bool:
        """True while the last fetch failed less than the backoff ago (no fetch may start)."""
        if self._failed_at is None:
            return False
        since = self._clock() - self._failed_at
        return 0 <= since < self._backoff_s  # a clock stepped back ends the backoff

    def _start_fetch(self) -> asyncio.Task[None] | None:
        """The fetch in flight, or a new one; None during a backoff with none in flight."""
        if self._fetch is None or self._fetch.done():
            if self.backing_off():
                return None
            self._fetch = asyncio.get_running_loop().create_task(self._fetch_token())
        return self._fetch

    async def _fetch_token(self) -> None:
        self.fetches += 1
        try:
            if self._credential is None:
                self._credential = self._make_credential()
            got = await self._credential.get_token(SCOPE)
        except Exception as exc:  # the type only: azure-identity's messages can name secrets
            if self._failed_at is not None:  # the backoff before this fetch had ended
                self._backoff_s = min(self._backoff_s * 2, BACKOFF_MAX_S)
            self._failed_at = self._clock()
            log.warning(
                "Entra ID token for Azure OpenAI not obtained: %s; next attempt in %.0f s",
                type(exc).__name__,
                self._backoff_s,
            )
            return  # the cached token (if any) stays until it expires
        self._token, self._expires_on = got.token, float(got.expires_on)
        self._failed_at, self._backoff_s = None, BACKOFF_MIN_S

    async def close(self) -> None:
        """Cancel a fetch in flight and wait until it has ended, then close the credential."""
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()
            await asyncio.wait((self._fetch,))
        self._fetch = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None
