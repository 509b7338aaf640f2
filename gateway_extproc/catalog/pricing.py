"""Exact cost arithmetic: token counts times prices, in integers only.

Pure: no I/O, no floats. Units:

* prices are integer **pico-dollars per token** (USD per 1M tokens x 10^6), so any list price with
  up to 6 decimal places in $/1M (e.g. $0.075, $0.0375) is represented exactly;
* costs are integer **micro-dollars** (the unit budgets are kept in, see STYLE.md point 8).

A request's cost is summed in pico-dollars and rounded to micro-dollars exactly ONCE, half up,
at the end - never per token kind - so the rounding error is at most 0.5 micro-dollar per request.
"""

from __future__ import annotations

import dataclasses
import decimal
from fractions import Fraction
from typing import Protocol

from gateway_extproc.tokens import Usage

PICO_PER_MICRO = 10**6
MICROS_PER_USD = 10**6
DECIMAL_PLACES = 6


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """A model's prices in integer pico-dollars per token, every field already defaulted.

    `cache_write_1h` is Anthropic's 1-hour cache write; None means Anthropic's published rule,
    twice `input` (see `write_1h`). `long_context`, when set, prices a whole request whose input
    exceeds its threshold (the providers bill every token of such a request at the long rates).
    `cache_write_12h` is OpenAI's 12-hour cache write (None: not listed, see `with_12h_writes`); a
    request that asks for it is priced `with_12h_writes()` (its `cache_write` becomes that rate),
    so the request's price - what the hand-off carries - never needs the field itself.
    """

    input: int
    output: int
    cached_input: int
    cache_write: int
    reasoning: int
    cache_write_1h: int | None = None
    long_context: LongContext | None = None
    cache_write_12h: int | None = None

    @classmethod
    def free(cls) -> Price:
        return cls(
            input=0,
            output=0,
            cached_input=0,
            cache_write=0,
            reasoning=0,
            cache_write_1h=0,
            cache_write_12h=0,
        )

    @property
    def write_1h(self) -> int:
        """The 1-hour cache-write rate: `cache_write_1h`, or twice `input` when that is None."""
        if self.cache_write_1h is None:
            return CACHE_WRITE_1H_TIMES_INPUT * self.input
        return self.cache_write_1h

    @property
    def cache_writes_free(self) -> bool:
        """Cache writes cost no more than input, in every tier (OpenAI models before GPT-5.6)."""
        tier = self.long_context
        free = self.cache_write <= self.input
        return free and (tier is None or tier.price.cache_writes_free)

    def with_12h_writes(self) -> Price | None:
        """This price where every cache write is a 12-hour one (OpenAI reports cache writes
        without their TTL: all are charged the longer rate). Unlisted, the 12-hour rate is
        `cache_write` where writes carry no fee (no retention changes the price), else unknown:
        None when any tier's is."""
        rate = self.cache_write_12h
        if rate is None:
            if self.cache_write > self.input:
                return None
            rate = self.cache_write
        tier = self.long_context
        if tier is not None:
            inner = tier.price.with_12h_writes()
            if inner is None:
                return None
            tier = dataclasses.replace(tier, price=inner)
        return dataclasses.replace(self, cache_write=rate, long_context=tier)

    def for_input(self, total_input_tokens: int) -> Price:
        """The prices a request with this many input tokens (all kinds) is billed at."""
        tier = self.long_context
        if tier is not None and total_input_tokens > tier.above_input_tokens:
            return tier.price
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class LongContext:
    """A long-prompt price tier: a request with more than `above_input_tokens` input tokens (cache
    reads and writes included) is billed entirely at `price` (which has no tier of its own)."""

    above_input_tokens: int
    price: Price


# Anthropic: "1-hour cache write tokens are 2 times the base input tokens price".
CACHE_WRITE_1H_TIMES_INPUT = 2


