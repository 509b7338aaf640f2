"""The mock provider's own price list, USD per 1M tokens as decimal strings: what its cost reports
(`reports.py`) charge. Its own data, not the gateway catalog's (the mock imports nothing of the
gateway): a test holds the two equal (tests/unit/test_mock_reports.py), and a "price change"
(`POST /_mock/reports`) makes them differ on purpose.

`cache_write_1h` absent: twice `input` (Anthropic's rule). A model not listed costs nothing in the
reports - a test that needs its cost lists it here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal

PRICE_FIELDS = ("input", "cached_input", "cache_write", "cache_write_1h", "output")

PRICES: Mapping[str, Mapping[str, str]] = {
    # OpenAI (cached input inside the prompt; cache writes cost what input costs)
    "gpt-4o": {"input": "2.50", "cached_input": "1.25", "output": "10.00"},
    "gpt-4o-mini": {"input": "0.15", "cached_input": "0.075", "output": "0.60"},
    # Anthropic (5-minute writes 1.25x input, reads 0.1x; 1-hour writes 2x input)
    "claude-haiku-4-5": {
        "input": "1.00",
        "cached_input": "0.10",
        "cache_write": "1.25",
        "output": "5.00",
    },
    "claude-sonnet-4-5": {
        "input": "3.00",
        "cached_input": "0.30",
        "cache_write": "3.75",
        "output": "15.00",
    },
}


_DATED = re.compile(r"^(?P<base>.+?)-(?:\d{8}|\d{4}-\d{2}-\d{2})$")


def listed(model: str) -> Mapping[str, str]:
    """The list price of `model`, or of the undated model of a dated snapshot
    (`claude-haiku-4-5-20251001`, `gpt-4o-mini-2024-07-18`); {} when not listed."""
    if model in PRICES:
        return PRICES[model]
    dated = _DATED.match(model)
    return PRICES.get(dated["base"], {}) if dated else {}


def per_token(prices: Mapping[str, str]) -> dict[str, Decimal]:
    """USD per token of each kind, every field defaulted (a cache write costs input's price, a
    1-hour write twice that)."""
    million = Decimal(1_000_000)
    listed = {k: Decimal(v) for k, v in prices.items()}
    base = listed.get("input", Decimal(0))
    out = {
        "input": base,
        "cached_input": listed.get("cached_input", base),
        "cache_write": listed.get("cache_write", base),
        "cache_write_1h": listed.get("cache_write_1h", 2 * base),
        "output": listed.get("output", Decimal(0)),
    }
    return {k: v / million for k, v in out.items()}
