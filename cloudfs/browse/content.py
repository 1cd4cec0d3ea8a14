"""File content for the mount: verified reads, read-ahead, and directory prefetch.

A read of bytes [o, o+n) becomes the blocks that hold them (block ids from the
cached block list), fetched through the BlobFetcher (so verified, coalesced
and cached), then cut to the range; zero blocks are zeros and never fetched.

Read-ahead: a handle that reads sequentially gets a window of blocks fetched
ahead of it, starting at 4 MiB and doubling per sequential read up to 32 MiB;
more is asked for only once half the window has been consumed, so the fetches
go out as a few large ranged GETs in flight at once. A jump resets the window.
The fetcher's budget bounds what all handles together have in flight.

Neighbour prefetch: when a small file is opened, the small files after it in
its directory are fetched in the background in one go (their blobs sit side
by side in the chunks), because `cp -a`, `rsync` and file managers read them
next, one file at a time. Listing a directory (`ls -lR`) fetches no content.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudfs.browse.background import Background
from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import IntegrityError
from cloudfs.snapshot.tree import Entry

INITIAL_WINDOW = 4 << 20
MAX_WINDOW = 32 << 20
SMALL_FILE = 1 << 20
DISK_CACHED_FILE = 16 << 20      # larger files stream past the disk cache (see docs/browse.md)
DIRECTORY_PREFETCH = 32 << 20    # bytes of small files fetched ahead in one directory
REFILL_FILES = 8                 # ... again when the reader is this close to the end of it
DIRECTORIES_TRACKED = 4096


@dataclass
class ReadAhead:
    """Where one handle's reader is and how far ahead blocks were asked for."""

    window: int = 0          # blocks
    ahead_until: int = 0     # blocks below this have been asked for
    furthest: int = 0        # end block of the furthest read so far
    frontiers: dict = field(default_factory=dict)   # chunk id -> end of the region asked for


class ContentReader:
    def __init__(self, trees: TreeCache, fetcher: BlobFetcher, block_size: int, background: Background):
        self.trees = trees
        self.fetcher = fetcher
        self.block_size = block_size
        self.background = background
        self._zeros = memoryview(bytes(block_size))
        self._neighbours_done: dict[bytes, int] = {}    # directory node -> entries fetched ahead

    async def read(self, entry: Entry, offset: int, size: int, ahead: ReadAhead | None = None) -> bytes:
        """Bytes [offset, offset+size) of a file entry, verified; IntegrityError or
        StoreError if any block of the range cannot be read."""
        end = min(entry.size, offset + size)
        if end <= offset:
            return b""
        block_size = self.block_size
        first, last = offset // block_size, (end - 1) // block_size + 1
        ids = await self.trees.block_ids(entry, first, last)
        if len(ids) != last - first:
            raise IntegrityError(f"the block list of a {entry.size}-byte file",
                                 f"lists {len(ids)} of blocks {first}..{last - 1}")
        if ahead is not None:
            self._read_ahead(entry, ahead, first, last)
        blobs = await self.fetcher.get_many([b for b in ids if b is not None],
                                            persist=entry.size <= DISK_CACHED_FILE)
        parts = []
        for index, block_id in enumerate(ids, first):
            length = min(block_size, entry.size - index * block_size)
            data = self._zeros[:length] if block_id is None else blobs[block_id]
            if len(data) != length:
                raise IntegrityError(f"block {index}", f"holds {len(data)} bytes, the file needs {length}")
            parts.append(data)
        start = offset - first * block_size
        joined = b"".join(parts)
        return joined if start == 0 and len(joined) == end - offset else joined[start:start + end - offset]

    def _read_ahead(self, entry: Entry, ahead: ReadAhead, first: int, last: int) -> None:
        blocks = (entry.size + self.block_size - 1) // self.block_size
        initial, most = INITIAL_WINDOW // self.block_size, MAX_WINDOW // self.block_size
        sequential = first == 0 or ahead.furthest - most <= first <= ahead.furthest + initial
        ahead.furthest = max(ahead.furthest, last) if sequential else last
        if not sequential:
            ahead.window, ahead.ahead_until, ahead.frontiers = 0, last, {}
            return
        ahead.window = initial if ahead.window == 0 else min(most, ahead.window * 2)
        target = min(blocks, last + ahead.window)
        start = max(ahead.ahead_until, last)
        if start >= target or (target - start < ahead.window // 2 and target < blocks):
            return
        ahead.ahead_until = target
        ids = self.trees.cached_block_ids(entry, start, target)
        if ids is None:
            self.background.spawn(self._prefetch_blocks, entry, ahead, start, target)
        else:
            self._prefetch_regions(ahead, ids)

    async def _prefetch_blocks(self, entry: Entry, ahead: ReadAhead, first: int, last: int) -> None:
        self._prefetch_regions(ahead, await self.trees.block_ids(entry, first, last))

    def _prefetch_regions(self, ahead: ReadAhead, ids: list) -> None:
        """Ask for the chunk regions that hold these blocks, each from where the
        last request for that chunk ended, so no byte is fetched twice."""
        regions: dict[bytes, list[int]] = {}
        for location in self.fetcher.repo.index.get_many(b for b in ids if b is not None).values():
            region = regions.setdefault(location.chunk_id, [location.offset, 0])
            region[0] = min(region[0], location.offset)
            region[1] = max(region[1], location.offset + location.length)
        for chunk_id, (low, high) in regions.items():
            frontier = ahead.frontiers.get(chunk_id)
            if frontier is not None and low <= frontier + MAX_WINDOW:
                low = max(low, frontier)
            if high > low:
                self.fetcher.prefetch_region(chunk_id, low, high)
                ahead.frontiers[chunk_id] = max(high, frontier or 0)

    def prefetch_neighbours(self, directory_id: bytes, name: bytes) -> None:
        """A small file was opened: fetch the small files after it in its
        directory in the background, DIRECTORY_PREFETCH bytes at a time, before
        their turn comes (`cp -a`, `rsync` and file managers go through a
        directory in order). Listing a directory fetches nothing."""
        directory = self.trees.cached_directory(directory_id)
        index = directory.index(name) if directory is not None else None
        if index is None or directory.entries[index].size > SMALL_FILE:
            return
        done_until = self._neighbours_done.get(directory_id, 0)
        if index < done_until - REFILL_FILES:
            return
        wanted, total, position = [], 0, max(index, done_until)
        for position in range(position, len(directory.entries)):
            entry = directory.entries[position]
            if entry.is_file and entry.blocks is not None and 0 < entry.size <= SMALL_FILE:
                if total + entry.size > DIRECTORY_PREFETCH:
                    break
                wanted += [b for b in entry.blocks if b is not None]
                total += entry.size
        else:
            position = len(directory.entries)
        self._neighbours_done[directory_id] = position
        while len(self._neighbours_done) > DIRECTORIES_TRACKED:
            self._neighbours_done.pop(next(iter(self._neighbours_done)))
        if wanted:
            self.fetcher.prefetch(wanted)
