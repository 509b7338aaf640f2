"""The provider interface (`Provider`, and the per-API `StreamHandler` it makes) and what the
per-provider packages share: defensive field readers.

Provider output is untrusted input: every reader here takes `object` and returns None (or 0) for
anything that is not the expected shape, so a hostile or buggy response can never raise.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from gateway_extproc.apis import Api, Schema
from gateway_extproc.errors import ClientError
from gateway_extproc.tokens import Usage

# Above this a "token count" is not a count but garbage (the largest context windows hold ~1e7
# tokens); it is ignored like any other invalid value rather than charged.
MAX_TOKEN_COUNT = 1 << 40


@dataclasses.dataclass(frozen=True, slots=True)
class JsonMeterResult:
    """What a non-streamed response says about its cost."""

    usage: Usage | None  # None: the response reported none (or was not JSON)
    served_model: str | None  # the model the response names, None if it names none
    output_bytes: int  # UTF-8 bytes of generated output seen: bounds its tokens when usage is None
    # For traces only, so not part of a result's value (equality).
    response_id: str | None = dataclasses.field(default=None, compare=False)  # the provider's id
    finish_reasons: tuple[str, ...] = dataclasses.field(default=(), compare=False)  # per choice
    # The service tier the provider says it served (OpenAI); priced by reported_tier.py.
    service_tier: str | None = dataclasses.field(default=None, compare=False)


def count(obj: object, key: str) -> int | None:
    """`obj[key]` if `obj` is a dict and that is a plausible token count, else None."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(key)
    if type(value) is not int or not 0 <= value <= MAX_TOKEN_COUNT:  # bool and float excluded
        return None
    return value


def total_and_part(total: int | None, part: int | None) -> tuple[int, int]:
    """A reported total and a reported part of it (OpenAI's `prompt_tokens` and its
    `cached_tokens`), made consistent: the part never exceeds the total; a missing total is
    taken to be the part; a missing part is 0."""
    p = part or 0
    if total is None:
        return p, p
    return total, min(p, total)


def utf8_len(value: object) -> int:
    """UTF-8 bytes of `value` if it is a string, else 0. Output is counted in bytes because a
    token of a byte-level tokenizer covers at least one byte: the bytes seen bound the tokens
    seen (a character may be up to 4 tokens). `isascii` is O(1): ASCII text costs no encode."""
    if not isinstance(value, str):
        return 0
    return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))


def nonempty_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


MAX_FINISH_REASONS = 16  # `n` choices each report one; more are not worth a span attribute


def note_finish_reasons(choices: object, found: dict[int, str]) -> None:
    """Record `choice.finish_reason` by `choice.index` (position when absent) into `found`."""
    if not isinstance(choices, list):
        return
    for position, choice in enumerate(choices):
        if not isinstance(choice, dict):
            continue
        reason = nonempty_str(choice.get("finish_reason"))
        if reason is None:
            continue
        index = choice.get("index")
        key = index if type(index) is int else position
        if key in found or len(found) < MAX_FINISH_REASONS:
            found[key] = reason[:64]


def ordered(found: dict[int, str]) -> tuple[str, ...]:
    return tuple(found[k] for k in sorted(found))


def usage_or_none(
    seen: bool,
    *,
    input_tokens: int = 0,
    cached_input_tokens: int = 0,
    cache_write_input_tokens: int = 0,
    output_tokens: int = 0,
    reasoning_tokens: int = 0,
    cache_write_1h_input_tokens: int = 0,
) -> Usage | None:
    """A `Usage`, or None when no valid count was seen at all (the caller then estimates)."""
    if not seen:
        return None
    return Usage(
        input_tokens=input_tokens,
        cached_input_tokens=cached_input_tokens,
        cache_write_input_tokens=cache_write_input_tokens,
        output_tokens=output_tokens,
        reasoning_tokens=reasoning_tokens,
        cache_write_1h_input_tokens=cache_write_1h_input_tokens,
    )


class StreamHandler(Protocol):
    """What `StreamMeter` needs from a per-API handler of parsed SSE events.

    `on_json` gets every event whose data is a JSON object, `on_done` the `data: [DONE]` marker.
    Neither may raise on any input.
    """

    served_model: str | None
    output_bytes: int
    completed: bool
    response_id: str | None
    service_tier: str | None  # the tier the provider reports it served (None: not reported)

    def finish_reasons(self) -> tuple[str, ...]: ...

    def on_json(self, event: str | None, obj: dict[str, object]) -> None: ...

    def on_done(self) -> None: ...

    def usage(self) -> Usage | None: ...


class Provider(Protocol):
    """One provider wire format (a `Schema`): everything the gateway asks of it once a request
    is routed. One instance per schema, stateless; per-response state lives in the
    `StreamHandler` it makes. A new provider is a package under `providers/` with one of these,
    listed in `registry.py`, plus its models in the catalog.
    """

    @property
    def schema(self) -> Schema: ...

    @property
    def apis(self) -> frozenset[Api]:
        """The endpoints it serves (request parsing and bounds key off these)."""
        ...

    def meter_json(self, api: Api, obj: dict[str, object]) -> JsonMeterResult:
        """Usage, served model and output size of a parsed non-streamed response of `api`."""
        ...

    def stream_handler(self, api: Api) -> StreamHandler:
        """A fresh handler for one streamed response of `api`."""
        ...

    def error_body(self, err: ClientError, request_id: str) -> bytes:
        """The gateway's own error in the JSON format this provider's SDKs parse."""
        ...
