"""Token usage of one request, normalised across providers.

Input kinds are disjoint: `input_tokens` excludes cache reads and cache writes (OpenAI reports
cached tokens *inside* `prompt_tokens`; Anthropic reports them beside `input_tokens` - the
extractors normalise both to this shape, so nothing is counted twice). Cache writes are split by
how long the entry lives, because the price differs: `cache_write_input_tokens` are 5-minute
writes, `cache_write_1h_input_tokens` 1-hour writes (Anthropic's `cache_creation_input_tokens` is
their sum; only Anthropic reports either).
Output follows both providers: `output_tokens` includes `reasoning_tokens`.
"""

from __future__ import annotations

import dataclasses
import enum


class UsageSource(enum.StrEnum):
    PROVIDER = "provider"  # the provider reported it
    # The provider's usage was not read (a cut stream, none reported, an unreadable body): an
    # upper bound of its bill was charged (endings.py).
    BOUND = "bound"
    # As BOUND, where nothing bounds the request (no state from the request phase says how):
    # estimated from what was seen.
    ESTIMATED = "estimated"
    NONE = "none"  # nothing billable happened (error status, request never sent)
    # Nobody settled the reservation before its lease ran out (its observer never came, its
    # sidecar died): the reaper charged its last checkpoint, else its whole estimate.
    REAPED = "reaped"


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_input_tokens: int = 0  # 5-minute cache writes
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_1h_input_tokens: int = 0  # 1-hour cache writes (disjoint from the 5-minute ones)

    @property
    def total_input_tokens(self) -> int:
        return (
            self.input_tokens
            + self.cached_input_tokens
            + self.cache_write_input_tokens
            + self.cache_write_1h_input_tokens
        )

    def with_output_at_least(self, output_tokens: int) -> Usage:
        """This usage with output raised to `output_tokens` if that is more: a provider's partial
        report of a stream cut short, completed by the output seen since. Every input kind stays."""
        return dataclasses.replace(self, output_tokens=max(self.output_tokens, output_tokens))

    def as_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "cache_write_input_tokens": self.cache_write_input_tokens,
            "cache_write_1h_input_tokens": self.cache_write_1h_input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }
