"""The FUSE-free pieces the mount and restore are built on: snapshot names,
coalesced verified fetching, the encrypted disk cache, decoded trees and block
lists, and the per-file history. Real repositories (S3 on rclone), no mounts."""

from __future__ import annotations

import os
import random

import pytest
import trio

from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.content import ContentReader
from cloudfs.browse.background import Background
from cloudfs.browse.diskcache import DiskCache
from cloudfs.browse.history import History
from cloudfs.browse.memcache import MemoryCache
from cloudfs.browse.names import Catalog, gmt_name, version_name
from cloudfs.browse.slots import SlotTable
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import IntegrityError, UsageError
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.chunk import BlobLocation, chunk_name
from cloudfs.repo.spans import plan_spans
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.tree import Entry
from tests.browse_fixtures import new_repo
from tests.repo_helpers import PASSPHRASE, CountingStore

BLOCK = 4096
SECOND = 1_000_000_000
T0 = 1_795_600_000 * SECOND       # 2026-11-25T09:46:40Z


def snapshot(time_ns: int, suffix: str) -> Snapshot:
    return Snapshot(tree=bytes(32), time_ns=time_ns, name=f"snapshots/x-{suffix}")


# -- names -----------------------------------------------------------------------------------


def test_snapshots_in_one_second_keep_stable_distinct_names():
    first, second, third = snapshot(T0 + 100, "aaaa"), snapshot(T0 + 5000, "bbbb"), snapshot(T0 + SECOND, "cccc")
    catalog = Catalog([third, second, first])
    assert [catalog.time_name(s) for s in catalog.snapshots] == \
        ["2026-11-25T094640Z", "2026-11-25T094640.000005Z", "2026-11-25T094641Z"]
    # a later snapshot never renames the ones before it
    later = Catalog([first, second, third, snapshot(T0 + 7000, "dddd")])
    assert later.time_name(first) == catalog.time_name(first)
    assert later.time_name(second) == catalog.time_name(second)
    # the Samba view has one name per second: the newest of that second
    assert catalog.by_gmt_name[gmt_name(first)] is second
    assert gmt_name(first) == "@GMT-2026.11.25-09.46.40"
    same_microsecond = Catalog([snapshot(T0, "aaaa"), snapshot(T0, "bbbb"), snapshot(T0, "cccc")])
    assert sorted(same_microsecond.by_time_name) == \
        ["2026-11-25T094640.000000Z", "2026-11-25T094640.000000Z-cccc", "2026-11-25T094640Z"]


def test_a_snapshot_argument_picks_one_or_says_why_not():
    first, second = snapshot(T0, "50c0d921"), snapshot(T0 + 3600 * SECOND, "77aa0000")
    catalog = Catalog([first, second])
    assert catalog.resolve("latest") is second
    assert catalog.resolve("snapshots/x-50c0d921") is first
    assert catalog.resolve("x-77aa0000") is second
    assert catalog.resolve("2026-11-25T094640Z") is first
    assert catalog.resolve("@GMT-2026.11.25-10.46.40") is second
    assert catalog.resolve("50c0") is first
    assert catalog.resolve("2026-11-25T10") is second
    with pytest.raises(UsageError, match="ambiguous"):
        catalog.resolve("2026-11-25T")
    with pytest.raises(UsageError, match="no snapshot"):
        catalog.resolve("1999")
    with pytest.raises(UsageError, match="no snapshots yet"):
        Catalog([]).resolve("latest")


def test_versions_keep_the_extension_a_file_manager_needs():
    assert version_name("2026-11-25T031320Z", b"report.odt") == b"2026-11-25T031320Z.odt"
    assert version_name("T", b"Makefile") == b"T"
    assert version_name("T", b".bashrc") == b"T"
    assert version_name("T", b"x.\xff\xfe") == b"T"


# -- spans -------------------------------------------------------------------------------------


def loc(chunk: int, offset: int, length: int = 100) -> BlobLocation:
    return BlobLocation(os.urandom(32), 0, bytes([chunk]) * 32, offset, length, length)


def test_spans_join_neighbours_of_one_chunk_and_respect_gaps_and_size():
    a, b, c = loc(1, 8), loc(1, 108), loc(1, 300)
    other = loc(2, 8)
    assert [len(s.locations) for s in plan_spans([c, other, b, a])] == [2, 1, 1]
    assert [len(s.locations) for s in plan_spans([a, b, c], max_gap=100)] == [3, 1][:1]
    spans = plan_spans([a, b, c], max_bytes=150)
    assert [(s.start, s.end) for s in spans] == [(8, 108), (108, 208), (300, 400)]
    assert plan_spans([a, a]) == plan_spans([a])


