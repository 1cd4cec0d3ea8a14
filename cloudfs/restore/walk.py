"""What a restore goes through: the entries below a path of a snapshot, as a
stream, in memory that does not grow with the number of files (I8).

`walk` is breadth first, a group of directories at a time: their nodes are
fetched together (coalesced ranged GETs, about a MiB of nodes per group,
`TreeCache.groups`), and the children of a group's directories come out as
one list of Items (one thread hop for the restorer to create them, not one
per directory). Parents come before their children, so a directory exists
before anything is created in it. What the walk holds: a small record (path,
destination, node id) per directory still to list, and one group of decoded
nodes; nothing per file.

A `Selection` narrows the walk to some files of the snapshot (and the
directories on their way), and may narrow a file to a range of its blocks: a
recovery drill restores a sample this way, with the same restorer as a full
restore.

Hard links: files of one snapshot with the same recorded inode are one file;
the first name met keeps the data, the others become links to it
(`HardLinks`, which remembers only files whose link count is above one).

Directory metadata is applied last, deepest first (creating entries changes
a directory's times, and a read-only mode would stop the writes): the
directories wait in a private temporary SQLite database on disk
(`DirectoryFinishes`), not in memory.
"""

from __future__ import annotations

import os
import sqlite3
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

from cloudfs.browse.trees import TreeCache
from cloudfs.repo import Snapshot
from cloudfs.repo.format import pack, unpack
from cloudfs.snapshot.source import join
from cloudfs.snapshot.tree import Entry

LISTED_AT_ONCE = 500          # directories taken from the queue at a time (then grouped by size)


@dataclass(eq=False)
class Item:
    """One entry to restore and where it goes."""

    path: bytes                   # inside the snapshot (b"" for its root)
    entry: Entry | None           # None: the snapshot's root directory (nothing recorded)
    destination: bytes
    existing: bool = False        # --resume: a regular file is already there
    replace: bool = False         # something else is there and goes first
    link_to: "Item | None" = None
    damage: str | None = None
    finished: bool = False        # its data and metadata are written (a one-block file)

    @property
    def is_dir(self) -> bool:
        return self.entry is None or self.entry.is_dir

    @property
    def has_data(self) -> bool:
        return self.entry is not None and self.entry.is_file and self.link_to is None

    @property
    def shown(self) -> str:
        return "/" + os.fsdecode(self.path)


@dataclass(slots=True)
class _Unlisted:
    """A directory the walk has still to list."""

    path: bytes
    destination: bytes
    node_id: bytes


Unreadable = Callable[[Item, Exception], None]


class Selection:
    """Some paths of a snapshot (no leading slash), and the directories that lead to them;
    of a file in `blocks`, only its blocks first..last-1 (the rest of it stays a hole)."""

    def __init__(self, paths: dict[bytes, int], blocks: dict[bytes, tuple[int, int]] | None = None):
        self.paths = paths                        # path -> bytes to restore of it
        self.blocks = blocks or {}                # path -> (first, last) block
        self.directories = {path[:end] for path in paths for end in _slashes(path)}

    def block_range(self, item: Item, count: int) -> tuple[int, int]:
        """The blocks to restore of a file of `count` blocks."""
        first, last = self.blocks.get(item.path, (0, count))
        return first, min(last, count)

    @property
    def bytes(self) -> int:
        return sum(self.paths.values())

    def keeps(self, item: Item) -> bool:
        return item.path in self.paths or (item.is_dir and item.path in self.directories)


def _slashes(path: bytes) -> Iterator[int]:
    at = path.find(b"/")
    while at != -1:
        yield at
        at = path.find(b"/", at + 1)


async def walk(trees: TreeCache, snapshot: Snapshot, top: Item, unreadable: Unreadable,
               only: Selection | None = None) -> AsyncIterator[list[Item]]:
    """[top], then the children of each directory below it, breadth first (with
    `only`, those it keeps). A directory whose node cannot be read is passed to
    `unreadable` (as an Item without an entry) and its content is left out."""
    yield [top]
    if not top.is_dir:
        return
    waiting = deque([_Unlisted(top.path, top.destination, top.entry.subtree if top.entry else snapshot.tree)])
    while waiting:
        by_node: dict[bytes, list[_Unlisted]] = defaultdict(list)
        for _ in range(min(LISTED_AT_ONCE, len(waiting))):
            unlisted = waiting.popleft()
            by_node[unlisted.node_id].append(unlisted)
        for group in trees.groups(list(by_node)):
            found = await trees.directories(group, remember=False)
            listed: list[Item] = []
            for node_id in group:
                for unlisted in by_node[node_id]:
                    children = _children(unlisted, found[node_id], unreadable)
                    if only is not None:
                        children = [child for child in children if only.keeps(child)]
                    waiting.extend(_Unlisted(child.path, child.destination, child.entry.subtree)
                                   for child in children if child.entry.is_dir)
                    listed += children
            if listed:
                yield listed


def _children(unlisted: _Unlisted, directory, unreadable: Unreadable) -> list[Item]:
    if isinstance(directory, Exception):
        unreadable(Item(unlisted.path, None, unlisted.destination), directory)
        return []
    return [Item(join(unlisted.path, entry.name), entry, join(unlisted.destination, entry.name))
            for entry in directory.entries]


class HardLinks:
    """The first name of each hard-linked file met so far, by recorded inode."""

    def __init__(self):
        self._first: dict[int, Item] = {}

    def group(self, item: Item) -> None:
        """Make `item` a link to the first name of its file, if one was met."""
        entry = item.entry
        if entry is not None and entry.is_file and entry.nlink > 1:
            first = self._first.setdefault(entry.ino, item)
            if first is not item:
                item.link_to = first


class DirectoryFinishes:
    """Restored directories whose metadata is applied at the end, deepest first,
    kept in a private temporary database on disk (SQLite removes it on close)."""

    def __init__(self):
        self._db = sqlite3.connect("", isolation_level=None, check_same_thread=False)
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "cache_size = -2048"):
            self._db.execute(f"PRAGMA {pragma}")
        self._db.execute("CREATE TABLE directories (path BLOB NOT NULL, destination BLOB NOT NULL, "
                         "entry BLOB NOT NULL)")

    def __enter__(self) -> "DirectoryFinishes":
        return self

    def __exit__(self, *exc) -> None:
        self._db.close()

    def add(self, item: Item) -> None:
        self._db.execute("INSERT INTO directories VALUES (?, ?, ?)",
                         (item.path, item.destination, pack(item.entry.to_map())))

    def deepest_first(self) -> Iterator[Item]:
        """The walk is breadth first, so the reverse of the order they were added."""
        rows = self._db.execute("SELECT path, destination, entry FROM directories ORDER BY rowid DESC")
        for path, destination, packed in rows:
            yield Item(path, Entry.from_map(unpack(packed)), destination)
