"""The local blob index: every blob the repository's index objects list, on disk (SQLite).

Why SQLite, with the figures behind the choice: docs/scale.md.

It is a cache of the index objects this machine has read ("absorbed") and
nothing more: `<cache>/<repo id>/index.sqlite`, beside the object cache,
shared by every process of this machine that opens the repository (a mount
daemon, a browse mount, a restore), and it may be deleted at any time; the
next `Repository.load_index` builds it again from the index objects.

What callers may rely on:

- Only what an index object in the store names is in the file, each object
  whole, in one transaction with its chunks and blobs. Chunks this session
  stored that no index object names yet (`add_chunk`) stay in this process's
  memory (`unnamed_chunks`, at most the packer's `index_every` chunks) until
  `add_object` records them with the object that names them; a crash never
  leaves the file claiming a blob no index object lists.
- Memory is bounded: SQLite's page cache (CACHE_KIB) and the unnamed chunks,
  whatever the number of blobs.
- A process that looks up many ids (a first snapshot's new blocks, a restore)
  has the file read once, sequentially, by a thread, as soon as its lookups
  reach READ_AHEAD_SHARE of the file's pages (if it fits in free memory):
  against a cold page cache each random id otherwise costs a random read of
  its own (docs/performance.md).
- One connection per process, opened on first use and shared by threads under
  a lock (the packer's workers, the browse mount's readers). A connection never
  crosses a fork: `release()` before forking; a connection opened by another
  process is never used, a fresh one is opened instead.
- Several processes at once: WAL (readers never wait for the writer), a busy
  timeout for writers, and absorbing an object someone absorbed meanwhile is a
  no-op.
- A damaged file (not a database, malformed, another format or repository) is
  replaced by an empty one with one warning naming it, and `load_index` fills
  it again; nothing is lost, since the index objects hold everything.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cloudfs.errors import IntegrityError, LocalStateError
from cloudfs.repo.chunk import BlobKind, BlobLocation
from cloudfs.repo.index import ChunkInfo

log = logging.getLogger(__name__)

INDEX_FILE = "index.sqlite"
FORMAT = 1                    # raise when the schema changes: older files are rebuilt
CACHE_KIB = 8 * 1024          # SQLite's page cache per connection
PAGE_BYTES = 4096             # SQLite's default page size (what a random lookup reads)
BUSY_TIMEOUT_MS = 60_000      # how long a writer waits for another process's write
LOOKUP_BATCH = 500            # ids per `IN (...)` query
# Read the file ahead once lookups reach this share of its pages (cold, a page read
# at random costs ~0.1 ms here, reading the whole file ~10 µs a page)
READ_AHEAD_SHARE = 1 / 32
READ_AHEAD_SPAN = 1 << 20
DAMAGE_CODES = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}

SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID",
    # AUTOINCREMENT: numbers only grow, so a number marks a moment (absorbed_mark)
    "CREATE TABLE objects (number INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE)",
    "CREATE TABLE chunks (number INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, size INTEGER NOT NULL, "
    "sha256 BLOB NOT NULL, blobs INTEGER NOT NULL)",
    # which index objects list which chunk (usually one each)
    "CREATE TABLE listings (chunk INTEGER NOT NULL, object INTEGER NOT NULL, "
    "PRIMARY KEY (chunk, object)) WITHOUT ROWID",
    "CREATE INDEX listings_by_object ON listings (object)",
    # the first copy of every blob; `chunk` is a number into `chunks`
    "CREATE TABLE blobs (id BLOB PRIMARY KEY, chunk INTEGER NOT NULL, kind INTEGER NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL) WITHOUT ROWID",
    # further copies (two sessions stored one blob): where it still is if its first chunk goes
    "CREATE TABLE copies (id BLOB NOT NULL, chunk INTEGER NOT NULL, kind INTEGER NOT NULL, "
    "offset INTEGER NOT NULL, length INTEGER NOT NULL, raw_length INTEGER NOT NULL, "
    "PRIMARY KEY (id, chunk, offset)) WITHOUT ROWID",
    "CREATE TRIGGER record_copies BEFORE INSERT ON blobs "
    "WHEN EXISTS (SELECT 1 FROM blobs WHERE id = NEW.id AND (chunk, offset) != (NEW.chunk, NEW.offset)) "
    "BEGIN INSERT OR IGNORE INTO copies VALUES (NEW.id, NEW.chunk, NEW.kind, NEW.offset, NEW.length, "
    "NEW.raw_length); END",
)

_LOCATE = ("SELECT b.kind, c.id, b.offset, b.length, b.raw_length FROM blobs b "
           "JOIN chunks c ON c.number = b.chunk WHERE b.id = ?")
_LOCATE_MANY = ("SELECT b.id, b.kind, c.id, b.offset, b.length, b.raw_length FROM blobs b "
                "JOIN chunks c ON c.number = b.chunk WHERE b.id IN ({})")

_COPIES_OF = ("SELECT k.id, k.kind, c.id, k.offset, k.length, k.raw_length FROM copies k "
              "JOIN chunks c ON c.number = k.chunk WHERE k.id IN ({})")

_abandoned: list[sqlite3.Connection] = []   # connections inherited across a fork: never touched


class _process:
    """This process's id, kept without a system call per lookup."""

    pid = os.getpid()


