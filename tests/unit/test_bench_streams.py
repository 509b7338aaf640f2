"""Issue 25's bench pieces that are pure: the bench upstream's Anthropic stream (what the gateway
meters and translates), the stream timer finding a translated chunk's write time, and the
translated-beside-native pair the report prints. The bench itself is not part of `make test`."""

from __future__ import annotations

import socket
import threading
from typing import cast

import pytest

from bench import load, streams
from bench import upstream_messages as messages
from bench.rows import Row
from bench.upstream import SSE_HEAD, Http, response_bytes
from gateway_extproc.apis import Api
from gateway_extproc.providers.metering import StreamMeter
from gateway_extproc.tokens import Usage
from gateway_extproc.translate.stream import MessagesToChatStream

CHUNKS = messages.CHUNKS


def _unchunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 message body."""
    out, at = bytearray(), 0
    while True:
        end = data.index(b"\r\n", at)
        size = int(data[at:end], 16)
        if size == 0:
            assert data[end:] == b"\r\n\r\n"
            return bytes(out)
        out += data[end + 2 : end + 2 + size]
        at = end + 2 + size + 2


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def _serve(request: bytes) -> bytes:
    """What the bench upstream writes for one request (instant answers only: no pacing)."""
    http, transport = Http(), _Transport()
    http.connection_made(cast(socket.socket, transport))  # type: ignore[arg-type]
    http.data_received(request)
    return bytes(transport.written)


def _request(path: str, body: bytes) -> bytes:
    return b"POST %s HTTP/1.1\r\ncontent-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)


def _paced_body(stamps: list[int]) -> bytes:
    """The paced stream's wire bytes after the head, each delta stamped as the upstream does."""
    return (
        messages.START
        + b"".join(messages.stamped(i, ns) for i, ns in enumerate(stamps))
        + messages.END
    )


@pytest.mark.parametrize("paced", [False, True])
def test_the_anthropic_stream_meters_as_anthropic_with_the_reported_usage(paced: bool) -> None:
    if paced:
        body = _unchunk(_paced_body([10**18 + i for i in range(CHUNKS)]))
    else:
        answer = _serve(_request("/v1/messages", b'{"stream": true}'))
        assert answer.startswith(SSE_HEAD)
        assert len(answer) == response_bytes(True, anthropic=True)
        body = _unchunk(answer[len(SSE_HEAD) :])
    meter = StreamMeter(Api.ANTHROPIC_MESSAGES)
    meter.feed(body)
    result = meter.flush()
    assert result.completed and result.malformed_events == 0
    assert result.usage == Usage(input_tokens=messages.PROMPT_TOKENS, output_tokens=CHUNKS)
    assert result.served_model == messages.MODEL


def test_the_paced_stream_s_size_is_what_the_bench_divides_upstream_bytes_by() -> None:
    body = _paced_body([123] * CHUNKS)
    assert len(SSE_HEAD) + len(body) == response_bytes(True, paced=True, anthropic=True)


def test_the_anthropic_json_answer_and_the_native_answers_are_apart() -> None:
    json_answer = _serve(_request("/v1/messages", b'{"stream": false}'))
    assert json_answer == messages.JSON_RESPONSE
    assert len(json_answer) == response_bytes(False, anthropic=True)
    native = _serve(_request("/v1/chat/completions", b'{"stream": false}'))
    assert b'"object":"chat.completion"' in native
    assert _serve(_request("/v1/other", b"{}")).startswith(b"HTTP/1.1 404")


def test_every_translated_chunk_carries_its_write_time_to_the_stream_timer() -> None:
    """The stamp in each delta's text survives translation, and the timer (with the translated
    stamp) turns each into a lag: CHUNKS lags per stream, as for a native paced stream."""
    stamps = [1_000_000 + i for i in range(CHUNKS)]
    translator = MessagesToChatStream(created=0, include_usage=True)
    client = translator.feed(_unchunk(_paced_body(stamps))) + translator.flush()
    assert client.count(messages.CLIENT_STAMP) == CHUNKS
    assert client.endswith(b"data: [DONE]\n\n")
    lags = _lags(client, messages.CLIENT_STAMP)
    assert len(lags) == CHUNKS
    assert len(set(lags)) == CHUNKS  # each its own stamp, none read twice
    # The native stamp (in the chunk id) finds none: translation replaces the id.
    assert _lags(client, load.STAMP) == []


