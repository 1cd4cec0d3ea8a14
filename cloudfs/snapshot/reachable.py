"""Which chunks the snapshots need: every blob their trees reach, walked with bounded memory.

Lock extension (cloudfs/snapshot/locks.py) needs the chunks; prune needs the
blobs themselves (`walk_blobs`, which hands each id to its caller). The walk
goes snapshot by snapshot, directory node by directory node; what it keeps is
the set of chunk ids (a chunk is 64 MiB, so a TiB is 16k ids) and a bounded
memory of subtrees and block-list nodes already walked, so the next snapshot,
which shares most of its tree with the last, costs only what changed. The
memory is an LRU: a subtree forgotten and met again is walked again, which
costs time, never correctness.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cloudfs.errors import CloudfsError
from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.blocklist import decode_node
from cloudfs.snapshot.reader import TreeReader

REMEMBERED_NODES = 100_000     # subtrees and block-list nodes known walked (~100 bytes each)
MAX_PROBLEMS = 20              # unreadable nodes named in the result (all are counted)


@dataclass
class Reachable:
    chunks: set[bytes] = field(default_factory=set)    # ids of the chunks holding reachable blobs
    missing_blobs: int = 0                              # reachable blobs the index does not know
    unreadable: int = 0                                 # tree nodes that could not be read
    problems: list[str] = field(default_factory=list)   # the first few of those, named


async def reachable_chunks(repo: Repository, snapshots: list[Snapshot], *,
                           remembered: int = REMEMBERED_NODES) -> Reachable:
    result = Reachable()

    def count(blob_id: bytes) -> None:
        location = repo.index.get(blob_id)
        if location is None:
            result.missing_blobs += 1
        else:
            result.chunks.add(location.chunk_id)

    walk = _Walk(repo, remembered, count, result)
    for snapshot in snapshots:
        await walk.directory(snapshot.tree)
    return result


async def walk_blobs(repo: Repository, roots: list[bytes], visit: Callable[[bytes], None], *,
                     remembered: int = REMEMBERED_NODES) -> Reachable:
    """Call `visit(blob_id)` for every blob the trees of `roots` reach (tree nodes
    and data blocks; an id may be visited more than once). The result counts and
    names the nodes that could not be read (its `chunks` stay empty): below those,
    what is reached is unknown."""
    result = Reachable()
    walk = _Walk(repo, remembered, visit, result)
    for root in roots:
        await walk.directory(root)
    return result


class _Walk:
    def __init__(self, repo: Repository, remembered: int, visit: Callable[[bytes], None], result: Reachable):
        self.reader = TreeReader(repo)
        self.result = result
        self._visit = visit
        self._walked: OrderedDict[bytes, None] = OrderedDict()
        self._remembered = remembered

    async def directory(self, root: bytes) -> None:
        await self._walk(root, self._directory_children)

    async def _walk(self, root: bytes, children) -> None:
        """Depth first from `root`: `children(node)` counts what a node refers to
        and returns the nodes below it still to walk."""
        pending = [root]
        while pending:
            node = pending.pop()
            if not self._first_visit(node):
                continue
            try:
                pending.extend(await children(node))
            except (CloudfsError, ValueError, KeyError, TypeError) as error:
                self._unreadable(node, error)

    async def _directory_children(self, node: bytes) -> list[bytes]:
        subtrees = []
        for entry in await self.reader.directory(node):
            if entry.subtree is not None:
                subtrees.append(entry.subtree)
            for block in entry.blocks or ():
                self._blob(block)
            if entry.block_list is not None:
                await self._walk(entry.block_list, self._block_list_children)
        return subtrees

    async def _block_list_children(self, node: bytes) -> list[bytes]:
        level, ids = decode_node(await self.reader.tree_blob(node))
        if level > 0:
            return [child for child in ids if child is not None]
        for block in ids:
            self._blob(block)
        return []

    def _first_visit(self, node: bytes) -> bool:
        """Count the node's own chunk, and say whether it still needs walking."""
        if node in self._walked:
            self._walked.move_to_end(node)
            return False
        self._walked[node] = None
        if len(self._walked) > self._remembered:
            self._walked.popitem(last=False)
        self._blob(node)
        return True

    def _blob(self, blob_id: bytes | None) -> None:
        if blob_id is not None:     # None: a block of zeros, stored nowhere
            self._visit(blob_id)

    def _unreadable(self, node: bytes, error: Exception) -> None:
        self.result.unreadable += 1
        if len(self.result.problems) < MAX_PROBLEMS:
            self.result.problems.append(f"tree node {node.hex()[:16]}: {error}")
