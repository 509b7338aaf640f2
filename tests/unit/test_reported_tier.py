"""Pricing by the service tier the provider reports (gateway_extproc/response/reported_tier.py):
pure, table-driven."""

from __future__ import annotations

import pytest

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import Price, cost_micros
from gateway_extproc.response.reported_tier import TierCharge, charge_reported_tier
from gateway_extproc.tokens import Usage

STANDARD = Price(input=2_500_000, output=10_000_000, cached_input=0, cache_write=0, reasoning=0)
PRIORITY = Price(input=4_250_000, output=17_000_000, cached_input=0, cache_write=0, reasoning=0)
FLEX = Price(input=1_250_000, output=5_000_000, cached_input=0, cache_write=0, reasoning=0)
ENTRY = ModelEntry(
    "gpt-4o", "openai", Schema.OPENAI, 16_384, STANDARD,
    service_tiers=(("flex", FLEX), ("priority", PRIORITY)),
)  # fmt: skip
USAGE = Usage(input_tokens=1_000, output_tokens=100)
AT = {
    name: cost_micros(USAGE, price)
    for name, price in (("std", STANDARD), ("pri", PRIORITY), ("flex", FLEX))
}


@pytest.mark.parametrize(
    ("reserved", "reported", "expected"),
    [
        # A project whose default tier is priority, the gateway not told: charged priority.
        ("std", "priority", TierCharge("priority", True, AT["pri"], AT["std"])),
        ("pri", "priority", None),  # as reserved
        ("std", "default", None),
        ("std", None, None),  # nothing reported: the reserved price stands
        ("flex", "default", TierCharge("default", True, AT["std"], AT["flex"])),  # flex unserved
        ("pri", "default", None),  # a cheaper tier leaves the reserved (dearer) price
        ("std", "auto", None),
        # A tier the catalog cannot price for the model: its dearest known price.
        ("std", "scale", TierCharge("scale", False, AT["pri"], AT["std"])),
        ("flex", "turbo", TierCharge("turbo", False, AT["pri"], AT["flex"])),
    ],
)
def test_the_reported_tier_is_charged_when_dearer(
    reserved: str, reported: str | None, expected: TierCharge | None
) -> None:
    assert charge_reported_tier(USAGE, AT[reserved], ENTRY, reported) == expected


def test_no_entry_or_a_free_model_changes_nothing() -> None:
    assert charge_reported_tier(USAGE, 7, None, "priority") is None
    free = ModelEntry("local", "vllm", Schema.OPENAI, 100, Price.free(), free=True)
    assert charge_reported_tier(USAGE, 0, free, "priority") is None


def test_the_log_line_names_the_tier_bounded_and_amounts_only() -> None:
    charge = charge_reported_tier(USAGE, AT["std"], ENTRY, "x" * 500)
    assert charge is not None and not charge.priced
    line = charge.describe()
    assert "x" * 40 + "..." in line and "x" * 41 not in line and str(AT["pri"]) in line
    priced = charge_reported_tier(USAGE, AT["std"], ENTRY, "priority")
    assert priced is not None and "'priority'" in priced.describe()
