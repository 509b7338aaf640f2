"""A chained request's attempts without Envoy: the per-attempt filter's target lookup, refusals
and records (request/attempt.py), the response side's reading of them (response/attempts.py,
`ResponseObserver.on_attempts`), each attempt's cost in the audit record and the
`gateway.fallback.attempts` metric."""

from __future__ import annotations

import dataclasses
import json
import types
from typing import Any

import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from google.protobuf import struct_pb2

from gateway_extproc import handoff
from gateway_extproc.apis import Api
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.cost.endings import ChargeLimits
from gateway_extproc.envoy.filters import KEY_ATTRIBUTE, TARGET_ATTRIBUTE
from gateway_extproc.handoff import ATTEMPTS_NAMESPACE, ChainTarget, RequestState
from gateway_extproc.observability import attributes as at
from gateway_extproc.observability.settings import ObservabilityConfig
from gateway_extproc.request.attempt import AttemptProcessor, target_attribute
from gateway_extproc.response.attempts import (
    answering_target,
    attempt_records,
    charge_dropped,
    skipped_targets,
    with_costs,
)
from gateway_extproc.response.observer import ResponseObserver
from gateway_extproc.sidecar_auth.seal import StateSeal
from tests.unit.test_observability import FACTS, collect, metrics_with, record
from tests.unit.test_observer import FULL

HEAD = ChainTarget(
    "openai/gpt-4o", "openai", "gpt-4o", Api.OPENAI_CHAT, Price(1, 2, 1, 1, 2), 100, None
)
MINI = ChainTarget(
    "openai/gpt-4o-mini", "openai", "gpt-4o-mini", Api.OPENAI_CHAT, Price(1, 1, 1, 1, 1), 100, None
)
STATE = dataclasses.replace(
    FULL,
    path="/v1/chat/completions",
    api=Api.OPENAI_CHAT,
    client_api=None,
    requested_model="gpt-4o",
    served_model="gpt-4o",
    provider="openai",
    price=HEAD.price,
    chain=(HEAD, MINI),
    audit_extra={},
)


def _attempts_message(status: str, records: dict[str, Any]) -> pb.ProcessingRequest:
    """Response headers as the request filter gets them: the attempts namespace forwarded."""
    message = pb.ProcessingRequest()
    message.response_headers.headers.headers.add(key=":status", raw_value=status.encode())
    fields = message.metadata_context.filter_metadata[ATTEMPTS_NAMESPACE].fields
    for key, value in records.items():
        fields[key].string_value = value if isinstance(value, str) else json.dumps(value)
    return message


# -- reading the records -------------------------------------------------------------------------


def test_records_in_attempt_order_bad_ones_left_out() -> None:
    message = _attempts_message(
        "200",
        {
            "attempt_10": {"target": "j", "status": 200},
            "attempt_2": {"target": "b", "status": 500},
            "attempt_1": {"target": "a", "status": 429},
            "attempt_x": {"target": "no number"},
            "other": {"target": "not an attempt"},
            "attempt_3": "{not json",
            "attempt_4": "[1, 2]",
        },
    )
    got = attempt_records(message)
    # Unreadable records are attempts without a record: numbers 3 to 9 are gaps.
    assert [(r["attempt"], r["target"]) for r in got] == [
        (1, "a"),
        (2, "b"),
        *((n, None) for n in range(3, 10)),
        (10, "j"),
    ]
    assert attempt_records(pb.ProcessingRequest()) == []


def test_a_gap_in_the_attempt_numbers_is_an_attempt_without_a_response() -> None:
    """A refused connection (fact 3) or a timeout before the headers leaves no record: the gap
    is reported, its target unknown, not guessed."""
    message = _attempts_message(
        "200",
        {
            "attempt_2": {"target": HEAD.target, "status": 500},
            "attempt_4": {"target": MINI.target, "status": 200},
        },
    )
    gap = {"target": None, "status": None, "outcome": "no_response"}
    assert attempt_records(message) == [
        {"attempt": 1, **gap},
        {"attempt": 2, "target": HEAD.target, "status": 500},
        {"attempt": 3, **gap},
        {"attempt": 4, "target": MINI.target, "status": 200},
    ]
    assert with_costs(attempt_records(message), MINI.target, 50)[0]["cost_micros"] == 0
    assert at.attempt_outcome(attempt_records(message)[0], False) == "no_response"


MARGIN = 10
# The head with charge limits: 100 input tokens, 50 output at most; 1 micro-dollar an input
# token, 2 an output token (prices are pico-dollars a token).
M = 1_000_000
LIMITED = dataclasses.replace(
    HEAD, price=Price(M, 2 * M, M, M, 2 * M), charge_limits=ChargeLimits(100, 50)
)
HEAD_BOUND = 100 * 1 + 50 * 2  # a JSON answer: its whole output limit
STREAM_BOUND = 100 * 1 + MARGIN * 2  # a stream: cut at its first write, the margin after it


