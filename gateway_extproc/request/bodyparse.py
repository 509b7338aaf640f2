"""Parse a request body without stalling the event loop that serves every other stream.

Small bodies are checked and parsed inline. Larger ones go to one worker thread: the structural
check (`jsonshape`) and the token estimate are Python code that gives the GIL back every few
milliseconds, and the one long C call left, `orjson.loads`, is bounded by the caps (it holds the
GIL for its whole run). More threads would not parse faster under the GIL; they would only make
the event loop wait longer for it, hence exactly one.

Measured on the 2-core dev machine (tests/unit/test_bodyparse.py keeps the behaviour, not the
numbers): a thread hop costs ~90 us of wall time and ~40 us of event-loop CPU; parsing a typical
chat body inline costs ~30 us at 4 KB, ~90 us at 16 KB, ~300 us at 64 KB, ~1.5 ms at 256 KB.
Above OFFLOAD_BYTES the hop is cheaper for the loop than the parse.
"""

from __future__ import annotations

from gateway_extproc.apis import Api
from gateway_extproc.config.gateway import Limits
from gateway_extproc.extproc.offload import OFFLOAD_BYTES, off_loop_if_large
from gateway_extproc.providers.inbound import ParsedRequest, load_body, request_of
from gateway_extproc.request.jsonshape import check_shape, check_unique_keys

__all__ = ["OFFLOAD_BYTES", "parse_checked", "parse_off_loop"]


def parse_checked(api: Api, raw: bytes, limits: Limits, path: str = "") -> ParsedRequest:
    """The structural caps first (nothing is built for a body that breaks them), then the parse,
    then no repeated key (the gateway checks the request the provider reads)."""
    values = check_shape(raw, max_depth=limits.max_json_depth, max_values=limits.max_json_values)
    body = load_body(raw)
    check_unique_keys(raw, body, values)
    return request_of(api, body, path)


async def parse_off_loop(api: Api, raw: bytes, limits: Limits, path: str = "") -> ParsedRequest:
    """`parse_checked`, off the event loop when the body is large enough to be worth it
    (`path`: the request's, where Gemini names the model)."""
    return await off_loop_if_large(len(raw), parse_checked, api, raw, limits, path)
