"""What is where in the snapshot mount, and the inode numbers the kernel holds.

    /                          ROOT
    ├── 2026-11-26T054000Z/    SNAPSHOT (view "t"), then ENTRY all the way down
    ├── latest -> 2026-…Z      LATEST (a symlink, so no tree is shown twice)
    ├── history/…/report.odt/  HISTORY folders; inside a file's folder, VERSIONs
    │   └── 2026-11-26T054000Z.odt
    └── @GMT/                  SHADOW: Samba's view (vfs_shadow_copy2)
        └── @GMT-2026.11.26-05.40.00/   SNAPSHOT (view "g"), then ENTRY

A node is identified by a key that follows from where it is, so the same path
always gets the same inode while the kernel remembers it. Hard links inside a
snapshot share one inode number (slots.py), so `cp -a` and `find` see them as
links. The two views of a snapshot ("t", "g") have separate nodes: a
directory must not have two parents.

Lookup counts follow the FUSE protocol: every lookup reply and every entry of
a readdirplus reply adds one, forget() subtracts; at zero the node is dropped
(bounded memory). What is inside a snapshot has no node kept at all: its
inode number says which directory and which entry it is (slots.py), and the
node is made again from the tree cache whenever the kernel asks; only the
top level, @GMT, history folders and versions are nodes of the table. New
snapshots appear through refresh(): periodically, and when a name is looked
up that could be a snapshot's.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from cloudfs.browse.background import Background
from cloudfs.browse.history import History
from cloudfs.browse.names import LATEST, Catalog, looks_like_snapshot_name
from cloudfs.browse.slots import Slot, SlotTable, is_entry_ino
from cloudfs.browse.trees import Directory, TreeCache
from cloudfs.errors import CloudfsError
from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.source import join
from cloudfs.snapshot.tree import Entry

log = logging.getLogger(__name__)

ROOT_INO = 1
HISTORY_NAME = b"history"
SHADOW_NAME = b"@GMT"
LATEST_NAME = LATEST.encode()
REFRESH_AT_MOST_EVERY = 1.0     # seconds, for refreshes caused by lookups


class Kind(enum.Enum):
    ROOT = "root"
    SHADOW = "shadow"
    SNAPSHOT = "snapshot"
    ENTRY = "entry"
    LATEST = "latest"
    HISTORY = "history"
    VERSION = "version"


IMMUTABLE = {Kind.SNAPSHOT, Kind.ENTRY, Kind.VERSION}


@dataclass(eq=False, slots=True)
class Node:
    ino: int
    kind: Kind
    key: tuple                  # where it is; entries: (view, snapshot name, path)
    snapshot: Snapshot | None = None
    path: bytes = b""           # inside the snapshot (ENTRY, VERSION) or history (HISTORY)
    entry: Entry | None = None  # ENTRY and VERSION
    target: bytes = b""         # LATEST
    parent_tree: bytes | None = None   # ENTRY: the directory node that lists it
    lookups: int = 0

    @property
    def immutable(self) -> bool:
        return self.kind in IMMUTABLE

    @property
    def is_directory(self) -> bool:
        return self.entry.is_dir if self.entry is not None else self.kind is not Kind.LATEST

    @property
    def directory_id(self) -> bytes | None:
        """The tree node listing this directory's content (snapshot views only)."""
        if self.kind is Kind.SNAPSHOT:
            return self.snapshot.tree
        if self.kind is Kind.ENTRY and self.entry.is_dir:
            return self.entry.subtree
        return None

    def label(self) -> str:
        """Which snapshot and path, for log lines."""
        if self.snapshot is None:
            return f"/{os.fsdecode(self.path)}"
        return f"{self.snapshot.name}:/{os.fsdecode(self.path)}"


class NodeListing:
    """What a directory of the namespace's own lists (top level, @GMT, history)."""

    def __init__(self, namespace: "Namespace", items: list[tuple[bytes, Node]]):
        self.namespace = namespace
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def at(self, index: int) -> tuple[bytes, Node]:
        """The name and node of entry `index`, put back in the table if it was dropped."""
        name, node = self.items[index]
        return name, self.namespace.register(node)

    def close(self) -> None:
        for _, node in self.items:
            self.namespace.drop(node)        # only those the kernel was never given


class EntryListing:
    """A directory inside a snapshot: its decoded node, held while the listing is open."""

    def __init__(self, namespace: "Namespace", slot: Slot, directory: Directory):
        self.namespace = namespace
        self.slot = slot
        self.directory = directory
        namespace.slots.open_listing(slot)

    def __len__(self) -> int:
        return len(self.directory.entries)

    def at(self, index: int) -> tuple[bytes, Node]:
        entry = self.directory.entries[index]
        return entry.name, self.namespace.entry_node(self.slot, index, entry)

    def close(self) -> None:
        self.namespace.slots.close_listing(self.slot)


Listing = NodeListing | EntryListing


