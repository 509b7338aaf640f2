"""What an ending the provider did not report is charged: an upper bound of its bill.

A response whose usage the gateway does not read - a stream the client left, an upstream abort,
a response that reports none, a body it cannot decode, a worker that died mid-stream - was still
billed by the provider: for its input, and for everything it generated until it noticed the cut,
reasoning a stream never shows included. The gateway cannot know that bill, so it charges an
upper bound of it and says so (`usage_source: bound`); reconciling with the provider's own
report refunds the difference later.

The bound (`charge`), from what the request phase fixed (`ChargeLimits`, handed over with the
request's state) and what the response showed:

- **input**: as the provider reported it where it did (Anthropic's `message_start`, a usage
  chunk that arrived before the cut), else the request's input bound - the one its reservation
  held (bounds.py) - at the dearest input rate the request can incur;
- **output**: the UTF-8 bytes of output seen (a byte-level token covers at least one byte) plus
  `margin` (`metering.unseen_output_tokens`: what a provider generates before it notices a cut,
  and the framing tokens no stream shows), at most the request's output limit; the whole limit
  when the output cannot be counted (a body cut short or unreadable, a non-streamed answer that
  never arrived: it is generated whole before it is sent) or when the model reasons in tokens it
  never shows; never below the output the provider reported.

So the charge never exceeds the reservation's worst case (its input bound and output limit)
unless the provider reported more. Pure: values in, values out.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Mapping
from typing import Any

from gateway_extproc.apis import Api, Schema
from gateway_extproc.catalog.models import ModelEntry
from gateway_extproc.catalog.pricing import Price
from gateway_extproc.cost.bounds import Bound, Unbounded, Unpriced, UnseenInput, bound
from gateway_extproc.cost.shape import Shape
from gateway_extproc.tokens import Usage

# What `metering.unseen_output_tokens` defaults to: ~4 s of a fast model (~250 tokens/s) after
# the client left, which covers a provider noticing the reset through its load balancer and the
# few framing tokens (tool-call syntax, end of turn) a stream never shows. A provider that keeps
# generating after a disconnect needs more: set it to the output limit to charge all of it.
DEFAULT_UNSEEN_OUTPUT_TOKENS = 1024


class InputKind(enum.StrEnum):
    """The `Usage` field unreported input is charged as: the dearest rate the request can incur."""

    INPUT = "input_tokens"
    CACHE_WRITE = "cache_write_input_tokens"
    CACHE_WRITE_1H = "cache_write_1h_input_tokens"
    CACHE_READ = "cached_input_tokens"


@dataclasses.dataclass(frozen=True, slots=True)
class ChargeLimits:
    """What bounds a forwarded request's bill, fixed by the request phase."""

    input_tokens: int  # the input bound (the reservation's, or computed the same way)
    output_tokens: int  # the output limit the provider enforces, all choices together
    hidden_reasoning: bool = False  # the model may reason in tokens the response never shows
    input_kind: InputKind = InputKind.INPUT

    def to_doc(self) -> list[Any]:
        return [self.input_tokens, self.output_tokens, int(self.hidden_reasoning), self.input_kind]

    @classmethod
    def of_doc(cls, doc: list[Any]) -> ChargeLimits:
        """Raises ValueError or TypeError for anything `to_doc` does not write."""
        if not isinstance(doc, list) or len(doc) != 4:
            raise ValueError(f"charge limits must be a list of 4 (got {doc!r})")
        return cls(int(doc[0]), int(doc[1]), bool(doc[2]), InputKind(doc[3]))


def limits_for(
    api: Api, body: Mapping[str, Any], shape: Shape, entry: ModelEntry, admitted: Bound | None
) -> ChargeLimits | None:
    """The limits of a request sent to `entry`: its reservation's bound (`admitted`) when a
    budget or a token limit computed one, else the same bound with no cap injected (the output
    limit is the request's own, or the model's). None when no catalog field bounds the input
    (then the observer estimates, as before)."""
    limit = admitted if admitted is not None else _unbudgeted(shape, entry)
    if limit is None:
        return None
    price = limit.reserve_price or limit.price or entry.price
    return ChargeLimits(
        input_tokens=limit.input_tokens,
        output_tokens=limit.output_tokens,
        hidden_reasoning=hides_reasoning(api, body, entry),
        input_kind=dearest_input(price.for_input(limit.input_tokens)),
    )


def _unbudgeted(shape: Shape, entry: ModelEntry) -> Bound | None:
    try:
        return bound(
            dataclasses.replace(shape, cap_field=None),  # nothing was injected upstream
            entry,
            default_max_output=0,
            unseen_input=UnseenInput.RESERVE_CONTEXT_WINDOW,
        )
    except (Unbounded, Unpriced):
        return None


