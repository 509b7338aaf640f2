"""When the provider reports another model than the one the gateway priced: price by the dearer.
Pure.

The gateway prices the model it read from the request body (and routed). The provider may have
served another: a body with duplicate `model` keys (orjson keeps the last, a provider may use the
first), or an alias the provider resolves differently. The provider's report (`model` in its
response) is the better witness of what it will bill, but a provider could also be wrong or
hostile; so the request is charged the dearer of the two for the same usage, and the mismatch is
reported to the caller to log and count. A reported name that resolves to the same catalog model
(a dated snapshot such as `gpt-4o-2024-08-06` for `gpt-4o`, or an alias) is no mismatch. A name
the catalog does not know cannot be priced: it is reported, and the priced model's cost stands.

A provider that serves catalog models under a prefix reports names in its own namespace: Azure
OpenAI answers `azure/gpt-4o` with the model its deployment runs (`gpt-4o-2024-11-20`), or with
the deployment's name, never with the catalog's name. `in_provider` reads a reported name there
first (the deployment that served the request, then `<prefix>/<name>` among the same provider's
models), so a faithful answer is no mismatch while another model of that provider still is.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import cost_micros
from gateway_extproc.tokens import Usage

__all__ = ["Mismatch", "MismatchKind", "in_provider", "price_reported"]


class MismatchKind(enum.StrEnum):
    DEARER_REPORTED = "dearer_reported"  # charged at the reported model's price
    CHEAPER_REPORTED = "cheaper_reported"  # the priced model is dearer (or equal): its cost stands
    UNKNOWN_REPORTED = "unknown_reported"  # not in the catalog: the priced model's cost stands


@dataclasses.dataclass(frozen=True, slots=True)
class Mismatch:
    kind: MismatchKind
    priced: str  # the catalog model the gateway priced and routed
    reported: str  # the model the provider reported, as it wrote it
    charged: str  # the catalog model whose price the request was charged at

    def describe(self) -> str:
        """For the log: names only, never content. The reported name is provider output, so it
        is shown bounded."""
        reported = self.reported if len(self.reported) <= 100 else self.reported[:100] + "..."
        return (
            f"provider reported model {reported!r} but the gateway priced {self.priced!r} "
            f"({self.kind.value}); charged at {self.charged!r}"
        )


def price_reported(
    usage: Usage,
    priced: ModelEntry,
    reported: str | None,
    lookup: Callable[[str], ModelEntry | None],
) -> tuple[int, Mismatch | None]:
    """The request's cost in micro-dollars, and the mismatch if the reported model differs.
    `lookup` resolves a name to its catalog entry (`Catalog.lookup`)."""
    cost = cost_micros(usage, priced.price)
    if reported is None or reported == priced.name:
        return cost, None
    other = lookup(reported)
    if other is None:
        return cost, Mismatch(MismatchKind.UNKNOWN_REPORTED, priced.name, reported, priced.name)
    if other.name == priced.name:
        return cost, None
    other_cost = cost_micros(usage, other.price)
    if other_cost > cost:
        return other_cost, Mismatch(MismatchKind.DEARER_REPORTED, priced.name, reported, other.name)
    return cost, Mismatch(MismatchKind.CHEAPER_REPORTED, priced.name, reported, priced.name)


def in_provider(
    priced: ModelEntry,
    lookup: Callable[[str], ModelEntry | None],
    deployment: str | None = None,
) -> Callable[[str], ModelEntry | None]:
    """`lookup` for names `priced`'s provider reports: `deployment` (what the provider calls the
    model it was asked for, e.g. an Azure deployment) is `priced`; else `<prefix>/<name>` when
    `priced` is named `<prefix>/...` and that entry is the same provider's; else `lookup`."""
    prefix = priced.name.rpartition("/")[0]

    def resolve(reported: str) -> ModelEntry | None:
        if deployment is not None and reported == deployment:
            return priced
        if prefix:
            entry = lookup(f"{prefix}/{reported}")
            if entry is not None and entry.provider == priced.provider:
                return entry
        return lookup(reported)

    return resolve