class Namespace:
    def __init__(self, repo: Repository, trees: TreeCache, history: History, background: Background,
                 select: Callable[[list[Snapshot]], list[Snapshot]] = list):
        self.repo = repo
        self.select = select              # which of the repository's snapshots are shown
        self.trees = trees
        self.history = history
        self.background = background
        self.catalog = Catalog([])
        self.refreshed_at = 0.0
        self._refresh_lock = trio.Lock()
        self._nodes: dict[int, Node] = {}
        self._by_key: dict[tuple, Node] = {}
        self.slots = SlotTable()
        self._next_ino = ROOT_INO
        self._prefetched_trees: set[bytes] = set()
        self.root = self._node(("root",), Kind.ROOT)

    # -- the inode table ----------------------------------------------------------------

    async def node(self, ino: int) -> Node | None:
        """The node of an inode number the kernel holds (None: not one of ours).
        An entry's is made again from its directory node, which may be fetched."""
        if not is_entry_ino(ino):
            return self._nodes.get(ino)
        place = self.slots.locate(ino)
        if place is None:
            return None
        slot, index = place
        directory = await self.trees.directory(slot.node_id)
        if index >= len(directory.entries):
            return None
        return self.entry_node(slot, index, directory.entries[index])

    def label(self, ino: int) -> str | None:
        """Which snapshot and path an inode is, for log lines, without fetching."""
        if not is_entry_ino(ino):
            node = self._nodes.get(ino)
            return node.label() if node is not None else None
        place = self.slots.locate(ino)
        if place is None:
            return None
        slot, index = place
        directory = self.trees.cached_directory(slot.node_id)
        if directory is not None and index < len(directory.entries):
            return self.entry_node(slot, index, directory.entries[index]).label()
        return f"{slot.snapshot.name}:/{os.fsdecode(join(slot.path, b'?'))}"

    def __len__(self) -> int:
        """Nodes and slots kept (what the memory holds for the kernel's inodes)."""
        return len(self._nodes) + len(self.slots)

    def _node(self, key: tuple, kind: Kind, **fields) -> Node:
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._next_ino, kind, key, **fields)
            self._next_ino += 1
            self._nodes[node.ino] = node
            self._by_key[key] = node
        return node

    def register(self, node: Node) -> Node:
        """The node for `node.key`, putting `node` back if it was dropped meanwhile
        (a listing may hand out a node whose last lookup was forgotten)."""
        current = self._by_key.get(node.key)
        if current is None:
            self._nodes[node.ino] = node
            self._by_key[node.key] = node
            return node
        return current

    def remember(self, node: Node) -> None:
        """The kernel was handed `node` (a lookup or readdirplus reply): count it."""
        if is_entry_ino(node.ino):
            self.slots.handed_out(node.ino)
        else:
            node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        if is_entry_ino(ino):
            self.slots.forget(ino, count)
            return
        node = self._nodes.get(ino)
        if node is None:
            return
        node.lookups -= count
        if node.lookups <= 0:
            self.drop(node)

    def drop(self, node: Node) -> None:
        """Forget a node the kernel does not hold (lookup count zero)."""
        if node.lookups <= 0 and node.ino != ROOT_INO and self._nodes.get(node.ino) is node:
            del self._nodes[node.ino]
            del self._by_key[node.key]

    # -- the snapshot list --------------------------------------------------------------

    async def refresh(self, *, rate_limited: bool = False) -> None:
        """Reread the snapshot list. `rate_limited` (lookups of unknown names) waits
        until a second has passed since the last refresh, so a flood of such
        lookups costs at most one listing a second, while a snapshot committed
        before the lookup is still found. Snapshots are listed before the index,
        so every blob a listed snapshot refers to is in an index object already
        loaded (they are written before the snapshot, I4)."""
        started = time.monotonic()
        async with self._refresh_lock:
            if rate_limited:
                if self.refreshed_at >= started:
                    return                     # a listing began after we were asked
                await trio.sleep_until(trio.current_time() + max(
                    0.0, self.refreshed_at + REFRESH_AT_MOST_EVERY - time.monotonic()))
            listing_started = time.monotonic()
            snapshots = self.select(await self.repo.snapshots())
            await self.repo.load_index()
            self.refreshed_at = listing_started
            if not self.catalog.same_snapshots(snapshots):
                self.catalog = Catalog(snapshots, self.catalog.generation + 1)
                log.info("%d snapshots", len(snapshots))

    async def refresh_periodically(self, interval: float) -> None:
        while True:
            await trio.sleep(interval)
            try:
                await self.refresh()
            except CloudfsError as error:
                log.warning("cannot refresh the snapshot list: %s", error)

    # -- lookups ------------------------------------------------------------------------

    async def child(self, parent: Node, name: bytes) -> Node | None:
        """The node called `name` in directory `parent`, or None."""
        node = await self._child(parent, name)
        if node is None and parent.kind in (Kind.ROOT, Kind.SHADOW) \
                and looks_like_snapshot_name(os.fsdecode(name)):
            try:
                await self.refresh(rate_limited=True)
            except CloudfsError as error:
                log.warning("cannot refresh the snapshot list: %s", error)
            node = await self._child(parent, name)
        return node

    async def _child(self, parent: Node, name: bytes) -> Node | None:
        if parent.kind is Kind.ROOT:
            return self._top_level(name)
        if parent.kind is Kind.SHADOW:
            snapshot = self.catalog.by_gmt_name.get(os.fsdecode(name))
            return self._snapshot_root("g", snapshot) if snapshot else None
        if parent.kind is Kind.HISTORY:
            return await self._history_child(parent, name)
        directory_id = parent.directory_id
        if directory_id is None:
            return None
        directory = await self.trees.directory(directory_id)
        index = directory.index(name)
        if index is None:
            return None
        return self.entry_node(self._slot_below(parent), index, directory.entries[index])

    async def children(self, parent: Node) -> Listing:
        """Everything directory `parent` lists, in order; close() it when done."""
        if parent.kind is Kind.ROOT:
            return NodeListing(self, self._top_level_listing())
        if parent.kind is Kind.SHADOW:
            return NodeListing(self, [(name.encode(), self._snapshot_root("g", snapshot))
                                      for name, snapshot in sorted(self.catalog.by_gmt_name.items())])
        if parent.kind is Kind.HISTORY:
            listing = await self.history.listing(self.catalog, parent.path)
            out = [(name, self._version_node(parent, name, snapshot, entry))
                   for name, (snapshot, entry) in listing.versions.items()]
            out += [(name, self._history_node(join(parent.path, name))) for name in listing.children]
            return NodeListing(self, out)
        directory = await self.trees.directory(parent.directory_id)
        return EntryListing(self, self._slot_below(parent), directory)

    def readlink(self, node: Node) -> bytes:
        return node.target if node.kind is Kind.LATEST else node.entry.target

    # -- the top level ------------------------------------------------------------------

    def _top_level(self, name: bytes) -> Node | None:
        if name == HISTORY_NAME:
            return self._history_node(b"")
        if name == SHADOW_NAME:
            return self._node(("shadow",), Kind.SHADOW)
        if name == LATEST_NAME:
            latest = self.catalog.latest
            if latest is None:
                return None
            target = self.catalog.time_name(latest).encode()
            return self._node(("latest", target), Kind.LATEST, snapshot=latest, target=target)
        snapshot = self.catalog.by_time_name.get(os.fsdecode(name))
        return self._snapshot_root("t", snapshot) if snapshot else None

    def _top_level_listing(self) -> list[tuple[bytes, Node]]:
        names = [name.encode() for name in self.catalog.by_time_name]
        names += [LATEST_NAME] if self.catalog.latest else []
        names += [HISTORY_NAME, SHADOW_NAME]
        return [(name, self._top_level(name)) for name in names]

    def _snapshot_root(self, view: str, snapshot: Snapshot) -> Node:
        self.prefetch_tree(snapshot)
        return self._node((view, snapshot.name, b""), Kind.SNAPSHOT, snapshot=snapshot)

    def prefetch_tree(self, snapshot: Snapshot | None) -> None:
        """Fetch a snapshot's directory nodes in the background, once per mount
        (on its first lookup; the newest one as soon as the mount is ready,
        since a file manager opens it first), a group at a time while the
        mount serves no request."""
        if snapshot is not None and snapshot.tree not in self._prefetched_trees:
            self._prefetched_trees.add(snapshot.tree)
            self.background.spawn(self.trees.prefetch_tree, snapshot.tree, self.background.until_idle)

    # -- inside snapshots -----------------------------------------------------------------

    def _slot_below(self, parent: Node) -> Slot:
        """The slot numbering the entries of directory `parent` (a snapshot's root
        or a directory entry)."""
        return self.slots.slot((parent.key[0], parent.snapshot.name, parent.path), parent.snapshot,
                               parent.path, parent.directory_id)

    def entry_node(self, slot: Slot, index: int, entry: Entry) -> Node:
        """A node for entry `index` of a slot's directory: made afresh, never kept."""
        path = join(slot.path, entry.name)
        return Node(self.slots.ino(slot, index, entry), Kind.ENTRY, (slot.view, slot.snapshot.name, path),
                    snapshot=slot.snapshot, path=path, entry=entry, parent_tree=slot.node_id)

    # -- history --------------------------------------------------------------------------

    def _history_node(self, path: bytes) -> Node:
        return self._node(("history", path), Kind.HISTORY, path=path)

    def _version_node(self, parent: Node, name: bytes, snapshot: Snapshot, entry: Entry) -> Node:
        return self._node(("v", snapshot.name, parent.path), Kind.VERSION, snapshot=snapshot,
                          path=parent.path, entry=entry)

    async def _history_child(self, parent: Node, name: bytes) -> Node | None:
        listing = await self.history.listing(self.catalog, parent.path)
        version = listing.versions.get(name)
        if version is not None:
            return self._version_node(parent, name, *version)
        if name in listing.children:
            return self._history_node(join(parent.path, name))
        return None

    def history_time(self) -> int:
        latest = self.catalog.latest
        return latest.time_ns if latest else 0

