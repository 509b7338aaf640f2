"""Reading one mapping of the `identity:` section at its path: typed values with defaults, every
problem (with its path) appended to a list shared by the whole section, so all are reported at
once. Used by `settings`, `issuer_settings` and `static_token_settings`."""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["SectionReader"]


class SectionReader:
    """One mapping at one path; every problem goes to the shared list."""

    def __init__(self, doc: Mapping[object, object], path: str, problems: list[str]) -> None:
        self.doc, self.path, self.problems = doc, path, problems

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {message}")

    def unknown_keys(self, allowed: frozenset[str]) -> None:
        for key in sorted(map(str, set(self.doc) - allowed)):
            self.problem(key, f"unknown key (expected one of {', '.join(sorted(allowed))})")

    def integer(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.doc.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            self.problem(key, f"must be an integer in [{lo}, {hi}] (got {value!r})")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.doc.get(key, default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false (got {value!r})")
            return default
        return value

    def string(self, key: str) -> str | None:
        """An optional non-empty string: None when absent or null."""
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.problem(key, f"must be a non-empty string (got {value!r})")
            return None
        return value

    def strings(
        self, key: str, default: tuple[str, ...], *, pattern: re.Pattern[str] | None = None
    ) -> tuple[str, ...]:
        if key not in self.doc:
            return default
        raw = self.doc[key]
        if not isinstance(raw, list):
            self.problem(key, f"must be a list of strings (got {raw!r})")
            return default
        out: list[str] = []
        for i, item in enumerate(raw):
            bad = not isinstance(item, str) or not item or item != item.strip()
            if bad or (pattern is not None and not pattern.fullmatch(str(item))):
                self.problems.append(f"{self.at(key)}[{i}]: not a valid entry (got {item!r})")
            elif item not in out:
                out.append(item)
        return tuple(out)

    def mapping(self, key: str) -> SectionReader | None:
        value = self.doc.get(key)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            self.problem(key, f"must be a mapping (got {value!r})")
            return None
        return SectionReader(value, self.at(key), self.problems)
