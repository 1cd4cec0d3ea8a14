"""Where a full capture keeps what it froze: on disk, so a first snapshot of a
million files does not hold a million stats in memory (I8).

An incremental capture is small (what changed since the last snapshot) and
keeps its maps in memory. A full capture — the first snapshot, or one after
the manifest was lost — stats every entry of the tree; it keeps them in
`capture.db` in the state directory instead, behind the same mapping
interface, so `CaptureWalker`, `FrozenSource` and `manifest_delta` do not
care which they have:

    dirs(id INTEGER PRIMARY KEY, path BLOB UNIQUE, names BLOB)   names: msgpack list; NULL: not listed
    stats(dir, name, value)      the ten fields of a FrozenStat (`STAT`)
    xattrs(dir, name, value)     msgpack map
    targets(dir, name, value)    symlink targets
    reads(dir, name, ino, value) msgpack list of (start, end), + INDEX reads_by_ino (ino)

each keyed (dir, name) WITHOUT ROWID. Rows are only ever inserted. It is scratch: never fsynced, replaced at
every full seal, deleted when its snapshot is committed or given up, and at
every mount.

Access patterns it is built for: the walker records a directory's entries
right after listing it, then their xattrs, targets and reads, so writes are
buffered per table and go in batches; the builder asks about the entries
of one directory after listing it (depth first), and opens small files in
groups a directory or two behind its walk, so a reader loads a directory's
rows in one query and keeps the directories on its current path and the ones
it used last, up to ROWS_KEPT rows (`_Rows`). Connections are per thread (the builder reads on the trio thread,
the manifest's delta in a worker thread).
"""

from __future__ import annotations

import sqlite3
import struct
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path

import msgpack

from cloudfs.live.changes import RangeSet
from cloudfs.live.scan import join, parent_of
from cloudfs.sqlitedb import ThreadConnections

CAPTURE_NAME = "capture.db"
_BATCH = 10_000
ROWS_KEPT = 16_384   # rows a reading thread keeps in memory, beyond its current path
# mode, ino, dev, nlink, uid, gid, rdev, size, mtime_ns, ctime_ns: a FrozenStat's fields
STAT = struct.Struct("<IQQQIIQQqq")
_STAT, _XATTRS, _TARGET, _RANGES = range(4)

_TABLES = ("stats", "xattrs", "targets", "reads")
_SCHEMA = """
CREATE TABLE dirs (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE, names BLOB);
CREATE TABLE stats (dir INTEGER, name BLOB, value BLOB NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE TABLE xattrs (dir INTEGER, name BLOB, value BLOB NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE TABLE targets (dir INTEGER, name BLOB, value BLOB NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE TABLE reads (dir INTEGER, name BLOB, ino INTEGER NOT NULL, value BLOB NOT NULL,
                    PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE INDEX reads_by_ino ON reads (ino);
"""


def remove_leftovers(state_dir: Path) -> None:
    """Delete a capture left by a crash (its snapshot was never committed)."""
    for suffix in ("", "-wal", "-shm"):
        (Path(state_dir) / f"{CAPTURE_NAME}{suffix}").unlink(missing_ok=True)