def _lags(body: bytes, stamp: bytes) -> list[int]:
    """The stream timer's lags for `body` sent as Envoy sends it to the client (chunked)."""
    wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    wire += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    ours, theirs = socket.socketpair()
    writer = threading.Thread(target=theirs.sendall, args=(wire,))
    writer.start()
    lags: list[int] = []
    try:
        load._read_stream(ours, 0, lags, stamp)
    finally:
        writer.join()
        ours.close()
        theirs.close()
    return lags


def _row(setup: str, c: int, **values: float) -> Row:
    return Row(setup=setup, workers=1, load="sse-paced", connections=c, **values)  # type: ignore[arg-type]


ROWS = [
    _row("native", 1, chunk_us=60.0, ttfb_ms=3.0, sidecar_us_per_chunk=40.0),
    _row("native", 32, sidecar_us_per_chunk=20.0, extproc_msgs_per_req=105.0, rps=90.0),
    _row("translated", 1, chunk_us=260.0, ttfb_ms=3.5, sidecar_us_per_chunk=100.0),
    _row("translated", 32, sidecar_us_per_chunk=70.0, extproc_msgs_per_req=96.0, rps=40.0),
    _row("native-sync", 1, chunk_us=200.0, extproc_msgs_per_req=206.0),
    _row("native-sync", 32, sidecar_us_per_chunk=50.0),
    _row("gateway", 32, sidecar_us_per_chunk=1.0),  # other setups are not the pair's
    Row("native", 2, "sse-paced", 32, sidecar_us_per_chunk=1.0),  # W=2: not measured here
    Row("native", 1, "sse", 32, sidecar_us_per_chunk=1.0),  # not the paced load
]


def test_the_pair_sets_each_stream_against_the_native_one() -> None:
    entries = streams.pair(ROWS, 32)
    assert [e["stream"] for e in entries] == ["native", "native-sync", "translated"]
    native, sync, translated = entries
    assert native["sidecar_us_per_chunk_sat"] == 20.0 and native["chunk_us"] == 60.0
    assert native["sidecar_us_per_chunk_c1"] == 40.0
    assert native["cpu_vs_native_sat"] is None and native["cpu_vs_native_c1"] is None
    assert native["chunk_added_us_vs_native"] is None
    assert translated["cpu_vs_native_sat"] == pytest.approx(3.5)
    assert translated["cpu_vs_native_c1"] == pytest.approx(2.5)
    assert translated["chunk_added_us_vs_native"] == pytest.approx(200.0)
    assert translated["msgs_per_req_sat"] == 96.0 and translated["rps_sat"] == 40.0
    assert translated["ttfb_ms"] == 3.5
    assert sync["cpu_vs_native_sat"] == pytest.approx(2.5)
    assert sync["cpu_vs_native_c1"] is None  # its c=1 row has no CPU
    assert sync["msgs_per_req_c1"] == 206.0
    assert sync["chunk_added_us_vs_native"] == pytest.approx(140.0)


def test_the_pair_leaves_out_what_was_not_measured() -> None:
    assert streams.pair([], 32) == []
    only_translated = streams.pair(ROWS[2:4], 32)
    assert [e["stream"] for e in only_translated] == ["translated"]
    assert only_translated[0]["cpu_vs_native_sat"] is None
    assert only_translated[0]["chunk_added_us_vs_native"] is None
    # A latency row alone (no wrk row at the saturating concurrency).
    [latency_only] = streams.pair(ROWS[2:3], 32)
    assert latency_only["sidecar_us_per_chunk_sat"] is None and latency_only["chunk_us"] == 260.0


def test_the_report_section_prints_one_line_per_stream() -> None:
    assert streams.render([], 32, 1.0) == []
    lines = streams.render(streams.pair(ROWS, 32), 32, 1.0)
    assert lines[0].startswith("Translated stream beside native ones, through Envoy")
    body = lines[3:]
    assert [line.split()[0] for line in body] == ["native", "native-sync", "translated"]
    translated = ["100.0", "2.50", "-", "70.0", "3.50", "96", "40", "260.0", "+200.0"]
    assert body[2].split()[-9:] == translated
    assert body[0].split()[-9:] == ["40.0", "-", "-", "20.0", "-", "105", "90", "60.0", "-"]
