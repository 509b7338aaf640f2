"""`x-mock-fault` parsing, selection and how a fault becomes this request's controls. Pure."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway_extproc.mock.controls import ControlError, aimed_at, parse_controls
from gateway_extproc.mock.errors import injected_error
from gateway_extproc.mock.fault_header import (
    Fault,
    FaultRule,
    Kind,
    parse_fault_header,
    select_fault,
)
from gateway_extproc.mock.wire import plan_writes


@pytest.mark.parametrize(
    ("value", "rules"),
    [
        ("gpt-4o=500", [FaultRule("gpt-4o", Fault(Kind.SERVER_ERROR))]),
        ("*=429@7", [FaultRule("*", Fault(Kind.RATE_LIMITED, 7))]),
        ("m=429", [FaultRule("m", Fault(Kind.RATE_LIMITED, 1))]),
        ("m=429@0", [FaultRule("m", Fault(Kind.RATE_LIMITED, 0))]),
        ("m=RESET", [FaultRule("m", Fault(Kind.RESET))]),
        ("m=stall@3600000", [FaultRule("m", Fault(Kind.STALL, 3_600_000))]),
        ("m=cut@0", [FaultRule("m", Fault(Kind.CUT, 0))]),
        (
            " a = 500 , us.anthropic.claude-haiku-4-5-20251001-v1:0=cut@12 ,*=reset",
            [
                FaultRule("a", Fault(Kind.SERVER_ERROR)),
                FaultRule("us.anthropic.claude-haiku-4-5-20251001-v1:0", Fault(Kind.CUT, 12)),
                FaultRule("*", Fault(Kind.RESET)),
            ],
        ),
        (
            "claude-3-5-sonnet@20240620=stall@5",
            [FaultRule("claude-3-5-sonnet@20240620", Fault(Kind.STALL, 5))],
        ),
    ],
)
def test_valid_values(value: str, rules: list[FaultRule]) -> None:
    assert parse_fault_header(value) == (tuple(rules), [])


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "x-mock-fault[0]: '' must be <model or *>=<fault>"),
        ("500", "x-mock-fault[0]: '500' must be <model or *>=<fault>"),
        ("=500", "x-mock-fault[0]: '=500' must be <model or *>=<fault>"),
        ("a b=500", "x-mock-fault[0]: 'a b=500' must be <model or *>=<fault>"),
        ("m=500,", "x-mock-fault[1]: '' must be <model or *>=<fault>"),
        ("m=", "x-mock-fault[0]: '' must be 500, 429[@seconds], reset, stall@ms or cut@bytes"),
        (
            "m=502",
            "x-mock-fault[0]: '502' must be 500, 429[@seconds], reset, stall@ms or cut@bytes",
        ),
        (
            "m=a=500",
            "x-mock-fault[0]: 'a=500' must be 500, 429[@seconds], reset, stall@ms or cut@bytes",
        ),
        ("m=stall", "x-mock-fault[0]: 'stall' needs an amount: stall@N"),
        ("m=cut", "x-mock-fault[0]: 'cut' needs an amount: cut@N"),
        ("m=reset@1", "x-mock-fault[0]: 'reset@1': reset takes no @ amount"),
        ("m=500@1", "x-mock-fault[0]: '500@1': 500 takes no @ amount"),
        (
            "m=429@",
            "x-mock-fault[0]: '429@': the amount after @ must be an integer from 0 to 86400",
        ),
        (
            "m=429@-1",
            "x-mock-fault[0]: '429@-1': the amount after @ must be an integer from 0 to 86400",
        ),
        (
            "m=429@1.5",
            "x-mock-fault[0]: '429@1.5': the amount after @ must be an integer from 0 to 86400",
        ),
        (
            "m=429@86401",
            "x-mock-fault[0]: '429@86401': the amount after @ must be an integer from 0 to 86400",
        ),
        (
            "m=stall@3600001",
            "x-mock-fault[0]: 'stall@3600001': the amount after @ must be an integer "
            "from 0 to 3600000",
        ),
        (
            "m=cut@x",
            "x-mock-fault[0]: 'cut@x': the amount after @ must be an integer from 0 to 1073741824",
        ),
    ],
)
def test_bad_values_name_the_entry(value: str, problem: str) -> None:
    assert parse_fault_header(value)[1] == [problem]


def test_every_problem_is_reported_and_good_rules_kept() -> None:
    rules, problems = parse_fault_header("x=boom,y=500,z=stall")
    assert rules == (FaultRule("y", Fault(Kind.SERVER_ERROR)),)
    assert [p.split(":")[0] for p in problems] == ["x-mock-fault[0]", "x-mock-fault[2]"]


def test_the_first_matching_selector_wins() -> None:
    rules, _ = parse_fault_header("a=500,*=reset,b=cut@1,a=stall@1")
    assert select_fault(rules, "a") == Fault(Kind.SERVER_ERROR)
    assert select_fault(rules, "b") == Fault(Kind.RESET)  # `*` came first
    assert select_fault(rules, None) == Fault(Kind.RESET)
    only, _ = parse_fault_header("a=500")
    assert select_fault(only, "b") is None
    assert select_fault(only, "A") is None  # model ids are case-sensitive
    assert select_fault(only, None) is None
    assert select_fault((), "a") is None


def test_labels_are_what_the_header_says() -> None:
    rules, _ = parse_fault_header("a=500,a=429@3,a=reset,a=stall@10,a=cut@4,a=429")
    assert [r.fault.label for r in rules] == ["500", "429@3", "reset", "stall@10", "cut@4", "429@1"]


# --- as controls -------------------------------------------------------------------------------


def test_a_bad_fault_header_is_a_control_error_with_the_others() -> None:
    with pytest.raises(ControlError) as info:
        parse_controls({"X-Mock-Fault": "m=teapot", "x-mock-latency-ms": "x"})
    assert info.value.problems == [
        "x-mock-latency-ms: 'x' is not an integer",
        "x-mock-fault[0]: 'teapot' must be 500, 429[@seconds], reset, stall@ms or cut@bytes",
    ]


def test_repeated_fault_headers_join_in_order() -> None:
    class Repeated(dict[str, str]):
        def items(self):  # type: ignore[override]
            return [("x-mock-fault", "a=500"), ("X-Mock-Fault", "b=reset")]

    controls = parse_controls(Repeated())
    assert select_fault(controls.faults, "b") == Fault(Kind.RESET)


@pytest.mark.parametrize(
    ("fault", "changes"),
    [
        ("500", {"status": 500}),
        ("429@9", {"status": 429, "retry_after_s": 9}),
        ("reset", {"reset": True}),
        ("stall@250", {"latency_ms": 255}),  # added to x-mock-latency-ms
        ("cut@17", {"cut_after_bytes": 17}),
    ],
)
def test_the_fault_aimed_at_a_model_becomes_its_controls(
    fault: str, changes: dict[str, Any]
) -> None:
    controls = parse_controls({"x-mock-fault": f"gpt-4o={fault}", "x-mock-latency-ms": "5"})
    picked = select_fault(controls.faults, "gpt-4o")
    aimed = aimed_at(controls, "gpt-4o")
    assert aimed == dataclasses.replace(controls, fault=picked, **changes)
    assert aimed_at(controls, "gpt-4o-mini") == controls  # another target: untouched


def test_an_injected_429_carries_its_retry_after() -> None:
    assert injected_error(429, 7).headers() == {"retry-after": "7", "retry-after-ms": "7000"}
    assert injected_error(429).headers() == {"retry-after": "1", "retry-after-ms": "1000"}


@pytest.mark.parametrize(
    ("cut", "chunk_bytes", "writes"),
    [
        (0, None, ()),
        (4, None, (b"aaab",)),
        (4, 3, (b"aaa", b"b")),
        (100, None, (b"aaabbbccc",)),
    ],
)
def test_a_cut_plan_keeps_the_first_bytes_then_aborts(
    cut: int, chunk_bytes: int | None, writes: tuple[bytes, ...]
) -> None:
    plan = plan_writes([b"aaa", b"bbb", b"ccc"], chunk_bytes=chunk_bytes, cut_after_bytes=cut)
    assert (plan.writes, plan.abort) == (writes, True)


def test_a_key_selector_matches_the_requests_presenting_that_key() -> None:
    """`key:<credential>` picks one key of a gateway's pool, whatever the model."""
    rules, problems = parse_fault_header("key:sk-a=429@2,gpt-4o=500")
    assert problems == []
    assert select_fault(rules, "gpt-4o-mini", ("sk-a",)) == Fault(Kind.RATE_LIMITED, 2)
    assert select_fault(rules, "gpt-4o-mini", ("sk-b",)) is None
    assert select_fault(rules, "gpt-4o", ("sk-b",)) == Fault(Kind.SERVER_ERROR)
