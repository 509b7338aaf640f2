"""gzip / deflate decoding of a response body with a bound on what it may produce. Pure.

The gateway asks providers for identity bodies (it drops `accept-encoding`), but one that
compresses anyway is decoded so its usage can be read. A misbehaving upstream can send a
decompression bomb: deflate reaches ~1,000:1, so 1 MB on the wire can be 1 GB to decode. This
decoder stops once its output exceeds `MAX_RATIO` times the compressed bytes received (Envoy's
own gzip decompressor defaults to the same 100; JSON and SSE compress 3-20:1), never checks the
ratio below `RATIO_FLOOR` of output (a small, very repetitive body is fine), and hands out the
output in slices of at most `SLICE_BYTES`, so no single call holds more than that.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
SLICE_BYTES = 1 << 20

GZIP_WBITS = 16 + zlib.MAX_WBITS
DEFLATE_WBITS = zlib.MAX_WBITS


class Inflater:
    """One body's decoder. `feed` each compressed chunk; once `exceeded`, it decodes nothing
    more (the caller meters what it was given and says so)."""

    __slots__ = ("_zlib", "exceeded", "floor", "max_ratio", "produced", "received", "slice_bytes")

    def __init__(
        self,
        wbits: int,
        *,
        max_ratio: int = MAX_RATIO,
        floor: int = RATIO_FLOOR,
        slice_bytes: int = SLICE_BYTES,
    ) -> None:
        self._zlib = zlib.decompressobj(wbits)
        self.max_ratio = max_ratio
        self.floor = floor
        self.slice_bytes = slice_bytes
        self.received = 0  # compressed bytes fed
        self.produced = 0  # decoded bytes handed out
        self.exceeded = False

    def feed(self, chunk: bytes, end: bool = False) -> Iterator[bytes]:
        """The decoded bytes of `chunk`, in slices; raises zlib.error on a corrupt stream."""
        if self.exceeded:
            return
        self.received += len(chunk)
        data = chunk
        while True:
            room = max(self.max_ratio * self.received, self.floor) - self.produced
            if room <= 0:
                # At the limit: exceeded only if there is more to decode (probe one byte).
                if data or self._zlib.decompress(b"", 1):
                    self.exceeded = True
                    return
                break
            limit = min(room, self.slice_bytes)
            out = self._zlib.decompress(data, limit)
            data = self._zlib.unconsumed_tail
            if out:
                self.produced += len(out)
                yield out
            # More may be pending while input is left or the output filled its limit.
            if not data and len(out) < limit:
                break
        if end:
            rest = self._zlib.flush(self.slice_bytes)
            if rest:
                self.produced += len(rest)
                yield rest
