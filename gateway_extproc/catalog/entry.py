"""One catalog model as the gateway uses it: who serves it, its API, its prices and the bounds
budget reservations are computed from. Built by `merge` from the catalog documents; looked up
through `models.Catalog`."""

from __future__ import annotations

import dataclasses

from gateway_extproc.apis import Schema
from gateway_extproc.catalog.pricing import Price

__all__ = ["LONG_CONTEXT_BETA_TOKENS", "ModelEntry"]

# The window Anthropic's `context-1m` betas open; a model whose catalog window is this large prices
# such prompts at its listed (or long-context tier) prices.
LONG_CONTEXT_BETA_TOKENS = 1_000_000


@dataclasses.dataclass(frozen=True, slots=True)
class ModelEntry:
    """One catalog model, fully defaulted and validated."""

    name: str
    provider: str  # a provider name in the gateway config
    schema: Schema
    max_output_tokens: int  # 0 for embedding models (they produce no output)
    price: Price
    free: bool = False
    embedding: bool = False
    aliases: tuple[str, ...] = ()
    # Bounds for worst-case budget reservations (see cost/bounds.py); None: not known.
    context_window: int | None = None  # input + output tokens the model accepts at most
    image_input_tokens: int | None = None  # the most one image part can cost, in input tokens
    default_max_output_tokens: int | None = None  # cap injected when a request sets none
    # Prices of a requested `service_tier` other than the standard one (see pricing.price_for_tier)
    service_tiers: tuple[tuple[str, Price], ...] = ()
    # The model reasons in tokens its responses never show (billed as output): an ending whose
    # usage is not read is charged its whole output limit (endings.py).
    hidden_reasoning: bool = False

    @property
    def prices_long_context(self) -> bool:
        """Whether the catalog can price a request that asks for a long-context beta (Anthropic
        `anthropic-beta: context-1m-...`): the model is free by policy, has a long-context price
        tier, or its context window already holds 1M tokens at its one price (Anthropic: "Claude
        Opus 4.6 and Sonnet 4.6 include the full 1M token context window at standard pricing").
        Otherwise the beta would unlock prompts whose price the catalog does not know."""
        if self.free or self.price.long_context is not None:
            return True
        return self.context_window is not None and self.context_window >= LONG_CONTEXT_BETA_TOKENS
