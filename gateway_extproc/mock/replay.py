"""Replay of recorded provider responses (go-vcr cassette v2 YAML), byte for byte.

`parse_cassette` is pure; `load_recording` reads `<fixtures_dir>/<name>.yaml`. The reply keeps the
recorded status, content type, provider headers and body (SSE bodies split into their events, so
the write controls still apply; joined they are the recorded bytes exactly).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gateway_extproc.mock.errors import ApiError
from gateway_extproc.mock.wire import JsonReply, Reply, StreamReply, split_sse_events

# Headers describing the recorded transfer, not the response: the mock sets its own.
_NOT_REPLAYED = frozenset(
    {
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "date",
        "keep-alive",
        "proxy-connection",
        "set-cookie",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclasses.dataclass(frozen=True, slots=True)
class Recording:
    status: int
    content_type: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def is_sse(self) -> bool:
        return self.content_type.lower().startswith("text/event-stream")

    def reply(self) -> Reply:
        if self.is_sse:
            events = split_sse_events(self.body)
            return StreamReply(events, self.status, self.content_type, self.headers)
        return JsonReply(self.body, self.status, self.content_type, self.headers)


class CassetteError(ValueError):
    pass


def _status(response: dict[str, Any]) -> int:
    for key in ("code", "status_code"):
        value = response.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    status = response.get("status")
    if isinstance(status, int):
        return status
    if isinstance(status, str) and status.split(" ", 1)[0].isdigit():
        return int(status.split(" ", 1)[0])
    raise CassetteError("response has no status code (code, status_code or status)")


def _headers(raw: Any) -> list[tuple[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise CassetteError("response.headers must be a mapping")
    pairs: list[tuple[str, str]] = []
    for name, values in raw.items():
        for value in values if isinstance(values, list) else [values]:
            if value is not None:
                pairs.append((str(name), str(value)))
    return pairs


def parse_cassette(text: str, interaction: int = 0) -> Recording:
    """The recorded response of `interactions[interaction]`."""
    document = yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    try:
        response = document["interactions"][interaction]["response"]
    except (TypeError, KeyError, IndexError):
        raise CassetteError(f"no interactions[{interaction}].response in the cassette") from None
    if not isinstance(response, dict):
        raise CassetteError("interactions[].response must be a mapping")
    headers = _headers(response.get("headers"))
    content_type = next(
        (value for name, value in headers if name.lower() == "content-type"), "application/json"
    )
    body = response.get("body") or ""
    if not isinstance(body, str):
        raise CassetteError("response.body must be a string")
    kept = tuple((n, v) for n, v in headers if n.lower() not in _NOT_REPLAYED)
    return Recording(_status(response), content_type, kept, body.encode("utf-8"))


def load_recording(fixtures_dir: Path | None, name: str) -> Recording:
    """Read and parse `<fixtures_dir>/<name>.yaml`; 404 `ApiError` when it is not there."""
    if fixtures_dir is None:
        raise ApiError(404, f"x-mock-replay: {name!r} requested but the mock has no --fixtures-dir")
    path = fixtures_dir / f"{name}.yaml"
    if path.resolve().parent != fixtures_dir.resolve() or not path.is_file():
        raise ApiError(404, f"x-mock-replay: no fixture {name}.yaml in {fixtures_dir}")
    try:
        return parse_cassette(path.read_text(encoding="utf-8"))
    except (CassetteError, yaml.YAMLError) as exc:
        raise ApiError(500, f"x-mock-replay: cannot replay {name}.yaml: {exc}") from None