def scaled_decimal(value: object) -> int:
    """`value` x 10^6 as an exact int: a decimal number with at most 6 decimal places.

    Accepts int, float (via its shortest repr: YAML's `0.075` is exactly 0.075), `Decimal` and
    numeric strings. Rejects booleans, NaN, infinities and anything finer than 10^-6.
    Raises ValueError; the caller adds the path and the offending value to the message.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | decimal.Decimal):
        raise ValueError("not a number")
    try:
        number = decimal.Decimal(str(value).strip())
    except decimal.InvalidOperation:
        raise ValueError("not a number") from None
    if not number.is_finite():
        raise ValueError("not a finite number")
    scaled = Fraction(number) * 10**DECIMAL_PLACES  # Fraction(Decimal) is exact, unlike Decimal ops
    if scaled.denominator != 1:
        raise ValueError(f"more than {DECIMAL_PLACES} decimal places")
    return int(scaled.numerator)


def usd_to_micros(value: object) -> int:
    """A decimal USD amount (e.g. `"12.50"`, `0.075`, `100`) as exact integer micro-dollars.

    Negative amounts are accepted (callers that need a bound check it). Raises ValueError.
    """
    return scaled_decimal(value)


def format_usd(micros: int) -> str:
    """Micro-dollars as a plain USD decimal string with 6 places: 1234 -> "0.001234"."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def cost_pico(usage: Usage, price: Price) -> int:
    """The exact cost of `usage` in pico-dollars (unrounded).

    Input kinds are disjoint (see `Usage`), so each is priced once at its own rate. Output includes
    reasoning; reasoning beyond the reported output is ignored (it cannot be billed twice). A
    request whose input (all kinds) exceeds the price's long-context threshold is priced entirely
    at the long-context tier, as the providers bill it.
    Raises ValueError on a negative token count: that is an extractor bug, not a free request.
    """
    if (
        min(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_input_tokens,
            usage.cache_write_1h_input_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
        )
        < 0
    ):
        raise ValueError(f"negative token count in {usage!r}")
    p = price.for_input(usage.total_input_tokens)
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    return (
        usage.input_tokens * p.input
        + usage.cached_input_tokens * p.cached_input
        + usage.cache_write_input_tokens * p.cache_write
        + usage.cache_write_1h_input_tokens * p.write_1h
        + (usage.output_tokens - reasoning) * p.output
        + reasoning * p.reasoning
    )


def cost_micros(usage: Usage, price: Price) -> int:
    """The cost of one request in micro-dollars: the exact pico sum, rounded half up once."""
    return (cost_pico(usage, price) + PICO_PER_MICRO // 2) // PICO_PER_MICRO


def worst_case_micros(input_tokens: int, max_output_tokens: int, price: Price) -> int:
    """An upper bound on a request's cost, for budget reservations before the response is seen.

    Every input token at the dearest input rate (full, 5-minute or 1-hour cache write or - if
    misconfigured above them - cache read), every possible output token at the dearer of the
    output and reasoning rates; rounded up. When `input_tokens` exceeds the long-context
    threshold the real input may or may not, so the dearer of both tiers is taken.
    `cost_micros` of any usage within these counts never exceeds it.
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    pico = _worst_pico(input_tokens, max_output_tokens, price)
    tier = price.long_context
    if tier is not None and input_tokens > tier.above_input_tokens:
        pico = max(pico, _worst_pico(input_tokens, max_output_tokens, tier.price))
    return -(-pico // PICO_PER_MICRO)


def _worst_pico(input_tokens: int, max_output_tokens: int, p: Price) -> int:
    dearest_input = max(p.input, p.cache_write, p.write_1h, p.cached_input)
    return input_tokens * dearest_input + max_output_tokens * max(p.output, p.reasoning)


# `service_tier` values billed at the standard price: OpenAI `auto` / `default`, Anthropic `auto` /
# `standard_only` (Anthropic's Priority Tier draws down a prepaid capacity commitment; the
# per-token list price does not change).
STANDARD_SERVICE_TIERS = frozenset({"auto", "default", "standard_only"})


def effective_tier(requested: str | None, default: str | None) -> str | None:
    """The tier a request is served at: its own `service_tier`, or - when it sets none, or OpenAI
    `auto` ("the service tier configured in the Project settings") - its provider's configured
    default (`providers.NAME.default_service_tier`; None: standard)."""
    if requested is None or requested == "auto":
        return default
    return requested


class TieredEntry(Protocol):
    """What `price_for_tier` reads of a catalog entry (`catalog.models.ModelEntry`, which imports
    this module: a view, not an import back)."""

    @property
    def free(self) -> bool: ...
    @property
    def price(self) -> Price: ...
    @property
    def service_tiers(self) -> tuple[tuple[str, Price], ...]: ...


def price_for_tier(entry: TieredEntry, tier: str | None) -> Price | None:
    """The price of a request for `entry` asking for `service_tier: tier` (None: not asked).

    The standard price for no tier or a standard one; a free model is free in any tier; else the
    catalog's price for that tier, or None when it has none - the request must then be refused
    (400 `unsupported_option`), never billed at the standard price.
    """
    if tier is None or tier in STANDARD_SERVICE_TIERS or entry.free:
        return entry.price
    for name, price in entry.service_tiers:
        if name == tier:
            return price
    return None