class CaptureStore:
    """The database of one full capture; `stats`, `listings`, `xattrs`, `targets`
    and `reads` are its maps."""

    def __init__(self, state_dir: Path):
        remove_leftovers(state_dir)
        self.path = Path(state_dir) / CAPTURE_NAME
        self._connections = ThreadConnections(
            self.path, ("journal_mode=WAL", "synchronous=OFF", "cache_size=-2048"),
            on_open=lambda local: setattr(local, "rows", _Rows(self)))
        self._closed = False
        self._db().executescript(_SCHEMA)
        self._dir_ids: dict[bytes, int] = {}         # while capturing (one writer: the seal)
        self._pending: tuple[dict, ...] = ({}, {}, {}, {})   # per table: path -> value
        self._finished = False
        self.stat_count = 0
        self.read_count = 0
        self.read_bytes = 0
        self.stats = _Column(self, _STAT)
        self.xattrs = _Column(self, _XATTRS)
        self.targets = _Column(self, _TARGET)
        self.reads = _Reads(self)
        self.listings = _Listings(self)

    def _db(self) -> sqlite3.Connection:
        return self._connections.get()

    @property
    def _local(self):
        return self._connections.local

    def finish(self) -> None:
        """The capture is complete: write what is buffered; from now on it is read only."""
        for column in range(len(_TABLES)):
            self._flush(column)
        self._dir_ids.clear()
        self._finished = True

    def close(self) -> None:
        """Close and delete the database (the snapshot is committed or given up); once."""
        if self._closed:
            return
        self._closed = True
        self._connections.close()
        remove_leftovers(self.path.parent)

    # -- writing (the seal, on the trio thread) ----------------------------------------------

    def set(self, path: bytes, column: int, value) -> None:
        pending = self._pending[column]
        pending[path] = value
        if len(pending) >= _BATCH:
            self._flush(column)

    def _flush(self, column: int) -> None:
        pending = self._pending[column]
        if not pending:
            return
        table = _TABLES[column]
        if column == _RANGES:
            rows = [(self._dir_id(parent_of(path)), path.rpartition(b"/")[2], ino, _packed_ranges(ranges))
                    for path, (ino, ranges) in pending.items()]
            statement = "INSERT OR REPLACE INTO reads (dir, name, ino, value) VALUES (?, ?, ?, ?)"
        else:
            rows = [(self._dir_id(parent_of(path)), path.rpartition(b"/")[2], _packed_value(column, value))
                    for path, value in pending.items()]
            statement = f"INSERT OR REPLACE INTO {table} (dir, name, value) VALUES (?, ?, ?)"
        db = self._db()
        db.execute("BEGIN")
        db.executemany(statement, rows)
        db.execute("COMMIT")
        pending.clear()

    def _dir_id(self, path: bytes) -> int:
        known = self._dir_ids.get(path)
        if known is None:
            db = self._db()
            row = db.execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
            known = row[0] if row else db.execute("INSERT INTO dirs (path) VALUES (?)", (path,)).lastrowid
            self._dir_ids[path] = known
        return known

    # -- reading (any thread) ----------------------------------------------------------------

    def get(self, path: bytes, column: int):
        """What was recorded of `path` in `column` (None if nothing)."""
        if not self._finished:      # the seal: its own buffer, else one row
            pending = self._pending[column].get(path)
            if pending is not None:
                return pending[1] if column == _RANGES else pending
            return self._row(path, column)
        self._db()
        found = self._local.rows.of(parent_of(path)).get(path.rpartition(b"/")[2])
        return None if found is None else found[column]

    def _row(self, path: bytes, column: int):
        directory = self._dir_ids.get(parent_of(path))
        if directory is None:
            return None
        row = self._db().execute(f"SELECT value FROM {_TABLES[column]} WHERE dir = ? AND name = ?",
                                 (directory, path.rpartition(b"/")[2])).fetchone()
        return None if row is None else _unpacked_value(column, row[0])


class _Rows:
    """One thread's rows of recently used directories: those on its current path
    (depth first: what the builder asks about next is in the directory it last
    listed, or in one of its parents), and, up to ROWS_KEPT rows, the directories
    used last. The builder opens small files in groups while its walk goes on, so
    a group's files are often a directory or two behind the walk: reloading that
    directory for each group cost more than the files."""

    def __init__(self, store: CaptureStore):
        self.store = store
        self.directories: OrderedDict[bytes, dict[bytes, list]] = OrderedDict()
        self._count = 0

    def of(self, path: bytes) -> dict[bytes, list]:
        rows = self.directories.get(path)
        if rows is not None:
            self.directories.move_to_end(path)
            return rows
        rows = self._load(path)
        self._make_room(path, len(rows))
        self.directories[path] = rows
        self._count += len(rows)
        return rows

    def _make_room(self, path: bytes, adding: int) -> None:
        """Drop the least recently used directories, never the parents of `path`."""
        for directory in list(self.directories):
            if self._count + adding <= ROWS_KEPT:
                return
            if not _is_within(path, directory):
                self._count -= len(self.directories.pop(directory))

    def _load(self, path: bytes) -> dict[bytes, list]:
        """name -> [stat, xattrs, target, ranges] of every entry recorded in `path`."""
        db = self.store._db()
        row = db.execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is None:
            return {}
        rows: dict[bytes, list] = {}
        for column, table in enumerate(_TABLES):
            for name, value in db.execute(f"SELECT name, value FROM {table} WHERE dir = ?", (row[0],)):
                rows.setdefault(name, [None, None, None, None])[column] = _unpacked_value(column, value)
        return rows


def _is_within(path: bytes, directory: bytes) -> bool:
    """Whether `directory` is `path` or one of its parents."""
    return not directory or path == directory or path.startswith(directory + b"/")


