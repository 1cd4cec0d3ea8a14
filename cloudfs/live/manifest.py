"""The baseline: the stat of every entry of the protected tree, on disk.

The manifest is what the tree looked like at the last checkpoint (the first mount;
later, the last committed snapshot). Reconcile compares a fresh walk against it to
find changes the journal never saw; the capture resolves inodes to paths with it;
the change view uses it to name what was removed.

It lives in the state directory as an SQLite database, `manifest.db` (why SQLite:
docs/scale.md), so memory does not grow with the tree (I8): what a process holds
is SQLite's bounded page cache and a small cache of directory ids.

    meta(key TEXT PRIMARY KEY, value BLOB)      format, version, checkpoint, count
    dirs(id INTEGER PRIMARY KEY, path BLOB UNIQUE)
    entries(dir INTEGER, name BLOB, ino INTEGER, stat BLOB(48),
            PRIMARY KEY (dir, name)) WITHOUT ROWID
    INDEX entries_by_ino ON entries(ino)

An entry's path is its directory's path joined with its name; the root itself is
the entry (dir 0, name b""). `stat` is `scan.PACKED`.

Concurrency: one writer at a time (the first mount, the daemon's commit step),
readers in any thread, each thread on its own connection (WAL: readers never
wait for the writer and see either the old or the new manifest, whole). A reader
that needs one consistent view across several calls wraps them in `reading()`.
A change and its checkpoint commit in one transaction, durably
(synchronous=FULL), before the journal forgets what the snapshot covered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import msgpack

from cloudfs.live.scan import PACKED, EntryStat, Listing, join, pack_stat, parent_of, unpack_stat
from cloudfs.sqlitedb import ThreadConnections

__all__ = ["Checkpoint", "EntryStat", "Manifest", "ManifestDelta", "ManifestError", "join",
           "pack_stat", "parent_of"]

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.db"
LEGACY_NAME = "manifest"          # version 1: one msgpack file, read once to migrate
FORMAT = "cloudfs-live-manifest"
VERSION = 2
ROOT_DIR = 0                      # the "directory" holding the root's own entry
CACHE_KIB = 2 << 10               # SQLite page cache per connection
_DIR_IDS = 4096                   # directory ids remembered per manifest

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB);
CREATE TABLE dirs (id INTEGER PRIMARY KEY, path BLOB NOT NULL UNIQUE);
CREATE TABLE entries (dir INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
                      stat BLOB NOT NULL, PRIMARY KEY (dir, name)) WITHOUT ROWID;
CREATE INDEX entries_by_ino ON entries (ino);
"""


class ManifestError(Exception):
    """The manifest is damaged or of an unknown format."""


@dataclass(frozen=True)
class Checkpoint:
    """What a manifest is the tree of: the first mount's baseline (snapshot None), or
    a committed snapshot of one repository taken with these exclusion patterns."""

    snapshot: str | None = None
    repo_id: str | None = None
    exclude: tuple[str, ...] = ()
    time_ns: int | None = None       # the snapshot's sealing time

    def describes_a_snapshot_of(self, repo_id: str, exclude: list[str]) -> bool:
        """Whether this is the tree of a snapshot in that repository, taken with
        those exclusions (what an incremental seal needs)."""
        return (self.snapshot is not None and self.repo_id == repo_id
                and list(self.exclude) == list(exclude))

    def packed(self) -> bytes:
        return msgpack.packb({"snapshot": self.snapshot, "repo_id": self.repo_id,
                              "exclude": list(self.exclude), "time_ns": self.time_ns})

    @classmethod
    def unpacked(cls, data: bytes | None) -> Checkpoint:
        value = msgpack.unpackb(data) if data else {}
        return cls(value.get("snapshot"), value.get("repo_id"), tuple(value.get("exclude", ())),
                   value.get("time_ns"))


@dataclass
class ManifestDelta:
    """A change to a manifest: subtrees removed (first), then entries set, as
    (path, packed stat) in path order. Either may be a generator, consumed once,
    inside `Manifest.apply`'s transaction."""

    removed: Iterable[bytes] = ()
    entries: Iterable[tuple[bytes, bytes]] = ()


