"""The packer: many worker threads store blobs into shared chunks; chunks upload as they fill.

Concurrency rules (the only ones; keep them true when changing this file):

- `store_sync` runs in worker threads only (never on the trio thread: it may
  block waiting for a chunk slot, and it uploads through
  `trio.from_thread.run`). `flush` runs on the trio thread, when no
  `store_sync` call is in progress.
- `_lock` guards: the open chunk (reservations and its writer count), the set
  of pending blob ids, the number of free chunk slots, and the index updates
  after an upload. Hashing, compressing and sealing happen outside it;
  reserving a record's place, and deciding who finishes a chunk, inside it.
- A chunk is shipped by the thread whose sealing completes it after it was
  closed (it reached the chunk size): that thread seals the footer, hashes the
  chunk and uploads it, blocking itself, not the loop. While it uploads, other
  workers fill the next chunk.
- At most `slots` chunks exist at once (filling or uploading). Chunks are
  built in unnamed temporary files, so memory does not depend on the chunk
  size or on `slots`; disk use is at most `slots` chunks. A worker that needs a
  new chunk while every slot is taken waits until an upload ends. A failed
  upload frees its slot too and fails every later call with the same error
  (until `reset_failure`), so no thread waits forever.
- The first chunks of an upload (since the packer was created or last
  flushed: a snapshot's) close early, at `FIRST_CHUNK_BYTES` (16 and 32 MiB),
  the rest at the chunk size. A chunk uploads only once it is complete, so
  with 64 MiB from the start a snapshot of up to ~64 MiB stored uploaded
  nothing until the end of its build, then waited for the whole PUT
  (0.31-0.37 s of a 2.6 s first backup of the standard library); small first
  chunks start the uploads while the rest is sealed and leave a smaller last
  one to wait for, at the price of two more objects per snapshot.
- Each kind of blob fills a chunk of its own (one open chunk per kind): tree
  blobs sealed among file data would scatter a snapshot's tree over every
  chunk, and walking it would cost a GET per node group. When every slot
  holds an open chunk (`slots` 1: no upload to wait for), a blob goes into
  the other kind's chunk instead of waiting forever. `flush` ships the open
  chunks side by side; the first-chunk sizes apply to data chunks only.
- A chunk is closed when it reaches its size or `MAX_BLOBS` blobs: a chunk
  of tiny files would otherwise hold a hundred thousand of them, and its footer,
  its index entries and the locations waiting for an index object all grow with
  that number, in memory (I8).
- Every `index_every` stored chunks, or once they hold `INDEX_BLOBS` blobs, the
  upload that completes the batch writes an index object naming every chunk no
  index object names yet, so a long
  upload that is interrupted (a crash, a lost store) keeps what it stored: the
  next attempt finds those blobs in the index and does not upload them again.
  The chunks waiting for their index object are the index's `unnamed_chunks`
  (in memory, at most about `index_every`), not a list here: a failed index
  write leaves them there for the next one to name.
- A blob id is "pending" from its reservation until its chunk is in the index;
  dedup checks the index and the pending set under the lock, and the upload
  moves ids from pending to the index under the same lock, so a blob is never
  stored twice by one packer.
- A blob found in the index (a dedup hit) is noted in `relied_on`, under the
  lock, and so is every chunk stored: what a snapshot counts on, which the
  writer checks against prune's doom lists before it commits (docs/prune.md).
  `force=True` stores a blob although the index has it (prune's repack, and a
  writer rescuing a blob whose only copy is doomed).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

import trio

from cloudfs.errors import IntegrityError
from cloudfs.repo.chunk import BlobKind, ChunkBuilder, encode_payload
from cloudfs.repo.index import ChunkInfo
from cloudfs.store.base import FilePayload


MAX_BLOBS = 8192          # blobs per chunk: ~5 MB chunks of 600-byte files
FIRST_CHUNK_BYTES = (16 << 20, 32 << 20)   # the first chunks of an upload (see above)
INDEX_BLOBS = 16384       # blobs per index object during long uploads


@dataclass
class _OpenChunk:
    builder: ChunkBuilder
    kind: BlobKind            # the kind it was opened for (a single slot mixes them)
    writers: int = 0          # threads sealing into it right now
    closed: bool = False      # no more reservations
    shipped: bool = False     # someone took it to finish and upload
    ids: list[bytes] = field(default_factory=list)
    limit: int = 0            # the size at which it closes


class Packer:
    def __init__(self, repo, slots: int = 3, directory: str | None = None, index_every: int = 16):
        self.repo = repo
        self.index_every = index_every    # chunks per index object during long uploads
        self.directory = directory        # where chunks are built (default: the temp dir)
        self._lock = threading.Lock()
        self._slot_free = threading.Condition(self._lock)
        self._slots = self._free_slots = slots
        self._opened = 0                  # data chunks opened since the last flush
        self._open: dict[BlobKind, _OpenChunk] = {}   # the chunk each kind fills now
        self._pending: set[bytes] = set()
        self._failure: BaseException | None = None
        self.relied_on = ReliedOn()

    # -- worker threads -------------------------------------------------------------

    def indexed(self, blob_ids: Iterable[bytes]) -> set[bytes]:
        """Which of these blobs the index holds now, in one query: what a caller storing
        a batch passes to `store_sync` as `known`, instead of a query per blob."""
        return set(self.repo.index.get_many(blob_ids))

    def store_sync(self, kind: BlobKind, plaintext, *, blob_id: bytes | None = None,
                   compress: bool = True, payload=None, force: bool = False,
                   known: Container[bytes] | None = None) -> bytes:
        """Store one blob unless the repository has it (`force`: unless this packer
        is storing it already); return its id. Worker threads only. `payload`, if
        given, is the already encoded (maybe compressed) plaintext; `known`, if
        given, is what `indexed` said of a batch this blob belongs to."""
        blob_id = blob_id or self.repo.master.blob_id(plaintext)
        with self._lock:
            self._raise_if_failed()
            if blob_id in self._pending:
                return blob_id
            if not force and self._in_index(blob_id, known):
                self.relied_on.hit(blob_id)
                return blob_id
            self._pending.add(blob_id)
        if payload is None:
            payload = encode_payload(plaintext, self.repo.compression_level if compress else None)
        chunk, location = self._reserve(blob_id, kind, len(payload), len(plaintext))
        try:
            chunk.builder.seal_into(location, payload)
        finally:
            done = self._finish_writing(chunk)
        if done:
            self._ship_from_thread(chunk)
        return blob_id

    def _in_index(self, blob_id: bytes, known: Container[bytes] | None) -> bool:
        """Under the lock. A blob that entered the index since `known` was asked was
        pending then, in this packer, so it is among this session's chunks (in
        memory). One another process added meanwhile, or (rarely) that an index
        object named and took out of memory in between, is stored again: that
        costs space, not correctness."""
        if known is None:
            return blob_id in self.repo.index
        return blob_id in known or self.repo.index.stored_this_session(blob_id)

    def _reserve(self, blob_id: bytes, kind: BlobKind, payload_length: int, raw_length: int):
        """Claim a place in the chunk open for `kind`, opening one (in a free slot) if needed."""
        with self._lock:
            chunk = self._chunk_for(kind)
            location = chunk.builder.reserve(blob_id, kind, payload_length, raw_length)
            chunk.ids.append(blob_id)
            chunk.writers += 1
            if chunk.builder.size >= chunk.limit or len(chunk.ids) >= MAX_BLOBS:
                self._close(chunk)
            self.repo.written.blobs += 1
            self.repo.written.raw_bytes += raw_length
        return chunk, location

    def _chunk_for(self, kind: BlobKind) -> _OpenChunk:
        """Under the lock: the chunk open for `kind`, opened in a free slot if there
        is none. With every slot taken by an open chunk (no upload to wait for), the
        other kind's chunk takes the blob."""
        while kind not in self._open:
            self._raise_if_failed()
            if self._free_slots > 0:
                limit = self._next_limit() if kind == BlobKind.DATA else self.repo.config.chunk_size
                self._open[kind] = _OpenChunk(ChunkBuilder(self.repo.master, self.directory), kind, limit=limit)
                self._free_slots -= 1
            elif len(self._open) == self._slots:
                return next(iter(self._open.values()))
            else:
                self._slot_free.wait()
        return self._open[kind]

    def _close(self, chunk: _OpenChunk) -> None:
        """Under the lock: no more reservations in `chunk`."""
        chunk.closed = True
        del self._open[chunk.kind]

    def _next_limit(self) -> int:
        """Under the lock, opening a data chunk: the size at which it closes."""
        size = self.repo.config.chunk_size
        if self._opened < len(FIRST_CHUNK_BYTES):
            size = min(size, FIRST_CHUNK_BYTES[self._opened])
        self._opened += 1
        return size

    def _finish_writing(self, chunk: _OpenChunk) -> bool:
        with self._lock:
            chunk.writers -= 1
            if chunk.closed and chunk.writers == 0 and not chunk.shipped:
                chunk.shipped = True
                return True
            return False

    def _ship_from_thread(self, chunk: _OpenChunk) -> None:
        data = chunk.builder.finish()
        trio.from_thread.run(self._upload, chunk, data, _sha256(data))

    def _raise_if_failed(self) -> None:
        """After a failed upload every call fails the same way, until reset_failure()."""
        if self._failure is not None:
            raise self._failure

    # -- the trio thread ------------------------------------------------------------

    async def flush(self) -> None:
        """Upload the partly filled chunks, side by side (their index object is the
        repository's to write). Call with no store_sync in progress."""
        with self._lock:
            self._raise_if_failed()
            chunks = list(self._open.values())
            self._open.clear()
            self._opened = 0
        failures: list[Exception] = []

        async def ship(chunk: _OpenChunk) -> None:
            chunk.closed = chunk.shipped = True
            try:
                data = chunk.builder.finish()
                await self._upload(chunk, data, await trio.to_thread.run_sync(_sha256, data))
            except Exception as error:   # raised below as itself, not in a group
                failures.append(error)

        async with trio.open_nursery() as nursery:
            for chunk in chunks:
                nursery.start_soon(ship, chunk)
        if failures:
            raise failures[0]

    async def _upload(self, chunk: _OpenChunk, data: FilePayload, digest: bytes) -> None:
        builder = chunk.builder
        try:
            await self.repo.store.put(builder.name, data, sha256=digest)
            stored = await self.repo.store.head(builder.name)
            if stored.size != len(data):
                raise IntegrityError(builder.name, f"stored {stored.size} of {len(data)} bytes")
        except BaseException as error:
            with self._lock:
                self._failure = error
                self._pending.difference_update(chunk.ids)
            self._free_slot(data)
            raise
        info = ChunkInfo(builder.chunk_id, len(data), digest, tuple(builder.blobs))
        with self._lock:
            self.repo.index.add_chunk(info)
            self.relied_on.chunks.append(builder.chunk_id)
            self._pending.difference_update(chunk.ids)
            self.repo.written.chunks += 1
            self.repo.written.chunk_bytes += len(data)
            unnamed = self.repo.index.unnamed_chunks()
            batch_complete = (len(unnamed) >= self.index_every
                              or sum(len(info.blobs) for info in unnamed) >= INDEX_BLOBS)
        self._free_slot(data)
        if batch_complete:
            await self.repo.write_index()

    def _free_slot(self, data: FilePayload) -> None:
        data.close()
        with self._lock:
            self._free_slots += 1
            self._slot_free.notify_all()

    def reset_failure(self) -> None:
        """Allow new work after a failed upload (the failed chunk's blobs are not stored)."""
        with self._lock:
            self._failure = None


class ReliedOn:
    """What the blobs stored since `clear()` rely on: the chunks stored, and the
    blobs found in the index (dedup hits), up to `limit` of them (about 100 bytes
    each in RAM); past it only the fact is kept (`overflowed`), and whoever checks
    them walks the snapshot instead."""

    LIMIT = 100_000

    def __init__(self, limit: int = LIMIT):
        self.limit = limit
        self.clear()

    def hit(self, blob_id: bytes) -> None:
        if len(self.hits) < self.limit:
            self.hits.add(blob_id)
        elif blob_id not in self.hits:
            self.overflowed = True

    def clear(self) -> None:
        self.hits: set[bytes] = set()
        self.chunks: list[bytes] = []
        self.overflowed = False


def _sha256(data: FilePayload) -> bytes:
    hasher = hashlib.sha256()
    for piece in data.slices():
        hasher.update(piece)
    return hasher.digest()
