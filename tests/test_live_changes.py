"""RangeSet and ChangeSet: coalescing byte ranges and merging change sets."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from cloudfs.live.changes import TO_END, ChangeSet, RangeSet

ranges = st.lists(st.tuples(st.integers(0, 200), st.integers(0, 40)).map(lambda r: (r[0], r[0] + r[1])),
                  max_size=30)


def rangeset_and_model(added: list[tuple[int, int]]) -> tuple[RangeSet, set[int]]:
    """A RangeSet of the `added` ranges, and the set of bytes they cover."""
    rangeset, model = RangeSet(), set()
    for start, end in added:
        rangeset.add(start, end)
        model.update(range(start, end))
    return rangeset, model


@settings(max_examples=300, deadline=None)
@given(ranges, st.integers(0, 240), st.integers(0, 20))
def test_a_rangeset_holds_exactly_the_bytes_added_as_few_disjoint_ranges(added, probe, width):
    rangeset, model = rangeset_and_model(added)
    listed = list(rangeset)
    assert all(start < end for start, end in listed)
    assert all(previous[1] < following[0] for previous, following in zip(listed, listed[1:]))
    assert {byte for start, end in listed for byte in range(start, end)} == model
    window = set(range(probe, probe + width))
    assert rangeset.covers(probe, probe + width) == window.issubset(model)
    assert rangeset.overlaps(probe, probe + width) == bool(window & model)


def test_rewriting_the_same_blocks_keeps_one_range():
    rangeset = RangeSet()
    for _ in range(1000):
        for block in range(16):
            rangeset.add(block * 4096, (block + 1) * 4096)
    assert list(rangeset) == [(0, 65536)]


def test_sequential_appends_coalesce_and_clipping_cuts_to_the_size():
    rangeset = RangeSet()
    for offset in range(0, 10 << 20, 1 << 20):
        rangeset.add(offset, offset + (1 << 20))
    rangeset.add(20 << 20, TO_END)
    assert list(rangeset) == [(0, 10 << 20), (20 << 20, TO_END)]
    assert rangeset.clipped(21 << 20) == [(0, 10 << 20), (20 << 20, 21 << 20)]
    assert rangeset.clipped(5) == [(0, 5)]


def test_whole_absorbs_ranges_and_truncate_marks_the_tail_changed():
    changes = ChangeSet()
    changes.add_range(7, 0, 100)
    changes.mark_whole(7)
    changes.add_range(7, 200, 300)
    assert 7 in changes.whole and 7 not in changes.data
    changes.truncate(8, 5000)
    assert list(changes.data[8]) == [(5000, TO_END)] and 8 in changes.meta


def test_update_is_a_union():
    first, second = ChangeSet(), ChangeSet()
    first.add_range(1, 0, 10)
    first.mark_dir(2)
    second.add_range(1, 5, 20)
    second.add_range(3, 0, 1)
    second.mark_whole(4)
    second.mark_meta(5)
    first.update(second)
    assert list(first.data[1]) == [(0, 20)] and list(first.data[3]) == [(0, 1)]
    assert first.whole == {4} and first.meta == {5} and first.dirs == {2}
    assert first.inodes() == {1, 2, 3, 4, 5}
    assert list(second.data[1]) == [(5, 20)]  # the argument is not modified


def test_scattered_writes_widen_the_ranges_but_never_lose_a_byte():
    import random

    from cloudfs.live.changes import RANGE_LIMIT

    rng = random.Random(9)
    rangeset = RangeSet()
    written = [(offset, offset + 100) for offset in (rng.randrange(1 << 40) for _ in range(3 * RANGE_LIMIT))]
    for start, end in written:
        rangeset.add(start, end)
    assert len(rangeset) <= RANGE_LIMIT
    assert all(rangeset.covers(start, end) for start, end in written)


@settings(max_examples=300, deadline=None)
@given(ranges, st.integers(0, 240), st.integers(0, 60))
def test_intersection_and_remove_cut_exactly_the_window(added, start, width):
    rangeset, model = rangeset_and_model(added)
    window = set(range(start, start + width))
    parts = rangeset.intersection(start, start + width)
    assert {byte for low, high in parts for byte in range(low, high)} == model & window
    assert all(previous[1] <= following[0] for previous, following in zip(parts, parts[1:]))
    rangeset.remove(start, start + width)
    listed = list(rangeset)
    assert {byte for low, high in listed for byte in range(low, high)} == model - window
    assert all(previous[1] < following[0] for previous, following in zip(listed, listed[1:]))
    assert rangeset.total() == len(model - window)
