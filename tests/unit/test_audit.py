"""The audit sink never blocks its caller, counts what it drops, and loses nothing on close."""

from __future__ import annotations

import datetime
import io
import json
import logging
import sys
import threading
import time
from pathlib import Path

import pytest

from gateway_extproc.audit import AuditRecord, AuditSink
from gateway_extproc.tokens import Usage, UsageSource


def record(request_id: str) -> AuditRecord:
    return AuditRecord(
        request_id=request_id,
        time=datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC),
        method="POST",
        path="/v1/chat/completions",
        api="openai_chat",
        requested_model="gpt-4o",
        served_model="gpt-4o",
        provider_model=None,
        provider="openai",
        upstream_mocked=True,
        stream=False,
        status=200,
        completed=True,
        usage=Usage(input_tokens=1, output_tokens=2),
        usage_source=UsageSource.PROVIDER,
        cost_micros=3,
        latency_ms=1.0,
        time_to_first_byte_ms=None,
    )


class BlockingStream(io.RawIOBase):
    """A pipe nobody reads: write() blocks until `release` is set."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.entered.set()
        self.release.wait()
        self.data += b
        return len(b)


class FakeStdout:
    def __init__(self, buffer: BlockingStream) -> None:
        self.buffer = buffer


@pytest.fixture
def blocked_stdout() -> BlockingStream:
    return BlockingStream()


def sink_on(stream: BlockingStream, monkeypatch: pytest.MonkeyPatch, **kwargs: object) -> AuditSink:
    """An AuditSink whose stdout is `stream`. (Patched here, not in a fixture: pytest puts its
    own capture back on sys.stdout between a fixture's setup and the test.)"""
    with monkeypatch.context() as patch:
        patch.setattr(sys, "stdout", FakeStdout(stream))
        return AuditSink(stdout=True, **kwargs)  # type: ignore[arg-type]


def ids(data: bytes) -> list[str]:
    return [json.loads(line)["request_id"] for line in data.splitlines()]


def test_a_blocked_writer_does_not_block_write(
    blocked_stdout: BlockingStream, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = sink_on(blocked_stdout, monkeypatch, path=None)
    try:
        sink.write(record("r0"))
        assert blocked_stdout.entered.wait(5)  # the writer thread is now stuck in write()
        for n in range(1, 100):
            sink.write(record(f"r{n}"))  # returns although the destination is blocked
        assert not blocked_stdout.release.is_set() and blocked_stdout.data == b""
        assert sink.dropped == 0
        blocked_stdout.release.set()
        assert sink.flush(timeout_s=10)
        assert ids(bytes(blocked_stdout.data)) == [f"r{n}" for n in range(100)]
    finally:
        blocked_stdout.release.set()
        sink.close()


def test_a_full_queue_drops_counts_and_logs(
    blocked_stdout: BlockingStream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = sink_on(blocked_stdout, monkeypatch, path=None, max_queued=2)
    try:
        sink.write(record("taken"))
        assert blocked_stdout.entered.wait(5)
        with caplog.at_level(logging.ERROR, logger="gateway.audit"):
            for n in range(5):
                sink.write(record(f"r{n}"))
        assert sink.dropped == 3  # r0 and r1 queued, r2..r4 dropped
        (message,) = [r for r in caplog.records if "dropped" in r.getMessage()]
        assert "stdout" in message.getMessage() and message.request_id == "r2"  # type: ignore[attr-defined]
        blocked_stdout.release.set()
        assert sink.flush(timeout_s=10)
        assert ids(bytes(blocked_stdout.data)) == ["taken", "r0", "r1"]
    finally:
        blocked_stdout.release.set()
        sink.close()


def test_close_drains_everything_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(stdout=False, path=str(path))
    for n in range(5000):
        sink.write(record(f"r{n}"))
    sink.close()
    assert ids(path.read_bytes()) == [f"r{n}" for n in range(5000)]


def test_a_record_after_close_is_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sink = AuditSink(stdout=False, path=str(tmp_path / "audit.jsonl"))
    sink.close()
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        sink.write(record("late"))
    assert sink.dropped == 1
    assert [r.request_id for r in caplog.records] == ["late"]  # type: ignore[attr-defined]


def test_a_blocked_stdout_neither_delays_the_file_nor_hangs_close(
    blocked_stdout: BlockingStream,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "audit.jsonl"
    sink = sink_on(blocked_stdout, monkeypatch, path=str(path))
    for n in range(10):
        sink.write(record(f"r{n}"))
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger="gateway.audit"):
        sink.close(timeout_s=0.5)
    assert time.monotonic() - started < 5
    assert ids(path.read_bytes()) == [f"r{n}" for n in range(10)]
    assert any("still blocked at shutdown" in r.getMessage() for r in caplog.records)
    blocked_stdout.release.set()  # lets the abandoned writer thread finish
