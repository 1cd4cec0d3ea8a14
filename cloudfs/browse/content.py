"""File content for the mount: verified reads, read-ahead, and directory prefetch.

A read of bytes [o, o+n) becomes the blocks that hold them (block ids from the
cached block list), fetched through the BlobFetcher (so verified, coalesced
and cached), then cut to the range; zero blocks are zeros and never fetched.

Read-ahead: a handle that reads sequentially gets a window of blocks fetched
ahead of it, starting at 4 MiB and doubling per sequential read up to 32 MiB;
more is asked for only once half the window has been consumed, so the fetches
go out as a few large ranged GETs in flight at once. A jump resets the window.
The fetcher's budget bounds what all handles together have in flight.

Directory prefetch: when a directory of a snapshot is opened, the blocks of
its small files are fetched in the background in one go (their blobs sit side
by side in the chunks), because `cp -a`, `rsync` and file managers read them
next, one file at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloudfs.browse.background import Background
from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import IntegrityError
from cloudfs.snapshot.tree import Entry

INITIAL_WINDOW = 4 << 20
MAX_WINDOW = 32 << 20
SMALL_FILE = 1 << 20
DIRECTORY_PREFETCH = 32 << 20


@dataclass
class ReadAhead:
    """Where one handle's reader is and how far ahead blocks were asked for."""

    window: int = 0          # blocks
    ahead_until: int = 0     # blocks below this have been asked for
    furthest: int = 0        # end block of the furthest read so far


class ContentReader:
    def __init__(self, trees: TreeCache, fetcher: BlobFetcher, block_size: int, background: Background):
        self.trees = trees
        self.fetcher = fetcher
        self.block_size = block_size
        self.background = background
        self._zeros = memoryview(bytes(block_size))

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
        blobs = await self.fetcher.get_many([b for b in ids if b is not None])
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
            ahead.window, ahead.ahead_until = 0, last
            return
        ahead.window = initial if ahead.window == 0 else min(most, ahead.window * 2)
        target = min(blocks, last + ahead.window)
        start = max(ahead.ahead_until, last)
        if start >= target or (target - start < ahead.window // 2 and target < blocks):
            return
        ahead.ahead_until = target
        self.background.spawn(self._prefetch_blocks, entry, start, target)

    async def _prefetch_blocks(self, entry: Entry, first: int, last: int) -> None:
        ids = await self.trees.block_ids(entry, first, last)
        await self.fetcher.prefetch([b for b in ids if b is not None])

    def prefetch_small_files(self, entries: list[Entry]) -> None:
        """Fetch the blocks of a directory's small files in the background."""
        wanted, total = [], 0
        for entry in entries:
            if entry.is_file and entry.blocks is not None and 0 < entry.size <= SMALL_FILE:
                if total + entry.size > DIRECTORY_PREFETCH:
                    break
                wanted += [b for b in entry.blocks if b is not None]
                total += entry.size
        if wanted:
            self.background.spawn(self.fetcher.prefetch, wanted)
