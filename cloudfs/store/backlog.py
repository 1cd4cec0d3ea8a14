"""A target's backlog: the objects it has yet to receive, in the order they must arrive.

A repository kept on several targets sends every object to each. A target that
is down or slow does not hold the others up: what it has not received waits in
its backlog and is copied to it later from a target that has it, in the order
it was written, so that on every target a snapshot object still arrives after
everything it refers to (I4).

The backlog is kept in the mount's state directory, so that it survives a
restart: a target still down when the mount starts again is known to lag, and
by how much, without asking it. One file per target, one line per event,
appended:

    + <enqueued, ns since the epoch> <size in bytes, or -1> <object name>
    - <object name>

Loading replays the lines and rewrites the file with only what still waits.
Lines are appended without fsync: a crash may lose the last few, and the
mount's leveling by listing at start (replicated.py) finds those objects
missing anyway. Without a path the backlog lives in memory only (a command
that runs once: what it could not send is reported, and `cloudfs targets sync`
sends it).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cloudfs.fsutil import make_directories, replace_durably

COMPACT_BYTES = 1 << 20    # an empty backlog's file is truncated once it is this large


@dataclass(frozen=True)
class Waiting:
    name: str
    size: int          # -1 when not known (an object found missing by listing)
    since_ns: int      # when it started waiting


class Backlog:
    def __init__(self, path: Path | None = None):
        self.path = path
        self._waiting: dict[str, Waiting] = {}     # in delivery order
        self._known_bytes = 0
        self._fd: int | None = None
        if path is not None:
            self._load(path)

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, name: str) -> bool:
        return name in self._waiting

    def names(self) -> list[str]:
        return list(self._waiting)

    def iter_names(self):
        """The names in delivery order (do not change the backlog while iterating)."""
        return iter(self._waiting)

    def first(self) -> Waiting | None:
        return next(iter(self._waiting.values()), None)

    @property
    def bytes(self) -> int:
        """Bytes waiting, as far as known."""
        return self._known_bytes

    def oldest_ns(self) -> int | None:
        first = self.first()
        return first.since_ns if first else None

    def add(self, name: str, size: int = -1, since_ns: int | None = None) -> None:
        """Append `name` unless it already waits (it keeps its place)."""
        if name in self._waiting:
            return
        waiting = Waiting(name, size, since_ns or time.time_ns())
        self._waiting[name] = waiting
        self._known_bytes += max(size, 0)
        self._append(f"+ {waiting.since_ns} {size} {name}\n")

    def put_first(self, missing: list[tuple[str, int]]) -> None:
        """Put objects found missing (name, size) before everything that waits: they are
        older than anything queued since, and must arrive first (I4)."""
        now = time.time_ns()
        first = {name: Waiting(name, size, now) for name, size in missing if name not in self._waiting}
        if not first:
            return
        self._waiting = first | self._waiting
        self._known_bytes += sum(max(w.size, 0) for w in first.values())
        self._rewrite()

    def done(self, name: str) -> None:
        """`name` arrived (or no longer needs to)."""
        waiting = self._waiting.pop(name, None)
        if waiting is None:
            return
        self._known_bytes -= max(waiting.size, 0)
        self._append(f"- {name}\n")
        if not self._waiting:
            self._truncate_if_large()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- the file ------------------------------------------------------------------

    def _load(self, path: Path) -> None:
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            self._replay(line)
        make_directories(path.parent)
        self._rewrite()

    def _rewrite(self) -> None:
        """The file anew, with only what waits, in order."""
        if self.path is None:
            return
        self.close()
        replace_durably(self.path, "".join(f"+ {w.since_ns} {w.size} {w.name}\n"
                                           for w in self._waiting.values()).encode())
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    def _replay(self, line: str) -> None:
        parts = line.split(" ")
        try:
            if parts[0] == "+" and len(parts) == 4:
                if parts[3] not in self._waiting:
                    self._waiting[parts[3]] = Waiting(parts[3], int(parts[2]), int(parts[1]))
                    self._known_bytes += max(int(parts[2]), 0)
            elif parts[0] == "-" and len(parts) == 2 and parts[1] in self._waiting:
                self._known_bytes -= max(self._waiting.pop(parts[1]).size, 0)
        except ValueError:
            pass   # a line cut by a crash

    def _append(self, line: str) -> None:
        if self._fd is not None:
            os.write(self._fd, line.encode())

    def _truncate_if_large(self) -> None:
        if self._fd is not None and os.fstat(self._fd).st_size >= COMPACT_BYTES:
            os.ftruncate(self._fd, 0)
