"""When the provider reports the service tier it served (OpenAI's `service_tier` in a response):
charge the dearer of that tier's price and the reserved one. Pure.

The request phase prices a request at the tier it asks for, or - naming none, or `auto` - at its
provider's `default_service_tier` (an OpenAI project whose default is priority). The provider
bills the tier it actually served, and says which: priority for such a project even when the
gateway was not told, standard when priority capacity ran out, flex. The settle charges the same
usage at the reported tier's catalog price when that is dearer than the reserved price, so the
ledger is never below the bill; a cheaper reported tier leaves the reserved price (a priority
request served at standard is charged priority: the provider's reconciliation refunds it), as a
reported model does (`model_mismatch.py`). A tier the catalog cannot price for the model is
charged at the dearest price the catalog knows for it - an upper bound of what the gateway can
know - and reported for the log.
"""

from __future__ import annotations

import dataclasses

from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import cost_micros, price_for_tier
from gateway_extproc.tokens import Usage

__all__ = ["TierCharge", "charge_reported_tier"]


@dataclasses.dataclass(frozen=True, slots=True)
class TierCharge:
    """The reported tier raised the charge (`priced`), or could not be priced (`not priced`)."""

    reported: str
    priced: bool  # the catalog has a price for the reported tier
    cost: int  # what the request is charged (micro-dollars)
    reserved_cost: int  # what the reserved price alone would charge

    def describe(self) -> str:
        """For the log: the tier name (provider output, bounded) and amounts, never content."""
        tier = self.reported if len(self.reported) <= 40 else self.reported[:40] + "..."
        if self.priced:
            return (
                f"provider reported service_tier {tier!r}, dearer than the reserved price: "
                f"charged {self.cost} micro-USD instead of {self.reserved_cost}"
            )
        return (
            f"provider reported service_tier {tier!r}, which the catalog cannot price for this "
            f"model: charged its dearest known price, {self.cost} micro-USD"
        )


def charge_reported_tier(
    usage: Usage, cost: int, entry: ModelEntry | None, reported: str | None
) -> TierCharge | None:
    """The charge when the reported tier changes it: `cost` is the usage at the reserved price,
    `entry` the served model's catalog entry (None: a reload removed it). None: no change."""
    if reported is None or entry is None or entry.free:
        return None
    price = price_for_tier(entry, reported)
    if price is not None:
        at_tier = cost_micros(usage, price)
        return TierCharge(reported, True, at_tier, cost) if at_tier > cost else None
    prices = (entry.price, *(p for _, p in entry.service_tiers))
    dearest = max(cost, *(cost_micros(usage, p) for p in prices))
    return TierCharge(reported, False, dearest, cost)
