"""What a snapshot build looks at: the decisions, in one place.

`TreeBuilder` applies these rules to the previous snapshot's tree while it
builds. The live mount's capture (`cloudfs/live/capture.py`) applies the same
rules at the seal, to the manifest standing in for that tree, so that it
freezes exactly what the builder will later list, stat and read (I2). Both
call this module rather than keep their own copy: a rule changed here changes
for both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class PathChanges:
    """What changed since the previous snapshot, by path.

    listings: directories whose set of entries changed (create, unlink, rename...)
    data:     files whose content changed: dirty byte ranges, or None for all of it
    meta:     entries whose attributes changed (mode, owner, times, xattrs)
    """

    listings: set[bytes] = field(default_factory=set)
    data: dict[bytes, list[tuple[int, int]] | None] = field(default_factory=dict)
    meta: set[bytes] = field(default_factory=set)

    def touched_directories(self) -> set[bytes]:
        """Every directory that has a change somewhere below it (the root included)."""
        touched = {b""}
        for path in [*self.listings, *self.data, *self.meta]:
            while path:
                path = path.rpartition(b"/")[0]
                if path in touched:
                    break
                touched.add(path)
        touched |= self.listings
        return touched


class Content(enum.Enum):
    """What becomes of a regular file's content."""

    REUSE = "reuse"     # the previous snapshot's blocks, nothing read
    UPDATE = "update"   # the previous blocks, with those the dirty ranges touch read again
    WHOLE = "whole"     # every block read


class WalkRules:
    """The rules of one build: `changes` None means nothing is known (every directory
    is listed and every entry compared by its stat with the previous one)."""

    def __init__(self, changes: PathChanges | None):
        self.changes = changes
        self.touched = changes.touched_directories() if changes is not None else set()

    def reuses_subtree(self, path: bytes, has_previous: bool) -> bool:
        """The previous node of directory `path` is taken as it is: no change lies below."""
        return has_previous and self.changes is not None and path not in self.touched

    def relists(self, path: bytes, has_previous: bool) -> bool:
        """Directory `path` is listed afresh (else its previous names are taken)."""
        return not has_previous or self.changes is None or path in self.changes.listings

    def unchanged(self, path: bytes, previous_ino: int | None, relisted: bool,
                  current_ino: Callable[[], int]) -> bool:
        """The previous entry at `path` is taken as it is, without a stat. Where the
        listing changed, the name may now belong to another file: `current_ino()`
        (an lstat) must still be the previous inode."""
        changes = self.changes
        if previous_ino is None or changes is None or path in self.touched:
            return False
        if path in changes.data or path in changes.meta:
            return False
        return not relisted or current_ino() == previous_ino

    def content(self, path: bytes, same_file: bool, same_stat: Callable[[], bool]) -> Content:
        """For a regular file at `path`: `same_file` if the previous entry is a regular
        file of the same inode; `same_stat()` if nothing in its stat says it changed
        (asked only when no journal says what changed)."""
        if not same_file:
            return Content.WHOLE
        if self.changes is None:
            return Content.REUSE if same_stat() else Content.WHOLE
        if path not in self.changes.data:
            return Content.REUSE
        return Content.WHOLE if self.changes.data[path] is None else Content.UPDATE


def blocks_to_update(ranges: Iterable[tuple[int, int]], size: int, old_size: int,
                     block_size: int) -> list[int]:
    """The block numbers an UPDATE reads, sorted: every block a dirty range touches
    (within the new size), and the old last block if it was partial and the size
    changed (its length changed)."""
    indices = set()
    for start, end in ranges:
        end = min(end, size)
        if end > start:
            indices.update(range(start // block_size, (end - 1) // block_size + 1))
    old_count, new_count = block_count(old_size, block_size), block_count(size, block_size)
    if size != old_size and old_size % block_size and old_count - 1 < new_count:
        indices.add(old_count - 1)
    return sorted(indices)


def block_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size
