"""Observe mode: a non-streamed request's response is metered by its own processor (one ext_proc
stream); an event stream or an embeddings answer is handed over to the observer, and its
response headers are answered with "no body for this stream"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2

from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.handoff import NAMESPACE, STATE_KEY
from gateway_extproc.request.forward import RESPONSE_METERED_HERE, RESPONSE_METERED_KEY
from tests.unit.test_processor import (
    CHAT,
    CHAT_PATH,
    Gateway,
    _gateway,
    handle,
    req_body,
    req_headers,
    resp_body,
    resp_headers,
    set_headers,
)

Mode = processing_mode_pb2.ProcessingMode
USAGE = {"prompt_tokens": 1000, "completion_tokens": 500, "total_tokens": 1500}
COST = 1000 * 2.5 + 500 * 10  # micro-dollars at the test catalog's gpt-test prices


@pytest.fixture
def observe(tmp_path: Path) -> Iterator[Gateway]:
    doc = {"identity": {"allow_anonymous": True}, "metering": {"mode": "observe"}}
    yield from _gateway(tmp_path, parse_config(merge(load_document(None), doc), {}), {})


def test_a_non_streamed_answer_is_metered_on_its_own_stream(observe: Gateway) -> None:
    p = observe.processor()
    handle(p, req_headers(CHAT_PATH))
    reply = handle(p, req_body(CHAT))
    # Only the flag that selects the route without the observer: no state to hand over.
    metadata = reply.dynamic_metadata.fields[NAMESPACE].struct_value.fields
    assert set(metadata) == {RESPONSE_METERED_KEY}
    assert metadata[RESPONSE_METERED_KEY].string_value == RESPONSE_METERED_HERE
    assert STATE_KEY not in metadata
    headers = handle(p, resp_headers())
    assert not headers.HasField("mode_override")  # the configured partial buffering stays
    assert "x-gateway-request-id" in set_headers(headers.response_headers.response.header_mutation)
    body = json.dumps({"model": "gpt-test", "usage": USAGE}).encode()
    end = handle(p, resp_body(body, end=True))
    assert set_headers(end.response_body.response.header_mutation)["x-gateway-cost-usd"] == (
        f"{COST / 1e6:.6f}"
    )
    p.close()
    (record,) = observe.records()  # one record, written by this stream
    assert record["cost_micros"] == COST and record["usage_source"] == "provider"


def test_a_partial_body_ends_at_the_close_and_is_charged_its_bound(observe: Gateway) -> None:
    """Over Envoy's buffer limit only the first part comes (end_of_stream false), then the
    stream closes with the request: the usage was not seen, the bound is charged, once."""
    p = observe.processor()
    handle(p, req_headers(CHAT_PATH))
    handle(p, req_body({**CHAT, "max_tokens": 50}))
    handle(p, resp_headers())
    part = handle(p, resp_body(b'{"id": "x", "choices": [' + b" " * 1000, end=False))
    assert "x-gateway-cost-usd" not in set_headers(part.response_body.response.header_mutation)
    p.close()
    (record,) = observe.records()
    assert record["usage_source"] == "bound" and record["completed"] is False
    assert record["tokens"]["output_tokens"] == 50


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (CHAT_PATH, {**CHAT, "stream": True}),
        ("/v1/embeddings", {"model": "embed-test", "input": ["one", "two"]}),
    ],
    ids=["event-stream", "embeddings"],
)
def test_streams_and_embeddings_are_handed_to_the_observer(
    observe: Gateway, path: str, body: dict[str, object]
) -> None:
    p = observe.processor()
    handle(p, req_headers(path))
    reply = handle(p, req_body(body))
    metadata = reply.dynamic_metadata.fields[NAMESPACE].struct_value.fields
    assert STATE_KEY in metadata and RESPONSE_METERED_KEY not in metadata
    headers = handle(p, resp_headers(content_type="text/event-stream"))
    assert headers.mode_override.response_body_mode == Mode.NONE  # no body for this stream
    assert not headers.response_headers.response.HasField("header_mutation")
    p.close()
    assert observe.records() == []  # the observer's to write