class Manifest:
    """The baseline in `path` (an SQLite database); see the module docstring."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._connections = ThreadConnections(self.path, (
            "journal_mode=WAL", "synchronous=FULL", f"cache_size=-{CACHE_KIB}", "busy_timeout=30000"))
        self._checkpoint: Checkpoint | None = None

    # -- opening and making ---------------------------------------------------------------

    @classmethod
    def open(cls, state_dir: Path) -> Manifest | None:
        """The state directory's manifest, or None if it has none yet (a first mount).
        A version-1 manifest (one msgpack file) is migrated once. Raises ManifestError."""
        path = Path(state_dir) / MANIFEST_NAME
        legacy = Path(state_dir) / LEGACY_NAME
        if not path.exists():
            if not legacy.exists():
                return None
            _migrate(legacy, path)
        manifest = cls(path)
        manifest._check_format()
        legacy.unlink(missing_ok=True)
        return manifest

    @classmethod
    def build(cls, path: Path, entries: Iterable[tuple[bytes, bytes]],
              checkpoint: Checkpoint | None = None, saved_ns: int | None = None) -> Manifest:
        """A new manifest at `path` (replacing what is there, atomically) of `entries`
        ((path, packed stat), parents before children), streamed in."""
        path = Path(path)
        temp = path.with_name(path.name + ".new")
        for stale in (temp, *_side_files(temp)):
            stale.unlink(missing_ok=True)
        manifest = cls(temp)
        try:
            db = manifest._db()
            db.executescript(_SCHEMA)
            with db:
                db.execute("BEGIN IMMEDIATE")
                manifest._set_meta(db, "format", FORMAT)
                manifest._set_meta(db, "version", VERSION)
                count = manifest._insert(db, entries)
                manifest._set_meta(db, "count", count)
                manifest._set_meta(db, "checkpoint", (checkpoint or Checkpoint()).packed())
                manifest._set_meta(db, "saved_ns", saved_ns or time.time_ns())
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            manifest.close()
        for side in _side_files(temp):
            side.unlink(missing_ok=True)
        os.replace(temp, path)
        for side in _side_files(path):
            side.unlink(missing_ok=True)
        _fsync_directory(path.parent)
        return cls(path)

    @classmethod
    def of_listings(cls, path: Path, listings: Iterable[Listing],
                    checkpoint: Checkpoint | None = None) -> Manifest:
        """A new manifest of a walk (`scan.walk`)."""
        return cls.build(path, _entries_of(listings), checkpoint)

    def _check_format(self) -> None:
        try:
            db = self._db()
            values = dict(db.execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')"))
        except sqlite3.DatabaseError as error:
            raise ManifestError(f"damaged manifest: {error}") from None
        if values.get("format") != FORMAT or values.get("version") != VERSION:
            raise ManifestError(f"unknown manifest format {values.get('format')!r} "
                                f"version {values.get('version')!r}")

    def close(self) -> None:
        self._connections.close()

    def forget_thread(self) -> None:
        """Close this thread's connection (a thread that ends should)."""
        self._connections.forget_thread()

    def _db(self) -> sqlite3.Connection:
        """This thread's connection."""
        return self._connections.get()

    @property
    def _local(self):
        return self._connections.local

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """One consistent view for every call of this thread inside the block (and
        directory ids remembered for its length: the manifest cannot change under it)."""
        db = self._db()
        if db.in_transaction:
            yield
            return
        db.execute("BEGIN")
        self._local.dir_ids = OrderedDict()
        try:
            yield
        finally:
            self._local.dir_ids = None
            db.execute("COMMIT")

    # -- reading ---------------------------------------------------------------------------

    @property
    def checkpoint(self) -> Checkpoint:
        if self._checkpoint is None:
            self._checkpoint = Checkpoint.unpacked(self._meta("checkpoint"))
        return self._checkpoint

    def get(self, path: bytes) -> EntryStat | None:
        packed = self.packed(path)
        return None if packed is None else unpack_stat(packed)

    def packed(self, path: bytes) -> bytes | None:
        directory = self._dir_id(parent_of(path)) if path else ROOT_DIR
        if directory is None:
            return None
        row = self._db().execute("SELECT stat FROM entries WHERE dir = ? AND name = ?",
                                 (directory, path.rpartition(b"/")[2])).fetchone()
        return row[0] if row else None

    def __contains__(self, path: bytes) -> bool:
        return self.packed(path) is not None

    def __len__(self) -> int:
        return int(self._meta("count") or 0)

    @property
    def saved_ns(self) -> int:
        """When the manifest was last changed (before it, no pending change can be)."""
        return int(self._meta("saved_ns") or 0)

    def listing(self, path: bytes) -> dict[bytes, bytes]:
        """The entries of directory `path`: name -> packed stat."""
        directory = self._dir_id(path)
        if directory is None:
            return {}
        return dict(self._db().execute("SELECT name, stat FROM entries WHERE dir = ?", (directory,)))

    def children(self, path: bytes) -> list[bytes]:
        """Names directly inside directory `path`."""
        return list(self.listing(path))

    def paths_of(self, ino: int) -> list[bytes]:
        """Every path of inode `ino` (several for hard links)."""
        rows = self._db().execute("SELECT dir, name FROM entries WHERE ino = ?", (ino,)).fetchall()
        return [name if directory == ROOT_DIR else join(self._dir_path(directory), name)
                for directory, name in rows]

    def subtree(self, path: bytes) -> Iterator[bytes]:
        """`path` and everything below it (`path` first)."""
        if path not in self:
            return
        yield path
        for directory, directory_path in self._dirs_under(path):
            for (name,) in self._db().execute("SELECT name FROM entries WHERE dir = ?", (directory,)):
                yield join(directory_path, name)

    def items(self) -> Iterator[tuple[bytes, EntryStat]]:
        """Every entry (the root first); for tests and small trees."""
        for path, packed in self.packed_items():
            yield path, unpack_stat(packed)

    def packed_items(self) -> Iterator[tuple[bytes, bytes]]:
        db = self._db()
        for (packed,) in db.execute("SELECT stat FROM entries WHERE dir = ?", (ROOT_DIR,)):
            yield b"", packed
        query = "SELECT d.path, e.name, e.stat FROM entries e JOIN dirs d ON e.dir = d.id ORDER BY d.path"
        for directory, name, packed in db.execute(query):
            yield join(directory, name), packed

    def _dirs_under(self, path: bytes) -> list[tuple[int, bytes]]:
        """(id, path) of `path` and of every directory below it that has entries."""
        if not path:
            return list(self._db().execute("SELECT id, path FROM dirs"))
        return list(self._db().execute(
            "SELECT id, path FROM dirs WHERE path = ? OR (path >= ? AND path < ?)",
            (path, path + b"/", path + b"0")))     # "0" follows "/"

    def _meta(self, key: str):
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _dir_id(self, path: bytes) -> int | None:
        known = getattr(self._local, "dir_ids", None)
        if known is not None and path in known:
            return known[path]
        row = self._db().execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        if known is not None:
            _remember(known, path, row[0])
        return row[0]

    def _dir_path(self, directory: int) -> bytes:
        return self._db().execute("SELECT path FROM dirs WHERE id = ?", (directory,)).fetchone()[0]

    # -- changing ----------------------------------------------------------------------------

    def apply(self, delta: ManifestDelta, checkpoint: Checkpoint) -> None:
        """Apply `delta` and set `checkpoint`, in one durable transaction."""
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            count = len(self)
            for path in delta.removed:
                count -= self._delete_subtree(db, path)
            if isinstance(delta.entries, list):    # small: count the new ones as they go in
                count += self._insert(db, delta.entries, replace=True)
            else:                                  # streamed, perhaps every entry: count after
                self._insert(db, delta.entries, replace=True, count=False)
                count = db.execute("SELECT count(*) FROM entries").fetchone()[0]
            self._set_meta(db, "count", count)
            self._set_meta(db, "checkpoint", checkpoint.packed())
            self._set_meta(db, "saved_ns", time.time_ns())
        self._checkpoint = checkpoint

    def _insert(self, db: sqlite3.Connection, entries: Iterable[tuple[bytes, bytes]],
                replace: bool = False, count: bool = True) -> int:
        """Insert (or replace) entries; returns how many are new (if `count`)."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        statement = f"{verb} INTO entries (dir, name, ino, stat) VALUES (?, ?, ?, ?)"
        dir_ids: OrderedDict[bytes, int] = OrderedDict()
        new = 0
        batch = []
        for path, packed in entries:
            if not replace or (count and self._packed_in(db, path) is None):
                new += 1
            directory = self._dir_for_writing(db, parent_of(path), dir_ids) if path else ROOT_DIR
            batch.append((directory, path.rpartition(b"/")[2], PACKED.unpack_from(packed)[1], packed))
            if len(batch) >= 10_000:
                db.executemany(statement, batch)
                batch.clear()
        db.executemany(statement, batch)
        return new

    def _packed_in(self, db: sqlite3.Connection, path: bytes) -> bytes | None:
        directory = self._dir_for_reading(db, parent_of(path)) if path else ROOT_DIR
        if directory is None:
            return None
        row = db.execute("SELECT stat FROM entries WHERE dir = ? AND name = ?",
                         (directory, path.rpartition(b"/")[2])).fetchone()
        return row[0] if row else None

    def _dir_for_reading(self, db: sqlite3.Connection, path: bytes) -> int | None:
        row = db.execute("SELECT id FROM dirs WHERE path = ?", (path,)).fetchone()
        return row[0] if row else None

    def _dir_for_writing(self, db: sqlite3.Connection, path: bytes, dir_ids: OrderedDict) -> int:
        known = dir_ids.get(path)
        if known is not None:
            return known
        directory = self._dir_for_reading(db, path)
        if directory is None:
            directory = db.execute("INSERT INTO dirs (path) VALUES (?)", (path,)).lastrowid
        _remember(dir_ids, path, directory)
        return directory

    def _delete_subtree(self, db: sqlite3.Connection, path: bytes) -> int:
        """Delete `path` and everything below it; returns how many entries went."""
        parent = self._dir_for_reading(db, parent_of(path)) if path else ROOT_DIR
        if parent is None:
            return 0
        gone = db.execute("DELETE FROM entries WHERE dir = ? AND name = ?",
                          (parent, path.rpartition(b"/")[2])).rowcount
        if not gone:
            return 0
        for directory, directory_path in self._dirs_under(path):
            gone += db.execute("DELETE FROM entries WHERE dir = ?", (directory,)).rowcount
            db.execute("DELETE FROM dirs WHERE id = ?", (directory,))
        return gone

    def _set_meta(self, db: sqlite3.Connection, key: str, value) -> None:
        db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))


def _remember(dir_ids: OrderedDict, path: bytes, directory: int) -> None:
    dir_ids[path] = directory
    if len(dir_ids) > _DIR_IDS:
        dir_ids.popitem(last=False)


def _entries_of(listings: Iterable[Listing]) -> Iterator[tuple[bytes, bytes]]:
    for listing in listings:
        if not listing.path:
            yield b"", listing.stat
        for name in sorted(listing.entries):
            yield join(listing.path, name), listing.entries[name]


def _side_files(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _migrate(legacy: Path, path: Path) -> None:
    """Turn a version-1 manifest (one msgpack file) into a database, once."""
    try:
        document = msgpack.unpackb(legacy.read_bytes(), raw=False, strict_map_key=False)
        if document.get("format") != FORMAT or document.get("version") != 1:
            raise ManifestError("unknown manifest format")
        point = document.get("checkpoint") or {}
        checkpoint = Checkpoint(point.get("snapshot"), point.get("repo_id"), tuple(point.get("exclude", ())),
                                point.get("time_ns"))
        rows = sorted((row[0], PACKED.pack(*row[1:])) for row in document["entries"])
    except (ValueError, KeyError, TypeError, msgpack.UnpackException) as error:
        raise ManifestError(f"damaged manifest: {error}") from error
    Manifest.build(path, rows, checkpoint, saved_ns=legacy.stat().st_mtime_ns).close()
    log.info("manifest migrated to %s (%d entries)", path, len(rows))
