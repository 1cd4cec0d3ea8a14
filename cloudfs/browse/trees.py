"""Snapshot trees, decoded once and kept: directory nodes and block lists.

The snapshot reader (cloudfs.snapshot.reader) keeps tree blobs as bytes and
decodes them on every use, which is right for the builder. A mount answers
thousands of lookups and reads from the same few nodes, so here each node is
kept decoded (entries with a name index; block ids as lists), in LRUs bounded
by entries and by nodes. Tree blobs come through the BlobFetcher: verified,
coalesced where neighbours, and kept sealed in its disk cache, so a second
mount lists a snapshot without the network.

`prefetch_tree` fetches a snapshot's directory nodes level by level, every
node of a level at once, so that listing a whole snapshot costs a handful of
round trips instead of one per directory.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from cloudfs.browse.blobs import BlobFetcher
from cloudfs.errors import IntegrityError
from cloudfs.snapshot.blocklist import FANOUT, decode_node
from cloudfs.snapshot.tree import Entry, decode_directory

log = logging.getLogger(__name__)

DIRECTORY_ENTRIES = 200_000     # decoded entries kept (~0.5 KiB each)
BLOCK_LIST_NODES = 1024         # decoded block-list nodes kept (one covers 256 blocks)
PREFETCH_ENTRIES = 100_000      # a tree prefetch stops after this many entries


class Directory:
    """One decoded directory node: entries sorted by name, found by name."""

    __slots__ = ("entries", "_index")

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self._index: dict[bytes, int] | None = None

    def index(self, name: bytes) -> int | None:
        """Where `name` is in `entries`, or None."""
        if self._index is None:
            self._index = {entry.name: index for index, entry in enumerate(self.entries)}
        return self._index.get(name)

    def child(self, name: bytes) -> Entry | None:
        index = self.index(name)
        return None if index is None else self.entries[index]


class TreeCache:
    def __init__(self, fetcher: BlobFetcher, *, max_entries: int = DIRECTORY_ENTRIES,
                 max_block_nodes: int = BLOCK_LIST_NODES):
        self.fetcher = fetcher
        self.max_entries = max_entries
        self.max_block_nodes = max_block_nodes
        self._directories: OrderedDict[bytes, Directory] = OrderedDict()
        self._entries = 0
        self._block_nodes: OrderedDict[bytes, tuple[int, list]] = OrderedDict()

    # -- directories ------------------------------------------------------------------

    def cached_directory(self, node_id: bytes) -> Directory | None:
        directory = self._directories.get(node_id)
        if directory is not None:
            self._directories.move_to_end(node_id)
        return directory

    async def directory(self, node_id: bytes) -> Directory:
        """The decoded node; IntegrityError/StoreError if it cannot be read."""
        directory = self.cached_directory(node_id)
        if directory is None:
            directory = self._remember(node_id, await self.fetcher.get(node_id, keep=False))
        return directory

    async def directories(self, node_ids: list[bytes]) -> dict[bytes, Directory | Exception]:
        """Several nodes at once (one round of coalesced fetches for the missing)."""
        out: dict[bytes, Directory | Exception] = {}
        missing = []
        for node_id in node_ids:
            directory = self.cached_directory(node_id)
            if directory is not None:
                out[node_id] = directory
            else:
                missing.append(node_id)
        if missing:
            for node_id, value in (await self.fetcher.fetch_all(missing, keep=False)).items():
                out[node_id] = value if isinstance(value, Exception) else self._remember(node_id, value)
        return out

    def _remember(self, node_id: bytes, data: bytes) -> Directory:
        try:
            directory = Directory(decode_directory(data))
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"tree blob {node_id.hex()[:16]}",
                                 f"not a directory node ({error})") from None
        if node_id not in self._directories:
            self._directories[node_id] = directory
            self._entries += len(directory.entries)
            while self._entries > self.max_entries and len(self._directories) > 1:
                _, evicted = self._directories.popitem(last=False)
                self._entries -= len(evicted.entries)
        return directory

    async def lookup(self, root: bytes, path: bytes) -> Entry | None:
        """The entry at `path` below directory node `root` (b"" has no entry)."""
        node, entry = root, None
        for name in path.split(b"/"):
            if node is None:
                return None
            entry = (await self.directory(node)).child(name)
            if entry is None:
                return None
            node = entry.subtree
        return entry

    async def prefetch_tree(self, root: bytes, budget: int = PREFETCH_ENTRIES) -> int:
        """Fetch the directory nodes below `root`, breadth first, a level at a
        time; stop after `budget` entries. Failures are left for the reads that
        need those nodes to report. Returns the number of nodes read."""
        level, seen, entries, started = [root], {root}, 0, time.monotonic()
        while level and entries < budget:
            found = await self.directories(level)
            level = []
            for value in found.values():
                if isinstance(value, Exception):
                    continue
                entries += len(value.entries)
                for entry in value.entries:
                    if entry.subtree is not None and entry.subtree not in seen:
                        seen.add(entry.subtree)
                        level.append(entry.subtree)
        log.info("tree %s: %d directory nodes, %d entries read ahead in %.2f s",
                 root.hex()[:16], len(seen), entries, time.monotonic() - started)
        return len(seen)

    # -- block lists ------------------------------------------------------------------

    async def block_ids(self, entry: Entry, first: int, last: int) -> list[bytes | None]:
        """Block ids first..last-1 of a file (None: a block of zeros)."""
        if entry.blocks is not None:
            return entry.blocks[first:last]
        if entry.block_list is None or last <= first:
            return []
        out: list[bytes | None] = []
        await self._collect(entry.block_list, first, last, 0, out)
        return out

    def cached_block_ids(self, entry: Entry, first: int, last: int) -> list[bytes | None] | None:
        """Like block_ids, from decoded nodes only: None if one is not at hand."""
        if entry.blocks is not None:
            return entry.blocks[first:last]
        if entry.block_list is None or last <= first:
            return []
        out: list[bytes | None] = []
        return out if self._collect_cached(entry.block_list, first, last, 0, out) else None

    def _collect_cached(self, node_id: bytes, first: int, last: int, base: int, out: list) -> bool:
        node = self._block_nodes.get(node_id)
        if node is None:
            return False
        level, ids = node
        span = FANOUT ** level
        for index in range(max(0, (first - base) // span), len(ids)):
            start = base + index * span
            if start >= last:
                break
            if level == 0:
                out.append(ids[index])
            elif not self._collect_cached(ids[index], first, last, start, out):
                return False
        return True

    async def _collect(self, node_id: bytes, first: int, last: int, base: int, out: list) -> None:
        level, ids = await self._block_node(node_id)
        span = FANOUT ** level
        low = max(0, (first - base) // span)
        for index in range(low, len(ids)):
            start = base + index * span
            if start >= last:
                break
            if level == 0:
                out.append(ids[index])
            else:
                await self._collect(ids[index], first, last, start, out)

    async def _block_node(self, node_id: bytes) -> tuple[int, list]:
        node = self._block_nodes.get(node_id)
        if node is not None:
            self._block_nodes.move_to_end(node_id)
            return node
        data = await self.fetcher.get(node_id, keep=False)
        try:
            node = decode_node(data)
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"tree blob {node_id.hex()[:16]}",
                                 f"not a block-list node ({error})") from None
        self._block_nodes[node_id] = node
        while len(self._block_nodes) > self.max_block_nodes:
            self._block_nodes.popitem(last=False)
        return node