# -- fetching ----------------------------------------------------------------------------------


@pytest.fixture
def stored_file(s3_env, tmp_path):
    """A repository holding one snapshot of a 2 MiB file and a few small ones."""
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK, chunk_size=1 << 20)
    source = tmp_path / "source"
    source.mkdir()
    data = os.urandom(2 << 20)
    (source / "big.bin").write_bytes(data)
    for index in range(20):
        (source / f"small-{index}.txt").write_bytes(os.urandom(1000 + index))
    repo.take_snapshot(source)
    return repo, data


def open_counting(repo) -> tuple[Repository, CountingStore]:
    store = CountingStore(repo.store())
    return trio.run(lambda: Repository.open(store, PASSPHRASE, use_cache=False)), store


def test_reading_a_file_takes_a_few_large_ranged_gets_and_returns_exactly_its_bytes(stored_file):
    repo, data = stored_file
    opened, store = open_counting(repo)
    fetcher = BlobFetcher(opened)
    trees = TreeCache(fetcher)
    reader = ContentReader(trees, fetcher, BLOCK, Background())

    async def read_all():
        entry = await trees.lookup(repo.snapshots[0].tree, b"big.bin")
        store.gets.clear()
        parts = [await reader.read(entry, offset, 1 << 20) for offset in range(0, len(data), 1 << 20)]
        return b"".join(parts)

    assert trio.run(read_all) == data
    chunk_gets = [get for get in store.gets if get[0].startswith("chunks/")]
    # 512 blocks in two or three chunks, plus a block-list leaf or two
    assert len(chunk_gets) <= 8, chunk_gets
    assert sum(get[3] for get in chunk_gets) < len(data) * 1.05


def test_one_fetch_per_blob_however_many_readers_want_it(stored_file):
    repo, _ = stored_file
    opened, store = open_counting(repo)
    fetcher = BlobFetcher(opened)
    trees = TreeCache(fetcher)

    async def many_readers():
        entry = await trees.lookup(repo.snapshots[0].tree, b"big.bin")
        ids = await trees.block_ids(entry, 0, 64)
        store.gets.clear()
        results = []

        async def reader():
            results.append(await fetcher.get_many(ids))

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(reader)
        return ids, results

    ids, results = trio.run(many_readers)
    assert all(set(result) == set(ids) for result in results)
    # (besides, without a cache, one GET of the index object that tells the chunk's layout)
    assert len([get for get in store.gets if get[0].startswith("chunks/")]) == 1


def test_the_disk_cache_keeps_records_sealed_and_a_damaged_one_is_fetched_again(stored_file, tmp_path):
    repo, data = stored_file
    opened, store = open_counting(repo)
    disk = DiskCache(tmp_path / "cache", 64 << 20)
    disk.load()
    fetcher = BlobFetcher(opened, disk=disk)
    trees = TreeCache(fetcher)

    async def fetch_and_write_cache():
        entry = await trees.lookup(repo.snapshots[0].tree, b"big.bin")
        ids = [b for b in await trees.block_ids(entry, 0, 512)]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetcher.write_disk_cache)
            await fetcher.get_many(ids)
            while fetcher._disk_queued:
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return ids

    ids = trio.run(fetch_and_write_cache)
    cached = b"".join(path.read_bytes() for path in (tmp_path / "cache").iterdir())
    assert len(cached) > len(data) and data[:64] not in cached and data[5000:5064] not in cached

    # a new process: the cache is found again; one record is damaged on disk
    disk = DiskCache(tmp_path / "cache", 64 << 20)
    disk.load()
    assert all(blob_id in disk for blob_id in ids)
    segment, offset, length = disk._records[ids[7]]
    with open(segment, "r+b") as handle:
        handle.seek(offset + 40)
        byte = handle.read(1)
        handle.seek(offset + 40)
        handle.write(bytes([byte[0] ^ 1]))
    opened, store = open_counting(repo)
    fetcher = BlobFetcher(opened, disk=disk)
    results = trio.run(fetcher.get_many, ids)
    assert b"".join(results[i] for i in ids) == data
    assert fetcher.stats.disk_hits == len(ids) - 1
    chunk_gets = [get[0] for get in store.gets if get[0].startswith("chunks/")]
    assert chunk_gets == [chunk_name(opened.index.get(ids[7]).chunk_id)]


