"""A durable local journal of spend Redis has not taken yet. Append-only JSON lines, one per event.

Two kinds of spend can be owed to Redis when a worker stops or dies: requests admitted
*fail-open* while Redis was down (charged when it is back), and settles/releases still being
retried at shutdown. Each is appended here (`owe`), and marked `done` once Redis has it. Writes
go to the file at once and are fsync'd in batches (`sync`, every `SYNC_INTERVAL_S` by the
owner): a crash loses at most that interval. At start the journal is read back, whatever is still
owed is replayed, and the file is compacted to the entries still outstanding.

Entries: `{"op": "fail_open", "id", "cost", "arrived", "charges": [[budget, scope value], ...]}`,
`{"op": "settle", "id", "cost"}` (cost null: a release; with `charges` and `arrived`, charged as
fail-open spend if its reservation record vanished) and `{"op": "done", "id", "of"}`. One request
can owe both (a reserve that timed out is released, and its request served fail-open): entries
are told apart by kind (`of`: "fail_open" or "settle"; a `done` without it, from an older
version, ends both).

Pod replacement: a worker holds an exclusive `flock` on its own journal for as long as it lives
(the kernel drops it when the process dies, however it dies). Journals of workers that are gone
(a shared volume, each worker's file named by pod and worker) are taken over by `adopt`: a worker
that gets a file's lock copies its outstanding entries into its own journal, fsyncs them, and only
then removes the file. A crash at any point leaves the entries in one file or both: they are
replayed again, and Redis charges each request id once.
"""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import IO, Any

import orjson

log = logging.getLogger("gateway.budgets.journal")
SYNC_INTERVAL_S = 0.2
SUFFIX = ".jsonl"
KINDS = ("fail_open", "settle")
# An adopter holds our file's lock for milliseconds: open it again for up to 5 s.
_OPEN_ATTEMPTS, _OPEN_PAUSE_S = 100, 0.05


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] = _open_locked(path)
        self._dirty = False
        self._lock = threading.Lock()  # adoption appends from a worker thread

    def outstanding(self) -> list[dict[str, Any]]:
        """Entries not yet marked done, in order (unreadable lines are logged and skipped)."""
        with open(self.path, "rb") as f:
            return _outstanding(f, self.path)

    def compact(self, entries: list[dict[str, Any]]) -> None:
        """Rewrite the journal with exactly `entries` (atomically) and keep appending to it.
        The new file is locked before it replaces the old one: never unlocked under its name."""
        tmp = self.path.with_suffix(".tmp")
        with self._lock:
            new = open(tmp, "wb")  # noqa: SIM115 - becomes self._file
            try:
                fcntl.flock(new, fcntl.LOCK_EX)
                for entry in entries:
                    new.write(orjson.dumps(entry) + b"\n")
                new.flush()
                os.fsync(new.fileno())
                tmp.replace(self.path)
            except BaseException:
                new.close()
                raise
            self._file.close()
            self._file = new

    def owe(self, entry: dict[str, Any]) -> None:
        self._write(entry)

    def done(self, key: str, of: str = "settle") -> None:
        """`key`'s entry of kind `of` ("settle" or "fail_open") is no longer owed."""
        self._write({"op": "done", "id": key, "of": of})

    def _write(self, entry: dict[str, Any]) -> None:
        try:
            with self._lock:
                self._file.write(orjson.dumps(entry) + b"\n")
                self._file.flush()
        except OSError:
            log.exception("journal write failed: spend owed to Redis is held in memory only")
            return
        self._dirty = True

    def sync(self, *, force: bool = False) -> None:
        """fsync what was written since the last sync (cheap when nothing was). `force`: raise
        OSError instead of logging it (adoption removes a file only after this succeeded)."""
        if not self._dirty and not force:
            return
        self._dirty = False
        try:
            with self._lock:
                os.fsync(self._file.fileno())
        except OSError:
            if force:
                raise
            log.exception("journal fsync failed")

    def close(self) -> None:
        self.sync()
        self._file.close()


def adopt(own: Journal, directory: Path) -> list[dict[str, Any]]:
    """Take over every journal in `directory` whose owner is gone (its lock is free): copy its
    outstanding entries into `own`, fsync, then remove it. Returns the entries taken over (for
    the caller to queue). A journal whose lock is held belongs to a live worker: left alone."""
    taken: list[dict[str, Any]] = []
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        if path == own.path:
            continue
        try:
            taken += _adopt_one(own, path)
        except OSError:
            log.exception("journal %s: not adopted (tried again next time)", path.name)
    return taken


def _adopt_one(own: Journal, path: Path) -> list[dict[str, Any]]:
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:  # another worker adopted it meanwhile
        return []
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its worker is alive (or another adopter has it)
            return []
        if not _still_named(f, path):  # adopted and removed, or compacted, meanwhile
            return []
        entries = _outstanding(f, path)
        for entry in entries:
            own.owe(entry)
        own.sync(force=True)  # durable in our journal before it leaves the other
        path.unlink()
    # the lock goes with the file's last descriptor (closed by `with`)
    if entries:
        log.warning(
            "adopted %d charge(s) owed to Redis from %s (its worker is gone)",
            len(entries),
            path.name,
        )
    return entries


def _outstanding(f: IO[bytes], path: Path) -> list[dict[str, Any]]:
    entries: dict[tuple[str, str], dict[str, Any]] = {}
    for number, line in enumerate(f, 1):
        try:
            entry = orjson.loads(line)
            op, key = entry["op"], str(entry["id"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            log.error("journal %s line %d is unreadable; skipped", path, number)
            continue
        if op == "done":
            for kind in (entry["of"],) if "of" in entry else KINDS:
                entries.pop((kind, key), None)
        else:
            entries[(kind_of(op), key)] = entry
    return list(entries.values())


def kind_of(op: str) -> str:
    return "fail_open" if op == "fail_open" else "settle"


def _still_named(f: IO[bytes], path: Path) -> bool:
    """Whether the locked file is still the one at `path` (not removed or replaced)."""
    try:
        return os.stat(path).st_ino == os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def _open_locked(path: Path) -> IO[bytes]:
    """Open our journal for appending, with its lock. An adopter may briefly hold the lock of a
    file by this name left by our previous run (a restarted worker): wait for it, then open the
    file now at the path (the adopter removes the old one when done). A lock held for longer
    belongs to another live worker writing to the same path: a configuration error."""
    for _ in range(_OPEN_ATTEMPTS):
        f = open(path, "ab")  # noqa: SIM115 - the journal's file
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            time.sleep(_OPEN_PAUSE_S)
            continue
        if _still_named(f, path):
            return f
        f.close()
    raise OSError(f"journal {path} stays locked: is another worker using the same journal?")
