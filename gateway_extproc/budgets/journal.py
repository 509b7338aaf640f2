"""A durable local journal of spend Redis has not taken yet. Append-only JSON lines, one per event.

Two kinds of spend can be owed to Redis when a worker stops or dies: requests admitted
*fail-open* while Redis was down (charged when it is back), and settles/releases still being
retried at shutdown. Each is appended here (`owe`), and marked `done` once Redis has it. Writes
go to the file at once and are fsync'd in batches (`sync`, every `SYNC_INTERVAL_S` by the
owner): a crash loses at most that interval. At start the journal is read back, whatever is still
owed is replayed, and the file is compacted to the entries still outstanding.

Entries: `{"op": "fail_open", "id", "cost", "arrived", "charges": [[budget, scope value], ...]}`,
`{"op": "settle", "id", "cost"}` (cost null: a release) and `{"op": "done", "id"}`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("gateway.budgets.journal")
SYNC_INTERVAL_S = 0.2


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._dirty = False

    def outstanding(self) -> list[dict[str, Any]]:
        """Entries not yet marked done, in order (unreadable lines are logged and skipped)."""
        entries: dict[str, dict[str, Any]] = {}
        with open(self.path, "rb") as f:
            for number, line in enumerate(f, 1):
                try:
                    entry = orjson.loads(line)
                    op, key = entry["op"], str(entry["id"])
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    log.error("journal %s line %d is unreadable; skipped", self.path, number)
                    continue
                if op == "done":
                    entries.pop(key, None)
                else:
                    entries[key] = entry
        return list(entries.values())

    def compact(self, entries: list[dict[str, Any]]) -> None:
        """Rewrite the journal with exactly `entries` (atomically) and keep appending to it."""
        self._file.close()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for entry in entries:
                f.write(orjson.dumps(entry) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115

    def owe(self, entry: dict[str, Any]) -> None:
        self._write(entry)

    def done(self, key: str) -> None:
        self._write({"op": "done", "id": key})

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            self._file.write(orjson.dumps(entry) + b"\n")
            self._file.flush()
        except OSError:
            log.exception("journal write failed: spend owed to Redis is held in memory only")
            return
        self._dirty = True

    def sync(self) -> None:
        """fsync what was written since the last sync (cheap when nothing was)."""
        if not self._dirty:
            return
        self._dirty = False
        try:
            os.fsync(self._file.fileno())
        except OSError:
            log.exception("journal fsync failed")

    def close(self) -> None:
        self.sync()
        self._file.close()