@pytest.mark.parametrize(
    ("statuses", "served_by", "stream", "want"),
    [
        ([500, 200], MINI.target, False, [None, None]),  # only a 2xx may have been billed
        ([200, 200], MINI.target, False, [HEAD_BOUND, None]),  # fact 5: dropped, retried
        ([200, 200], MINI.target, True, [STREAM_BOUND, None]),
        ([200, 503], None, False, [HEAD_BOUND, None]),  # then every other attempt failed
        ([200], None, False, [HEAD_BOUND]),  # the last dropped too: Envoy's own reply
        ([200], LIMITED.target, False, [None]),  # the answer: charged by its metering
    ],
)
def test_a_dropped_answer_is_charged_its_targets_bound(
    statuses: list[int], served_by: str | None, stream: bool, want: list[int | None]
) -> None:
    targets = [LIMITED.target, MINI.target]
    records = [{"target": targets[i], "status": s} for i, s in enumerate(statuses)]
    got = charge_dropped((LIMITED, MINI), records, served_by, stream=stream, margin=MARGIN)
    assert [r.get("cost_micros") for r in got] == want
    assert [r.get("usage_source") for r in got] == [None if w is None else "bound" for w in want]
    assert "cost_micros" not in records[0]  # not changed in place


def test_a_dropped_answer_without_charge_limits_is_not_charged() -> None:
    records = [{"target": HEAD.target, "status": 200}, {"target": MINI.target, "status": 200}]
    got = charge_dropped((HEAD, MINI), records, MINI.target, stream=False, margin=MARGIN)
    assert [r.get("cost_micros") for r in got] == [None, None]


def test_the_answer_carries_the_charge_less_the_dropped_bounds() -> None:
    records = [
        {"target": HEAD.target, "status": 200, "cost_micros": 300, "usage_source": "bound"},
        {"target": MINI.target, "status": 200},
    ]
    assert [r["cost_micros"] for r in with_costs(records, MINI.target, 1000)] == [300, 700]
    assert [r["cost_micros"] for r in with_costs(records, None, 1000)] == [300, 0]


THIRD = dataclasses.replace(MINI, target="openai/gpt-4.1", model="gpt-4.1")


@pytest.mark.parametrize(
    ("attempts", "want"),
    [
        ([HEAD.target, MINI.target], []),
        ([MINI.target], [HEAD.target]),  # the head ejected (fact 9): one attempt, the second
        ([THIRD.target], [HEAD.target, MINI.target]),
        ([HEAD.target, THIRD.target], [MINI.target]),
        ([HEAD.target, HEAD.target, MINI.target], []),  # two keys of one target
        ([None, MINI.target], []),  # a gap first: it may have been the head, nothing said
        ([HEAD.target, None, THIRD.target], []),
        ([], []),
    ],
)
def test_targets_no_attempt_reached_are_skipped(
    attempts: list[str | None], want: list[str]
) -> None:
    records = [
        {"target": t, "status": None, "outcome": "no_response"}
        if t is None
        else {"target": t, "status": 500}
        for t in attempts
    ]
    assert skipped_targets((HEAD, MINI, THIRD), records) == want


@pytest.mark.parametrize(
    ("records", "status", "want"),
    [
        (
            [{"target": "openai/gpt-4o", "status": 500}, {"target": MINI.target, "status": 200}],
            "200",
            MINI,
        ),
        ([{"target": "openai/gpt-4o", "status": 200}], "200", HEAD),
        # Envoy's own reply (every attempt failed, the last was reset): no target answered.
        ([{"target": "openai/gpt-4o", "status": 500}], "503", None),
        ([{"target": "openai/unknown", "status": 200}], "200", None),
        ([], "200", None),
    ],
)
def test_the_answering_target(records: list[dict[str, Any]], status: str, want: Any) -> None:
    assert answering_target(STATE.chain, records, status) == want


def test_only_the_answering_attempt_costs() -> None:
    records = [{"target": "a", "status": 500}, {"target": "b", "status": 200}]
    assert [r["cost_micros"] for r in with_costs(records, "b", 1234)] == [0, 1234]
    assert [r["cost_micros"] for r in with_costs(records, None, 1234)] == [0, 0]
    assert records[0] == {"target": "a", "status": 500}  # not changed in place


@pytest.mark.parametrize(
    ("status", "answered", "want"),
    [
        (200, True, "served"),
        (429, False, "rate_limited"),
        (503, False, "server_error"),
        (404, False, "client_error"),
        (200, False, "dropped"),
        (None, False, "dropped"),
    ],
)
def test_attempt_outcomes(status: int | None, answered: bool, want: str) -> None:
    assert at.attempt_outcome({"status": status}, answered) == want


