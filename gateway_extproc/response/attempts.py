"""A chained request's attempts (docs/fallback.md) as its response phase receives them: every
attempt's record, which the per-attempt filter (request/attempt.py) wrote into the attempts
namespace and Envoy merged by key, the attempts that left no record, the targets no attempt
reached, the target that answered, and what each attempt cost. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from gateway_extproc.catalog.pricing import cost_micros
from gateway_extproc.cost.endings import charge
from gateway_extproc.extproc import messages as msgs
from gateway_extproc.handoff import ATTEMPTS_NAMESPACE, ChainTarget

# The outcome of an attempt that left no record: its number is missing below a later one's. The
# per-attempt filter writes a record when the attempt's response headers come back, so this is
# a refused connection (fact 3: the filter never ran; its target is unknown, Envoy picks the
# endpoint before the filter runs), a per-try timeout or a reset before the first byte.
NO_RESPONSE = "no_response"


def attempt_records(message: msgs.ProcessingRequest) -> list[dict[str, Any]]:
    """The attempts namespace's `attempt_<n>` records in attempt order, each with its number
    `attempt` (n is Envoy's attempt count: several records may name one target, one per key of
    its pool), and a `no_response` entry for every number missing below the highest (`target`
    None: unknown). Attempts after the last record leave no trace here (the response does not
    carry Envoy's attempt count)."""
    namespace = message.metadata_context.filter_metadata.get(ATTEMPTS_NAMESPACE)
    if namespace is None:
        return []
    found: dict[int, dict[str, Any]] = {}
    for key, value in namespace.fields.items():
        if not key.startswith("attempt_") or not key[8:].isdigit():
            continue
        try:
            record = orjson.loads(value.string_value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found[int(key[8:])] = record
    return [
        {"attempt": n, **found[n]} if n in found else _no_response(n)
        for n in range(1, max(found, default=0) + 1)
    ]


def _no_response(n: int) -> dict[str, Any]:
    return {"attempt": n, "target": None, "status": None, "outcome": NO_RESPONSE}


def skipped_targets(chain: Sequence[ChainTarget], records: Sequence[dict[str, Any]]) -> list[str]:
    """The chain's targets no attempt reached although a later one did (an ejected target,
    docs/fallback.md fact 9, or one with no healthy endpoint): those before the first record's
    target, and those between two records' targets, in chain order. A `no_response` attempt
    before a record may have been any of the targets before it: nothing is said of them."""
    names = [t.target for t in chain]
    skipped: list[str] = []
    reached = 0  # the chain's targets before this place were tried (or cannot be told)
    for record in records:
        if record.get("outcome") == NO_RESPONSE or record.get("target") not in names:
            reached = len(names)  # an attempt of unknown target: the rest cannot be told
            continue
        place = names.index(record["target"])
        skipped.extend(names[reached:place])
        reached = max(reached, place + 1)
    return skipped


def answering_target(
    chain: Sequence[ChainTarget], records: Sequence[dict[str, Any]], status: str
) -> ChainTarget | None:
    """The target that answered: the last attempt's, when its status is the response's (else
    the response is Envoy's own, or the answering attempt left no record)."""
    if not records or str(records[-1].get("status")) != status:
        return None
    name = records[-1].get("target")
    return next((t for t in chain if t.target == name), None)


def charge_dropped(
    chain: Sequence[ChainTarget],
    records: Sequence[dict[str, Any]],
    served_by: str | None,
    *,
    stream: bool,
    margin: int,
) -> list[dict[str, Any]]:
    """The records with a charge on every attempt whose record says 2xx but that did not
    answer (fact 5: the router retried a drop while the per-attempt filter held that answer's
    headers; the provider may have billed it): its target's bound, as a cut response is charged
    (cost/endings.py; nothing of its body was seen: a stream's provider noticed the cut at its
    first write, a JSON answer was generated whole), `cost_micros` and `usage_source: bound`.
    A target without charge limits (nothing bounds its input) is not charged."""
    out = [dict(record) for record in records]
    for i, record in enumerate(out):
        status = record.get("status")
        if not isinstance(status, int) or not 200 <= status < 300:
            continue
        if i == len(out) - 1 and served_by is not None and record.get("target") == served_by:
            continue  # the answer: charged by its metering
        target = next((t for t in chain if t.target == record.get("target")), None)
        if target is None or target.charge_limits is None:
            continue
        seen = 0 if stream else None
        usage = charge(target.charge_limits, None, seen, margin=margin, price=target.price)
        record["cost_micros"] = cost_micros(usage, target.price)
        record["usage_source"] = "bound"
    return out


def dropped_micros(records: Sequence[dict[str, Any]]) -> int:
    """What the dropped answers `charge_dropped` charged add to the request's charge."""
    return sum(int(r["cost_micros"]) for r in records if r.get("usage_source") == "bound")


def with_costs(
    records: Sequence[dict[str, Any]], served_by: str | None, cost_micros: int
) -> list[dict[str, Any]]:
    """Each attempt with its `cost_micros` out of the request's `cost_micros`: a dropped answer
    its bound (`charge_dropped`), the one that answered (the last, when a target answered) the
    rest, every other 0 - providers do not bill a 5xx, a 429 or a connection that gave nothing
    back."""
    out = [{**record, "cost_micros": record.get("cost_micros", 0)} for record in records]
    if served_by is not None and out and out[-1].get("target") == served_by:
        out[-1]["cost_micros"] = cost_micros - dropped_micros(out)
    return out
