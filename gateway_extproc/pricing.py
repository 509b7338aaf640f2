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

from gateway_extproc.tokens import Usage

PICO_PER_MICRO = 10**6
MICROS_PER_USD = 10**6
DECIMAL_PLACES = 6


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """A model's prices in integer pico-dollars per token, every field already defaulted."""

    input: int
    output: int
    cached_input: int
    cache_write: int
    reasoning: int

    @classmethod
    def free(cls) -> Price:
        return cls(input=0, output=0, cached_input=0, cache_write=0, reasoning=0)


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
    reasoning; reasoning beyond the reported output is ignored (it cannot be billed twice).
    Raises ValueError on a negative token count: that is an extractor bug, not a free request.
    """
    if (
        min(
            usage.input_tokens,
            usage.cached_input_tokens,
            usage.cache_write_input_tokens,
            usage.output_tokens,
            usage.reasoning_tokens,
        )
        < 0
    ):
        raise ValueError(f"negative token count in {usage!r}")
    reasoning = min(usage.reasoning_tokens, usage.output_tokens)
    return (
        usage.input_tokens * price.input
        + usage.cached_input_tokens * price.cached_input
        + usage.cache_write_input_tokens * price.cache_write
        + (usage.output_tokens - reasoning) * price.output
        + reasoning * price.reasoning
    )


def cost_micros(usage: Usage, price: Price) -> int:
    """The cost of one request in micro-dollars: the exact pico sum, rounded half up once."""
    return (cost_pico(usage, price) + PICO_PER_MICRO // 2) // PICO_PER_MICRO


def worst_case_micros(input_tokens: int, max_output_tokens: int, price: Price) -> int:
    """An upper bound on a request's cost, for budget reservations before the response is seen.

    Every input token at the dearest input rate (full, cache write or - if misconfigured above
    them - cache read), every possible output token at the dearer of the output and reasoning
    rates; rounded up. `cost_micros` of any usage within these counts never exceeds it.
    """
    if input_tokens < 0 or max_output_tokens < 0:
        raise ValueError("token counts must be >= 0")
    pico = input_tokens * max(price.input, price.cache_write, price.cached_input)
    pico += max_output_tokens * max(price.output, price.reasoning)
    return -(-pico // PICO_PER_MICRO)
