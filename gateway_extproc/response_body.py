"""A response body as the observer receives it, within memory bounds. Pure (no I/O, no clock).

Its bytes are decoded when the provider compressed them anyway (inflate.py: at most 100:1), then
fed to the stream meter (an event stream: usage counted as it passes, nothing kept but the SSE
decoder's line) or kept as JSON (metering_bounded.py: whole up to `metering.max_json_body_bytes`,
beyond it only its ends). The bounds it ran into are listed in `limits_reached`.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway_extproc.apis import Api
from gateway_extproc.audit import LimitReached
from gateway_extproc.inflate import DEFLATE_WBITS, GZIP_WBITS, Inflater
from gateway_extproc.metering import StreamMeter, estimate_tokens
from gateway_extproc.metering_bounded import HEAD_BYTES, TAIL_BYTES, JsonBody

_WBITS = {"gzip": GZIP_WBITS, "x-gzip": GZIP_WBITS, "deflate": DEFLATE_WBITS}


class ResponseBody:
    __slots__ = ("inflater", "json", "limits_reached", "meter", "unreadable")

    def __init__(self, cap: int) -> None:
        self.json = JsonBody(cap)
        self.meter: StreamMeter | None = None
        self.inflater: Inflater | None = None
        self.limits_reached: list[LimitReached] = []
        self.unreadable: str | None = None  # why the body is not read (on): metering estimates

    def start(self, api: Api, *, stream: bool, encoding: str) -> None:
        """The response's headers: an event stream (`stream`) is metered as it passes; a
        content-encoding is decoded (gzip, deflate) or makes the body unreadable (br, ...)."""
        if stream:
            self.meter = StreamMeter(api)
        if encoding:
            coding = encoding.strip().lower()
            if coding in _WBITS:
                self.inflater = Inflater(_WBITS[coding])
            elif coding != "identity":
                self.unreadable = f"{coding}-encoded"

    def take(self, chunk: bytes, end: bool) -> Sequence[bytes]:
        """Decode and meter or keep one chunk; the decoded bytes of a stream (for the response
        cache to keep), nothing for JSON. The common case - an identity stream - costs one call."""
        meter, inflater = self.meter, self.inflater
        if inflater is None and meter is not None and self.unreadable is None:
            meter.feed(chunk)
            return (chunk,)
        if self.unreadable is not None:
            return ()
        pieces: Sequence[bytes] = (chunk,) if inflater is None else tuple(inflater.feed(chunk, end))
        if meter is not None:
            for piece in pieces:
                meter.feed(piece)
        else:
            json = self.json
            for piece in pieces:
                json.feed(piece)
            if json.truncated and LimitReached.RESPONSE_BODY_CAP not in self.limits_reached:
                self.limits_reached.append(LimitReached.RESPONSE_BODY_CAP)
            pieces = ()
        if inflater is not None and inflater.exceeded:  # a decompression bomb: stop reading
            self.unreadable = (
                f"inflates beyond {inflater.max_ratio}:1 "
                f"({inflater.produced} bytes from {inflater.received})"
            )
            self.limits_reached.insert(0, LimitReached.RESPONSE_INFLATE_RATIO)
        return pieces

    def truncation_note(self, *, usage_read: bool) -> str | None:
        """What to log (sizes only, never content) of a JSON body cut to its ends."""
        if not self.json.truncated or self.unreadable is not None:
            return None
        outcome = "usage read" if usage_read else "no usage found: charged an upper bound"
        return (
            f"response body of {self.json.size} bytes over metering.max_json_body_bytes: metered "
            f"from its first {HEAD_BYTES} and last {TAIL_BYTES} bytes ({outcome}), not cached"
        )

    def estimated_output(self, output_bytes: int, max_tokens: int | None) -> int:
        """Output tokens to charge when the provider's usage is not read: from the generated
        characters seen; once a bound was reached, from every byte seen (an upper bound: bytes,
        not text) and never above the request's own output limit."""
        if not self.limits_reached:
            return estimate_tokens(output_bytes)
        tokens = estimate_tokens(output_bytes if self.meter is not None else self.json.size)
        return tokens if max_tokens is None else min(tokens, max_tokens)
