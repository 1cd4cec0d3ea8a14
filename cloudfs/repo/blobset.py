"""A set of blob ids on disk, beside the local index: what prune's walks collect.

A TiB of data is ~16 million blobs: their ids do not belong in RAM (I8). A
BlobSet is a temporary table of this process's connection to the local index
(`localindex.py`), so it lives in SQLite's temporary file, is joined against
the blob table without copying anything into Python, and vanishes with the
connection (a crash leaves nothing). Only what callers ask about comes back
into memory: per-chunk figures (one row per 64 MiB chunk), or the members
among a handful of ids.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from cloudfs.repo.localindex import LOOKUP_BATCH, BlobIndex

_numbers = itertools.count()


@dataclass(frozen=True)
class ChunkUsage:
    """How much of one chunk the members of a set occupy (their first copies)."""

    chunk_id: bytes
    blobs: int
    bytes: int


class BlobSet:
    def __init__(self, index: BlobIndex):
        self.index = index
        self.table = f"blobset_{next(_numbers)}"
        self._run(lambda db: db.execute(
            f"CREATE TEMP TABLE {self.table} (id BLOB PRIMARY KEY) WITHOUT ROWID"))

    def _run(self, work):
        return self.index._run(work)     # the index's lock and connection (temporary tables are per connection)

    def add_many(self, blob_ids: Iterable[bytes]) -> None:
        rows = [(blob_id,) for blob_id in blob_ids]
        if rows:
            self._run(lambda db: db.executemany(f"INSERT OR IGNORE INTO {self.table} VALUES (?)", rows))

    def collector(self, batch: int = 10_000) -> "Collector":
        """A `visit(blob_id)` callable that adds ids a batch at a time."""
        return Collector(self, batch)

    def pages(self, size: int) -> Iterator[list[bytes]]:
        """Every member, `size` at a time, in id order."""
        after = b""
        while True:
            rows = self._run(lambda db: db.execute(
                f"SELECT id FROM {self.table} WHERE id > ? ORDER BY id LIMIT ?", (after, size)).fetchall())
            if not rows:
                return
            yield [row[0] for row in rows]
            after = rows[-1][0]

    def __len__(self) -> int:
        return self._run(lambda db: db.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])

    def members(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Which of these ids are in the set."""
        wanted, found = list(dict.fromkeys(blob_ids)), set()
        for start in range(0, len(wanted), LOOKUP_BATCH):
            batch = wanted[start:start + LOOKUP_BATCH]
            query = f"SELECT id FROM {self.table} WHERE id IN ({','.join('?' * len(batch))})"
            found.update(row[0] for row in self._run(lambda db: db.execute(query, batch).fetchall()))
        return found

    def unindexed(self) -> int:
        """How many members the index does not know (stored nowhere it can tell)."""
        return self._run(lambda db: db.execute(
            f"SELECT count(*) FROM {self.table} s WHERE NOT EXISTS (SELECT 1 FROM blobs b WHERE b.id = s.id)"
        ).fetchone()[0])

    def usage(self) -> Iterator[ChunkUsage]:
        """Per chunk, the members whose first copy it holds, and their bytes."""
        rows = self._run(lambda db: db.execute(
            f"SELECT c.id, count(*), sum(b.length) FROM {self.table} s JOIN blobs b ON b.id = s.id "
            "JOIN chunks c ON c.number = b.chunk GROUP BY b.chunk").fetchall())
        return (ChunkUsage(*row) for row in rows)

    def only_in(self, chunk_ids: Iterable[bytes]) -> set[bytes]:
        """Of `chunk_ids`, those holding the first copy of a member that has no copy
        in any chunk outside them: the chunks that cannot go without losing a member."""
        numbers = f"{self.table}_chunks"

        def query(db: sqlite3.Connection) -> list:
            db.execute(f"CREATE TEMP TABLE {numbers} (number INTEGER PRIMARY KEY)")
            try:
                db.executemany(f"INSERT OR IGNORE INTO {numbers} SELECT number FROM chunks WHERE id = ?",
                               [(chunk_id,) for chunk_id in chunk_ids])
                return db.execute(
                    f"SELECT DISTINCT c.id FROM {self.table} s JOIN blobs b ON b.id = s.id "
                    f"JOIN chunks c ON c.number = b.chunk WHERE b.chunk IN {numbers} AND NOT EXISTS "
                    f"(SELECT 1 FROM copies k WHERE k.id = s.id AND k.chunk NOT IN {numbers})").fetchall()
            finally:
                db.execute(f"DROP TABLE temp.{numbers}")
        return {row[0] for row in self._run(query)}

    def drop(self) -> None:
        self._run(lambda db: db.execute(f"DROP TABLE IF EXISTS temp.{self.table}"))

    def __enter__(self) -> "BlobSet":
        return self

    def __exit__(self, *exc) -> None:
        self.drop()


class Collector:
    """Blob ids handed one at a time (a tree walk's `visit`), added in batches."""

    def __init__(self, blob_set: BlobSet, batch: int):
        self.blob_set = blob_set
        self.batch = batch
        self._ids: list[bytes] = []

    def __call__(self, blob_id: bytes) -> None:
        self._ids.append(blob_id)
        if len(self._ids) >= self.batch:
            self.flush()

    def flush(self) -> None:
        self.blob_set.add_many(self._ids)
        self._ids = []
