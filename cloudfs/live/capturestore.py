"""Where a full capture keeps what it froze: on disk, so a first snapshot of a
million files does not hold a million stats in memory (I8).

An incremental capture is small (what changed since the last snapshot) and
keeps its maps in memory. A full capture — the first snapshot, or one after
the manifest was lost — stats every entry of the tree; it keeps them in
`capture.db` in the state directory instead, behind the same mapping
interface, so `CaptureWalker`, `FrozenSource` and `manifest_delta` do not
care which they have:

    dirs(id INTEGER PRIMARY KEY, path BLOB UNIQUE, names BLOB)   names: msgpack list, NULL if not listed
    entries(dir, name, ino, stat, PRIMARY KEY (dir, name)) WITHOUT ROWID
    extras(path BLOB PRIMARY KEY, xattrs BLOB, target BLOB)
    reads(path BLOB PRIMARY KEY, ino INTEGER, ranges BLOB)       + index by ino

It is scratch: never fsynced, replaced at every full seal, deleted when its
snapshot is committed or given up, and at every mount. Writes are buffered and
go in batches (the walker stats a directory's entries right after listing it,
so most reads hit the buffer); reads of a directory's entries are one query.
Connections are per thread (the builder reads on the trio thread, the
manifest's delta in a worker thread).
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

import msgpack

from cloudfs.live.changes import RangeSet
from cloudfs.live.scan import join, parent_of

if TYPE_CHECKING:
    from cloudfs.live.capture import FrozenStat

CAPTURE_NAME = "capture.db"
_BATCH = 10_000
_CACHED_DIRECTORIES = 4096

_SCHEMA = """
CREATE TABLE dirs (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE, names BLOB);
CREATE TABLE entries (dir INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
                      stat BLOB NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE TABLE extras (path BLOB PRIMARY KEY, xattrs BLOB, target BLOB) WITHOUT ROWID;
CREATE TABLE reads (path BLOB PRIMARY KEY, ino INTEGER NOT NULL, ranges BLOB NOT NULL) WITHOUT ROWID;
CREATE INDEX reads_by_ino ON reads (ino);
"""


def remove_leftovers(state_dir: Path) -> None:
    """Delete a capture left by a crash (its snapshot was never committed)."""
    for suffix in ("", "-wal", "-shm"):
        (Path(state_dir) / f"{CAPTURE_NAME}{suffix}").unlink(missing_ok=True)


class CaptureStore:
    """The database of one full capture; the maps below read and write it."""

    def __init__(self, state_dir: Path):
        remove_leftovers(state_dir)
        self.path = Path(state_dir) / CAPTURE_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self._db().executescript(_SCHEMA)
        self._dir_ids: dict[bytes, int] = {}     # only while capturing (one writer: the seal)
        self.pending_stats: dict[bytes, FrozenStat] = {}
        self.pending_reads: dict[bytes, tuple[int, RangeSet]] = {}
        self.stat_count = 0
        self.read_count = 0
        self.read_bytes = 0
        self.stats = StatMap(self)
        self.listings = ListingMap(self)
        self.xattrs = ExtraMap(self, "xattrs")
        self.targets = ExtraMap(self, "target")
        self.reads = ReadMap(self)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("PRAGMA cache_size=-8192")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def finish(self) -> None:
        """The capture is complete: write what is buffered; from now on it is read only."""
        self._flush_stats()
        self._flush_reads()
        self._dir_ids.clear()

    def close(self) -> None:
        """Close and delete the database (the snapshot is committed or given up); once."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
        self._local = threading.local()
        remove_leftovers(self.path.parent)

    # -- directories ---------------------------------------------------------------------

    def dir_id(self, path: bytes, create: bool = False) -> int | None:
        known = self._dir_ids.get(path)
        if known is not None:
            return known
        db = self._db()
        row = db.execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is not None:
            directory = row[0]
        elif create:
            directory = db.execute("INSERT INTO dirs (path) VALUES (?)", (path,)).lastrowid
        else:
            return None
        if create:
            self._dir_ids[path] = directory
        return directory

    # -- batched writes --------------------------------------------------------------------

    def _flush_stats(self) -> None:
        if not self.pending_stats:
            return
        rows = [(self.dir_id(parent_of(path), create=True), path.rpartition(b"/")[2], st.st_ino,
                 msgpack.packb(tuple(st))) for path, st in self.pending_stats.items()]
        db = self._db()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO entries (dir, name, ino, stat) VALUES (?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        self.pending_stats.clear()

    def _flush_reads(self) -> None:
        if not self.pending_reads:
            return
        rows = [(path, ino, msgpack.packb(list(ranges))) for path, (ino, ranges) in self.pending_reads.items()]
        db = self._db()
        db.execute("BEGIN")
        db.executemany("INSERT OR REPLACE INTO reads (path, ino, ranges) VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        self.pending_reads.clear()

    # -- reads ---------------------------------------------------------------------------------

    def recorded_stat(self, path: bytes) -> tuple | None:
        """The stat fields recorded for `path`, or None."""
        directory = self._reader_dir_id(parent_of(path))
        if directory is None:
            return None
        row = self._db().execute("SELECT stat FROM entries WHERE dir = ? AND name = ?",
                                 (directory, path.rpartition(b"/")[2])).fetchone()
        return None if row is None else tuple(msgpack.unpackb(row[0]))

    def _reader_dir_id(self, path: bytes) -> int | None:
        """A directory's id, remembered per thread (ids never change once written)."""
        known = getattr(self._local, "dir_ids", None)
        if known is None:
            known = self._local.dir_ids = OrderedDict()
        directory = known.get(path)
        if directory is None:
            directory = self.dir_id(path)
            if directory is None:
                return None
            known[path] = directory
            if len(known) > _CACHED_DIRECTORIES:
                known.popitem(last=False)
        return directory


class StatMap(MutableMapping):
    """path -> FrozenStat, on disk."""

    def __init__(self, store: CaptureStore):
        self.store = store

    def __setitem__(self, path: bytes, st) -> None:
        store = self.store
        if path not in store.pending_stats:
            store.stat_count += 1
        store.pending_stats[path] = st
        if len(store.pending_stats) >= _BATCH:
            store._flush_stats()

    def __getitem__(self, path: bytes):
        from cloudfs.live.capture import FrozenStat

        pending = self.store.pending_stats.get(path)
        if pending is not None:
            return pending
        fields = self.store.recorded_stat(path)
        if fields is None:
            raise KeyError(path)
        return FrozenStat._make(fields)

    def __delitem__(self, path: bytes) -> None:
        raise TypeError("a capture is never shrunk")

    def __len__(self) -> int:
        return self.store.stat_count

    def __iter__(self) -> Iterator[bytes]:
        for path, _ in self.items():
            yield path

    def items(self) -> Iterator[tuple[bytes, FrozenStat]]:
        """Every stat, in path order (after `finish`)."""
        from cloudfs.live.capture import FrozenStat

        query = "SELECT d.path, e.name, e.stat FROM entries e JOIN dirs d ON e.dir = d.id ORDER BY d.path, e.name"
        for directory, name, stat in self.store._db().execute(query):
            yield join(directory, name), FrozenStat._make(msgpack.unpackb(stat))


class ListingMap(MutableMapping):
    """directory path -> names, on disk."""

    def __init__(self, store: CaptureStore):
        self.store = store

    def __setitem__(self, path: bytes, names: list[bytes]) -> None:
        directory = self.store.dir_id(path, create=True)
        self.store._db().execute("UPDATE dirs SET names = ? WHERE id = ?", (msgpack.packb(names), directory))

    def __getitem__(self, path: bytes) -> list[bytes]:
        row = self.store._db().execute("SELECT names FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(path)
        return msgpack.unpackb(row[0])

    def __delitem__(self, path: bytes) -> None:
        raise TypeError("a capture is never shrunk")

    def __len__(self) -> int:
        return self.store._db().execute("SELECT count(*) FROM dirs WHERE names IS NOT NULL").fetchone()[0]

    def __iter__(self) -> Iterator[bytes]:
        query = "SELECT path FROM dirs WHERE names IS NOT NULL ORDER BY path"
        for (path,) in self.store._db().execute(query):
            yield path

    def items(self) -> Iterator[tuple[bytes, list[bytes]]]:
        query = "SELECT path, names FROM dirs WHERE names IS NOT NULL ORDER BY path"
        for path, names in self.store._db().execute(query):
            yield path, msgpack.unpackb(names)


class ExtraMap(MutableMapping):
    """path -> xattrs (a dict) or symlink target, on disk (one column each)."""

    def __init__(self, store: CaptureStore, column: str):
        self.store = store
        self.column = column

    def __setitem__(self, path: bytes, value) -> None:
        packed = msgpack.packb(value) if self.column == "xattrs" else value
        self.store._db().execute(f"INSERT INTO extras (path, {self.column}) VALUES (?, ?) "
                                 f"ON CONFLICT (path) DO UPDATE SET {self.column} = excluded.{self.column}",
                                 (path, packed))

    def __getitem__(self, path: bytes):
        row = self.store._db().execute(f"SELECT {self.column} FROM extras WHERE path = ?", (path,)).fetchone()
        if row is None or row[0] is None:
            raise KeyError(path)
        return msgpack.unpackb(row[0]) if self.column == "xattrs" else row[0]

    def __delitem__(self, path: bytes) -> None:
        raise TypeError("a capture is never shrunk")

    def __len__(self) -> int:
        query = f"SELECT count(*) FROM extras WHERE {self.column} IS NOT NULL"
        return self.store._db().execute(query).fetchone()[0]

    def __iter__(self) -> Iterator[bytes]:
        query = f"SELECT path FROM extras WHERE {self.column} IS NOT NULL"
        for (path,) in self.store._db().execute(query):
            yield path


class ReadMap(MutableMapping):
    """path -> RangeSet the builder will read, on disk; also by inode (obligations)."""

    def __init__(self, store: CaptureStore):
        self.store = store

    def __setitem__(self, path: bytes, ranges: RangeSet) -> None:
        store = self.store
        if path not in store.pending_reads:
            store.read_count += 1
            store.read_bytes += ranges.total()
        store.pending_reads[path] = (store.stats[path].st_ino, ranges)
        if len(store.pending_reads) >= _BATCH:
            store._flush_reads()

    def __getitem__(self, path: bytes) -> RangeSet:
        pending = self.store.pending_reads.get(path)
        if pending is not None:
            return pending[1]
        row = self.store._db().execute("SELECT ranges FROM reads WHERE path = ?", (path,)).fetchone()
        if row is None:
            raise KeyError(path)
        return RangeSet(map(tuple, msgpack.unpackb(row[0])))

    def __delitem__(self, path: bytes) -> None:
        raise TypeError("a capture is never shrunk")

    def __len__(self) -> int:
        return self.store.read_count

    def __iter__(self) -> Iterator[bytes]:
        for (path,) in self.store._db().execute("SELECT path FROM reads"):
            yield path

    def of_inode(self, ino: int) -> RangeSet | None:
        """What the builder will read of inode `ino` (its hard links merged), or None."""
        rows = self.store._db().execute("SELECT ranges FROM reads WHERE ino = ?", (ino,)).fetchall()
        if not rows:
            return None
        needed = RangeSet()
        for (ranges,) in rows:
            needed.update(RangeSet(map(tuple, msgpack.unpackb(ranges))))
        return needed


class LazyObligations:
    """FrozenState's obligations of a full capture: looked up by inode when a handler
    asks, and kept in memory only once a handler has changed them (so memory grows
    with what is written during the upload, not with the tree)."""

    def __init__(self, reads: ReadMap):
        self.reads = reads
        self._known: dict[int, RangeSet | None] = {}
        self._cleared = False

    def get(self, ino: int) -> RangeSet | None:
        if self._cleared:
            return None
        if ino not in self._known:
            self._known[ino] = self.reads.of_inode(ino)
        return self._known[ino]

    def pop(self, ino: int, default=None):
        found = self.get(ino)
        self._known[ino] = None
        return found if found is not None else default

    def clear(self) -> None:
        self._cleared = True
        self._known.clear()

    def __contains__(self, ino: int) -> bool:
        """Whether the builder will open inode `ino` (what `readable` asks)."""
        return not self._cleared and self.reads.of_inode(ino) is not None
