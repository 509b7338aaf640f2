"""`providers.<p>.keys`: a key pool (docs/fallback.md). Several credentials of one provider,
weighted; Envoy spreads attempts over them (one endpoint per key) and a 429 or 5xx on one key is
retried on another. The names reach Envoy's endpoint metadata and the audit; the secrets stay in
the sidecar. `auth.env` / `auth.file` stays the one-key shorthand. Pure.
"""

from __future__ import annotations

import dataclasses
import math
import re

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_KEYS = {"name", "env", "file", "weight"}
MAX_WEIGHT = 1000
MAX_KEYS = 10  # Envoy retries a chain this many times per target at most
# The heaviest key of a pool weighs at most this many times its lightest: the re-picks a retry
# needs to reach the lightest key grow with the ratio (`repicks`), and a key below 1 % of the
# attempts is no share of the load (docs/fallback.md, fact 8).
MAX_WEIGHT_RATIO = 100


@dataclasses.dataclass(frozen=True, slots=True)
class PoolKey:
    """One key of a pool: where its secret comes from (exactly one of env, file), its name and
    its share of the attempts."""

    name: str
    env: str | None = None
    file: str | None = None
    weight: int = 1


def parse_keys(doc: object, path: str, problems: list[str]) -> tuple[PoolKey, ...]:
    """The pool under `path` (`providers.openai.keys`); () when absent. Every problem is
    appended with its path."""
    if doc is None:
        return ()
    if not isinstance(doc, list) or not doc or len(doc) > MAX_KEYS:
        problems.append(
            f"{path}: must be a list of 1 to {MAX_KEYS} keys {{name, env|file, weight}}"
        )
        return ()
    keys: list[PoolKey] = []
    for i, entry in enumerate(doc):
        where = f"{path}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping {{name, env|file, weight}}")
            continue
        for extra in sorted(set(entry) - _KEY_KEYS):
            problems.append(f"{where}.{extra}: unknown key")
        name, env, file = entry.get("name"), entry.get("env"), entry.get("file")
        weight = entry.get("weight", 1)
        ok = True
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            problems.append(f"{where}.name: must be 1-64 letters, digits, - and _ (got {name!r})")
            ok = False
        if (env is None) == (file is None):
            problems.append(f"{where}: set exactly one of env, file")
            ok = False
        for field, value in (("env", env), ("file", file)):
            if value is not None and (not isinstance(value, str) or not value):
                problems.append(f"{where}.{field}: must be a non-empty string (got {value!r})")
                ok = False
        if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= MAX_WEIGHT:
            problems.append(
                f"{where}.weight: must be an integer in [1, {MAX_WEIGHT}] (got {weight!r})"
            )
            ok = False
        if ok:
            keys.append(PoolKey(str(name), env, file, int(weight)))
    weights = [k.weight for k in keys]
    if keys and max(weights) > MAX_WEIGHT_RATIO * min(weights):
        problems.append(
            f"{path}: the heaviest key weighs at most {MAX_WEIGHT_RATIO} times the lightest "
            f"(got {max(weights)}:{min(weights)})"
        )
        return ()
    names = [k.name for k in keys]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path}: names key {dup!r} twice")
    return tuple(keys) if len(keys) == len(doc) and len(set(names)) == len(names) else ()


def repicks(weights: tuple[int, ...]) -> int:
    """Envoy's `host_selection_retry_max_attempts` for a level of keys of these weights: enough
    re-picks that a retry reaches a key not tried yet, whichever keys were tried (0 for one key).

    Envoy's weighted round robin (EDF) gives a host of weight w a deadline every 1/w; the picks
    between two picks of the lightest key (weight m, deadlines 1/m apart) hold at most
    floor(w/m) + 1 picks of each other key of weight w (the +1: a deadline equal to the lightest
    key's, which Envoy breaks by insertion order). The worst retry needs the lightest key, every
    other key tried: at most (keys - 1) x (ceil(max/min) + 1) picks of tried keys first. Envoy
    picks once and re-picks up to this many times, then keeps its last pick (fact 8)."""
    if len(weights) < 2:
        return 0
    return (len(weights) - 1) * (math.ceil(max(weights) / min(weights)) + 1)
