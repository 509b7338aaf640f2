"""`fallback.outlier` and `fallback.circuit_breakers`: how Envoy stops sending a chain's requests
to a target that keeps failing, and how many a chain cluster carries at once (docs/fallback.md
"Outlier detection and circuit breakers"). Validated with every problem's path. Pure.

Outlier detection is per target (an endpoint of the chain cluster, one per priority level): after
`consecutive_5xx` 5xx answers in a row, or `consecutive_local_origin_failure` connections refused,
reset or timed out in a row (counted apart from the 5xx), Envoy ejects the target for
`base_ejection_s` (longer each time it is ejected again, at most `max_ejection_s`) and the
chain's requests start at the next target, one attempt fewer. A 429 is not counted (measured:
tests/e2e/test_envoy_upstream_extproc.py).

Envoy's circuit breakers count per cluster and routing priority (the route's DEFAULT/HIGH, not the
endpoints' priority levels): `max_requests`, `max_pending`, `max_retries` bound a whole chain
cluster. The only per-endpoint threshold Envoy honours is connections (`per_host_thresholds`):
`max_connections_per_target` (HTTP/1.1 to every target, so one request per connection).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

# Envoy's own defaults for the first four; ejecting a whole level (max_ejection_percent 100) is
# the gateway's: a chain's level holds one target, and Envoy's 10% would still eject one of one.
DEFAULT_CONSECUTIVE = 5
DEFAULT_INTERVAL_S = 10.0
DEFAULT_BASE_EJECTION_S = 30.0
DEFAULT_MAX_EJECTION_S = 300.0
# High: the gateway bounds load itself (listener connections, the budget store's queue); a
# breaker that trips at Envoy's defaults (1,024 requests, 3 retries in flight) turns one
# provider's outage into 503s for every chain (docs/fallback.md).
DEFAULT_BREAKER = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class OutlierConfig:
    consecutive_5xx: int = DEFAULT_CONSECUTIVE
    consecutive_local_origin_failure: int = DEFAULT_CONSECUTIVE
    interval_s: float = DEFAULT_INTERVAL_S
    base_ejection_s: float = DEFAULT_BASE_EJECTION_S
    max_ejection_s: float = DEFAULT_MAX_EJECTION_S


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerConfig:
    max_requests: int = DEFAULT_BREAKER
    max_pending: int = DEFAULT_BREAKER
    max_retries: int = DEFAULT_BREAKER
    max_connections_per_target: int | None = None  # Envoy's default: none per endpoint


_DEFAULTS = OutlierConfig()
_COUNTS = ("consecutive_5xx", "consecutive_local_origin_failure")
_TIMES = ("interval_s", "base_ejection_s", "max_ejection_s")


def parse_outlier(doc: object, problems: list[str]) -> OutlierConfig | None:
    """`fallback.outlier`: absent -> the defaults, `false` -> off (None)."""
    path = "fallback.outlier"
    if doc is None or doc is True:
        return OutlierConfig()
    if doc is False:
        return None
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be false or a mapping of {', '.join(_COUNTS + _TIMES)}")
        return OutlierConfig()
    for extra in sorted(set(doc) - set(_COUNTS + _TIMES)):
        problems.append(f"{path}.{extra}: unknown key")
    values: dict[str, float] = {}
    for key in _COUNTS:
        value = doc.get(key, getattr(_DEFAULTS, key))
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            problems.append(f"{path}.{key}: must be an integer in [1, 1000] (got {value!r})")
        else:
            values[key] = value
    for key in _TIMES:
        value = doc.get(key, getattr(_DEFAULTS, key))
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
            problems.append(f"{path}.{key}: must be in (0, 86400] seconds (got {value!r})")
        else:
            values[key] = float(value)
    config = OutlierConfig(**values)  # type: ignore[arg-type]
    if config.max_ejection_s < config.base_ejection_s:
        problems.append(
            f"{path}.max_ejection_s: must be at least base_ejection_s ({config.base_ejection_s})"
        )
    return config


def parse_breakers(doc: object, problems: list[str]) -> BreakerConfig:
    """`fallback.circuit_breakers`: absent -> the defaults."""
    path = "fallback.circuit_breakers"
    if doc is None:
        return BreakerConfig()
    fields = [f.name for f in dataclasses.fields(BreakerConfig)]
    if not isinstance(doc, Mapping):
        problems.append(f"{path}: must be a mapping of {', '.join(fields)}")
        return BreakerConfig()
    for extra in sorted(set(doc) - set(fields)):
        problems.append(f"{path}.{extra}: unknown key")
    values: dict[str, int] = {}
    for key in fields:
        value = doc.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**32 - 1:
            problems.append(f"{path}.{key}: must be an integer in [1, 4294967295] (got {value!r})")
        else:
            values[key] = value
    return BreakerConfig(**values)
