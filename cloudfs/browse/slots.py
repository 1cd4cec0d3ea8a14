"""Inode numbers for what is inside snapshots, without a record per entry.

The kernel may hold an inode for every entry of a snapshot it has been shown:
`find` over a million files leaves a million, each kept for the day-long
entry timeout. A node per entry would make the mount's memory grow with the
tree (I8), so instead an entry's inode number says where the entry is: the
*slot* of its directory (a number given to each directory whose entries the
kernel holds) and its index in that directory's node,
`slot number << 32 | index`. The entry itself is read again from the tree
cache (or the disk cache) when the kernel asks about it.

Lookup counts (FUSE's protocol: every entry of a lookup or readdirplus reply
adds one, forget subtracts) are kept per slot, as their sum. When the sum is
zero and no listing of the directory is open, the kernel holds nothing of
that directory and the slot is dropped. Slot numbers only grow, so a number
the kernel still uses can never come to name another entry.

Hard links: regular files of one snapshot view with the same recorded inode
share one number, that of the first name handed out, so `cp -a`, `rsync -H`
and `find -samefile` see links. Those (few) are remembered by recorded inode
while the slot of that first name lives.

Memory: one small record per directory the kernel holds entries of, and one
per hard-linked file among them; nothing per plain entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cloudfs.repo import Snapshot
from cloudfs.snapshot.tree import Entry

SHIFT = 32
INDEX_MASK = (1 << SHIFT) - 1
FIRST_SLOT = 1           # inode numbers below 1 << SHIFT are the namespace's own nodes


def is_entry_ino(ino: int) -> bool:
    return ino >> SHIFT >= FIRST_SLOT


def index_of(ino: int) -> int:
    return ino & INDEX_MASK


@dataclass(eq=False, slots=True)
class Slot:
    """A directory of a snapshot view whose entries the kernel may hold."""

    number: int
    key: tuple                  # (view, snapshot name, the directory's path)
    snapshot: Snapshot
    path: bytes
    node_id: bytes              # the directory node listing the entries
    lookups: int = 0            # the kernel's references to this directory's entries
    listings: int = 0           # open listings (opendir .. releasedir)
    links: list[tuple] = field(default_factory=list)   # hard-link keys numbered here

    @property
    def view(self) -> str:
        return self.key[0]


class SlotTable:
    def __init__(self):
        self._slots: dict[int, Slot] = {}
        self._by_key: dict[tuple, Slot] = {}
        self._links: dict[tuple, int] = {}     # (view, snapshot name, recorded inode) -> inode number
        self._next = FIRST_SLOT

    def __len__(self) -> int:
        return len(self._slots)

    def slot(self, key: tuple, snapshot: Snapshot, path: bytes, node_id: bytes) -> Slot:
        """The slot of a directory, made if the kernel holds nothing of it yet."""
        slot = self._by_key.get(key)
        if slot is None:
            slot = Slot(self._next, key, snapshot, path, node_id)
            self._next += 1
            self._slots[slot.number] = slot
            self._by_key[key] = slot
        return slot

    def of(self, ino: int) -> Slot | None:
        """The slot an entry's inode number belongs to (None once dropped)."""
        return self._slots.get(ino >> SHIFT)

    def ino(self, slot: Slot, index: int, entry: Entry) -> int:
        """The inode number of entry `index` of a slot's directory."""
        if not (entry.nlink > 1 and entry.is_file):
            return slot.number << SHIFT | index
        link = (slot.view, slot.snapshot.name, entry.ino)
        ino = self._links.get(link)
        if ino is None:
            ino = slot.number << SHIFT | index
            self._links[link] = ino
            slot.links.append(link)
        return ino

    # -- the kernel's references ----------------------------------------------------------

    def handed_out(self, ino: int) -> None:
        """One more reference: a lookup or readdirplus reply carried this inode."""
        self._slots[ino >> SHIFT].lookups += 1

    def forget(self, ino: int, count: int) -> None:
        slot = self.of(ino)
        if slot is not None:
            slot.lookups -= count
            self._drop_if_unused(slot)

    def open_listing(self, slot: Slot) -> None:
        slot.listings += 1

    def close_listing(self, slot: Slot) -> None:
        slot.listings -= 1
        self._drop_if_unused(slot)

    def release_if_unused(self, slot: Slot) -> None:
        """A slot made for a lookup that found nothing."""
        self._drop_if_unused(slot)

    def _drop_if_unused(self, slot: Slot) -> None:
        if slot.lookups <= 0 and slot.listings <= 0 and self._slots.get(slot.number) is slot:
            del self._slots[slot.number]
            del self._by_key[slot.key]
            for link in slot.links:
                if self._links.get(link, 0) >> SHIFT == slot.number:
                    del self._links[link]
