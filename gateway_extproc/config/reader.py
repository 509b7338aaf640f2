"""The reader the gateway config's top-level sections are parsed with: it collects every problem
(with its path) instead of stopping at the first, so all of them are reported at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Reader:
    """Collects problems while reading a document, so all of them are reported at once."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def section(self, doc: Mapping[str, Any], key: str, allowed: set[str]) -> Mapping[str, Any]:
        value = doc.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.problems.append(f"{key}: must be a mapping")
            return {}
        for extra in sorted(set(value) - allowed):
            self.problems.append(f"{key}.{extra}: unknown key")
        return value

    def integer(self, doc: Mapping[str, Any], path: str, key: str, lo: int, hi: int) -> int:
        value = doc.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problems.append(
                f"{path}.{key}: must be an integer in [{lo}, {hi}] (got {value!r})"
            )
            return lo
        return value

    def number(self, doc: Mapping[str, Any], path: str, key: str, default: float) -> float:
        value = doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            self.problems.append(f"{path}.{key}: must be a number >= 0 (got {value!r})")
            return default
        return float(value)

    def string(self, doc: Mapping[str, Any], path: str, key: str, *, optional: bool = False) -> str:
        value = doc.get(key)
        if value is None and optional:
            return ""
        if not isinstance(value, str) or not value:
            self.problems.append(f"{path}.{key}: must be a non-empty string (got {value!r})")
            return ""
        return value

    def boolean(self, doc: Mapping[str, Any], path: str, key: str, default: bool) -> bool:
        value = doc.get(key, default)
        if not isinstance(value, bool):
            where = f"{path}.{key}" if path else key
            self.problems.append(f"{where}: must be true or false (got {value!r})")
            return default
        return value
