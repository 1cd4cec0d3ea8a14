"""Verified blobs, fetched with as few ranged GETs as possible.

Repository.get_blob reads one blob with one request. Reading a file back needs
thousands of blobs that the uploader wrote one after the other into the same
chunk, so here the blobs wanted at once are sorted by chunk and offset and
adjacent records are fetched together (a *span*, up to 8 MiB: one GET). Every
record of a span is then opened on its own: AES-GCM authentication with the
chunk's key, decompression, and the keyed hash against the blob id (I5,
`open_record`). A record that fails is an IntegrityError for that blob alone;
its neighbours are still good.

Around that: a bounded LRU of verified plaintexts in memory; an optional
on-disk cache of the sealed records (diskcache.py); and one fetch per blob at
a time (a reader that wants a blob another task is fetching waits for it).
Callers may rely on: every byte returned was verified after it was read from
the store or from the disk cache; nothing unverified is ever kept in memory.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterable

import trio

from cloudfs.browse.diskcache import DiskCache
from cloudfs.errors import (
    AccessDenied,
    BucketNotFound,
    IntegrityError,
    ObjectNotFound,
    StoreError,
    StoreUnavailable,
)
from cloudfs.repo import Repository
from cloudfs.repo.chunk import BlobLocation, chunk_name, open_record

log = logging.getLogger(__name__)

SPAN_BYTES = 8 << 20           # the largest ranged GET
THREAD_BYTES = 256 << 10       # spans smaller than this are opened on the event loop
DISK_QUEUE_BYTES = 64 << 20    # sealed records waiting to be written to the disk cache

# Errors that say nothing about the blob itself: the store cannot be used now.
STORE_DOWN = (StoreUnavailable, AccessDenied, BucketNotFound)


@dataclass(frozen=True)
class Span:
    """Records of one chunk fetched with one ranged GET: bytes [start, end)."""

    chunk_id: bytes
    start: int
    end: int
    locations: tuple[BlobLocation, ...]

    @property
    def name(self) -> str:
        return chunk_name(self.chunk_id)


def plan_spans(locations: Iterable[BlobLocation], max_bytes: int = SPAN_BYTES,
               max_gap: int = 0) -> list[Span]:
    """Group records into ranged reads: same chunk, at most `max_gap` unwanted
    bytes between neighbours, at most `max_bytes` per read (a single larger
    record gets a read of its own)."""
    spans: list[Span] = []
    current: list[BlobLocation] = []
    for location in sorted(set(locations), key=lambda loc: (loc.chunk_id, loc.offset)):
        if current:
            last, first = current[-1], current[0]
            end = last.offset + last.length
            fits = (location.chunk_id == last.chunk_id and end <= location.offset <= end + max_gap
                    and location.offset + location.length - first.offset <= max_bytes)
            if not fits:
                spans.append(_span(current))
                current = []
        current.append(location)
    if current:
        spans.append(_span(current))
    return spans


def _span(locations: list[BlobLocation]) -> Span:
    last = locations[-1]
    return Span(last.chunk_id, locations[0].offset, last.offset + last.length, tuple(locations))


def open_span(repo: Repository, span: Span, data: bytes) -> dict[bytes, bytes | IntegrityError]:
    """Open every record of a fetched span; a short read (truncated chunk) fails
    exactly the records it cut."""
    view = memoryview(data)
    results: dict[bytes, bytes | IntegrityError] = {}
    for location in span.locations:
        start = location.offset - span.start
        try:
            results[location.blob_id] = open_record(repo.master, location,
                                                    view[start:start + location.length], span.name)
        except IntegrityError as error:
            results[location.blob_id] = error
    return results


async def fetch_span(repo: Repository, span: Span) -> dict[bytes, bytes | Exception]:
    """Fetch and open one span. Store outages raise (StoreUnavailable and kin);
    everything that is the data's fault becomes a per-blob IntegrityError."""
    data = await fetch_span_bytes(repo, span)
    if isinstance(data, IntegrityError):
        return {location.blob_id: data for location in span.locations}
    if span.end - span.start >= THREAD_BYTES:
        return await trio.to_thread.run_sync(open_span, repo, span, data)
    return open_span(repo, span, data)


