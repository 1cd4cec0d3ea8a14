"""Which snapshots and paths damaged blobs hurt: the report `check` gives a person.

A damaged or missing chunk means nothing to someone deciding what to do; "these
files of these snapshots" does. The caller says which blobs are hurt (those in
a missing chunk, those whose records do not open). The walk goes snapshot by snapshot, depth first,
with the path of each entry; a subtree found clean is remembered (bounded LRU),
so the next snapshot, which shares most of its tree, costs only what changed.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from cloudfs.errors import CloudfsError
from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.blocklist import decode_node
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.source import join

UNREADABLE = (CloudfsError, ValueError, KeyError, TypeError)   # a node that cannot be read or decoded
REMEMBERED_CLEAN = 100_000     # subtrees known to touch no damaged chunk
MAX_PATHS = 200                # paths named in all (the rest are counted)


class Affected:
    def __init__(self):
        self.paths: list[tuple[str, str]] = []     # (snapshot name, path)
        self.more = 0                              # affected paths beyond MAX_PATHS


async def affected_paths(repo: Repository, snapshots: list[Snapshot], hurt: Callable[[bytes], bool]) -> Affected:
    walk = _Walk(repo, hurt)
    for snapshot in snapshots:
        await walk.directory(snapshot, snapshot.tree, b"")
    return walk.result


class _Walk:
    def __init__(self, repo: Repository, hurt: Callable[[bytes], bool]):
        self.reader = TreeReader(repo)
        self.hurt = hurt
        self.result = Affected()
        self._clean: OrderedDict[bytes, None] = OrderedDict()

    def _hurt(self, blob_id: bytes | None) -> bool:
        return blob_id is not None and self.hurt(blob_id)

    async def directory(self, snapshot: Snapshot, node: bytes, path: bytes) -> bool:
        """Walk one directory; True if anything under it is hurt."""
        if node in self._clean:
            self._clean.move_to_end(node)
            return False
        if self._hurt(node):
            self._name(snapshot, path or b"/", "its listing")
            return True
        try:
            entries = await self.reader.directory(node)
        except UNREADABLE:
            self._name(snapshot, path or b"/", "its listing")
            return True
        hurt = False
        for entry in entries:
            where = join(path, entry.name)
            if entry.subtree is not None:
                hurt |= await self.directory(snapshot, entry.subtree, where)
            elif await self._file_hurt(entry):
                self._name(snapshot, where, "content")
                hurt = True
        if not hurt:
            self._clean[node] = None
            if len(self._clean) > REMEMBERED_CLEAN:
                self._clean.popitem(last=False)
        return hurt

    async def _file_hurt(self, entry) -> bool:
        if any(self._hurt(block) for block in entry.blocks or ()):
            return True
        return entry.block_list is not None and await self._block_list_hurt(entry.block_list)

    async def _block_list_hurt(self, node: bytes) -> bool:
        if node in self._clean:
            return False
        if self._hurt(node):
            return True
        try:
            level, ids = decode_node(await self.reader.tree_blob(node))
        except UNREADABLE:
            return True
        if level == 0:
            hurt = any(self._hurt(block) for block in ids)
        else:
            hurt = False
            for child in ids:
                if child is not None and await self._block_list_hurt(child):
                    hurt = True
                    break
        if not hurt:
            self._clean[node] = None
        return hurt

    def _name(self, snapshot: Snapshot, path: bytes, what: str) -> None:
        if len(self.result.paths) < MAX_PATHS:
            shown = path.decode(errors="replace") if path.startswith(b"/") else "/" + path.decode(errors="replace")
            self.result.paths.append((snapshot.name, f"{shown} ({what})"))
        else:
            self.result.more += 1
