"""What an ending the provider did not report is charged (gateway_extproc/cost/endings.py): pure,
table-driven, and a property - whatever the provider did that fits what the gateway saw, the
charge is never below its bill."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway_extproc.apis import Api, Schema
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import LongContext, Price, cost_pico
from gateway_extproc.config.gateway import load_document, merge, parse_config
from gateway_extproc.cost.bounds import UnseenInput, bound
from gateway_extproc.cost.endings import (
    ChargeLimits,
    InputKind,
    charge,
    checkpoint_output,
    dearest_input,
    hides_reasoning,
    limits_for,
    output_seen,
)
from gateway_extproc.cost.shape import shape_of
from gateway_extproc.errors import ConfigError
from gateway_extproc.tokens import Usage

PRICE = Price(input=3, output=15, cached_input=1, cache_write=4, reasoning=15)
CHAT = ModelEntry(
    "chat", "p", Schema.OPENAI, 16_000, PRICE, context_window=128_000, image_input_tokens=1_500
)
THINKER = dataclasses.replace(CHAT, name="thinker", hidden_reasoning=True)
CLAUDE = ModelEntry("claude", "q", Schema.ANTHROPIC, 64_000, PRICE, context_window=200_000)
NO_WINDOW = ModelEntry("bare", "p", Schema.OPENAI, 4_096, PRICE)
LIMITS = ChargeLimits(input_tokens=1_000, output_tokens=500)
MARGIN = 100


# -- charge: the table of endings ----------------------------------------------------------------

CHARGES: list[tuple[str, ChargeLimits, Usage | None, int | None, Usage]] = [
    (
        "nothing reported, 40 bytes seen: input bound, seen + margin",
        LIMITS,
        None,
        40,
        Usage(input_tokens=1_000, output_tokens=140),
    ),
    (
        "nothing seen at all: the margin (a stream's provider notices at its first write)",
        LIMITS,
        None,
        0,
        Usage(input_tokens=1_000, output_tokens=100),
    ),
    (
        "seen + margin above the limit: the limit",
        LIMITS,
        None,
        450,
        Usage(input_tokens=1_000, output_tokens=500),
    ),
    (
        "output not countable (a body cut short, unreadable): the whole limit",
        LIMITS,
        None,
        None,
        Usage(input_tokens=1_000, output_tokens=500),
    ),
    (
        "hidden reasoning: the whole limit, whatever was seen",
        dataclasses.replace(LIMITS, hidden_reasoning=True),
        None,
        3,
        Usage(input_tokens=1_000, output_tokens=500),
    ),
    (
        "Anthropic's message_start: input as reported (every kind), output still bounded",
        LIMITS,
        Usage(
            input_tokens=30, cached_input_tokens=3_000, cache_write_input_tokens=7, output_tokens=1
        ),
        40,
        Usage(
            input_tokens=30,
            cached_input_tokens=3_000,
            cache_write_input_tokens=7,
            output_tokens=140,
        ),
    ),
    (
        "a report of more output than the bound: the report wins",
        LIMITS,
        Usage(input_tokens=9, output_tokens=900, reasoning_tokens=800),
        40,
        Usage(input_tokens=9, output_tokens=900, reasoning_tokens=800),
    ),
    (
        "reported reasoning is kept (within the output charged)",
        LIMITS,
        Usage(input_tokens=9, output_tokens=50, reasoning_tokens=30),
        10,
        Usage(input_tokens=9, output_tokens=110, reasoning_tokens=30),
    ),
    (
        "a report without input (a placeholder 0): the input bound",
        LIMITS,
        Usage(output_tokens=20),
        10,
        Usage(input_tokens=1_000, output_tokens=110),
    ),
    (
        "input charged as the dearest kind the limits name",
        dataclasses.replace(LIMITS, input_kind=InputKind.CACHE_WRITE_1H),
        None,
        0,
        Usage(cache_write_1h_input_tokens=1_000, output_tokens=100),
    ),
    (
        "an embedding (no output): the input bound only",
        ChargeLimits(input_tokens=64, output_tokens=0),
        None,
        None,
        Usage(input_tokens=64),
    ),
]


@pytest.mark.parametrize(
    ("limits", "reported", "seen", "expected"),
    [c[1:] for c in CHARGES],
    ids=[c[0] for c in CHARGES],
)
def test_charge(
    limits: ChargeLimits, reported: Usage | None, seen: int | None, expected: Usage
) -> None:
    assert charge(limits, reported, seen, margin=MARGIN, price=PRICE) == expected


def test_unseen_output_is_charged_as_reasoning_when_reasoning_is_dearer() -> None:
    dear = dataclasses.replace(PRICE, reasoning=60)
    usage = charge(LIMITS, None, 40, margin=MARGIN, price=dear)
    assert (usage.output_tokens, usage.reasoning_tokens) == (140, 140)


def test_the_charge_never_exceeds_the_reservation_unless_the_provider_reported_more() -> None:
    """The reservation held the input bound at the dearest rate and the whole output limit."""
    worst = cost_pico(Usage(input_tokens=1_000, output_tokens=500), PRICE)
    for seen in (None, 0, 10, 400, 10**9):
        for hidden in (False, True):
            limits = dataclasses.replace(LIMITS, hidden_reasoning=hidden)
            usage = charge(limits, None, seen, margin=10**9, price=PRICE)
            assert cost_pico(usage, PRICE) <= worst


# -- the property: never below the provider's bill -----------------------------------------------

_RATE = st.integers(0, 10**6)


@st.composite
def prices(draw: st.DrawFn) -> Price:
    base = Price(
        input=draw(_RATE),
        output=draw(_RATE),
        cached_input=draw(_RATE),
        cache_write=draw(_RATE),
        reasoning=draw(_RATE),
        cache_write_1h=draw(st.none() | _RATE),
    )
    if not draw(st.booleans()):
        return base
    # A long-context tier bills the whole request dearer (as every catalog tier does).
    up = draw(st.integers(1, 3))
    tier = Price(
        input=base.input * up,
        output=base.output * up,
        cached_input=base.cached_input * up,
        cache_write=base.cache_write * up,
        reasoning=base.reasoning * up,
        cache_write_1h=base.write_1h * up,
    )
    return dataclasses.replace(base, long_context=LongContext(draw(st.integers(0, 5_000)), tier))


@given(
    price=prices(),
    input_bound=st.integers(0, 10_000),
    cap=st.integers(0, 5_000),
    hidden=st.booleans(),
    margin=st.integers(0, 2_000),
    data=st.data(),
)
def test_the_charge_is_never_below_a_bill_that_fits_what_was_seen(
    price: Price, input_bound: int, cap: int, hidden: bool, margin: int, data: st.DataObject
) -> None:
    """The provider billed: input within the input bound, split over kinds any way; hidden
    reasoning (only if the model hides it), then visible tokens - each at least one byte of what
    the gateway saw - then at most `margin` tokens before it noticed the cut; all within the
    output limit. It may have reported its input (and some output) before the cut."""
    draw = data.draw
    split = [draw(st.integers(0, input_bound)) for _ in range(4)]
    total = sum(split)
    if total > input_bound:  # scale down to fit the bound
        split = [part * input_bound // total for part in split]
    bill_input = Usage(
        input_tokens=split[0],
        cached_input_tokens=split[1],
        cache_write_input_tokens=split[2],
        cache_write_1h_input_tokens=split[3],
    )
    reasoning = draw(st.integers(0, cap)) if hidden else 0
    seen_bytes = draw(st.integers(0, 20_000))
    visible = draw(st.integers(0, seen_bytes))  # a token covers at least one byte
    after_cut = draw(st.integers(0, margin))
    output = min(cap, reasoning + visible + after_cut)
    bill = dataclasses.replace(
        bill_input, output_tokens=output, reasoning_tokens=min(reasoning, output)
    )
    reported = None
    if draw(st.booleans()):  # e.g. Anthropic's message_start: its input, a token of output
        reported = dataclasses.replace(bill_input, output_tokens=draw(st.integers(0, output)))
    countable = draw(st.booleans())
    limits = ChargeLimits(input_bound, cap, hidden, dearest_input(price.for_input(input_bound)))
    # Pricing with the 1-hour rate only when the bill has 1-hour writes matches the reservation
    # (a request that asks for none cannot incur one: bounds.py reserves without it).
    if split[3] == 0:
        limits = dataclasses.replace(
            limits, input_kind=dearest_input(_without_1h(price).for_input(input_bound))
        )
    usage = charge(limits, reported, seen_bytes if countable else None, margin=margin, price=price)
    assert cost_pico(usage, price) >= cost_pico(bill, price)


def _without_1h(price: Price) -> Price:
    tier = price.long_context
    if tier is not None:
        tier = dataclasses.replace(tier, price=_without_1h(tier.price))
    return dataclasses.replace(price, cache_write_1h=price.cache_write, long_context=tier)


# -- what was seen of the output -----------------------------------------------------------------

SEEN = [
    # countable, streaming, responded, asked_stream, ended -> seen
    ("a stream: the bytes that passed", (True, True, True, True, False), 70),
    ("a stream that ended without usage: the same", (True, True, True, True, True), 70),
    ("a stream that could not be decoded", (False, True, True, True, False), None),
    ("no response to a stream yet: nothing", (True, False, False, True, False), 0),
    (
        "no response to a JSON request: generated whole, unseen",
        (True, False, False, False, False),
        None,
    ),
    ("a JSON body that ended: its output", (True, False, True, False, True), 70),
    ("a JSON body cut short", (True, False, True, False, False), None),
    ("a JSON body metering failed on", (False, False, True, False, True), None),
    ("a stream asked for, answered in JSON, ended", (True, False, True, True, True), 70),
]


@pytest.mark.parametrize(("flags", "expected"), [s[1:] for s in SEEN], ids=[s[0] for s in SEEN])
def test_output_seen(flags: tuple[bool, bool, bool, bool, bool], expected: int | None) -> None:
    countable, streaming, responded, asked_stream, ended = flags
    got = output_seen(
        70,
        countable=countable,
        streaming=streaming,
        responded=responded,
        asked_stream=asked_stream,
        ended=ended,
    )
    assert got == expected


@pytest.mark.parametrize(
    ("seen", "elapsed", "horizon", "expected"),
    [
        (0, 10.0, 60.0, 0),  # nothing yet: nothing to extrapolate (the margin still applies)
        (1_000, 10.0, 60.0, 7_000),  # 100 bytes/s for 60 s more
        (1_000, 0.01, 3.0, 4_000),  # less than a second of history counts as one second
        (7, 3.0, 1.0, 10),  # rounded up
    ],
)
def test_checkpoint_output(seen: int, elapsed: float, horizon: float, expected: int) -> None:
    assert checkpoint_output(seen, elapsed, horizon) == expected


# -- the request phase: limits_for ---------------------------------------------------------------


def _limits(api: Api, body: dict[str, Any], entry: ModelEntry, budgeted: bool = False) -> Any:
    max_out = body.get("max_completion_tokens", body.get("max_tokens"))
    shape = shape_of(api, body, max_out)
    admitted = None
    if budgeted:
        admitted = bound(
            shape, entry, default_max_output=8_192, unseen_input=UnseenInput.RESERVE_CONTEXT_WINDOW
        )
    return limits_for(api, body, shape, entry, admitted), shape


MSGS = [{"role": "user", "content": "Count the stars."}]


def test_a_budgeted_request_is_limited_by_its_reservation() -> None:
    body = {"model": "chat", "messages": MSGS}
    limits, shape = _limits(Api.OPENAI_CHAT, body, CHAT, budgeted=True)
    assert limits == ChargeLimits(shape.text_tokens, 8_192, False, InputKind.CACHE_WRITE)


def test_an_unbudgeted_request_is_limited_by_its_own_output_limit_or_the_models() -> None:
    """Nothing was injected upstream: the provider's limit is the request's, else the model's."""
    no_limit, shape = _limits(Api.OPENAI_CHAT, {"model": "chat", "messages": MSGS}, CHAT)
    assert (no_limit.input_tokens, no_limit.output_tokens) == (shape.text_tokens, 16_000)
    body = {"model": "chat", "messages": MSGS, "max_tokens": 300, "n": 3}
    limited, _ = _limits(Api.OPENAI_CHAT, body, CHAT)
    assert limited.output_tokens == 900
    images = {"model": "chat", "messages": [{"role": "user", "content": [_IMAGE, _IMAGE]}]}
    with_images, shape = _limits(Api.OPENAI_CHAT, images, CHAT)
    assert with_images.input_tokens == shape.text_tokens + 2 * 1_500


_IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def test_input_no_catalog_field_bounds_gives_no_limits() -> None:
    body = {"model": "bare", "messages": [{"role": "user", "content": [_IMAGE]}]}
    limits, _ = _limits(Api.OPENAI_CHAT, body, NO_WINDOW)
    assert limits is None


def test_a_one_hour_cache_write_makes_input_dearest_at_the_one_hour_rate() -> None:
    cached = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    body = {
        "model": "claude",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": [cached]}],
    }
    limits, _ = _limits(Api.ANTHROPIC_MESSAGES, body, CLAUDE, budgeted=True)
    assert limits.input_kind is InputKind.CACHE_WRITE_1H  # 2 x input = 6, above the 5-minute 4
    body["messages"] = MSGS
    limits, _ = _limits(Api.ANTHROPIC_MESSAGES, body, CLAUDE, budgeted=True)
    assert limits.input_kind is InputKind.CACHE_WRITE  # no 1-hour write can happen


@pytest.mark.parametrize(
    ("api", "entry", "extra", "hidden"),
    [
        (Api.OPENAI_CHAT, CHAT, {}, False),
        (Api.OPENAI_CHAT, THINKER, {}, True),
        (Api.OPENAI_CHAT, THINKER, {"reasoning_effort": "minimal"}, True),
        (Api.OPENAI_CHAT, THINKER, {"reasoning_effort": "none"}, False),
        (Api.OPENAI_RESPONSES, THINKER, {"reasoning": {"effort": "high"}}, True),
        (Api.OPENAI_RESPONSES, THINKER, {"reasoning": {"effort": "none"}}, False),
        (Api.OPENAI_RESPONSES, THINKER, {"reasoning": "none"}, True),  # not an object: ignored
        (Api.OPENAI_COMPLETIONS, THINKER, {}, True),
        (Api.ANTHROPIC_MESSAGES, CLAUDE, {}, False),
        (
            Api.ANTHROPIC_MESSAGES,
            CLAUDE,
            {"thinking": {"type": "enabled", "budget_tokens": 9}},
            True,
        ),
        (Api.ANTHROPIC_MESSAGES, CLAUDE, {"thinking": {"type": "adaptive"}}, True),
        (Api.ANTHROPIC_MESSAGES, CLAUDE, {"thinking": {"type": "disabled"}}, False),
        (Api.ANTHROPIC_MESSAGES, CLAUDE, {"thinking": None}, False),
        (Api.BEDROCK_CONVERSE, CLAUDE, {}, False),
        (
            Api.BEDROCK_CONVERSE_STREAM,
            CLAUDE,
            {"additionalModelRequestFields": {"thinking": {"type": "enabled"}}},
            True,
        ),
        (
            Api.BEDROCK_CONVERSE,
            CLAUDE,
            {"additionalModelRequestFields": {"thinking": {"type": "disabled"}}},
            False,
        ),
        (Api.BEDROCK_CONVERSE, CLAUDE, {"additionalModelRequestFields": "x"}, False),
    ],
)
def test_hides_reasoning(api: Api, entry: ModelEntry, extra: dict[str, Any], hidden: bool) -> None:
    assert hides_reasoning(api, {"model": entry.name, **extra}, entry) is hidden


