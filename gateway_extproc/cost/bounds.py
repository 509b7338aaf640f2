"""The worst case a request can cost on one model: an upper bound the provider itself enforces.

Pure: no I/O. A budget admits a request only if its worst case fits, so every number here must be
a true upper bound on what the provider can bill, never a guess. What of the body counts is read
once per request (`shape.py`: text bytes, media parts, input it cannot see, price options); here
it meets the model's catalog entry:

* **Output** is bounded by the request's own limit (`max_completion_tokens` / `max_tokens` /
  `max_output_tokens`), clamped to the model's `max_output_tokens`. A request without one gets the
  gateway's cap *injected* into the upstream body (chat: `max_completion_tokens`, Responses:
  `max_output_tokens`, legacy completions: `max_tokens`), so the provider enforces the bound.
  Anthropic requires `max_tokens`; a request without it is refused by the provider (nothing is
  billed), so the bound is the model's maximum and nothing is injected. `n` (chat, completions)
  and `best_of` (completions) multiply the output.
* **Input text** is bounded by its UTF-8 byte length plus margins (see `shape.py`).
* **Images** cost at most the model's `image_input_tokens` each (catalog; from the provider's
  published formula), **files, documents and audio** at most the model's `context_window`.
* **All input** is at most the model's `context_window` (the provider refuses longer prompts).
* **Input the gateway cannot see** is bounded by the context window, or refused, per
  `unseen_input`.
* **Price**: the tier the request is served at (its `service_tier`, else its provider's
  `default_service_tier`), the 1-hour and 12-hour cache-write rates only when asked for; an option
  the catalog cannot price is refused (`Unpriced`).
"""

from __future__ import annotations

import dataclasses
import enum

from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import Price, effective_tier, price_for_tier
from gateway_extproc.cost.shape import Retention, Shape


class UnseenInput(enum.StrEnum):
    """What to do with a request whose input includes state the gateway cannot see."""

    RESERVE_CONTEXT_WINDOW = "reserve_context_window"
    REFUSE = "refuse"


@dataclasses.dataclass(frozen=True, slots=True)
class Bound:
    """A request's worst case for one model."""

    input_tokens: int
    output_tokens: int  # all choices together
    inject_max_output: int | None  # the cap to write into the upstream body, if any
    cap_field: str | None
    price: Price | None = None  # the model's price for this request (its service tier)
    reserve_price: Price | None = None  # `price` without rates the request cannot incur


class Unbounded(ValueError):
    """The request's cost has no upper bound for this model: the caller refuses it (400)."""


class Unpriced(ValueError):
    """The request asks for an option the catalog cannot price for this model (a service tier,
    a long-context beta): the caller refuses it (400) rather than bill it at standard rates."""


def request_price(
    entry: ModelEntry,
    tier: str | None,
    *,
    default_tier: str | None = None,
    long_context_beta: bool = False,
    unpriced: tuple[str, ...] = (),
    retention: tuple[tuple[str, Retention], ...] = (),
) -> Price:
    """The price a request for `entry` is billed at: the tier it asked for (`tier`), or when it
    asked for none (or `auto`) its provider's `default_tier`. Raises Unpriced."""
    if unpriced and not entry.free:
        raise Unpriced(
            f"{', '.join(unpriced)} changes the price of {entry.name}, and the catalog "
            "cannot price it"
        )
    served = effective_tier(tier, default_tier)
    price = price_for_tier(entry, served)
    if price is None:
        origin = "service_tier" if served == tier else "the provider's default_service_tier"
        raise Unpriced(
            f"{origin} {served!r} cannot be priced for {entry.name}: the catalog has no "
            "price for that tier"
        )
    if long_context_beta and not entry.prices_long_context:
        raise Unpriced(
            f"the long-context beta cannot be priced for {entry.name}: the catalog has no "
            "long_context tier for it"
        )
    if retention and not entry.free:
        price = _retained(entry.name, price, retention)
    return price


