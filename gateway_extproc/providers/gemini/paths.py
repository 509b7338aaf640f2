"""Gemini request paths: the model and the method are in the path, not the body. Pure.

`/{v1beta|v1}/models/{model}:generateContent` and `...:streamGenerateContent?alt=sse` (a
`publishers/google/models/{model}` resource names the same model). The model name is checked
against a strict alphabet, so nothing the client writes there can reach another upstream path.

The query string is the client's too, and some of Google's standard parameters would defeat
metering (`fields` can filter `usageMetadata` out of the answer, `$alt` changes the encoding) or
carry a credential (`key`, `access_token`): only `alt` is accepted, and only where the gateway
reads the answer it asks for (`alt=sse` on a stream - required, since without it Google streams a
JSON array - and `alt=json` or none on `generateContent`). `key` is dropped, never forwarded.
"""

from __future__ import annotations

import dataclasses
import re
import urllib.parse

from gateway_extproc.apis import Api
from gateway_extproc.errors import BadRequest

_PATH = re.compile(r"/(v1beta|v1)/(.+?)(:generateContent|:streamGenerateContent)")
_RESOURCE_PREFIXES = ("models/", "publishers/google/models/")
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Query parameters a client may send: `key` (dropped) and `alt` (checked).
CREDENTIAL_PARAMS = frozenset({"key", "access_token"})


@dataclasses.dataclass(frozen=True, slots=True)
class GeminiPath:
    version: str  # v1beta | v1
    model: str  # without a `models/` prefix
    api: Api
    alt: str | None  # the `alt` query parameter, if sent

    def upstream(self, model: str) -> str:
        """The path the provider is sent, for the model it serves (a downgrade changes it)."""
        query = f"?alt={self.alt}" if self.alt is not None else ""
        return f"/{self.version}/models/{model}{self.api.value}{query}"


def without_credentials(path: str) -> str:
    """`path` with any `key` / `access_token` query parameter removed (the rest kept as
    written): what Envoy logs and forwards."""
    bare, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [
        item
        for item in query.split("&")
        if urllib.parse.unquote_plus(item.partition("=")[0]) not in CREDENTIAL_PARAMS
    ]
    return bare + ("?" + "&".join(kept) if kept else "")


def parse_path(path: str) -> GeminiPath:
    """The model, method and `alt` of a Gemini request path; BadRequest for anything else."""
    bare, _, query = path.partition("?")
    match = _PATH.fullmatch(bare.rstrip("/"))
    if match is None:
        raise BadRequest(f"{bare} is not a Gemini generateContent path")
    version, resource, method = match.groups()
    model = next((resource[len(p) :] for p in _RESOURCE_PREFIXES if resource.startswith(p)), None)
    if model is None or _MODEL.fullmatch(model) is None:
        raise BadRequest(
            f"the model in the path must be models/NAME, NAME of letters, digits, '.', '_' "
            f"and '-' (got {resource[:140]!r})"
        )
    api = Api.GEMINI_STREAM if method == Api.GEMINI_STREAM.value else Api.GEMINI_GENERATE
    alt: str | None = None
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name in CREDENTIAL_PARAMS:
            continue
        if name != "alt":
            raise BadRequest(
                f"query parameter {name[:64]!r} is not supported by the gateway (only alt)"
            )
        if alt is not None:
            raise BadRequest("query parameter 'alt' must be given once")
        alt = value
    if api is Api.GEMINI_STREAM and alt != "sse":
        raise BadRequest("streamGenerateContent needs ?alt=sse (server-sent events)")
    if api is Api.GEMINI_GENERATE and alt not in (None, "json"):
        raise BadRequest(f"generateContent answers JSON: alt={alt!r} is not supported")
    return GeminiPath(version=version, model=model, api=api, alt=alt)
