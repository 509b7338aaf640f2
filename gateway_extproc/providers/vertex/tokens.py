"""OAuth2 access tokens for Vertex AI, fetched and refreshed off the request path.

google-auth's `credentials.refresh(request)` runs blocking HTTP (the token endpoint, or GKE's
metadata server under workload identity). The gateway never calls it while serving a request: a
`TokenSource` keeps the current token, which `bearer()` reads without I/O, and a daemon thread
refreshes it `REFRESH_MARGIN_S` before it expires (Google's tokens live an hour). `refresh_if_due`
is the whole decision and takes `now`, so it is tested with a fake clock and fake credentials.

The token is a secret: it is never logged, and a failed refresh logs only the error's type.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from gateway_extproc.providers.vertex.settings import SCOPE, VertexSettings

log = logging.getLogger(__name__)

REFRESH_MARGIN_S = 300.0  # refresh this long before expiry (google-auth's own margin is ~3.5 min)
RETRY_S = 5.0  # after a failed refresh; the old token is used while it is still valid
MAX_WAIT_S = 60.0  # the refresher looks at the clock at least this often
# The fixed token a mocked Vertex provider is called with (`make run` without credentials): the
# mock provider requires exactly this one on its Vertex paths (mock/vertex_api.py spells it too).
MOCK_TOKEN = "mock-vertex-access-token"


class Credentials(Protocol):
    """What the gateway uses of a google-auth credentials object."""

    token: str | None
    expiry: datetime.datetime | None  # naive UTC, as google-auth keeps it

    def refresh(self, request: Any) -> None: ...


def _epoch(expiry: datetime.datetime | None) -> float | None:
    if expiry is None:
        return None
    if expiry.tzinfo is None:
        expiry = expiry.replace(tzinfo=datetime.UTC)
    return expiry.timestamp()


class TokenSource:
    """One credential's current access token, refreshed ahead of its expiry."""

    def __init__(
        self,
        credentials: Credentials,
        request: Any,
        *,
        clock: Callable[[], float] = time.time,
        margin_s: float = REFRESH_MARGIN_S,
    ) -> None:
        self._credentials = credentials
        self._request = request
        self._clock = clock
        self._margin_s = margin_s
        self._token: str | None = None
        self._expires_at: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.refreshes = 0
        self.failures = 0

    def bearer(self) -> str | None:
        """`Bearer TOKEN` for a request now, or None when there is no valid token (the first
        refresh has not finished, or refreshes failed until the token expired)."""
        token, expires_at = self._token, self._expires_at
        if token is None or (expires_at is not None and self._clock() >= expires_at):
            return None
        return "Bearer " + token

    def due(self, now: float) -> bool:
        """Whether the token must be refreshed at `now`: none yet, or within the margin of its
        expiry (and not in the pause after a failure)."""
        if now < self._retry_at:
            return False
        if self._token is None:
            return True
        return self._expires_at is not None and now >= self._expires_at - self._margin_s

    def refresh_if_due(self, now: float) -> bool:
        """Refresh (blocking I/O: call it from the refresher thread) when `due(now)`; True when
        a new token was fetched. Never raises: a failure is retried after RETRY_S."""
        with self._lock:
            if not self.due(now):
                return False
            try:
                self._credentials.refresh(self._request)
            except Exception as exc:  # any failure: keep the old token, retry
                self.failures += 1
                self._retry_at = now + RETRY_S
                log.warning("vertex token refresh failed (%s); retrying", type(exc).__name__)
                return False
            self._token = self._credentials.token
            self._expires_at = _epoch(self._credentials.expiry)
            self._retry_at = 0.0
            self.refreshes += 1
            return True

    def wait_s(self, now: float) -> float:
        """How long the refresher may sleep before the token is next due."""
        if self._token is None or self._expires_at is None:
            return max(self._retry_at - now, 0.0) if self._token is None else MAX_WAIT_S
        due_at = max(self._expires_at - self._margin_s, self._retry_at)
        return min(max(due_at - now, 0.0), MAX_WAIT_S)

    def start(self) -> None:
        """Start the refresher thread (idempotent): it fetches the first token at once."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="vertex-token", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_if_due(self._clock())
            self._stop.wait(self.wait_s(self._clock()) or 0.05)


def load_credentials(settings: VertexSettings, environ: Mapping[str, str]) -> tuple[Any, Any]:
    """google-auth credentials for `settings` (scoped for Vertex) and their project id: from
    the JSON file the settings name, or Application Default Credentials (workload identity).
    Reads files (and, for workload identity, may ask the metadata server for the project):
    called once when the configuration is loaded, not per request."""
    import google.auth  # imported here: only a configured Vertex provider needs it

    source = settings.credential_source(environ)
    if source is None:
        raise ValueError("no Vertex credentials configured")
    if source == "workload_identity":
        credentials, project = google.auth.default(scopes=[SCOPE])
    else:
        load = google.auth.load_credentials_from_file
        credentials, project = load(source, scopes=[SCOPE])  # type: ignore[no-untyped-call]
    return credentials, project


def token_source(credentials: Any) -> TokenSource:
    """A TokenSource over real credentials, refreshing with google-auth's requests transport."""
    import google.auth.transport.requests

    return TokenSource(credentials, google.auth.transport.requests.Request())


class TokenSources:
    """The sidecar's token sources, one per credential source, shared by every configuration
    that names it: a reload reuses them (no second refresher for the same credentials). Each
    context holds the ones it uses (`get`) and releases them when it is closed (`release`); a
    source no context holds any more has its refresher stopped then."""

    def __init__(
        self,
        load: Callable[[VertexSettings, Mapping[str, str]], tuple[Any, Any]] = load_credentials,
        make: Callable[[Any], TokenSource] = token_source,
    ) -> None:
        self._load = load
        self._make = make
        self._by_source: dict[str, tuple[TokenSource, str | None]] = {}
        self._holders: dict[str, int] = {}

    def get(
        self, settings: VertexSettings, environ: Mapping[str, str]
    ) -> tuple[TokenSource, str | None]:
        """The started token source of `settings`' credentials and their project id, held once
        more. Raises whatever reading the credentials raises (the caller reports it as a config
        problem)."""
        source = settings.credential_source(environ) or ""
        found = self._by_source.get(source)
        if found is None:
            credentials, project = self._load(settings, environ)
            tokens = self._make(credentials)
            tokens.start()
            named = project if isinstance(project, str) else None
            found = self._by_source[source] = (tokens, named)
        self._holders[source] = self._holders.get(source, 0) + 1
        return found

    def release(self, held: Iterable[TokenSource]) -> None:
        """One hold less on each; a source no longer held stops refreshing. A source this
        registry does not hold (stopped by `stop()`, or not from `get`) is left alone."""
        for tokens in held:
            source = next((k for k, (t, _) in self._by_source.items() if t is tokens), None)
            if source is None:
                continue
            self._holders[source] -= 1
            if self._holders[source] == 0:
                del self._holders[source], self._by_source[source]
                tokens.stop()

    def stop(self) -> None:
        """At shutdown: stop every refresher."""
        by_source, self._by_source, self._holders = self._by_source, {}, {}
        for tokens, _ in by_source.values():
            tokens.stop()

    def __len__(self) -> int:
        return len(self._by_source)