def _retained(model: str, price: Price, retention: tuple[tuple[str, Retention], ...]) -> Price:
    """`price` for a request asking for longer prompt-cache retention. Raises Unpriced.

    OpenAI: cache writes carry no fee before GPT-5.6 (whatever the retention); GPT-5.6 and later
    bill a 30-minute write at `cache_write` and publish a 12-hour write price for some models
    (`cache_write_12h`); no price is published for 24-hour retention on them."""
    kinds = {kind for _, kind in retention}
    asked = ", ".join(option for option, _ in retention)
    if Retention.EXTENDED_24H in kinds and not price.cache_writes_free:
        raise Unpriced(
            f"{asked} changes the price of {model}: its cache writes carry a fee, and the "
            "catalog has no price for 24-hour retention"
        )
    if Retention.TTL_12H in kinds:
        longer = price.with_12h_writes()
        if longer is None:
            raise Unpriced(
                f"{asked} changes the price of {model}, and the catalog has no 12-hour "
                "cache-write price (cache_write_12h) for it"
            )
        price = longer
    return price


def _without_1h(price: Price) -> Price:
    """`price` where a 1-hour cache write costs a 5-minute one (no 1-hour TTL was asked for)."""
    tier = price.long_context
    if tier is not None:
        tier = dataclasses.replace(tier, price=_without_1h(tier.price))
    return dataclasses.replace(price, cache_write_1h=price.cache_write, long_context=tier)


def bound(
    shape: Shape,
    entry: ModelEntry,
    *,
    default_max_output: int,
    unseen_input: UnseenInput,
    long_context_beta: bool = False,
    default_tier: str | None = None,
) -> Bound:
    """The request's worst case on `entry` (served by a provider whose default service tier is
    `default_tier`). Raises Unbounded when there is none (the caller answers 400): input it
    cannot see under `refuse`, or a part no catalog field bounds; and Unpriced for an option the
    catalog cannot price."""
    price = request_price(
        entry,
        shape.service_tier,
        default_tier=default_tier,
        long_context_beta=long_context_beta,
        unpriced=shape.unpriced,
        retention=shape.retention,
    )
    window = entry.context_window
    if shape.unseen and not entry.free and (unseen_input is UnseenInput.REFUSE or window is None):
        why = (
            "the gateway is configured to refuse such requests"
            if unseen_input is UnseenInput.REFUSE
            else f"the catalog has no context_window for {entry.name}"
        )
        raise Unbounded(
            f"this request brings in input the gateway cannot see "
            f"({', '.join(shape.unseen)}), so its cost has no upper bound: {why}"
        )
    if shape.files and window is None and not entry.free:
        raise Unbounded(
            f"file, document and audio parts cannot be bounded for {entry.name}: "
            "the catalog has no context_window for it"
        )
    image_each = entry.image_input_tokens or window
    if shape.images and image_each is None and not entry.free:
        raise Unbounded(
            f"image parts cannot be bounded for {entry.name}: the catalog has neither "
            "image_input_tokens nor context_window for it"
        )
    input_tokens = shape.text_tokens + shape.images * (image_each or 0)
    input_tokens += shape.files * (window or 0)
    if window is not None:
        input_tokens = window if shape.unseen else min(input_tokens, window)

    model_max = entry.max_output_tokens
    inject: int | None = None
    if entry.embedding:
        per_choice = 0
    elif shape.max_output is not None:
        per_choice = min(shape.max_output, model_max)
    elif shape.cap_field is not None:
        per_choice = inject = min(entry.default_max_output_tokens or default_max_output, model_max)
    else:  # Anthropic: max_tokens is required, the provider refuses (and bills) nothing
        per_choice = model_max
    return Bound(
        input_tokens=input_tokens,
        output_tokens=per_choice * shape.choices,
        inject_max_output=inject,
        cap_field=shape.cap_field if inject is not None else None,
        price=price,
        reserve_price=price if shape.cache_1h else _without_1h(price),
    )
