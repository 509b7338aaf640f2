"""The client metadata header: free-form tags a caller attaches to its own requests.

    x-gateway-metadata: {"app": "docs-bot", "ticket": "OPS-12"}

The header name is configurable (`IdentityConfig.metadata_header`). Its attributes are
*unverified*: any client can send any value, so the caller records them apart from the verified
claims of the identity and never bases an authorization or budget decision on them.

Rules, each violation a 400 with a message naming it:
- at most 1024 bytes (UTF-8) of JSON, whose top level is an object with no duplicate keys;
- at most 16 keys, each matching `^[a-z][a-z0-9_.-]{0,63}$`;
- every value a string (numbers, booleans, null, lists and objects are rejected rather than
  converted) of at most 256 characters with no control or invisible formatting characters
  (Unicode categories Cc, Cf, Cs and the line/paragraph separators Zl, Zp).
An absent or blank header is no metadata.
"""

from __future__ import annotations

import json
import re
import unicodedata

from gateway_extproc.errors import BadRequest

__all__ = [
    "DEFAULT_HEADER",
    "MAX_BYTES",
    "MAX_KEYS",
    "MAX_VALUE_CHARS",
    "parse_metadata",
]

DEFAULT_HEADER = "x-gateway-metadata"
MAX_BYTES = 1024
MAX_KEYS = 16
MAX_VALUE_CHARS = 256
_KEY = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class _Duplicate(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, dict):
        return "object"
    return "array" if isinstance(value, list) else "null"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _cut(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut to 40 characters."""
    return repr(_cut(text))


def _bad_character(value: str) -> str | None:
    if value.isascii():
        for char in value:
            if char < " " or char == "\x7f":
                return char
        return None
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return char
    return None


def parse_metadata(value: str | None, *, header: str = DEFAULT_HEADER) -> dict[str, str]:
    """The attributes in the metadata header's `value` (None: header absent).

    Raises `BadRequest` naming `header` and the broken rule."""
    if value is None or not value.strip():
        return {}
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise BadRequest(f"{header}: must be at most {MAX_BYTES} bytes (got {size})")
    try:
        doc = json.loads(value, object_pairs_hook=_object, parse_constant=_reject_constant)
    except _Duplicate as exc:
        raise BadRequest(f"{header}: key {_shown(exc.key)} appears more than once") from None
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested ~1000 deep
        raise BadRequest(f'{header}: must be a JSON object such as {{"app": "docs-bot"}}') from None
    if not isinstance(doc, dict):
        raise BadRequest(f'{header}: must be a JSON object such as {{"app": "docs-bot"}}')
    if len(doc) > MAX_KEYS:
        raise BadRequest(f"{header}: must have at most {MAX_KEYS} keys (got {len(doc)})")
    out: dict[str, str] = {}
    for key, item in doc.items():
        if not _KEY.fullmatch(key):
            raise BadRequest(
                f"{header}: key {_shown(key)} must be 1-64 characters of a-z, 0-9, '_', '.', '-',"
                " starting with a letter"
            )
        if not isinstance(item, str):
            raise BadRequest(
                f"{header}: {key} must be a string (got {_json_type(item)} "
                f"{_cut(json.dumps(item))})"
            )
        if len(item) > MAX_VALUE_CHARS:
            raise BadRequest(
                f"{header}: {key} must be at most {MAX_VALUE_CHARS} characters (got {len(item)})"
            )
        char = _bad_character(item)
        if char is not None:
            raise BadRequest(
                f"{header}: {key} must not contain control or formatting characters "
                f"(found U+{ord(char):04X})"
            )
        out[key] = item
    return out
