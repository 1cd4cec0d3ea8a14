"""Snapshot trees, decoded once and kept: directory nodes and block lists.

The snapshot reader (cloudfs.snapshot.reader) keeps tree blobs as bytes and
decodes them on every use, which is right for the builder. A mount answers
thousands of lookups and reads from the same few nodes, so here each node is
kept decoded (entries with a name index; block ids as lists), in LRUs bounded
by entries and by nodes. Tree blobs come through the BlobFetcher: verified,
coalesced where neighbours, and kept sealed in its disk cache, so a second
mount lists a snapshot without the network.

`prefetch_tree` fetches a snapshot's directory nodes breadth first, about a
MiB of nodes at a time, so that listing a whole snapshot costs a GET per MiB
of nodes instead of one per directory. Memory is bounded, not proportional
to the tree (I8): the cache keeps DIRECTORY_ENTRIES decoded entries (a
decoded entry takes ~0.6 KiB, six times its encoded size), a prefetch keeps
only the first half of that decoded and leaves the rest in the disk cache,
and callers walking many directories take them in groups (`groups`).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator

from cloudfs.browse.blobs import BlobFetcher
from cloudfs.errors import IntegrityError
from cloudfs.snapshot.blocklist import FANOUT, decode_node
from cloudfs.snapshot.tree import Entry, decode_directory

log = logging.getLogger(__name__)

DIRECTORY_ENTRIES = 32_768      # decoded entries kept (~0.6 KiB each: ~20 MiB)
BLOCK_LIST_NODES = 1024         # decoded block-list nodes kept (one covers 256 blocks)
PREFETCH_ENTRIES = 2_000_000    # a tree prefetch stops after this many entries
GROUP_BYTES = 1 << 20           # directory nodes (stored size) fetched and decoded at once
GROUP_LOOKUP = 500              # node ids looked up in the index at once to form groups


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

    async def directories(self, node_ids: list[bytes], *, remember: bool = True
                          ) -> dict[bytes, Directory | Exception]:
        """Several nodes at once (one round of coalesced fetches for the missing);
        `remember` False decodes them without keeping them. Callers with many
        nodes ask for them in `groups`, or all of them are decoded at once."""
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
                if isinstance(value, Exception):
                    out[node_id] = value
                else:
                    try:
                        out[node_id] = self._remember(node_id, value) if remember else _decode(node_id, value)
                    except IntegrityError as error:
                        out[node_id] = error
        return out

    def groups(self, node_ids: list[bytes], max_bytes: int | None = None) -> Iterator[list[bytes]]:
        """`node_ids` in consecutive groups of at most `max_bytes` (GROUP_BYTES)
        of nodes (a single larger node is a group of its own): what `directories`
        should be given at once, so that memory holds one group decoded, not a
        whole level."""
        max_bytes = max_bytes or GROUP_BYTES
        for start in range(0, len(node_ids), GROUP_LOOKUP):
            batch = node_ids[start:start + GROUP_LOOKUP]
            locations = self.fetcher.repo.index.get_many(batch)
            group, size = [], 0
            for node_id in batch:
                location = locations.get(node_id)
                length = location.raw_length if location is not None else 0
                if group and size + length > max_bytes:
                    yield group
                    group, size = [], 0
                group.append(node_id)
                size += length
            if group:
                yield group

    def _remember(self, node_id: bytes, data: bytes) -> Directory:
        directory = _decode(node_id, data)
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

    async def prefetch_tree(self, root: bytes, until_idle: Callable[[], Awaitable[None]] | None = None,
                            budget: int = PREFETCH_ENTRIES) -> int:
        """Fetch the directory nodes below `root`, breadth first, a group at a
        time, each once `until_idle` returns; stop after `budget` entries. The
        first half of the cache's worth is kept decoded, the rest only goes to
        the disk cache (without one, the prefetch stops there). Failures are
        left for the reads that need those nodes to report. Returns the number
        of nodes read."""
        kept = self.max_entries // 2
        if self.fetcher.disk is None:
            budget = min(budget, kept)
        pending, seen, entries, started = deque([root]), {root}, 0, time.monotonic()
        while pending and entries < budget:
            batch = [pending.popleft() for _ in range(min(GROUP_LOOKUP, len(pending)))]
            for group in self.groups(batch):
                if until_idle is not None:
                    await until_idle()
                found = await self.directories(group, remember=entries < kept)
                for value in found.values():
                    if isinstance(value, Exception):
                        continue
                    entries += len(value.entries)
                    for entry in value.entries:
                        if entry.subtree is not None and entry.subtree not in seen:
                            seen.add(entry.subtree)
                            pending.append(entry.subtree)
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
        return self._remember_block_node(node_id, await self.fetcher.get(node_id, keep=False))

    async def prefetch_block_lists(self, entries: Iterable[Entry]) -> None:
        """The block-list nodes of these files, a level at a time, each level in one
        round of coalesced fetches, up to half of what the cache keeps: files with
        block lists then wait for a round trip per level, not one per node (the
        first batch of a restore had four in a row). Nodes that cannot be read are
        left for the reads that need them to report."""
        budget = self.max_block_nodes // 2
        wanted = [entry.block_list for entry in entries if entry.block_list is not None]
        while wanted and budget > 0:
            wanted = [node_id for node_id in dict.fromkeys(wanted) if node_id not in self._block_nodes][:budget]
            budget -= len(wanted)
            children = []
            for node_id, data in (await self.fetcher.fetch_all(wanted, keep=False)).items():
                if isinstance(data, Exception):
                    continue
                try:
                    level, ids = self._remember_block_node(node_id, data)
                except IntegrityError:
                    continue
                if level > 0:
                    children.extend(child for child in ids if child is not None)
            wanted = children

    def _remember_block_node(self, node_id: bytes, data: bytes) -> tuple[int, list]:
        try:
            node = decode_node(data)
        except (ValueError, KeyError, TypeError) as error:
            raise IntegrityError(f"tree blob {node_id.hex()[:16]}",
                                 f"not a block-list node ({error})") from None
        self._block_nodes[node_id] = node
        while len(self._block_nodes) > self.max_block_nodes:
            self._block_nodes.popitem(last=False)
        return node


def _decode(node_id: bytes, data: bytes) -> Directory:
    try:
        return Directory(decode_directory(data))
    except (ValueError, KeyError, TypeError) as error:
        raise IntegrityError(f"tree blob {node_id.hex()[:16]}", f"not a directory node ({error})") from None
