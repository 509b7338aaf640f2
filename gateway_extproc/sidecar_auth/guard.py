"""What a sidecar process holds to check its callers, built once at start from `load_secrets`:
the caller check, the state seal, the TLS material, and the counters the metrics export.

Process-lifetime: a configuration reload keeps them (Envoy's bootstrap, which carries the
token, changes only with a restart too). Rotation is a rolling restart: README "Who may talk to
the sidecar".
"""

from __future__ import annotations

import collections
import dataclasses
import math

from gateway_extproc.sidecar_auth.caller import CallerCheck, Refusal
from gateway_extproc.sidecar_auth.seal import StateSeal
from gateway_extproc.sidecar_auth.settings import ServerTls, SidecarSecrets

# At most one log line per this many seconds about refused streams (a scanner hammering the
# port must not flood the log); the metric counts every one.
REFUSAL_LOG_INTERVAL_S = 60.0


class RejectedState:
    """Why an observer stream's state was not trusted (a metric label)."""

    UNSIGNED = "unsigned"  # no MAC beside the state
    BAD_MAC = "bad_mac"  # a MAC no accepted key produced for this text


@dataclasses.dataclass
class AuthStats:
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rejected_states: collections.Counter[str] = dataclasses.field(
        default_factory=collections.Counter
    )
    _last_log: float = -math.inf
    _unlogged: int = 0

    def refused_stream(self, refusal: Refusal, now: float) -> int:
        """Count one refused stream. Returns the refusals a log line should report now, or 0
        while the last line is younger than REFUSAL_LOG_INTERVAL_S."""
        self.refused[refusal.value] += 1
        self._unlogged += 1
        if now - self._last_log < REFUSAL_LOG_INTERVAL_S:
            return 0
        self._last_log, count, self._unlogged = now, self._unlogged, 0
        return count


@dataclasses.dataclass(frozen=True)
class SidecarAuth:
    caller: CallerCheck
    seal: StateSeal
    tls: ServerTls | None = None
    stats: AuthStats = dataclasses.field(default_factory=AuthStats)

    @classmethod
    def of(cls, secrets: SidecarSecrets) -> SidecarAuth:
        return cls(CallerCheck(secrets.caller_tokens), StateSeal(secrets.state_keys), secrets.tls)