def hides_reasoning(api: Api, body: Mapping[str, Any], entry: ModelEntry) -> bool:
    """Whether the response may bill reasoning it never shows: an Anthropic request that enables
    `thinking` (Claude 4 and later stream a summary and bill the full thinking; on Bedrock's
    Converse it is `additionalModelRequestFields.thinking`), or a model the
    catalog marks `hidden_reasoning` unless the request turns reasoning off (effort `none`)."""
    if api is Api.ANTHROPIC_MESSAGES:
        thinking = body.get("thinking")
        off = isinstance(thinking, Mapping) and thinking.get("type") == "disabled"
        if thinking is not None and not off:
            return True
    if api in (Api.BEDROCK_CONVERSE, Api.BEDROCK_CONVERSE_STREAM):
        # Claude on Converse: Anthropic's `thinking`, passed through to the model
        extra = body.get("additionalModelRequestFields")
        thinking = extra.get("thinking") if isinstance(extra, Mapping) else None
        off = isinstance(thinking, Mapping) and thinking.get("type") == "disabled"
        if thinking is not None and not off:
            return True
    if api.schema is Schema.GEMINI:
        return _gemini_thinks(body, entry.hidden_reasoning)
    if not entry.hidden_reasoning:
        return False
    if api is Api.OPENAI_CHAT:
        effort = body.get("reasoning_effort")
    elif api is Api.OPENAI_RESPONSES:
        reasoning = body.get("reasoning")
        effort = reasoning.get("effort") if isinstance(reasoning, Mapping) else None
    else:
        effort = None
    return effort != "none"


def _gemini_thinks(body: Mapping[str, Any], by_default: bool) -> bool:
    """Gemini models think without showing it (thought summaries at most): unless the request's
    `thinkingConfig.thinkingBudget` is 0 (off), a model that thinks by default does; one that
    does not (2.5 Flash-Lite) does when a budget other than 0 is set."""
    config = body.get("generationConfig", body.get("generation_config"))
    thinking = None
    if isinstance(config, Mapping):
        thinking = config.get("thinkingConfig", config.get("thinking_config"))
    budget = None
    if isinstance(thinking, Mapping):
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    if budget is None:
        return by_default
    return bool(budget != 0)


def dearest_input(price: Price) -> InputKind:
    """The input kind with the highest rate at `price` (plain input on a tie)."""
    rates = (
        (price.input, InputKind.INPUT),
        (price.cache_write, InputKind.CACHE_WRITE),
        (price.write_1h, InputKind.CACHE_WRITE_1H),
        (price.cached_input, InputKind.CACHE_READ),
    )
    best_rate, best = rates[0]
    for rate, kind in rates[1:]:
        if rate > best_rate:
            best_rate, best = rate, kind
    return best


def charge(
    limits: ChargeLimits,
    reported: Usage | None,
    output_seen: int | None,
    *,
    margin: int,
    price: Price,
) -> Usage:
    """The usage to charge for an ending the provider did not report: `reported` is its partial
    report (None: none), `output_seen` the UTF-8 bytes of output seen (None: not countable)."""
    if reported is not None and reported.total_input_tokens > 0:
        usage = dataclasses.replace(reported, output_tokens=0, reasoning_tokens=0)
    else:
        usage = Usage(**{limits.input_kind.value: limits.input_tokens})
    cap = limits.output_tokens
    if limits.hidden_reasoning or output_seen is None:
        output = cap
    else:
        output = min(cap, output_seen + margin)
    reported_output = reported.output_tokens if reported is not None else 0
    output = max(output, reported_output)
    reasoning = reported.reasoning_tokens if reported is not None else 0
    rates = price.for_input(usage.total_input_tokens)
    if rates.reasoning > rates.output:  # unseen output may all be reasoning: the dearer rate
        reasoning = output
    return dataclasses.replace(usage, output_tokens=output, reasoning_tokens=min(reasoning, output))


def output_seen(
    output_bytes: int,
    *,
    countable: bool,
    streaming: bool,
    responded: bool,
    asked_stream: bool,
    ended: bool,
) -> int | None:
    """The UTF-8 bytes that bound what the provider generated, as far as the response shows them;
    None when it does not (then `charge` takes the whole output limit). `countable`: the body
    was read (not undecodable, metering did not fail); `streaming`: the response is an event
    stream; `responded`: its headers arrived; `asked_stream`: the request asked for a stream;
    `ended`: the body reached its end."""
    if not countable:
        return None
    if streaming:  # what passed; `charge` adds what the provider made before it noticed a cut
        return output_bytes
    if not responded:  # no answer yet: a stream's provider notices a cut at its first write
        return 0 if asked_stream else None
    # A JSON answer is generated whole before it is sent: cut short, its output is unseen.
    return output_bytes if ended else None


def checkpoint_output(seen: int, elapsed_s: float, horizon_s: float) -> int:
    """The output bytes a stream that has shown `seen` in `elapsed_s` may have reached
    `horizon_s` later, at the rate it has run (over at least a second): a lease checkpoint
    charges that, since its worker may die just before the next one."""
    return seen + math.ceil(seen * horizon_s / max(elapsed_s, 1.0))
