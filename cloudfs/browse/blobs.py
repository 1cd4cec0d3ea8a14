"""Verified blobs, fetched with as few ranged GETs as possible.

Repository.get_blob reads one blob with one request. Reading a file back needs
thousands of blobs that the uploader wrote one after the other into the same
chunk, so here the blobs wanted at once are sorted by chunk and offset and
adjacent records are fetched together (a *span*, up to 8 MiB: one GET). Every
record of a span is then opened on its own: AES-GCM authentication with the
chunk's key, decompression, and the keyed hash against the blob id (I5,
`open_record`). A record that fails is an IntegrityError for that blob alone;
its neighbours are still good. Spans are planned and opened in
cloudfs/repo/spans.py.

Around that: a bounded memory cache of verified plaintexts that one large
sequential copy does not flush (memcache.py); an optional
on-disk cache of the sealed records (diskcache.py); and one fetch per blob at
a time (a reader that wants a blob another task is fetching waits for it).
Callers may rely on: every byte returned was verified after it was read from
the store or from the disk cache; nothing unverified is ever kept in memory.
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Iterable

import trio

from cloudfs.browse.background import Background
from cloudfs.browse.diskcache import DiskCache
from cloudfs.browse.memcache import MemoryCache
from cloudfs.errors import IntegrityError, StoreUnavailable
from cloudfs.repo import Repository
from cloudfs.repo.chunk import BlobLocation, open_record
from cloudfs.repo.spans import (
    SPAN_BYTES,
    SPAN_GAP,
    STORE_DOWN,
    THREAD_BYTES,
    Span,
    fetch_span_bytes,
    open_span,
    plan_spans,
)

log = logging.getLogger(__name__)

DISK_QUEUE_BYTES = 64 << 20    # sealed records waiting to be written to the disk cache


@dataclass
class FetchStats:
    requests: int = 0          # ranged GETs
    bytes_fetched: int = 0
    memory_hits: int = 0
    disk_hits: int = 0
    prefetch_skipped: int = 0  # read-ahead not started: too much already in flight


class _Claim:
    """Blobs one task is fetching together (one span, or records from the disk
    cache). A reader that wants any of them waits for the claim instead of
    fetching again; the claim resolves when that one fetch is done."""

    __slots__ = ("done", "results")

    def __init__(self):
        self.done = trio.Event()
        self.results: dict[bytes, bytes | Exception] = {}


class BlobFetcher:
    def __init__(self, repo: Repository, *, memory_bytes: int = 256 << 20,
                 disk: DiskCache | None = None, span_bytes: int = SPAN_BYTES,
                 span_gap: int = SPAN_GAP, prefetch_bytes: int = 64 << 20,
                 background: Background | None = None):
        self.repo = repo
        self.memory = MemoryCache(memory_bytes)
        self.disk = disk
        self.span_bytes = span_bytes
        self.span_gap = span_gap
        self.prefetch_limit = prefetch_bytes
        self.background = background
        self.stats = FetchStats()
        self._pending: dict[bytes, _Claim] = {}
        self._prefetching = 0
        self._disk_send, self._disk_receive = trio.open_memory_channel(float("inf"))
        self._disk_queued = 0
        self._layouts: dict[bytes, tuple[list[int], list[BlobLocation]]] = {}   # chunk -> blobs by offset

    # -- the public face ----------------------------------------------------------------

    async def get(self, blob_id: bytes, *, keep: bool = True) -> bytes:
        return (await self.get_many([blob_id], keep=keep))[blob_id]

    async def get_many(self, blob_ids: Iterable[bytes], *, keep: bool = True,
                       persist: bool = True) -> dict[bytes, bytes]:
        """The verified plaintext of each blob; raises the first failure (an
        IntegrityError naming the object, or a StoreError)."""
        results = await self.fetch_all(blob_ids, keep=keep, persist=persist)
        for value in results.values():
            if isinstance(value, Exception):
                raise value
        return results

    def prefetch(self, blob_ids: Iterable[bytes]) -> None:
        """Start bringing blobs into the memory cache, in the background. The
        blobs are claimed at once, so a read that comes for them meanwhile waits
        for this fetch rather than starting its own. Best effort: failures are
        left for the real read to report, and nothing starts while more than the
        prefetch budget is in flight (memory stays bounded)."""
        if self.background is None or not self.background.started:
            return
        wanted = [b for b in dict.fromkeys(blob_ids) if b not in self.memory and b not in self._pending]
        if not wanted:
            return
        size = sum(loc.raw_length for loc in self.repo.index.get_many(wanted).values())
        if self._prefetching + size > self.prefetch_limit:
            self.stats.prefetch_skipped += 1
            return
        self._prefetching += size
        jobs, _ = self._claim(wanted)
        for job in jobs:
            self.background.spawn(self._prefetch_job, job, self._job_size(job), True)

    def prefetch_region(self, chunk_id: bytes, start: int, end: int) -> None:
        """Start fetching every record in bytes [start, end) of a chunk, in spans,
        in the background. Sequential reads of a large file use this: the
        uploader's workers interleave its blocks within a region of a chunk, so
        reading the region in order fetches each byte once, in large GETs."""
        if self.background is None or not self.background.started:
            return
        if chunk_id not in self._layouts:
            self.background.spawn(self._prefetch_region_later, chunk_id, start, end)
            return
        records = self._records_in(chunk_id, start, end)
        size = sum(loc.raw_length for loc in records)
        if not records or self._prefetching + size > self.prefetch_limit:
            self.stats.prefetch_skipped += bool(records)
            return
        for span in plan_spans(records, self.span_bytes, self.span_gap):
            unclaimed = [loc.blob_id for loc in span.locations
                         if loc.blob_id not in self.memory and loc.blob_id not in self._pending]
            if unclaimed:
                job = (self._claim_ids(unclaimed), span)
                span_size = sum(loc.raw_length for loc in span.locations)
                self._prefetching += span_size
                self.background.spawn(self._prefetch_job, job, span_size, False)

    async def _prefetch_region_later(self, chunk_id: bytes, start: int, end: int) -> None:
        """prefetch_region once the chunk's layout is known (best effort)."""
        try:
            await self._load_layout(chunk_id)
        except STORE_DOWN:
            return
        if chunk_id in self._layouts:
            self.prefetch_region(chunk_id, start, end)

    async def fetch_all(self, blob_ids: Iterable[bytes], *, keep: bool = True, persist: bool = True
                        ) -> dict[bytes, bytes | Exception]:
        """Each blob's plaintext or the error that prevented it. `keep` puts the
        plaintexts in the memory cache (tree blobs are cached decoded elsewhere),
        `persist` the fetched records in the disk cache."""
        results: dict[bytes, bytes | Exception] = {}
        waiting: list[tuple[bytes, _Claim]] = []
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
            jobs, unknown = self._claim(mine)
            results.update(unknown)
            if len(jobs) == 1:
                await self._run(jobs[0], keep, persist)
            else:
                async with trio.open_nursery() as nursery:
                    for job in jobs:
                        nursery.start_soon(self._run, job, keep, persist)
            for claim, _ in jobs:
                results.update(claim.results)
        for blob_id, claim in waiting:
            await claim.done.wait()
            value = claim.results.get(blob_id)
            results[blob_id] = StoreUnavailable("the fetch was cancelled") if value is None else value
        return results

    # -- fetching ---------------------------------------------------------------------------

    def _claim(self, blob_ids: list[bytes]) -> tuple[list[tuple[_Claim, object]], dict]:
        """Claim blobs for fetching: one job per span (or one for the disk cache's
        records), and an IntegrityError for each blob the index does not know."""
        jobs, unknown, locations = [], {}, []
        if self.disk is not None:
            on_disk = [b for b in blob_ids if b in self.disk]
            if on_disk:
                jobs.append((self._claim_ids(on_disk), on_disk))
                blob_ids = [b for b in blob_ids if b not in self.disk]
        known = self.repo.index.get_many(blob_ids)
        for blob_id in blob_ids:
            location = known.get(blob_id)
            if location is None:
                unknown[blob_id] = IntegrityError(f"blob {blob_id.hex()[:16]}", "not in the index")
            else:
                locations.append(location)
        for span in plan_spans(locations, self.span_bytes, self.span_gap):
            jobs.append((self._claim_ids([loc.blob_id for loc in span.locations]), span))
        return jobs, unknown

    def _claim_ids(self, blob_ids: list[bytes]) -> _Claim:
        claim = _Claim()
        for blob_id in blob_ids:
            self._pending[blob_id] = claim
        return claim

    def _job_size(self, job) -> int:
        _, work = job
        if isinstance(work, Span):
            return sum(loc.raw_length for loc in work.locations)
        return sum(loc.raw_length for loc in self.repo.index.get_many(work).values())

    async def _prefetch_job(self, job, size: int, persist: bool) -> None:
        try:
            await self._run(job, True, persist, ahead=True)
        finally:
            self._prefetching -= size

    async def _run(self, job, keep: bool, persist: bool, *, ahead: bool = False) -> None:
        """Fetch one claimed job, then resolve its claim (whatever happened).
        `ahead`: read-ahead, whose blobs nobody has used yet."""
        claim, work = job
        ids = [loc.blob_id for loc in work.locations] if isinstance(work, Span) else work
        try:
            if isinstance(work, Span):
                await self._load_span(work, claim.results, keep, persist, ahead)
            else:
                await self._load_from_disk(work, claim.results, keep, ahead)
        except STORE_DOWN as error:
            for blob_id in ids:
                claim.results.setdefault(blob_id, error)
        finally:
            for blob_id in ids:
                if self._pending.get(blob_id) is claim:
                    del self._pending[blob_id]
            claim.done.set()

    async def _load_from_disk(self, blob_ids: list[bytes], results: dict, keep: bool, ahead: bool) -> None:
        found = await trio.to_thread.run_sync(self._read_disk, blob_ids)
        self.stats.disk_hits += len(found)
        self._keep(found, results, keep, used=set() if ahead else set(found))
        missing = self.repo.index.get_many(b for b in blob_ids if b not in found)
        for span in plan_spans(missing.values(), self.span_bytes, self.span_gap):
            await self._load_span(span, results, keep, True, ahead)

    async def _load_span(self, span: Span, results: dict, keep: bool, persist: bool, ahead: bool) -> None:
        data = await fetch_span_bytes(self.repo, span)
        self.stats.requests += 1
        if isinstance(data, IntegrityError):
            for location in span.locations:
                results[location.blob_id] = data
            return
        self.stats.bytes_fetched += len(data)
        whole = await self._with_neighbours(span) if keep else span
        if span.end - span.start >= THREAD_BYTES:
            opened = await trio.to_thread.run_sync(open_span, self.repo, whole, data)
        else:
            opened = open_span(self.repo, whole, data)
        wanted = {location.blob_id for location in span.locations}
        self._keep(opened, results, keep, wanted, used=set() if ahead else wanted)
        if persist:
            self._queue_for_disk(whole, data, opened)

    async def _with_neighbours(self, span: Span) -> Span:
        """The span with every other record that lies inside the bytes it fetches.
        The uploader's parallel workers interleave the blocks of one file (and
        of neighbouring files) in a chunk, so these are mostly what the reader
        asks for next; opening them costs less than fetching them again."""
        try:
            await self._load_layout(span.chunk_id)
        except STORE_DOWN:
            return span
        inside = self._records_in(span.chunk_id, span.start, span.end)
        return Span(span.chunk_id, span.start, span.end, tuple(inside)) if len(inside) > len(span.locations) else span

    async def _load_layout(self, chunk_id: bytes) -> None:
        """Learn where every record of a chunk is (from the index object listing it),
        keeping the last 64 chunks' layouts. A chunk no readable object lists gets
        an empty layout: only what was asked for is fetched then."""
        if chunk_id in self._layouts:
            return
        try:
            blobs = sorted(await self.repo.chunk_blobs(chunk_id), key=lambda blob: blob.offset)
        except IntegrityError:
            blobs = []
        self._layouts[chunk_id] = ([blob.offset for blob in blobs], blobs)
        while len(self._layouts) > 64:
            self._layouts.pop(next(iter(self._layouts)))

    def _records_in(self, chunk_id: bytes, start: int, end: int) -> list[BlobLocation]:
        """The records lying wholly inside bytes [start, end) of a chunk whose layout
        is loaded (none if it is not)."""
        offsets, blobs = self._layouts.get(chunk_id, ([], []))
        inside = []
        for index in range(bisect.bisect_left(offsets, start), len(blobs)):
            blob = blobs[index]
            if blob.offset + blob.length > end:
                break
            inside.append(blob)
        return inside

    def _keep(self, opened: dict, results: dict, keep: bool, wanted: set | None = None, *,
              used: set) -> None:
        """Record what was asked for in `results` (everything if `wanted` is None),
        and keep every verified plaintext in memory if `keep`; those in `used`
        are being read now, the others (neighbours, read-ahead) not yet."""
        if wanted is None:
            results.update(opened)
        else:
            results.update((blob_id, opened[blob_id]) for blob_id in wanted if blob_id in opened)
        if keep:
            for blob_id, value in opened.items():
                if not isinstance(value, Exception):
                    self.memory.put(blob_id, value, used=blob_id in used)

    # -- the disk cache ----------------------------------------------------------------------

    def _read_disk(self, blob_ids: list[bytes]) -> dict[bytes, bytes]:
        """Verified plaintexts of the cached records; a record that fails is dropped."""
        found = {}
        locations = self.repo.index.get_many(blob_ids)
        for blob_id in blob_ids:
            location = locations.get(blob_id)
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
