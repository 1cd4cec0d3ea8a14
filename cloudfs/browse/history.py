"""The per-file history view: every version of a path, and nothing twice.

`history/<path>` is a folder. If <path> was a file (or symlink, or device) in
some snapshots, the folder lists one entry per *version*: the snapshots, oldest
first, in which its content or its visible metadata (mode, owner, size, mtime,
xattrs, link target) differs from the version before; each is named by its
snapshot's time plus the file's extension. If <path> was a directory in some
snapshots, the folder also lists the union of its children over all of them,
so deleted files can be found too.

Inode numbers, link counts and ctimes are not compared: they change when a
file is renamed or linked, which the user does not see as a new version.
Snapshots share unchanged subtrees by id, so walking a path in every snapshot
mostly hits nodes already decoded once. Where they do not (a directory that
changed in each of hundreds of snapshots), the distinct nodes are read a
group at a time (`TreeCache.groups`, about a MiB of nodes) and only the entry
each one holds for the path is kept: memory grows with the number of
snapshots, by an entry each, not with the size of their trees.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field

from cloudfs.browse.names import Catalog, version_name
from cloudfs.browse.trees import TreeCache
from cloudfs.repo import Snapshot
from cloudfs.snapshot.tree import Entry

log = logging.getLogger(__name__)

LISTINGS_KEPT = 256


def version_key(entry: Entry) -> tuple:
    """What makes two entries the same version for a person looking at them."""
    return (entry.mode, entry.uid, entry.gid, entry.size, entry.mtime_ns, entry.rdev, entry.target,
            tuple(sorted(entry.xattrs.items())),
            tuple(entry.blocks) if entry.blocks is not None else None, entry.block_list)


@dataclass
class HistoryListing:
    """What the history folder of one path holds."""

    versions: dict[bytes, tuple[Snapshot, Entry]] = field(default_factory=dict)
    children: list[bytes] = field(default_factory=list)   # names of sub-paths (folders too)
    newest_time_ns: int = 0


class History:
    def __init__(self, trees: TreeCache):
        self.trees = trees
        self._listings: OrderedDict[tuple[int, bytes], HistoryListing] = OrderedDict()

    async def listing(self, catalog: Catalog, path: bytes) -> HistoryListing:
        key = (catalog.generation, path)
        listing = self._listings.get(key)
        if listing is None:
            listing = await self._build(catalog, path)
            self._listings[key] = listing
            while len(self._listings) > LISTINGS_KEPT:
                self._listings.popitem(last=False)
        return listing

    async def _build(self, catalog: Catalog, path: bytes) -> HistoryListing:
        states = await self.states(catalog, path)
        listing = HistoryListing(newest_time_ns=catalog.latest.time_ns if catalog.latest else 0)
        previous = None
        directories = []
        for snapshot, entry, directory_id in states:
            if directory_id is not None:
                directories.append(directory_id)
            if entry is None or entry.is_dir:
                continue
            key = version_key(entry)
            if key != previous:
                name = version_name(catalog.time_name(snapshot), os.path.basename(path))
                listing.versions[name] = (snapshot, entry)
            previous = key
        children: set[bytes] = set()
        for group in self.trees.groups(list(dict.fromkeys(directories))):
            for directory in (await self.trees.directories(group)).values():
                if isinstance(directory, Exception):
                    log.error("history of /%s: a directory node is unreadable: %s", os.fsdecode(path), directory)
                    continue
                children.update(entry.name for entry in directory.entries)
        listing.children = sorted(children - set(listing.versions))
        return listing

    async def states(self, catalog: Catalog, path: bytes
                     ) -> list[tuple[Snapshot, Entry | None, bytes | None]]:
        """For each snapshot, oldest first: the entry at `path` (None if absent)
        and, when it is a directory, its node id. Walks all snapshots a level
        at a time so that each distinct node is fetched once, a group at a time."""
        current = {s.name: s.tree for s in catalog.snapshots}   # snapshot -> node of the level
        entries: dict[str, Entry | None] = {s.name: None for s in catalog.snapshots}
        for name in (path.split(b"/") if path else []):
            found = await self._children_named(list(dict.fromkeys(n for n in current.values() if n)), name)
            for snapshot_name, node_id in current.items():
                entry = found.get(node_id) if node_id else None
                entries[snapshot_name] = entry
                current[snapshot_name] = entry.subtree if entry is not None else None
        return [(s, entries[s.name], current[s.name]) for s in catalog.snapshots]

    async def _children_named(self, node_ids: list[bytes], name: bytes) -> dict[bytes, Entry | None]:
        """The entry called `name` in each of these directory nodes (None if it has
        none, or cannot be read), reading them a group at a time."""
        found: dict[bytes, Entry | None] = {}
        for group in self.trees.groups(node_ids):
            for node_id, directory in (await self.trees.directories(group)).items():
                found[node_id] = None if isinstance(directory, Exception) else directory.child(name)
        return found
