"""What a reservation record keeps about its request for the reaper: when it arrived, its spend
rollup row, and the fields of its audit record (never prompts, never credentials). The reaper
of a reservation nobody settled writes that request's one audit record and rolls it up from
these (response/reaped_audit.py, lua/reap.lua). Pure: values in, values out."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import orjson

from gateway_extproc.spend.rollup import Dimensions


@dataclasses.dataclass(frozen=True, slots=True)
class ReservationFacts:
    arrived: float  # unix time the request arrived (its rollup day, its audit record's time)
    dimensions: Dimensions  # its spend rollup row
    audit: Mapping[str, Any]  # audit record fields, as response/reaped_audit.py reads them

    def encode(self) -> str:
        doc = {"t": self.arrived, "row": self.dimensions.encode(), "a": dict(self.audit)}
        return orjson.dumps(doc).decode()

    @classmethod
    def decode(cls, text: str) -> ReservationFacts | None:
        """None when unreadable (a record written by another version): the reaper then charges
        it as before, unaudited, and says so."""
        try:
            doc = orjson.loads(text)
            return cls(float(doc["t"]), Dimensions.decode(str(doc["row"])), dict(doc["a"]))
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError):
            return None
