"""Issue 26's bench pieces that are pure: the bench upstream failing a chain's first target on
demand, the audit shapes that tell the fallback setup's cases apart, and the rows-to-ratios
pairing the report prints. The bench itself is not part of `make test`."""

from __future__ import annotations

import socket
from typing import Any, cast

import pytest

from bench import fallback, fallback_run, load, setup_configs
from bench.measure import Load
from bench.rows import Row
from bench.upstream import FAIL_HEADER, FAIL_RESPONSE, JSON_RESPONSE, Http


class _Transport:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


def _serve(head: bytes, body: bytes) -> bytes:
    """What the bench upstream writes for one request."""
    http, transport = Http(), _Transport()
    http.connection_made(cast(socket.socket, transport))  # type: ignore[arg-type]
    request = b"POST /v1/chat/completions HTTP/1.1\r\n%scontent-length: %d\r\n\r\n%s"
    http.data_received(request % (head, len(body), body))
    return bytes(transport.written)


@pytest.mark.parametrize(
    ("header", "model", "answer"),
    [
        (None, "gpt-4o", JSON_RESPONSE),
        ("gpt-4o", "gpt-4o", FAIL_RESPONSE),
        ("gpt-4o", "gpt-4o-mini", JSON_RESPONSE),  # the second target's rewritten body
        ("gpt-4o-mini", "gpt-4o", JSON_RESPONSE),
    ],
)
def test_the_upstream_fails_only_the_model_the_header_names(
    header: str | None, model: str, answer: bytes
) -> None:
    head = b"" if header is None else f"{FAIL_HEADER}: {header}\r\n".encode()
    assert _serve(head, load.request_body(False, model)) == answer


def test_the_failure_is_a_500_with_an_openai_error_body() -> None:
    head, _, body = FAIL_RESPONSE.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 ")
    assert f"content-length: {len(body)}".encode() in head
    assert b'"error":{' in body


def test_each_case_loads_its_model_and_switch() -> None:
    specs = fallback_run.loads()
    assert specs[fallback.UNCHAINED].body() == load.request_body(False, load.NATIVE_MODEL)
    for name in (fallback.FIRST, fallback.SECOND):
        assert specs[name].body() == load.request_body(False, setup_configs.CHAINED_MODEL)
    assert specs[fallback.FIRST].headers() == {}
    assert specs[fallback.SECOND].headers() == {FAIL_HEADER: fallback_run.FIRST_MODEL}
    assert len({s.file_name() for s in specs.values()}) == 3  # a wrk script each
    assert Load("sse-paced", True, 1.0, translated=True).file_name() == "sse-paced-translated"


def _record(model: str, served: str | None, attempts: list[tuple[str, int]] | None) -> Any:
    doc: dict[str, Any] = {"requested_model": model, "completed": True, "status": 200}
    if attempts is not None:
        doc["attempts"] = [{"target": t, "status": s, "latency_ms": 3} for t, s in attempts]
        doc["served_by"] = served
    return doc


A, B = setup_configs.CHAIN


@pytest.mark.parametrize(
    ("record", "case"),
    [
        (_record(load.NATIVE_MODEL, None, None), fallback.UNCHAINED),
        (_record("gpt-4o", A, [(A, 200)]), fallback.FIRST),
        (_record("gpt-4o", B, [(A, 500), (B, 200)]), fallback.SECOND),
        # What the bench must refuse: a chained model not chained, a 500 not retried, an
        # unchained model that went through the chain, a 429 fallback.
        (_record("gpt-4o", None, None), None),
        (_record("gpt-4o", A, [(A, 500)]), None),
        (_record(load.NATIVE_MODEL, A, [(A, 200)]), None),
        (_record("gpt-4o", B, [(A, 429), (B, 200)]), None),
    ],
)
def test_an_audit_record_shows_its_case(record: dict[str, Any], case: str | None) -> None:
    assert fallback_run.case_of(record) == case


def _row(setup: str, c: int, rps: float, p50: float, sc: float, msgs: float) -> Row:
    return Row(
        setup=setup,
        workers=1,
        load="json",
        connections=c,
        rps=rps,
        p50_ms=p50,
        p99_ms=p50 * 2,
        sidecar_ms_per_req=sc,
        envoy_ms_per_req=0.1,
        extproc_msgs_per_req=msgs,
    )


ROWS = [
    _row(fallback.UNCHAINED, 1, 400, 2.0, 1.0, 4),
    _row(fallback.FIRST, 1, 300, 3.0, 1.5, 7),
    _row(fallback.SECOND, 1, 100, 10.0, 2.0, 10),
    _row(fallback.UNCHAINED, 32, 800, 40.0, 0.8, 4),
    _row(fallback.FIRST, 32, 600, 50.0, 1.2, 7),
]


def test_the_pair_sets_each_case_against_the_unchained_model() -> None:
    result = fallback.pair(ROWS, 32)
    by = {(e["case"], e["connections"]): e for e in result["cases"]}
    assert sorted(by) == sorted((r.setup, r.connections) for r in ROWS)
    assert set(by[(fallback.UNCHAINED, 1)]["vs_unchained"].values()) == {None}
    first = by[(fallback.FIRST, 1)]
    assert first["vs_unchained"]["p50_ms"] == pytest.approx(1.5)
    assert first["vs_unchained"]["sidecar_ms_per_req"] == pytest.approx(1.5)
    assert first["vs_unchained"]["extproc_msgs_per_req"] == pytest.approx(7 / 4)
    assert first["sidecar_us_added"] == pytest.approx(500)
    assert by[(fallback.SECOND, 1)]["vs_unchained"]["rps"] == pytest.approx(0.25)
    assert by[(fallback.FIRST, 32)]["sidecar_us_added"] == pytest.approx(400)
    assert result["unchained_vs_gateway"] is None
    text = "\n".join(fallback.render(result))
    assert "not measured in this run" in text and "+500" in text


def test_the_unchained_model_is_set_beside_the_gateway_setup_when_measured() -> None:
    rows = [*ROWS, _row("gateway", 1, 410, 1.9, 1.0, 4), _row("gateway", 32, 800, 40, 0.8, 4)]
    result = fallback.pair(rows, 32)
    versus = result["unchained_vs_gateway"]
    assert versus["c=1"]["p50_ms"] == pytest.approx(2.0 / 1.9)
    assert versus["c=32"]["sidecar_ms_per_req"] == pytest.approx(1.0)
    assert "over the gateway setup (no chain configured), c=1" in "\n".join(fallback.render(result))


def test_a_run_without_the_fallback_setup_has_no_section() -> None:
    assert fallback.pair([_row("gateway", 1, 410, 1.9, 1.0, 4)], 32) == {}
    assert fallback.render({}) == []
