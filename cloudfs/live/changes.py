"""What changed in the protected tree: coalescing byte ranges and per-epoch change sets.

Pure data, no I/O. Everything is keyed by the *backing* inode number (st_ino of the
file in SOURCE), because that is what identifies a file across renames, hard links
and remounts; turning inodes back into paths is `view.py`'s job.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator

#: The end of every file: a truncate to size S marks [S, TO_END) changed, so the
#: region a later extension exposes (zeros) is covered without knowing the old size.
TO_END = 2**63 - 1

#: Past this many ranges in one file, ranges are widened to a coarser grain (64 KiB,
#: then 256 KiB, 1 MiB, ...) so memory and the cost of an insert stay bounded however
#: scattered the writes (a VM image written at random would otherwise have millions).
RANGE_LIMIT = 16384
FIRST_GRAIN = 64 * 1024


class RangeSet:
    """A set of half-open byte ranges [start, end), kept sorted, disjoint and coalesced.

    Touching ranges merge ([0, 4) + [4, 8) is [0, 8)), so rewriting the same or
    neighbouring blocks does not grow the set. Past RANGE_LIMIT ranges the set
    widens every range to a coarser grain: it may then hold more bytes than were
    added (never fewer), which costs a re-read, never a miss.
    """

    __slots__ = ("_starts", "_ends", "_grain")

    def __init__(self, ranges: Iterable[tuple[int, int]] = ()):
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._grain = 1
        for start, end in ranges:
            self.add(start, end)

    def add(self, start: int, end: int) -> None:
        """Mark [start, end) changed; empty ranges are ignored."""
        if end <= start:
            return
        grain = self._grain
        if grain > 1:
            start -= start % grain
            end = min(TO_END, end + (-end % grain))
        starts, ends = self._starts, self._ends
        if not ends or start > ends[-1]:  # appending past the last range
            starts.append(start)
            ends.append(end)
        elif start >= starts[-1]:  # sequential writes: only the last range is touched
            if end > ends[-1]:
                ends[-1] = end
            return
        else:
            first = bisect_left(ends, start)  # first range that ends at or after start
            past = bisect_right(starts, end)  # ranges before this start at or before end
            if first == past:
                starts.insert(first, start)
                ends.insert(first, end)
            else:
                starts[first:past] = [min(start, starts[first])]
                ends[first:past] = [max(end, ends[past - 1])]
                return
        if len(starts) > RANGE_LIMIT:
            self._coarsen()

    def _coarsen(self) -> None:
        while len(self._starts) > RANGE_LIMIT // 2:
            self._grain = FIRST_GRAIN if self._grain == 1 else self._grain * 4
            ranges = list(self)
            self._starts, self._ends = [], []
            for start, end in ranges:
                self.add(start, end)

    def update(self, other: RangeSet) -> None:
        for start, end in other:
            self.add(start, end)

    def clipped(self, size: int) -> list[tuple[int, int]]:
        """The ranges cut to a file of `size` bytes (what exists to be read)."""
        result = []
        for start, end in self:
            if start >= size:
                break
            result.append((start, min(end, size)))
        return result

    def covers(self, start: int, end: int) -> bool:
        """True if every byte of [start, end) is inside one of the ranges."""
        if end <= start:
            return True
        index = bisect_right(self._starts, start) - 1
        return index >= 0 and self._ends[index] >= end

    def overlaps(self, start: int, end: int) -> bool:
        """True if some byte of [start, end) is inside one of the ranges."""
        if end <= start:
            return False
        index = bisect_left(self._ends, start + 1)
        return index < len(self._starts) and self._starts[index] < end

    def intersection(self, start: int, end: int) -> list[tuple[int, int]]:
        """The parts of [start, end) that are inside the set, in order."""
        if end <= start:
            return []
        starts, ends = self._starts, self._ends
        index = bisect_right(ends, start)  # first range that ends after start
        parts = []
        while index < len(starts) and starts[index] < end:
            parts.append((max(start, starts[index]), min(end, ends[index])))
            index += 1
        return parts

    def remove(self, start: int, end: int) -> None:
        """Take [start, end) out of the set (ranges are cut, never widened)."""
        if end <= start:
            return
        starts, ends = self._starts, self._ends
        first = bisect_right(ends, start)  # first range that ends after start
        past = bisect_left(starts, end)  # ranges from here on start at or after end
        if first >= past:
            return
        kept_starts, kept_ends = [], []
        if starts[first] < start:
            kept_starts.append(starts[first])
            kept_ends.append(start)
        if ends[past - 1] > end:
            kept_starts.append(end)
            kept_ends.append(ends[past - 1])
        starts[first:past] = kept_starts
        ends[first:past] = kept_ends

    def total(self) -> int:
        """How many bytes the ranges cover."""
        return sum(end - start for start, end in self)

    def copy(self) -> RangeSet:
        clone = RangeSet()
        clone._starts = list(self._starts)
        clone._ends = list(self._ends)
        clone._grain = self._grain
        return clone

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self._starts, self._ends)

    def __len__(self) -> int:
        return len(self._starts)

    def __bool__(self) -> bool:
        return bool(self._starts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RangeSet) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"RangeSet({list(self)!r})"


class ChangeSet:
    """What changed during one epoch (or the union of several), by backing inode.

    - `data[ino]`: byte ranges written (and, for truncates, [size, TO_END)).
    - `whole`: inodes to re-read entirely (new inodes, or where the journal cannot
      say which bytes changed); an inode in `whole` has no `data` entry.
    - `meta`: attributes, xattrs, link count or size changed.
    - `dirs`: directory inodes whose entries changed (names added, removed, renamed).

    Callers may rely on: recording is idempotent and order-insensitive except that
    `whole` absorbs `data`; `update` is a union.
    """

    __slots__ = ("data", "whole", "meta", "dirs")

    def __init__(self) -> None:
        self.data: dict[int, RangeSet] = {}
        self.whole: set[int] = set()
        self.meta: set[int] = set()
        self.dirs: set[int] = set()

    def add_range(self, ino: int, start: int, end: int) -> None:
        if ino in self.whole:
            return
        ranges = self.data.get(ino)
        if ranges is None:
            ranges = self.data[ino] = RangeSet()
        ranges.add(start, end)

    def truncate(self, ino: int, size: int) -> None:
        """A size change: the bytes from `size` on are new (or gone)."""
        self.meta.add(ino)
        self.add_range(ino, size, TO_END)

    def mark_whole(self, ino: int) -> None:
        self.whole.add(ino)
        self.data.pop(ino, None)

    def mark_meta(self, ino: int) -> None:
        self.meta.add(ino)

    def mark_dir(self, ino: int) -> None:
        self.dirs.add(ino)

    def update(self, other: ChangeSet) -> None:
        """Merge `other` into this set (a union; `whole` wins over ranges)."""
        for ino in other.whole:
            self.mark_whole(ino)
        for ino, ranges in other.data.items():
            if ino in self.whole:
                continue
            mine = self.data.get(ino)
            if mine is None:
                self.data[ino] = ranges.copy()
            else:
                mine.update(ranges)
        self.meta |= other.meta
        self.dirs |= other.dirs

    def copy(self) -> ChangeSet:
        clone = ChangeSet()
        clone.data = {ino: ranges.copy() for ino, ranges in self.data.items()}
        clone.whole = set(self.whole)
        clone.meta = set(self.meta)
        clone.dirs = set(self.dirs)
        return clone

    def inodes(self) -> set[int]:
        """Every inode this set mentions."""
        return set(self.data) | self.whole | self.meta | self.dirs

    def touches(self, ino: int) -> bool:
        return ino in self.data or ino in self.whole or ino in self.meta or ino in self.dirs

    def __bool__(self) -> bool:
        return bool(self.data or self.whole or self.meta or self.dirs)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, ChangeSet)
            and self.data == other.data
            and self.whole == other.whole
            and self.meta == other.meta
            and self.dirs == other.dirs
        )

    def __repr__(self) -> str:
        return (
            f"ChangeSet(data={self.data!r}, whole={sorted(self.whole)}, "
            f"meta={sorted(self.meta)}, dirs={sorted(self.dirs)})"
        )
