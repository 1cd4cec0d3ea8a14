"""Reading snapshots: directory nodes, block lists and file content, verified.

Every blob comes through Repository.get_blob, which authenticates it and checks
its keyed hash (I5), or, for tree blobs wanted together (`prefetch`), through
spans: neighbours in a chunk fetched with one ranged GET, each record opened and
checked on its own. Tree blobs are small and read again and again (by the next
snapshot's builder, by the snapshot mount), so they are kept in a bounded LRU.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import AsyncIterator

import trio

from cloudfs.errors import IntegrityError, StoreError
from cloudfs.repo import BlobKind, Repository
from cloudfs.repo.chunk import chunk_name, parse_footer
from cloudfs.repo.spans import SPAN_GAP, STORE_DOWN, Span, fetch_span, open_span, plan_spans
from cloudfs.snapshot import blocklist
from cloudfs.snapshot.source import join
from cloudfs.snapshot.tree import Entry, decode_directory

# A chunk this small that holds a wanted tree blob is read whole, and every tree blob
# in it kept: a snapshot's small tree chunk holds the nodes the next levels of a walk
# will want, which otherwise cost a round trip per level.
WHOLE_CHUNK_BYTES = 2 << 20


class TreeReader:
    def __init__(self, repo: Repository, cache_bytes: int = 64 << 20):
        self.repo = repo
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_limit = cache_bytes
        self._fetching: dict[bytes, trio.Event] = {}   # asked for and on its way
        self._whole_reads: dict[bytes, trio.Event] = {}   # small chunks being read whole

    async def tree_blob(self, blob_id: bytes) -> bytes:
        """A tree blob, fetched once however many tasks ask for it at the same time."""
        while blob_id in self._fetching:
            await self._fetching[blob_id].wait()
        data = self._cache.get(blob_id)
        if data is not None:
            self._cache.move_to_end(blob_id)
            return data
        self._fetching[blob_id] = arrived = trio.Event()
        try:
            data = await self._from_small_chunk(blob_id)
            if data is None:
                data = await self.repo.get_blob(blob_id)
        finally:
            del self._fetching[blob_id]
            arrived.set()
        self._remember(blob_id, data)
        return data

    async def prefetch(self, blob_ids: list[bytes]) -> None:
        """Fetch these tree blobs into the cache, side by side: from a small chunk
        (WHOLE_CHUNK_BYTES) the whole chunk and every tree blob in it, from others
        spans (neighbours with one ranged GET; a snapshot's nodes are in chunks of
        their own, docs/format.md). Only a head start: a blob that cannot be read
        here is left to `tree_blob`, which reads it alone and fails as it would
        have; a store that cannot be reached raises."""
        wanted = [b for b in dict.fromkeys(blob_ids) if b not in self._cache and b not in self._fetching]
        locations = self.repo.index.get_many(wanted)
        arrived = trio.Event()
        for blob_id in locations:
            self._fetching[blob_id] = arrived
        try:
            by_chunk: dict[bytes, list] = {}
            for location in locations.values():
                by_chunk.setdefault(location.chunk_id, []).append(location)
            async with trio.open_nursery() as nursery:
                for chunk_id, in_chunk in by_chunk.items():
                    nursery.start_soon(self._fetch_from_chunk, chunk_id, in_chunk)
        finally:
            for blob_id in locations:
                del self._fetching[blob_id]
            arrived.set()

    async def _from_small_chunk(self, blob_id: bytes) -> bytes | None:
        """A tree blob, read with every other tree blob of its chunk if that is small
        (WHOLE_CHUNK_BYTES); None if it is not, or the blob is not found that way."""
        location = self.repo.index.get(blob_id)
        if location is None or not await self._read_chunk_whole(location.chunk_id):
            return None
        return self._cache.get(blob_id)

    async def _read_chunk_whole(self, chunk_id: bytes) -> bool:
        """Read a small chunk whole, keeping every tree blob in it (or wait for the
        task reading it); False if it is not small, or cannot be read that way. What
        is wanted may still not be in the cache after True: the callers then read it
        alone, and meet what is wrong with it."""
        reading = self._whole_reads.get(chunk_id)
        if reading is not None:
            await reading.wait()
            return True
        record = self.repo.index.chunk(chunk_id)
        if record is None or record.size > WHOLE_CHUNK_BYTES:
            return False
        self._whole_reads[chunk_id] = done = trio.Event()
        try:
            await self._fetch_whole_chunk(chunk_id)
        except STORE_DOWN:
            raise
        except (IntegrityError, StoreError):
            return False
        finally:
            del self._whole_reads[chunk_id]
            done.set()
        return True

    async def _fetch_from_chunk(self, chunk_id: bytes, locations: list) -> None:
        if await self._read_chunk_whole(chunk_id):
            locations = [location for location in locations if location.blob_id not in self._cache]
        for span in plan_spans(locations, max_gap=SPAN_GAP):
            for blob_id, data in (await fetch_span(self.repo, span)).items():
                if not isinstance(data, Exception):
                    self._remember(blob_id, data)

    async def _fetch_whole_chunk(self, chunk_id: bytes) -> None:
        """Every tree blob of a chunk, from one GET of all of it (its footer lists them)."""
        name = chunk_name(chunk_id)
        data = await self.repo.store.get(name)

        def open_trees() -> dict:
            trees = [loc for loc in parse_footer(self.repo.master, name, data) if loc.kind == BlobKind.TREE]
            if not trees:
                return {}
            span = Span(chunk_id, min(loc.offset for loc in trees),
                        max(loc.offset + loc.length for loc in trees), tuple(trees))
            return open_span(self.repo, span, memoryview(data)[span.start:span.end])

        for blob_id, plaintext in (await trio.to_thread.run_sync(open_trees)).items():
            if not isinstance(plaintext, Exception):
                self._remember(blob_id, plaintext)

    def _remember(self, blob_id: bytes, data: bytes) -> None:
        if blob_id in self._cache:
            return
        self._cache[blob_id] = data
        self._cache_bytes += len(data)
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= len(evicted)

    async def directory(self, node_id: bytes) -> list[Entry]:
        return decode_directory(await self.tree_blob(node_id))

    async def lookup(self, root: bytes, path: bytes) -> Entry | None:
        """The entry at `path` (b"" is not an entry: use the root id directly)."""
        node, entry = root, None
        for name in path.split(b"/"):
            if node is None:
                return None
            entry = next((e for e in await self.directory(node) if e.name == name), None)
            if entry is None:
                return None
            node = entry.subtree
        return entry

    async def walk(self, node_id: bytes, path: bytes = b"") -> AsyncIterator[tuple[bytes, Entry]]:
        """Every entry below a directory node, parents before children."""
        for entry in await self.directory(node_id):
            child = join(path, entry.name)
            yield child, entry
            if entry.subtree is not None:
                async for item in self.walk(entry.subtree, child):
                    yield item

    async def block_ids(self, entry: Entry, first: int, last: int) -> list[bytes | None]:
        return await blocklist.read_ids(entry.blocks, entry.block_list, first, last, self.tree_blob)

    async def read(self, entry: Entry, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of a file entry, holes as zeros."""
        block_size = self.repo.config.block_size
        end = min(entry.size, offset + length)
        if end <= offset:
            return b""
        first, last = offset // block_size, (end - 1) // block_size + 1
        parts = []
        for index, block_id in enumerate(await self.block_ids(entry, first, last), first):
            block_length = min(block_size, entry.size - index * block_size)
            data = bytes(block_length) if block_id is None else await self.repo.get_blob(block_id)
            if len(data) < block_length:
                data += bytes(block_length - len(data))
            parts.append(data)
        joined = b"".join(parts)
        start = offset - first * block_size
        return joined[start:start + (end - offset)]