async def fetch_span_bytes(repo: Repository, span: Span) -> bytes | IntegrityError:
    try:
        return await repo.store.get(span.name, span.start, span.end - span.start)
    except ObjectNotFound:
        return IntegrityError(span.name, "chunk is missing from the store")
    except STORE_DOWN:
        raise
    except StoreError as error:   # e.g. a range past the end of a truncated chunk
        return IntegrityError(span.name, f"chunk cannot be read as indexed ({error})")


class MemoryCache:
    """Verified plaintexts, least recently used dropped first, bounded in bytes."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.size = 0
        self._items: OrderedDict[bytes, bytes] = OrderedDict()

    def get(self, blob_id: bytes) -> bytes | None:
        data = self._items.get(blob_id)
        if data is not None:
            self._items.move_to_end(blob_id)
        return data

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._items

    def put(self, blob_id: bytes, data: bytes) -> None:
        if blob_id in self._items or len(data) > self.limit_bytes:
            return
        self._items[blob_id] = data
        self.size += len(data)
        while self.size > self.limit_bytes:
            _, evicted = self._items.popitem(last=False)
            self.size -= len(evicted)


@dataclass
class FetchStats:
    requests: int = 0          # ranged GETs
    bytes_fetched: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    prefetch_skipped: int = 0  # read-ahead not started: too much already in flight


class _Pending:
    """A blob some task is fetching; others wait on it instead of fetching it again."""

    __slots__ = ("done", "value")

    def __init__(self):
        self.done = trio.Event()
        self.value: bytes | Exception | None = None


class BlobFetcher:
    def __init__(self, repo: Repository, *, memory_bytes: int = 256 << 20,
                 disk: DiskCache | None = None, span_bytes: int = SPAN_BYTES,
                 prefetch_bytes: int = 128 << 20):
        self.repo = repo
        self.memory = MemoryCache(memory_bytes)
        self.disk = disk
        self.span_bytes = span_bytes
        self.prefetch_limit = prefetch_bytes
        self.stats = FetchStats()
        self._pending: dict[bytes, _Pending] = {}
        self._prefetching = 0
        self._disk_send, self._disk_receive = trio.open_memory_channel(float("inf"))
        self._disk_queued = 0

    # -- the public face ----------------------------------------------------------------

    async def get(self, blob_id: bytes, *, keep: bool = True) -> bytes:
        return (await self.get_many([blob_id], keep=keep))[blob_id]

    async def get_many(self, blob_ids: Iterable[bytes], *, keep: bool = True) -> dict[bytes, bytes]:
        """The verified plaintext of each blob; raises the first failure (an
        IntegrityError naming the object, or a StoreError)."""
        results = await self.fetch_all(blob_ids, keep=keep)
        for value in results.values():
            if isinstance(value, Exception):
                raise value
        return results

    async def prefetch(self, blob_ids: Iterable[bytes]) -> None:
        """Bring blobs into the memory cache ahead of need. Best effort: failures
        are left for the real read to report, and nothing starts while more than
        the prefetch budget is already in flight (memory stays bounded)."""
        wanted = [b for b in dict.fromkeys(blob_ids)
                  if b not in self.memory and b not in self._pending]
        location = self.repo.index.get
        size = sum(loc.raw_length for loc in map(location, wanted) if loc is not None)
        if not wanted:
            return
        if self._prefetching + size > self.prefetch_limit:
            self.stats.prefetch_skipped += 1
            return
        self._prefetching += size
        try:
            await self.fetch_all(wanted, keep=True)
        except STORE_DOWN as error:
            log.debug("read-ahead failed: %s", error)
        finally:
            self._prefetching -= size

    async def fetch_all(self, blob_ids: Iterable[bytes], *, keep: bool = True
                        ) -> dict[bytes, bytes | Exception]:
        """Each blob's plaintext or the error that prevented it. `keep` puts the
        plaintexts in the memory cache (tree blobs are cached decoded elsewhere)."""
        results: dict[bytes, bytes | Exception] = {}
        waiting: list[tuple[bytes, _Pending]] = []
        mine: list[bytes] = []
        for blob_id in dict.fromkeys(blob_ids):
            data = self.memory.get(blob_id)
            if data is not None:
                self.stats.memory_hits += 1
                results[blob_id] = data
            elif blob_id in self._pending:
                waiting.append((blob_id, self._pending[blob_id]))
            else:
                mine.append(blob_id)
        if mine:
            results.update(await self._fetch_claimed(mine, keep))
        for blob_id, pending in waiting:
            await pending.done.wait()
            results[blob_id] = pending.value
        return results

    # -- fetching ---------------------------------------------------------------------------

    async def _fetch_claimed(self, blob_ids: list[bytes], keep: bool) -> dict[bytes, bytes | Exception]:
        """Fetch blobs no other task is fetching, telling waiters as each resolves."""
        claims = {blob_id: _Pending() for blob_id in blob_ids}
        self._pending.update(claims)
        results: dict[bytes, bytes | Exception] = {}
        try:
            await self._load(blob_ids, results, keep)
        except STORE_DOWN as error:
            for blob_id in blob_ids:
                results.setdefault(blob_id, error)
        finally:
            for blob_id, claim in claims.items():
                del self._pending[blob_id]
                value = results.get(blob_id)
                claim.value = StoreUnavailable("the read was cancelled") if value is None else value
                claim.done.set()
        return results

    async def _load(self, blob_ids: list[bytes], results: dict, keep: bool) -> None:
        if self.disk is not None:
            on_disk = [b for b in blob_ids if b in self.disk]
            if on_disk:
                found = await trio.to_thread.run_sync(self._read_disk, on_disk)
                self.stats.disk_hits += len(found)
                self._keep(found, results, keep)
        locations = []
        for blob_id in blob_ids:
            if blob_id in results:
                continue
            location = self.repo.index.get(blob_id)
            if location is None:
                results[blob_id] = IntegrityError(f"blob {blob_id.hex()[:16]}", "not in the index")
            else:
                locations.append(location)
        spans = plan_spans(locations, self.span_bytes)
        if len(spans) == 1:
            await self._load_span(spans[0], results, keep)
            return
        async with trio.open_nursery() as nursery:
            for span in spans:
                nursery.start_soon(self._load_span, span, results, keep)

    async def _load_span(self, span: Span, results: dict, keep: bool) -> None:
        data = await fetch_span_bytes(self.repo, span)
        self.stats.requests += 1
        if isinstance(data, IntegrityError):
            for location in span.locations:
                results[location.blob_id] = data
            return
        self.stats.bytes_fetched += len(data)
        if span.end - span.start >= THREAD_BYTES:
            opened = await trio.to_thread.run_sync(open_span, self.repo, span, data)
        else:
            opened = open_span(self.repo, span, data)
        self._keep(opened, results, keep)
        self._queue_for_disk(span, data, opened)

    def _keep(self, opened: dict, results: dict, keep: bool) -> None:
        results.update(opened)
        if keep:
            for blob_id, value in opened.items():
                if not isinstance(value, Exception):
                    self.memory.put(blob_id, value)

    # -- the disk cache ----------------------------------------------------------------------

    def _read_disk(self, blob_ids: list[bytes]) -> dict[bytes, bytes]:
        """Verified plaintexts of the cached records; a record that fails is dropped."""
        found = {}
        for blob_id in blob_ids:
            location = self.repo.index.get(blob_id)
            record = self.disk.read(blob_id)
            if location is None or record is None:
                continue
            try:
                found[blob_id] = open_record(self.repo.master, location, record, "the blob cache")
            except IntegrityError as error:
                log.warning("%s; fetching it again", error)
                self.disk.discard(blob_id)
        return found

    def _queue_for_disk(self, span: Span, data: bytes, opened: dict) -> None:
        if self.disk is None or self._disk_queued + len(data) > DISK_QUEUE_BYTES:
            return   # the cache is best effort: never slow a read down for it
        view = memoryview(data)
        records = [(loc.blob_id, view[loc.offset - span.start:loc.offset - span.start + loc.length])
                   for loc in span.locations if not isinstance(opened.get(loc.blob_id), Exception)]
        if records:
            self._disk_queued += len(data)
            self._disk_send.send_nowait((records, len(data)))

    async def write_disk_cache(self) -> None:
        """Run for the life of the mount: write fetched records to the disk cache."""
        if self.disk is None:
            return
        async for records, size in self._disk_receive:
            try:
                await trio.to_thread.run_sync(self.disk.add, records)
            finally:
                self._disk_queued -= size
