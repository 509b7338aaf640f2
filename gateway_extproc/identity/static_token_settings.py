"""The static tokens of the `identity:` section: `static_tokens` and `static_tokens_file` (read
here, once per load), each token a SHA-256 digest with groups and attributes; names and digests
unique across both. See `settings` for the whole section."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import yaml

from gateway_extproc.identity.model import StaticToken
from gateway_extproc.identity.reader import SectionReader

__all__ = ["parse_static_tokens"]

_STATIC_KEYS = frozenset({"sha256", "groups", "attributes"})

_SERVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*")
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _attributes(r: SectionReader, key: str) -> dict[str, str]:
    """`{name: string-or-number}` for static tokens (numbers are written as strings)."""
    sub = r.mapping(key)
    if sub is None:
        return {}
    out: dict[str, str] = {}
    for name, value in sub.doc.items():
        if not isinstance(name, str) or not name:
            sub.problems.append(f"{sub.path}: attribute names must be non-empty strings")
        elif isinstance(value, str) or (
            isinstance(value, int | float) and not isinstance(value, bool)
        ):
            out[name] = str(value)
        else:
            sub.problem(name, f"must be a string or a number (got {value!r})")
    return out


class _StaticTokens:
    """Static tokens from `static_tokens` and `static_tokens_file`: names and digests unique."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.tokens: list[StaticToken] = []
        self._names: dict[str, str] = {}  # name -> the section defining it
        self._digests: dict[bytes, str] = {}  # digest -> name

    def add(self, entries: Mapping[object, object], path: str) -> None:
        for name, tdoc in entries.items():
            tpath = f"{path}.{name}"
            if not isinstance(name, str) or not _SERVICE_NAME.fullmatch(name):
                self.problems.append(f"{tpath}: name must be letters, digits, '.', '@', '-', '_'")
                continue
            if name in self._names:
                self.problems.append(f"{tpath}: also defined in {self._names[name]}")
                continue
            self._names[name] = path
            if not isinstance(tdoc, Mapping):
                self.problems.append(f"{tpath}: must be a mapping with sha256")
                continue
            r = SectionReader(tdoc, tpath, self.problems)
            r.unknown_keys(_STATIC_KEYS)
            hexdigest = tdoc.get("sha256")
            if not isinstance(hexdigest, str) or not _HEX64.fullmatch(hexdigest):
                r.problem("sha256", "must be the token's SHA-256 digest: 64 hex characters")
                continue
            digest = bytes.fromhex(hexdigest)
            if digest in self._digests:
                r.problem("sha256", f"same digest as {self._digests[digest]}")
                continue
            self._digests[digest] = name
            groups, attributes = r.strings("groups", ()), _attributes(r, "attributes")
            self.tokens.append(StaticToken(name, digest, frozenset(groups), attributes))

    def add_file(self, file: object) -> None:
        path = "identity.static_tokens_file"
        if file is None:
            return
        if not isinstance(file, str) or not file:
            self.problems.append(f"{path}: must be a path or null (got {file!r})")
            return
        try:
            loaded = yaml.safe_load(Path(file).read_text())
        except OSError as exc:
            self.problems.append(f"{path}: cannot read {file}: {exc.strerror or exc}")
            return
        except yaml.YAMLError as exc:
            self.problems.append(f"{path}: {file} is not valid YAML: {exc}")
            return
        if isinstance(loaded, Mapping):
            self.add(loaded, path)
        elif loaded is not None:
            self.problems.append(f"{path}: {file} must hold a mapping of token name to sha256")


def parse_static_tokens(
    doc: Mapping[object, object], problems: list[str]
) -> tuple[StaticToken, ...]:
    tokens = _StaticTokens(problems)
    inline = doc.get("static_tokens")
    if isinstance(inline, Mapping):
        tokens.add(inline, "identity.static_tokens")
    elif inline is not None:
        problems.append("identity.static_tokens: must be a mapping of token name to sha256")
    tokens.add_file(doc.get("static_tokens_file"))
    return tuple(tokens.tokens)