def _packed_value(column: int, value) -> bytes:
    if column == _STAT:
        return STAT.pack(*value)
    return msgpack.packb(value) if column == _XATTRS else value


def _unpacked_value(column: int, value: bytes):
    if column == _STAT:
        from cloudfs.live.capture import FrozenStat

        return FrozenStat._make(STAT.unpack(value))
    if column == _RANGES:
        return _unpacked_ranges(value)
    return msgpack.unpackb(value) if column == _XATTRS else value


def _packed_ranges(ranges: RangeSet) -> bytes:
    return msgpack.packb(list(ranges))


def _unpacked_ranges(value: bytes) -> RangeSet:
    return RangeSet(map(tuple, msgpack.unpackb(value)))


class _Column(MutableMapping):
    """One column (stat, xattrs or target) as a path -> value mapping."""

    def __init__(self, store: CaptureStore, column: int):
        self.store = store
        self.column = column

    def __setitem__(self, path: bytes, value) -> None:
        if self.column == _STAT:
            self.store.stat_count += 1      # the walker records each path once
        self.store.set(path, self.column, value)

    def __getitem__(self, path: bytes):
        value = self.store.get(path, self.column)
        if value is None:
            raise KeyError(path)
        return value

    def get(self, path: bytes, default=None):
        """Mapping.get without its KeyError: most files have no xattrs, and raising
        and catching one per entry was a measurable share of the builder's walk."""
        value = self.store.get(path, self.column)
        return default if value is None else value

    def __delitem__(self, path: bytes) -> None:
        raise TypeError("a capture is never shrunk")

    def __len__(self) -> int:
        if self.column == _STAT:
            return self.store.stat_count
        return self.store._db().execute(f"SELECT count(*) FROM {_TABLES[self.column]}").fetchone()[0]

    def __iter__(self) -> Iterator[bytes]:
        for path, _ in self.items():
            yield path

    def items(self) -> Iterator[tuple[bytes, object]]:
        """Every recorded value, directory by directory (after `finish`)."""
        query = (f"SELECT d.path, e.name, e.value FROM {_TABLES[self.column]} e JOIN dirs d ON e.dir = d.id "
                 "ORDER BY d.path, e.name")
        for directory, name, value in self.store._db().execute(query):
            yield join(directory, name), _unpacked_value(self.column, value)


class _Reads(_Column):
    """path -> RangeSet the builder will read; also by inode (copy-on-write's obligations)."""

    def __init__(self, store: CaptureStore):
        super().__init__(store, _RANGES)

    def __setitem__(self, path: bytes, ranges: RangeSet) -> None:
        raise TypeError("plan reads with plan(path, ino, ranges)")

    def plan(self, path: bytes, ino: int, ranges: RangeSet) -> None:
        store = self.store
        store.read_count += 1               # the walker plans each path once
        store.read_bytes += ranges.total()
        store.set(path, _RANGES, (ino, ranges))

    def __len__(self) -> int:
        return self.store.read_count

    def of_inode(self, ino: int) -> RangeSet | None:
        """What the builder will read of inode `ino` (its hard links merged), or None."""
        rows = self.store._db().execute("SELECT value FROM reads WHERE ino = ?", (ino,)).fetchall()
        if not rows:
            return None
        needed = RangeSet()
        for (ranges,) in rows:
            needed.update(_unpacked_ranges(ranges))
        return needed


class _Listings(MutableMapping):
    """directory path -> the names listed there."""

    def __init__(self, store: CaptureStore):
        self.store = store

    def __setitem__(self, path: bytes, names: list[bytes]) -> None:
        store = self.store
        store._db().execute("UPDATE dirs SET names = ? WHERE id = ?", (msgpack.packb(names), store._dir_id(path)))

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
        for (path,) in self.store._db().execute("SELECT path FROM dirs WHERE names IS NOT NULL ORDER BY path"):
            yield path

    def items(self) -> Iterator[tuple[bytes, list[bytes]]]:
        """In path order, so parents come before their children."""
        query = "SELECT path, names FROM dirs WHERE names IS NOT NULL ORDER BY path"
        for path, names in self.store._db().execute(query):
            yield path, msgpack.unpackb(names)


class LazyObligations:
    """FrozenState's obligations of a full capture: looked up by inode when a handler
    asks, and kept in memory only once a handler has changed them (so memory grows
    with what is written during the upload, not with the tree)."""

    def __init__(self, reads: _Reads):
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