@pytest.mark.parametrize(
    ("price", "kind"),
    [
        (
            Price(3, 1, cached_input=1, cache_write=3, reasoning=1, cache_write_1h=3),
            InputKind.INPUT,
        ),
        (dataclasses.replace(PRICE, cache_write_1h=4), InputKind.CACHE_WRITE),
        (dataclasses.replace(PRICE, cache_write_1h=None), InputKind.CACHE_WRITE_1H),  # 2 x input
        (
            Price(input=1, output=1, cached_input=5, cache_write=1, reasoning=1),
            InputKind.CACHE_READ,
        ),
    ],
)
def test_dearest_input(price: Price, kind: InputKind) -> None:
    assert dearest_input(price) is kind


def test_limits_travel_as_a_compact_document() -> None:
    limits = ChargeLimits(12, 34, True, InputKind.CACHE_WRITE_1H)
    assert ChargeLimits.of_doc(limits.to_doc()) == limits
    for bad in ([1, 2, 3], [1, 2, 0, "tokens"], {"a": 1}, "x"):
        with pytest.raises((ValueError, TypeError)):
            ChargeLimits.of_doc(bad)  # type: ignore[arg-type]


# -- configuration -------------------------------------------------------------------------------


def test_the_margin_is_configured_and_checked() -> None:
    assert parse_config(load_document(None), {}).metering.unseen_output_tokens == 1024
    doc = merge(load_document(None), {"metering": {"unseen_output_tokens": 0}})
    assert parse_config(doc, {}).metering.unseen_output_tokens == 0  # only what was seen
    for bad in (-1, "lots", 1.5, True, 10**8):
        doc = merge(load_document(None), {"metering": {"unseen_output_tokens": bad}})
        with pytest.raises(ConfigError, match=r"metering\.unseen_output_tokens: must be an"):
            parse_config(doc, {})