# -- the observer --------------------------------------------------------------------------------


def _observer() -> ResponseObserver:
    """An observer over STATE with just what `on_attempts` reads of its context."""
    observer = ResponseObserver.__new__(ResponseObserver)
    catalog = types.SimpleNamespace(lookup=lambda name: None)
    metering = types.SimpleNamespace(unseen_output_tokens=MARGIN)
    config = types.SimpleNamespace(metering=metering)
    observer.ctx = types.SimpleNamespace(  # type: ignore[assignment]
        catalog=catalog, upstreams={}, config=config
    )
    observer.state = STATE
    observer.translated = None
    return observer


def test_on_attempts_meters_by_the_target_that_answered() -> None:
    observer = _observer()
    records = {
        "attempt_1": {"target": HEAD.target, "status": 500, "latency_ms": 3},
        "attempt_2": {"target": MINI.target, "status": 200, "latency_ms": 5},
    }
    observer.on_attempts(_attempts_message("200", records))
    state = observer.state
    assert state.served_model == "gpt-4o-mini" and state.price == MINI.price
    assert state.audit_extra["served_by"] == MINI.target
    assert [r["target"] for r in state.audit_extra["attempts"]] == [HEAD.target, MINI.target]
    assert observer.entry.name == "gpt-4o-mini" and observer.entry.price == MINI.price


def test_on_attempts_charges_a_dropped_answer_and_names_skipped_targets() -> None:
    """Fact 5: the head's 200 was dropped while the per-attempt filter held it and the router
    retried: that attempt is charged its bound and adds to the request's charge."""
    observer = _observer()
    observer.state = dataclasses.replace(STATE, chain=(LIMITED, MINI), stream=False)
    records = {
        "attempt_1": {"target": LIMITED.target, "status": 200, "latency_ms": 3},
        "attempt_2": {"target": MINI.target, "status": 200, "latency_ms": 5},
    }
    observer.on_attempts(_attempts_message("200", records))
    extra = observer.state.audit_extra
    assert extra["served_by"] == MINI.target and extra["skipped"] == []
    assert observer.dropped == HEAD_BOUND
    assert [a.get("usage_source") for a in extra["attempts"]] == ["bound", None]
    attempts = with_costs(extra["attempts"], MINI.target, HEAD_BOUND + 7)
    assert [a["cost_micros"] for a in attempts] == [HEAD_BOUND, 7]


def test_on_attempts_without_an_answer_keeps_the_head() -> None:
    observer = _observer()
    observer.on_attempts(_attempts_message("502", {"attempt_1": {"target": HEAD.target}}))
    assert observer.state.served_model == STATE.served_model
    assert observer.state.audit_extra["served_by"] is None


def test_on_attempts_of_an_unchained_request_changes_nothing() -> None:
    observer = _observer()
    observer.state = dataclasses.replace(STATE, chain=())
    observer.on_attempts(_attempts_message("200", {"attempt_1": {"target": HEAD.target}}))
    assert observer.state.audit_extra == {}


# -- the per-attempt filter ----------------------------------------------------------------------


SEAL = StateSeal((b"k" * 32,))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _processor(clock: Clock) -> AttemptProcessor:
    ctx = types.SimpleNamespace(
        monotonic=clock,
        sidecar_auth=types.SimpleNamespace(seal=SEAL),
        budgets=types.SimpleNamespace(store=None),  # no Redis: no key cooldowns
    )
    return AttemptProcessor(ctx)  # type: ignore[arg-type]


def _request_headers(
    target: str | None,
    state: RequestState | None,
    *,
    mac: str = "",
    key: str | None = None,
    attempt: int | None = None,
) -> Any:
    message = pb.ProcessingRequest()
    message.request_headers.headers.headers.add(key=":path", raw_value=b"/v1/chat/completions")
    if attempt is not None:
        count = str(attempt).encode()
        message.request_headers.headers.headers.add(key="x-envoy-attempt-count", raw_value=count)
    if target is not None:
        attrs = struct_pb2.Struct()
        attrs.fields[TARGET_ATTRIBUTE].string_value = target
        if key is not None:
            attrs.fields[KEY_ATTRIBUTE].string_value = key
        message.attributes["envoy.filters.http.ext_proc"].CopyFrom(attrs)
    if state is not None:
        text = state.encode()
        fields = message.metadata_context.filter_metadata[handoff.NAMESPACE].fields
        fields[handoff.STATE_KEY].string_value = text
        fields[handoff.MAC_KEY].string_value = mac or SEAL.sign(text)
    return message


