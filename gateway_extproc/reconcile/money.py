"""Report amounts as exact integer micro-dollars. Pure; no floats anywhere.

OpenAI's Costs API gives `amount.value` as a JSON number of USD (parse the body with
`decimal_json`, never `float`); Anthropic's Cost API gives `amount` as a decimal string of cents
("123.45" is $1.2345). Amounts are summed exactly (Decimal) per row and rounded to micro-dollars
once, half up - as the gateway rounds a request's cost (catalog/pricing.py).
"""

from __future__ import annotations

import decimal
import json
from decimal import Decimal
from typing import Any

MICROS_PER_USD = 1_000_000
MICROS_PER_CENT = 10_000
_EXACT = decimal.Context(prec=60, traps=[decimal.Inexact, decimal.InvalidOperation])


class MoneyError(ValueError):
    """An amount that is not a finite decimal number."""


def decimal_json(body: bytes | str) -> Any:
    """JSON with every non-integer number as an exact Decimal."""
    return json.loads(body, parse_float=Decimal)


def parse_decimal(value: object, what: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise MoneyError(f"{what}: {value!r} is not a decimal amount")
    try:
        number = Decimal(value.strip() if isinstance(value, str) else value)
    except decimal.InvalidOperation:
        raise MoneyError(f"{what}: {value!r} is not a decimal amount") from None
    if not number.is_finite():
        raise MoneyError(f"{what}: {value!r} is not finite")
    return number


def usd(value: object) -> Decimal:
    """An OpenAI amount (USD) as an exact Decimal of USD."""
    return parse_decimal(value, "amount.value")


def cents(value: object) -> Decimal:
    """An Anthropic amount (a decimal string of cents) as an exact Decimal of USD."""
    return _EXACT.divide(parse_decimal(value, "amount"), Decimal(100))


def to_micros(amount_usd: Decimal) -> int:
    """Exact USD as integer micro-dollars, rounded half up (away from zero at .5) once."""
    scaled = _EXACT.multiply(amount_usd, Decimal(MICROS_PER_USD))
    return int(scaled.quantize(Decimal(1), rounding=decimal.ROUND_HALF_UP))