def test_the_disk_cache_stays_within_its_limit_and_ignores_a_torn_tail(tmp_path):
    disk = DiskCache(tmp_path, limit_bytes=1 << 20, segment_bytes=256 << 10)
    disk.load()
    records = [(os.urandom(32), os.urandom(50_000)) for _ in range(60)]
    for record in records:
        disk.add([record])
    assert disk.size <= (1 << 20) + (256 << 10)
    assert records[0][0] not in disk and records[-1][0] in disk
    newest = max(tmp_path.iterdir())
    with open(newest, "ab") as handle:
        handle.write(os.urandom(32) + (99999).to_bytes(4, "little") + b"short")
    again = DiskCache(tmp_path, limit_bytes=1 << 20, segment_bytes=256 << 10)
    again.load()
    assert again.read(records[-1][0]) == records[-1][1]


def test_block_lists_read_through_the_cache_match_the_reference_reader(stored_file):
    repo, _ = stored_file
    opened = repo.open()
    trees, reference = TreeCache(BlobFetcher(opened), max_block_nodes=1), TreeReader(opened)
    entry = trio.run(trees.lookup, repo.snapshots[0].tree, b"big.bin")
    assert entry.block_list is not None
    rng = random.Random(5)
    for _ in range(30):
        first = rng.randrange(0, 600)
        last = first + rng.randrange(0, 300)
        assert trio.run(trees.block_ids, entry, first, last) == trio.run(reference.block_ids, entry, first, last)


def test_a_prefetch_reads_block_lists_a_level_at_a_time_and_then_they_cost_no_get(stored_file):
    """A restore's batch asks for the block lists of all its large files at once:
    a GET per level of nodes, instead of one per node as each file comes up."""
    repo, _ = stored_file
    opened, store = open_counting(repo)
    trees, reference = TreeCache(BlobFetcher(opened)), TreeReader(opened)

    async def prefetch_then_read():
        entry = await trees.lookup(repo.snapshots[0].tree, b"big.bin")
        small = await trees.lookup(repo.snapshots[0].tree, b"small-3.txt")
        store.gets.clear()
        await trees.prefetch_block_lists([small, entry, entry])
        prefetched = list(store.gets)
        return entry, prefetched, await trees.block_ids(entry, 0, 512)

    entry, prefetched, ids = trio.run(prefetch_then_read)
    chunk_gets = [get for get in prefetched if get[0].startswith("chunks/")]
    assert len(chunk_gets) == 2, chunk_gets     # the root, then both leaves in one ranged GET
    assert len(store.gets) == len(prefetched), "block_ids found every node decoded"
    assert ids == trio.run(reference.block_ids, entry, 0, 512) and len(ids) == 512


def test_a_missing_blob_is_an_integrity_error_naming_it(stored_file):
    repo, _ = stored_file
    fetcher = BlobFetcher(repo.open())
    with pytest.raises(IntegrityError, match="not in the index"):
        trio.run(fetcher.get, os.urandom(32))


# -- history -------------------------------------------------------------------------------------


def test_history_compares_what_a_person_sees(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK)
    source = tmp_path / "source"
    source.mkdir()
    file = source / "file.txt"
    file.write_text("one")
    repo.take_snapshot(source)
    os.link(file, source / "link")            # ctime and link count change: not a new version
    repo.take_snapshot(source)
    os.setxattr(file, "user.tag", b"x")       # an xattr is: a new version
    repo.take_snapshot(source)
    file.unlink()
    repo.take_snapshot(source)                # gone from the newest snapshot
    opened = repo.open()
    catalog = Catalog(trio.run(opened.snapshots))
    history = History(TreeCache(BlobFetcher(opened)))
    listing = trio.run(history.listing, catalog, b"file.txt")
    assert [snap.name for snap, _ in listing.versions.values()] == \
        [repo.snapshots[0].name, repo.snapshots[2].name]
    root = trio.run(history.listing, catalog, b"")
    assert root.children == [b"file.txt", b"link"] and not root.versions


# -- the memory cache -----------------------------------------------------------------------------


def test_a_large_sequential_read_does_not_flush_what_was_used_twice():
    cache = MemoryCache(100 * 1000)
    hot = [os.urandom(32) for _ in range(20)]
    for blob_id in hot:
        cache.put(blob_id, bytes(1000))
        assert cache.get(blob_id) is not None        # the second use: protected
    for _ in range(1000):                            # a stream ten times the cache, each block read once
        blob_id = os.urandom(32)
        cache.put(blob_id, bytes(1000), used=False)  # read ahead
        assert cache.get(blob_id) is not None        # ... then read
    assert all(blob_id in cache for blob_id in hot)
    assert cache.size <= 100 * 1000


