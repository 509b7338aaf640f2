"""`providers.<p>.keys`: a key pool (docs/fallback.md). Several credentials of one provider,
weighted; Envoy spreads attempts over them (one endpoint per key) and a 429 or 5xx on one key is
retried on another. The names reach Envoy's endpoint metadata and the audit; the secrets stay in
the sidecar. `auth.env` / `auth.file` stays the one-key shorthand. Pure.
"""

from __future__ import annotations

import dataclasses
import re

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_KEY_KEYS = {"name", "env", "file", "weight"}
MAX_WEIGHT = 1000
MAX_KEYS = 10  # Envoy retries a chain this many times per target at most


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
    names = [k.name for k in keys]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"{path}: names key {dup!r} twice")
    return tuple(keys) if len(keys) == len(doc) and len(set(names)) == len(names) else ()