def _after_fork() -> None:
    _process.pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork)


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk as the local index knows it (its blobs are in the index objects listing it)."""

    chunk_id: bytes
    size: int
    sha256: bytes
    blobs: int


class BlobIndex:
    """Blob id -> where it is stored, for the whole repository, on disk."""

    def __init__(self, path: Path | None, repo_id: bytes):
        """`path` None: a temporary file, removed by `close()` (or at exit) in the
        process that last used it."""
        self._temporary = path is None
        if path is None:
            directory = tempfile.mkdtemp(prefix="cloudfs-index-")
            path = Path(directory) / INDEX_FILE
            self._owner = [os.getpid()]       # the process that removes it (None: nobody yet)
            self._cleanup = weakref.finalize(self, _remove_temporary, directory, self._owner)
        self.path = path
        self.repo_id = repo_id
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._db_pid = 0
        self._unnamed: dict[bytes, ChunkInfo] = {}        # chunk id -> chunk, this session
        self._unnamed_blobs: dict[bytes, BlobLocation] = {}
        self._looked_up = 0
        self.reading_ahead: threading.Thread | None = None   # reads the file ahead (this process's)
        self._read_ahead_pid = 0
        self._next_size_check = 0      # lookups at which the file's size is looked at again

    # -- the connection ------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        """This process's connection (call with the lock held)."""
        if self._db is not None and self._db_pid != _process.pid:
            _abandoned.append(self._db)    # the parent's: closing it here could disturb the parent
            self._db = None
        if self._db is None:
            self._db = self._open_checked()
            self._db_pid = _process.pid
            if self._temporary:
                self._owner[0] = os.getpid()
        return self._db

    def _open_checked(self) -> sqlite3.Connection:
        """A connection to a usable file: an existing one of this format and
        repository, or a new empty one (replacing a damaged file, with a warning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            return self._open()
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorname", "") not in DAMAGE_CODES:
                raise self._unwritable(error) from None     # a full disk is no damage
            log.warning("the local index %s is damaged (%s); rebuilding it from the index objects",
                        self.path, error)
        except _Unusable as reason:
            log.warning("the local index %s %s; rebuilding it from the index objects", self.path, reason)
        _remove_database(self.path)
        return self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                             check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")   # a crash may lose the last absorbed objects
            db.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
            if not _has_schema(db):
                with _transaction(db):
                    if not _has_schema(db):       # another process may have been first
                        for statement in SCHEMA:
                            db.execute(statement)
                        db.executemany("INSERT INTO meta VALUES (?, ?)",
                                       [("format", FORMAT), ("repo_id", self.repo_id), ("blobs", 0)])
            _check_meta(db, self.repo_id)
            return db
        except BaseException:
            db.close()
            raise

    def release(self) -> None:
        """Close this process's connection before a fork; whichever process uses the
        index next opens its own (and owns a temporary file from then on)."""
        with self._lock:
            if self._db is not None and self._db_pid == os.getpid():
                self._db.close()
            self._db = None
            if self._temporary:
                self._owner[0] = None

    def close(self) -> None:
        """Close the connection; a temporary index is removed."""
        self.release()
        if self._temporary:
            self._owner[0] = os.getpid()
            self._cleanup()

    def _one(self, sql: str, parameters=()) -> tuple | None:
        return self._run(_fetch_one, sql, parameters)

    def _all(self, sql: str, parameters=()) -> list[tuple]:
        return self._run(_fetch_all, sql, parameters)

    def _run(self, work, *arguments):
        """`work(connection, *arguments)` under the lock; a damaged file becomes an
        IntegrityError naming it, and is replaced so the next `load_index` rebuilds it."""
        with self._lock:
            try:
                return work(self._connection(), *arguments)
            except sqlite3.DatabaseError as error:
                if getattr(error, "sqlite_errorname", "") not in DAMAGE_CODES:
                    raise self._unwritable(error) from None
                self._discard_damaged(error)
                raise IntegrityError(str(self.path), f"the local index is damaged ({error}); it is "
                                                     "being rebuilt from the index objects") from None

    def _unwritable(self, error: sqlite3.DatabaseError) -> LocalStateError:
        return LocalStateError(f"cannot use the local index {self.path}: {error} (free space "
                               "there, or set XDG_CACHE_HOME / --cache-dir elsewhere)")

    def _discard_damaged(self, error: Exception) -> None:
        log.warning("the local index %s is damaged (%s); rebuilding it from the index objects",
                    self.path, error)
        self.release()
        _remove_database(self.path)

    # -- lookups ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """How many blobs (a count kept as objects are absorbed, so this is quick)."""
        stored = self._one("SELECT value FROM meta WHERE key = 'blobs'")[0]
        return stored + sum(1 for blob_id in self._unnamed_blobs if not self._stored(blob_id))

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._unnamed_blobs or self._stored(blob_id)

    def stored_this_session(self, blob_id: bytes) -> bool:
        """Whether a chunk this session stored holds the blob (no query: in memory)."""
        return blob_id in self._unnamed_blobs

    def _stored(self, blob_id: bytes) -> bool:
        return self._one("SELECT 1 FROM blobs WHERE id = ?", (blob_id,)) is not None

    # This session's chunks are looked at before the file: they move to the file
    # (commit) before they leave memory, so a blob is always in one or the other.

    def get(self, blob_id: bytes) -> BlobLocation | None:
        unnamed = self._unnamed_blobs.get(blob_id)
        if unnamed is not None:
            return unnamed
        row = self._one(_LOCATE, (blob_id,))
        return None if row is None else _location(blob_id, *row)

    def get_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, BlobLocation]:
        """The location of each of these blobs the index knows (the others are absent):
        one query per LOOKUP_BATCH ids, so a batch costs less than as many `get`s."""
        found: dict[bytes, BlobLocation] = {}
        wanted = []
        for blob_id in dict.fromkeys(blob_ids):
            unnamed = self._unnamed_blobs.get(blob_id)
            if unnamed is None:
                wanted.append(blob_id)
            else:
                found[blob_id] = unnamed
        self._count_lookups(len(wanted))
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start:start + LOOKUP_BATCH]
            query = _LOCATE_MANY.format(",".join("?" * len(batch)))
            for blob_id, *rest in self._all(query, batch):
                found[blob_id] = _location(blob_id, *rest)
        return found

    def _count_lookups(self, count: int) -> None:
        """Start reading the file ahead once this process's lookups make it worth it."""
        with self._lock:
            self._looked_up += count
            if self._read_ahead_pid == _process.pid or self._looked_up < self._next_size_check:
                return
            try:
                size = self.path.stat().st_size
            except OSError:
                return
            # A backup looks up in batches of a few dozen: not a stat and two sysconf calls
            # per batch under the lock, only once the lookups could make it worth it (the
            # file only grows, and with it the lookups needed) and have grown by an eighth.
            self._next_size_check = max(_fewest_lookups_worth_it(size), self._looked_up * 9 // 8)
            if _worth_reading_ahead(size, self._looked_up):
                self._read_ahead_pid = _process.pid
                self.reading_ahead = threading.Thread(target=_read_through, args=(self.path,),
                                                      name="index-read-ahead", daemon=True)
                self.reading_ahead.start()

    def locations_many(self, blob_ids: Iterable[bytes]) -> dict[bytes, list[BlobLocation]]:
        """Every known copy of each of these blobs, the one `get` gives first; blobs
        the index does not know are absent. For deciding whether a blob outlives
        the chunks prune deletes."""
        found = {blob_id: [location] for blob_id, location in self.get_many(blob_ids).items()}
        wanted = list(found)
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start:start + LOOKUP_BATCH]
            query = _COPIES_OF.format(",".join("?" * len(batch)))
            for blob_id, *rest in self._all(query, batch):
                location = _location(blob_id, *rest)
                if location not in found[blob_id]:
                    found[blob_id].append(location)
        return found

    # -- chunks ------------------------------------------------------------------------------

    def chunk(self, chunk_id: bytes) -> ChunkRecord | None:
        unnamed = self._unnamed.get(chunk_id)
        if unnamed is not None:
            return ChunkRecord(chunk_id, unnamed.size, unnamed.sha256, len(unnamed.blobs))
        row = self._one("SELECT id, size, sha256, blobs FROM chunks WHERE id = ?", (chunk_id,))
        return None if row is None else ChunkRecord(*row)

    def chunks(self) -> Iterator[ChunkRecord]:
        """Every chunk, those of one index object together (in the order objects were
        absorbed), then this session's unnamed ones. Read in pages, so any number of
        chunks costs little memory."""
        after = -1
        while True:
            rows = self._all("SELECT number, id, size, sha256, blobs FROM chunks WHERE number > ? "
                             "ORDER BY number LIMIT 1000", (after,))
            if not rows:
                break
            for number, *record in rows:
                yield ChunkRecord(*record)
            after = rows[-1][0]
        for chunk in list(self._unnamed.values()):
            yield ChunkRecord(chunk.chunk_id, chunk.size, chunk.sha256, len(chunk.blobs))

    def chunk_count(self) -> int:
        stored = self._one("SELECT count(*) FROM chunks")[0]
        return stored + sum(1 for chunk_id in self._unnamed if self._stored_chunk(chunk_id) is None)

    def _stored_chunk(self, chunk_id: bytes):
        return self._one("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,))

    def objects_listing(self, chunk_id: bytes) -> list[str]:
        """The index objects that list this chunk (none for an unnamed chunk)."""
        return [name for name, in self._all(
            "SELECT o.name FROM objects o JOIN listings l ON l.object = o.number "
            "JOIN chunks c ON c.number = l.chunk WHERE c.id = ? ORDER BY o.number", (chunk_id,))]

    def unnamed_chunk(self, chunk_id: bytes) -> ChunkInfo | None:
        """A chunk this session stored that no index object names yet, with its blobs."""
        return self._unnamed.get(chunk_id)

    def unnamed_chunks(self) -> list[ChunkInfo]:
        """What the next index object must name: every chunk this session stored
        that no index object names yet, oldest first."""
        return list(self._unnamed.values())

    # -- adding ------------------------------------------------------------------------------

    @property
    def loaded_objects(self) -> set[str]:
        """The names of the index objects absorbed (by any process of this machine)."""
        return {name for name, in self._all("SELECT name FROM objects")}

    def absorbed_mark(self) -> int:
        """A mark to pass to `absorbed_before`: objects absorbed from now on are after it."""
        return self._one("SELECT coalesce(max(number), 0) FROM objects")[0]

    def absorbed_before(self, mark: int) -> set[str]:
        """The objects absorbed up to `mark`."""
        return {name for name, in self._all("SELECT name FROM objects WHERE number <= ?", (mark,))}

    def add_chunk(self, chunk: ChunkInfo) -> None:
        """A chunk this session stored and verified: its blobs count as stored at once
        (so they are not stored twice); on disk only once an index object names it."""
        self._unnamed[chunk.chunk_id] = chunk
        for blob in chunk.blobs:
            self._unnamed_blobs.setdefault(blob.blob_id, blob)

    def add_object(self, name: str, chunks: list[ChunkInfo]) -> None:
        """Absorb one index object (already in the store). Its chunks are no longer
        this session's unnamed ones."""
        batch = self.absorbing()
        batch.add(name, [chunk.to_list() for chunk in chunks])
        batch.commit()

    def absorbing(self) -> "Absorption":
        """A batch of index objects to absorb together: `add` them one at a time (each
        waits in temporary tables of this connection, not in memory, and blocks no
        other process), then `commit` merges them all in one transaction, blobs in id
        order, so a long run of objects (a new machine's first load) writes each page
        of the blob table about once rather than once per blob."""
        return Absorption(self)

    def _forget_unnamed(self, chunk_id: bytes) -> None:
        chunk = self._unnamed.pop(chunk_id, None)
        if chunk is not None:
            for blob in chunk.blobs:
                if self._unnamed_blobs.get(blob.blob_id) == blob:
                    del self._unnamed_blobs[blob.blob_id]

    # -- forgetting ------------------------------------------------------------------------

    def forget_objects(self, names: Iterable[str]) -> int:
        """Forget index objects the store no longer has, and every chunk no remaining
        object lists, with its blobs (a blob with a copy in a remaining chunk moves
        there). Returns how many chunks were dropped. Dropping chunks scans the
        blob table: it is for prune and repair, not for every open."""
        names = list(names)

        def forget(db: sqlite3.Connection) -> int:
            with _transaction(db):
                db.execute("CREATE TEMP TABLE IF NOT EXISTS gone (number INTEGER PRIMARY KEY)")
                db.execute("DELETE FROM gone")
                db.executemany("INSERT OR IGNORE INTO gone SELECT number FROM objects WHERE name = ?",
                               [(name,) for name in names])
                db.execute("DELETE FROM listings WHERE object IN gone")
                db.execute("DELETE FROM objects WHERE number IN gone")
                db.execute("DELETE FROM gone")
                db.execute("INSERT INTO gone SELECT number FROM chunks WHERE number NOT IN "
                           "(SELECT chunk FROM listings)")
                dropped = db.execute("SELECT count(*) FROM gone").fetchone()[0]
                if dropped:
                    _drop_chunks(db)
                return dropped
        return self._run(forget)


class Absorption:
    """Index objects staged to be absorbed in one transaction (see BlobIndex.absorbing).

    Staged rows live in temporary tables of the process's connection, named per
    batch, so two batches of one process do not mix; a batch never committed
    (an error, a cancelled load) leaves nothing in the file."""

    _numbers = iter(range(1 << 62))

    def __init__(self, index: BlobIndex):
        self.index = index
        self.suffix = f"_{os.getpid()}_{next(self._numbers)}"
        self.chunk_ids: list[bytes] = []
        self.objects = 0
        index._run(self._create)

    def _create(self, db: sqlite3.Connection) -> None:
        s = self.suffix
        db.execute(f"CREATE TEMP TABLE in_objects{s} (number INTEGER PRIMARY KEY, name TEXT)")
        db.execute(f"CREATE TEMP TABLE in_chunks{s} (number INTEGER PRIMARY KEY, object INTEGER, id BLOB, "
                   "size INTEGER, sha256 BLOB, blobs INTEGER)")
        db.execute(f"CREATE TEMP TABLE in_blobs{s} (id BLOB, kind INTEGER, offset INTEGER, length INTEGER, "
                   "raw_length INTEGER, chunk INTEGER)")

    def add(self, name: str, listing: list) -> None:
        """Stage one index object, given as its chunks are stored in it:
        `[chunk_id, size, sha256, [[blob_id, kind, offset, length, raw_length], ...]]`
        (`index.open_index_listing`, or `ChunkInfo.to_list`). Nothing of it need
        stay in memory afterwards."""
        def stage(db: sqlite3.Connection) -> None:
            s = self.suffix
            db.execute("BEGIN")          # only temporary tables: no lock on the file
            try:
                object_number = db.execute(f"INSERT INTO in_objects{s} (name) VALUES (?)", (name,)).lastrowid
                for chunk_id, size, sha256, entries in listing:
                    number = db.execute(f"INSERT INTO in_chunks{s} (object, id, size, sha256, blobs) "
                                        "VALUES (?, ?, ?, ?, ?)",
                                        (object_number, chunk_id, size, sha256, len(entries))).lastrowid
                    db.executemany(f"INSERT INTO in_blobs{s} (id, kind, offset, length, raw_length, chunk) "
                                   f"VALUES (?, ?, ?, ?, ?, {int(number)})", entries)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        self.index._run(stage)
        self.chunk_ids.extend(bytes(chunk[0]) for chunk in listing)
        self.objects += 1

    def commit(self) -> None:
        """Merge every staged object not absorbed meanwhile, in one transaction."""
        try:
            if self.objects:
                self.index._run(self._merge)
                for chunk_id in self.chunk_ids:
                    self.index._forget_unnamed(chunk_id)
        finally:
            self.discard()

    def _merge(self, db: sqlite3.Connection) -> None:
        """Staged chunk n becomes chunk number base + n, so blob rows need no lookup
        of their chunk; a chunk the file knows already (another object lists it)
        only gains a listing, its blobs being there already."""
        s = self.suffix
        with _transaction(db):
            db.execute(f"DELETE FROM in_objects{s} WHERE name IN (SELECT name FROM objects)")
            db.execute(f"INSERT INTO objects (name) SELECT name FROM in_objects{s} ORDER BY number")
            base = db.execute("SELECT coalesce(max(number), 0) FROM chunks").fetchone()[0]
            db.execute(f"INSERT INTO chunks (number, id, size, sha256, blobs) "
                       f"SELECT ? + number, id, size, sha256, blobs FROM in_chunks{s} i "
                       f"WHERE object IN (SELECT number FROM in_objects{s}) "
                       "AND id NOT IN (SELECT id FROM chunks) "
                       f"AND number = (SELECT min(number) FROM in_chunks{s} WHERE id = i.id) ORDER BY number",
                       (base,))
            db.execute(f"INSERT OR IGNORE INTO listings SELECT c.number, o.number FROM in_chunks{s} i "
                       f"JOIN in_objects{s} io ON io.number = i.object JOIN objects o ON o.name = io.name "
                       "JOIN chunks c ON c.id = i.id")
            added = db.execute(
                "INSERT OR IGNORE INTO blobs SELECT id, ? + chunk, kind, offset, length, raw_length "
                f"FROM in_blobs{s} WHERE ? + chunk IN (SELECT number FROM chunks WHERE number > ?) "
                "ORDER BY id, rowid", (base, base, base)).rowcount
            db.execute("UPDATE meta SET value = value + ? WHERE key = 'blobs'", (added,))

    def discard(self) -> None:
        """Drop the staged rows (after commit, or instead of it)."""
        def drop(db: sqlite3.Connection) -> None:
            for table in ("in_objects", "in_chunks", "in_blobs"):
                db.execute(f"DROP TABLE IF EXISTS temp.{table}{self.suffix}")
        try:
            self.index._run(drop)
        except (sqlite3.Error, IntegrityError):
            pass     # a damaged or replaced file: the temporary tables went with its connection


def _drop_chunks(db: sqlite3.Connection) -> None:
    """Remove the chunks numbered in `gone` and their blobs; promote copies kept elsewhere."""
    removed = db.execute("DELETE FROM blobs WHERE chunk IN gone").rowcount
    db.execute("DELETE FROM copies WHERE chunk IN gone")
    promoted = db.execute("INSERT OR IGNORE INTO blobs SELECT * FROM copies "
                          "WHERE id NOT IN (SELECT id FROM blobs) ORDER BY id").rowcount
    db.execute("DELETE FROM copies WHERE (id, chunk, offset) IN (SELECT id, chunk, offset FROM blobs)")
    db.execute("DELETE FROM chunks WHERE number IN gone")
    db.execute("UPDATE meta SET value = value - ? WHERE key = 'blobs'", (removed - promoted,))


def _location(blob_id: bytes, kind: int, chunk_id: bytes, offset: int, length: int,
              raw_length: int) -> BlobLocation:
    return BlobLocation(blob_id, _KINDS[kind], chunk_id, offset, length, raw_length)


_KINDS = {int(kind): kind for kind in BlobKind}


def _fetch_one(db: sqlite3.Connection, sql: str, parameters) -> tuple | None:
    return db.execute(sql, parameters).fetchone()


def _fetch_all(db: sqlite3.Connection, sql: str, parameters) -> list[tuple]:
    return db.execute(sql, parameters).fetchall()


class _Unusable(Exception):
    """The file is a database, but not one this version can use for this repository."""


def _has_schema(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'meta'").fetchone() is not None


def _check_meta(db: sqlite3.Connection, repo_id: bytes) -> None:
    meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("format") != FORMAT:
        raise _Unusable(f"has format {meta.get('format')}, this version uses {FORMAT}")
    if meta.get("repo_id") != repo_id:
        raise _Unusable("belongs to another repository")
    db.execute("SELECT max(id) FROM blobs").fetchone()      # reads the table's right edge


class _transaction:
    """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on error): one writer at a time, and a
    writer waits (busy timeout) rather than failing halfway."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind, value, traceback):
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _fewest_lookups_worth_it(size: int) -> int:
    """The lookups below which a file of `size` bytes or more is not worth reading ahead."""
    return int(max(size, CACHE_KIB * 1024) * READ_AHEAD_SHARE / PAGE_BYTES)


def _worth_reading_ahead(size: int, looked_up: int) -> bool:
    """Larger than SQLite's own cache, lookups enough to touch a good share of its
    pages, and room for it in memory's free pages (else it would evict itself)."""
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return CACHE_KIB * 1024 < size < free // 2 and looked_up * PAGE_BYTES >= size * READ_AHEAD_SHARE


def _read_through(path: Path) -> None:
    """Read the file once from start to end, so the page cache holds it: the lookups
    that follow find their pages there instead of reading each at random."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        span = bytearray(READ_AHEAD_SPAN)
        while os.readv(fd, [span]):
            pass
    except OSError as error:
        log.debug("reading the local index %s ahead stopped: %s", path, error)
    finally:
        os.close(fd)


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _remove_temporary(directory: str, owner: list) -> None:
    if owner[0] == os.getpid():
        shutil.rmtree(directory, ignore_errors=True)
