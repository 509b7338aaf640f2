"""Compressed response bodies are decoded exactly at any chunking, and a decompression bomb
stops at the ratio cap: memory and time bounded by what was received, not by what it inflates
to."""

from __future__ import annotations

import time
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_extproc.response.inflate import (
    DEFLATE_WBITS,
    GZIP_WBITS,
    MAX_RATIO,
    RATIO_FLOOR,
    SLICE_BYTES,
    Inflater,
)


def compress(data: bytes, wbits: int) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    return c.compress(data) + c.flush()


def decode(inflater: Inflater, data: bytes, chunk: int) -> bytes:
    out = []
    for i in range(0, len(data), chunk) or [0]:
        last = i + chunk >= len(data)
        out.extend(inflater.feed(data[i : i + chunk], last))
    return b"".join(out)


def bomb(decoded_mib: int) -> bytes:
    """`decoded_mib` MiB of spaces after a JSON start, gzipped (~1,000:1)."""
    c = zlib.compressobj(9, zlib.DEFLATED, GZIP_WBITS)
    block = b" " * (1 << 20)
    parts = [c.compress(b'{"id":"x",')]
    parts += [c.compress(block) for _ in range(decoded_mib)]
    return b"".join(parts) + c.compress(b'"usage":{}}') + c.flush()


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode),
    st.sampled_from([GZIP_WBITS, DEFLATE_WBITS]),
    st.integers(1, 700),
)
def test_any_chunking_decodes_exactly(data: bytes, wbits: int, chunk: int) -> None:
    inflater = Inflater(wbits)
    assert decode(inflater, compress(data, wbits), chunk) == data
    assert not inflater.exceeded and inflater.produced == len(data)


def test_slices_are_bounded() -> None:
    data = bytes(range(256)) * 40_000  # 10 MB at ~1,000:1: the ratio is lifted to see slices
    inflater = Inflater(GZIP_WBITS, max_ratio=10_000)
    pieces = list(inflater.feed(compress(data, GZIP_WBITS), end=True))
    assert b"".join(pieces) == data
    assert max(map(len, pieces)) <= SLICE_BYTES


def test_a_bomb_stops_at_the_ratio_and_costs_little() -> None:
    wire = bomb(128)  # 128 MiB decoded from ~130 KB
    assert len(wire) < 200_000
    inflater = Inflater(GZIP_WBITS)
    tracemalloc.start()
    started = time.thread_time()  # CPU: a busy machine's other processes do not count
    try:
        produced = 0
        for i in range(0, len(wire), 16384):
            for piece in inflater.feed(wire[i : i + 16384], i + 16384 >= len(wire)):
                produced += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert inflater.exceeded
    assert produced == inflater.produced <= max(MAX_RATIO * inflater.received, RATIO_FLOOR)
    assert inflater.received <= 2 * 16384  # it stopped within the chunk that crossed the ratio
    assert peak < 4 * SLICE_BYTES
    assert time.thread_time() - started < 2.0
    assert list(inflater.feed(b"more", True)) == []  # nothing once exceeded


def test_below_the_floor_the_ratio_is_not_checked() -> None:
    data = b"a" * (RATIO_FLOOR // 2)  # ~1,000:1, but small
    inflater = Inflater(GZIP_WBITS)
    assert decode(inflater, compress(data, GZIP_WBITS), 100) == data
    assert not inflater.exceeded


def test_output_exactly_at_the_limit_is_not_a_bomb() -> None:
    data = b"x" * 5000
    wire = compress(data, DEFLATE_WBITS)
    ratio = -(-len(data) // len(wire))  # the smallest ratio that lets it through
    inflater = Inflater(DEFLATE_WBITS, max_ratio=ratio, floor=0)
    assert decode(inflater, wire, len(wire)) == data
    assert not inflater.exceeded
    tight = Inflater(DEFLATE_WBITS, max_ratio=ratio - 1, floor=0)
    decode(tight, wire, len(wire))
    assert tight.exceeded


def test_a_corrupt_stream_raises() -> None:
    with pytest.raises(zlib.error):
        list(Inflater(GZIP_WBITS).feed(b"this is not gzip", True))
