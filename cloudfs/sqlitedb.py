"""One SQLite connection per thread to one database file, all closed together.

Python's sqlite3 connections must not be used by two threads at once; the
daemon reads its on-disk state (the manifest, a full capture) on the trio
thread and in worker threads. `ThreadConnections.get()` gives the calling
thread its own connection, opened with the given PRAGMAs; `forget_thread()`
closes it (a thread that ends should), `close()` closes them all (from any
thread: each was opened with check_same_thread=False, and none is in use by
then).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path


class ThreadConnections:
    def __init__(self, path: Path, pragmas: tuple[str, ...],
                 on_open: Callable[[threading.local], None] | None = None):
        """`on_open(local)`: called with the thread's local storage when its
        connection is made, for per-thread caches kept beside it."""
        self.path = Path(path)
        self.pragmas = pragmas
        self.on_open = on_open
        self.local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        db = getattr(self.local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            for pragma in self.pragmas:
                db.execute(f"PRAGMA {pragma}")
            self.local.db = db
            if self.on_open is not None:
                self.on_open(self.local)
            with self._lock:
                self._all.append(db)
        return db

    def forget_thread(self) -> None:
        db = getattr(self.local, "db", None)
        if db is not None:
            with self._lock:
                self._all.remove(db)
            db.close()
            self.local.db = None

    def close(self) -> None:
        with self._lock:
            for connection in self._all:
                connection.close()
            self._all.clear()
        self.local = threading.local()