def test_the_target_attribute() -> None:
    assert target_attribute(_request_headers("openai/gpt-4o", None)) == "openai/gpt-4o"
    assert target_attribute(_request_headers(None, None)) is None


async def test_an_attempt_finds_its_target_and_records_its_answer() -> None:
    clock = Clock()
    p = _processor(clock)
    reply = await p.handle(_request_headers(MINI.target, STATE))
    assert reply.WhichOneof("response") == "request_headers"
    assert (p.index, p.target) == (1, MINI)
    clock.now += 0.25
    message = pb.ProcessingRequest()
    message.response_headers.headers.headers.add(key=":status", raw_value=b"429")
    reply = await p.handle(message)
    fields = reply.dynamic_metadata.fields[ATTEMPTS_NAMESPACE].struct_value.fields
    assert list(fields) == ["attempt_2"]  # its place in the chain
    assert orjson.loads(fields["attempt_2"].string_value) == {
        "target": MINI.target,
        "status": 429,
        "latency_ms": 250,
    }


async def test_an_attempt_on_a_pool_key_is_numbered_by_envoys_count() -> None:
    """Two keys of one target are two Envoy attempts: the record is `attempt_<count>` (not the
    target's place, which both share) and names the key, with latency_ms."""
    clock = Clock()
    p = _processor(clock)
    await p.handle(_request_headers(MINI.target, STATE, key="spare", attempt=3))
    clock.now += 0.04
    message = pb.ProcessingRequest()
    message.response_headers.headers.headers.add(key=":status", raw_value=b"429")
    message.response_headers.headers.headers.add(key="retry-after", raw_value=b"5")
    reply = await p.handle(message)
    fields = reply.dynamic_metadata.fields[ATTEMPTS_NAMESPACE].struct_value.fields
    assert list(fields) == ["attempt_3"]
    assert orjson.loads(fields["attempt_3"].string_value) == {
        "target": MINI.target,
        "key": "spare",
        "status": 429,
        "latency_ms": 40,
    }


def test_on_attempts_over_keys_and_a_variant() -> None:
    """A variant without the chain's middle target (the state's chain is what was admitted),
    its head tried on both keys, the next target answering: records in attempt order (10 after
    9), the answer metered by the last, each attempt's key kept, only the answer costs."""
    observer = _observer()
    records = {
        "attempt_9": {"target": HEAD.target, "key": "main", "status": 429, "latency_ms": 2},
        "attempt_10": {"target": HEAD.target, "key": "spare", "status": 500, "latency_ms": 3},
        "attempt_11": {"target": MINI.target, "key": "main", "status": 200, "latency_ms": 5},
    }
    observer.on_attempts(_attempts_message("200", records))
    extra = observer.state.audit_extra
    assert extra["served_by"] == MINI.target and observer.state.price == MINI.price
    attempts = with_costs(extra["attempts"], extra["served_by"], 777)
    assert [r["attempt"] for r in attempts[:8] if r["target"] is None] == list(range(1, 9))
    assert [(r["key"], r["status"], r["cost_micros"]) for r in attempts[8:]] == [
        ("main", 429, 0),
        ("spare", 500, 0),
        ("main", 200, 777),
    ]


@pytest.mark.parametrize(
    ("target", "state", "mac"),
    [
        ("openai/gpt-4.1", STATE, ""),  # not admitted for this request
        (MINI.target, None, ""),  # no state
        (MINI.target, STATE, "forged"),  # not signed by this deployment
    ],
)
async def test_an_attempt_it_cannot_place_is_refused(
    target: str, state: RequestState | None, mac: str
) -> None:
    reply = await _processor(Clock()).handle(_request_headers(target, state, mac=mac))
    assert reply.WhichOneof("response") == "immediate_response"
    assert reply.immediate_response.status.code == 503


# -- the audit record and the metric -------------------------------------------------------------


def test_attempts_are_counted_by_target_and_outcome() -> None:
    metrics, reader = metrics_with(ObservabilityConfig())
    attempts = [
        {"target": "openai/gpt-4o", "status": 429},
        {"target": "openai/gpt-4o-mini", "status": 200},
    ]
    metrics.record(record(attempts=attempts, served_by="openai/gpt-4o-mini"), FACTS)
    failed = [{"target": "openai/gpt-4o", "status": 500}]
    metrics.record(record(attempts=failed, served_by=None, status=500), FACTS)
    metrics.record(record(), FACTS)  # not chained: nothing
    got = {
        (p.attributes["gateway.fallback.target"], p.attributes["gateway.fallback.outcome"]): p.value
        for p in collect(reader)["gateway.fallback.attempts"]
    }
    assert got == {
        ("openai/gpt-4o", "rate_limited"): 1,
        ("openai/gpt-4o-mini", "served"): 1,
        ("openai/gpt-4o", "server_error"): 1,
    }
