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
share one number, so `cp -a`, `rsync -H` and `find -samefile` see links. It
is not a slot's: it is made from the view, the snapshot and the recorded
inode (a 62-bit hash with the top bit set, a space of its own), so it stays
the same for the mount's life even when the kernel forgets every name of
the link between two lookups (memory pressure, `drop_caches`) — a copy that
meets the second name long after the first still sees one file. While the
kernel may hold it, a link number points at the slot and index of a name it
was handed out through, and its references count on that slot.

Memory: one small record per directory the kernel holds entries of, and one
per hard-linked file among them; nothing per plain entry.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cloudfs.repo import Snapshot
from cloudfs.snapshot.tree import Entry

SHIFT = 32
INDEX_MASK = (1 << SHIFT) - 1
FIRST_SLOT = 1           # inode numbers below 1 << SHIFT are the namespace's own nodes
LINK_BIT = 1 << 63       # hard links' numbers: slot numbers never reach it


def is_entry_ino(ino: int) -> bool:
    return ino >> SHIFT >= FIRST_SLOT


def link_ino(view: str, snapshot_name: str, recorded_ino: int) -> int:
    digest = hashlib.blake2b(f"{view}\0{snapshot_name}\0{recorded_ino}".encode(), digest_size=8).digest()
    return LINK_BIT | int.from_bytes(digest, "big") >> 2


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
    links: list[int] = field(default_factory=list)   # hard-link numbers pointing here

    @property
    def view(self) -> str:
        return self.key[0]


class SlotTable:
    def __init__(self):
        self._slots: dict[int, Slot] = {}
        self._by_key: dict[tuple, Slot] = {}
        self._links: dict[int, tuple[Slot, int]] = {}   # link number -> (slot, index) of one name
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
        """The slot an entry's inode number counts on (None once dropped)."""
        if ino & LINK_BIT:
            place = self._links.get(ino)
            return None if place is None else place[0]
        return self._slots.get(ino >> SHIFT)

    def locate(self, ino: int) -> tuple[Slot, int] | None:
        """The slot and index an entry's inode number names (None once dropped)."""
        if ino & LINK_BIT:
            return self._links.get(ino)
        slot = self._slots.get(ino >> SHIFT)
        return None if slot is None else (slot, ino & INDEX_MASK)

    def ino(self, slot: Slot, index: int, entry: Entry) -> int:
        """The inode number of entry `index` of a slot's directory."""
        if not (entry.nlink > 1 and entry.is_file):
            return slot.number << SHIFT | index
        ino = link_ino(slot.view, slot.snapshot.name, entry.ino)
        if ino not in self._links:
            self._links[ino] = (slot, index)
            slot.links.append(ino)
        return ino

    # -- the kernel's references ----------------------------------------------------------

    def handed_out(self, ino: int) -> None:
        """One more reference: a lookup or readdirplus reply carried this inode."""
        self.of(ino).lookups += 1

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
                if self.of(link) is slot:
                    del self._links[link]