def test_the_memory_cache_promotes_on_the_second_use_and_stays_within_its_bound():
    cache = MemoryCache(10 * 1000, protected_share=0.5)
    ids = [os.urandom(32) for _ in range(30)]
    for blob_id in ids:
        cache.put(blob_id, bytes(1000))
        cache.get(blob_id)
    # protected holds at most half; what it gave up went back to probation, then out
    assert cache.size <= 10 * 1000 and len(cache) == 10
    assert all(blob_id in cache for blob_id in ids[-5:])
    cache.put(ids[0], bytes(1000), used=False)
    cache.get(ids[0])                                # its first use: not promoted yet
    assert ids[0] in cache


# -- inode numbers inside snapshots ------------------------------------------------------------


def test_entries_get_numbers_from_their_directory_and_slots_go_when_the_kernel_forgets():
    table = SlotTable()
    snap = snapshot(T0, "aaaa")
    slot = table.slot(("t", snap.name, b"docs"), snap, b"docs", bytes(32))
    plain = Entry(name=b"a.txt", mode=0o100644)
    linked = [Entry(name=name, mode=0o100644, ino=77, nlink=2) for name in (b"l1", b"l2")]
    first, second = table.ino(slot, 0, plain), table.ino(slot, 1, plain)
    assert first != second and table.of(first) is slot and table.of(second) is slot
    other = table.slot(("t", snap.name, b"other"), snap, b"other", bytes(32))
    link = table.ino(other, 2, linked[0])
    assert link == table.ino(slot, 5, linked[1])      # one inode for a hard link
    table.open_listing(slot)
    for ino in (first, second):
        table.handed_out(ino)
    table.close_listing(slot)
    table.forget(first, 1)
    assert table.of(second) is slot                  # the kernel still holds one of its entries
    table.forget(second, 1)
    assert table.of(second) is None and len(table) == 1
    again = table.slot(("t", snap.name, b"docs"), snap, b"docs", bytes(32))
    assert table.ino(again, 0, plain) != first       # numbers are never reused
    table.handed_out(link)
    table.forget(link, 1)
    assert table.locate(link) is None                 # the kernel holds no name of the link now
    assert table.ino(again, 5, linked[1]) == link     # ... and meets it again under the same number


def test_history_over_many_snapshots_reads_their_directories_a_group_at_a_time(s3_env, tmp_path, monkeypatch):
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK)
    source = tmp_path / "source"
    (source / "docs").mkdir(parents=True)
    for index in range(30):
        (source / "docs" / f"new-{index}.txt").write_text("x" * 300)   # the directory changes every time
        if index % 3 == 0:
            (source / "docs" / "report.txt").write_text(f"version {index // 3}")
        repo.take_snapshot(source)
    opened = repo.open()
    trees = TreeCache(BlobFetcher(opened))
    monkeypatch.setattr("cloudfs.browse.trees.GROUP_BYTES", 2000)
    largest = []
    decode = trees.directories

    async def directories(node_ids, **kwargs):
        largest.append(len(node_ids))
        return await decode(node_ids, **kwargs)

    trees.directories = directories
    catalog = Catalog(trio.run(opened.snapshots))
    listing = trio.run(History(trees).listing, catalog, b"docs/report.txt")
    assert [snap.name for snap, _ in listing.versions.values()] == [s.name for s in repo.snapshots[::3]]
    folder = trio.run(History(trees).listing, catalog, b"docs")
    assert folder.children == sorted([b"report.txt"] + [b"new-%d.txt" % i for i in range(30)])
    assert max(largest) < 30            # 30 distinct roots and nodes of docs/, never all at once


def test_a_tree_prefetch_waits_while_the_mount_serves_requests(s3_env, tmp_path, monkeypatch):
    """The whole-tree prefetch only guesses; a user's request goes first (at a
    million entries an `ls -l` waited seconds behind it)."""
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK)
    source = tmp_path / "source"
    for index in range(20):
        (source / f"d{index:02}").mkdir(parents=True)
        (source / f"d{index:02}" / "file").write_text("x")
    repo.take_snapshot(source)
    opened = repo.open()
    trees = TreeCache(BlobFetcher(opened))
    monkeypatch.setattr("cloudfs.browse.trees.GROUP_BYTES", 1)     # one node a group
    background = Background()
    groups = []
    decode = trees.directories

    async def directories(node_ids, **kwargs):
        groups.append(trio.current_time())
        return await decode(node_ids, **kwargs)

    trees.directories = directories

    async def main():
        async with trio.open_nursery() as nursery:
            with background.serving():
                nursery.start_soon(trees.prefetch_tree, repo.snapshots[0].tree, background.until_idle)
                await trio.sleep(1)
                assert groups == []                       # nothing while a request is being served
                served = trio.current_time()
            await trio.sleep(0.1)
            assert groups == []                           # ... nor right after it
        assert len(groups) == 21 and min(groups) >= served + 0.2    # the root and 20 directories, once idle

    trio.run(main)
