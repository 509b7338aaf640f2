"""A chained request's attempts (docs/fallback.md) as its response phase receives them: every
attempt's record, which the per-attempt filter (request/attempt.py) wrote into the attempts
namespace and Envoy merged by key, the target that answered, and what each attempt cost. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import ATTEMPTS_NAMESPACE, ChainTarget


def attempt_records(message: msgs.ProcessingRequest) -> list[dict[str, Any]]:
    """The attempts namespace's `attempt_<n>` records in attempt order (n is Envoy's attempt
    count: several records may name one target, one per key of its pool; an attempt whose
    connection was refused has none: the filter runs once an attempt has a connection)."""
    namespace = message.metadata_context.filter_metadata.get(ATTEMPTS_NAMESPACE)
    if namespace is None:
        return []
    found = []
    for key, value in namespace.fields.items():
        if not key.startswith("attempt_") or not key[8:].isdigit():
            continue
        try:
            record = orjson.loads(value.string_value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append((int(key[8:]), record))
    return [record for _, record in sorted(found, key=lambda pair: pair[0])]


def answering_target(
    chain: Sequence[ChainTarget], records: Sequence[dict[str, Any]], status: str
) -> ChainTarget | None:
    """The target that answered: the last attempt's, when its status is the response's (else
    the response is Envoy's own, or the answering attempt left no record)."""
    if not records or str(records[-1].get("status")) != status:
        return None
    name = records[-1].get("target")
    return next((t for t in chain if t.target == name), None)


def with_costs(
    records: Sequence[dict[str, Any]], served_by: str | None, cost_micros: int
) -> list[dict[str, Any]]:
    """Each attempt with its `cost_micros`: the one that answered (the last, when a target
    answered) the request's charge, every other 0 - providers do not bill a 5xx, a 429 or a
    connection that gave nothing back."""
    out = [{**record, "cost_micros": 0} for record in records]
    if served_by is not None and out and out[-1].get("target") == served_by:
        out[-1]["cost_micros"] = cost_micros
    return out
