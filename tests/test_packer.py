"""The packer's concurrency rules: many threads, bounded chunk slots, dedup, failures."""

import os

import pytest
import trio

from cloudfs.errors import StoreUnavailable
from cloudfs.repo import BlobKind, Repository, RepoConfig
from cloudfs.repo.chunk import CHUNKS_PREFIX
from cloudfs.repo.packer import Packer
from cloudfs.store import LocalStore
from tests.repo_helpers import PASSPHRASE, fast_kdf


class FlakyStore(LocalStore):
    """A real local store whose chunk uploads can be made to fail."""

    failing = False
    uploads = 0

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        if name.startswith(CHUNKS_PREFIX):
            FlakyStore.uploads += 1
            if self.failing:
                raise StoreUnavailable("the store went away")
        await super().put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)


class RecordingStore(LocalStore):
    """A real local store that notes the size of each chunk it is given, in order."""

    sizes: list[int] = []

    async def put(self, name, data, *, exclusive=False, sha256=None, retention=None):
        if name.startswith(CHUNKS_PREFIX):
            RecordingStore.sizes.append(len(data))
        await super().put(name, data, exclusive=exclusive, sha256=sha256, retention=retention)


def make_repo(tmp_path, store_class=LocalStore, slots=2):
    config = RepoConfig(chunk_size=256 << 10, block_size=4096)
    repo = trio.run(lambda: Repository.init(store_class(tmp_path / "repo"), PASSPHRASE, config=config,
                                            kdf=fast_kdf(), create_container=True, use_cache=False))
    repo.packer = Packer(repo, slots=slots)
    return repo


def store_from_threads(repo, blobs_per_thread: list[list[bytes]]):
    async def run():
        results = [None] * len(blobs_per_thread)

        async def worker(index, blobs):
            results[index] = await trio.to_thread.run_sync(
                lambda: [repo.packer.store_sync(BlobKind.DATA, b) for b in blobs])

        async with trio.open_nursery() as nursery:
            for index, blobs in enumerate(blobs_per_thread):
                nursery.start_soon(worker, index, blobs)
        await repo.flush()
        return results

    return trio.run(run)


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_many_threads_fill_shared_chunks_and_every_blob_reads_back(tmp_path, slots):
    repo = make_repo(tmp_path, slots=slots)
    blobs = [[os.urandom(3000 + 97 * i) for i in range(120)] for _ in range(6)]
    ids = store_from_threads(repo, blobs)
    chunks = trio.run(repo.store.list, CHUNKS_PREFIX)
    assert len(chunks) >= 6, "2 MiB of blobs in 256 KiB chunks"
    reopened = trio.run(lambda: Repository.open(repo.store, PASSPHRASE, use_cache=False))
    for thread_ids, thread_blobs in zip(ids, blobs):
        for blob_id, data in zip(thread_ids, thread_blobs):
            assert trio.run(reopened.get_blob, blob_id) == data


def test_the_same_blob_from_many_threads_is_stored_once(tmp_path):
    repo = make_repo(tmp_path)
    shared = [os.urandom(5000) for _ in range(50)]
    ids = store_from_threads(repo, [list(shared) for _ in range(6)])
    assert all(thread_ids == ids[0] for thread_ids in ids)
    assert repo.written.blobs == 50
    assert len(repo.index) == 50


def test_a_failed_upload_fails_every_thread_and_hangs_none(tmp_path):
    repo = make_repo(tmp_path, FlakyStore, slots=1)
    repo.store.failing = True
    with pytest.raises(BaseException) as raised:
        store_from_threads(repo, [[os.urandom(4000) for _ in range(200)] for _ in range(4)])
    from cloudfs.errors import leaf_errors
    assert all(isinstance(leaf, StoreUnavailable) for leaf in leaf_errors(raised.value))

    # Once the store is back, the same blobs go in and read back.
    repo.store.failing = False
    repo.packer.reset_failure()
    again = [[os.urandom(4000) for _ in range(50)] for _ in range(3)]
    ids = store_from_threads(repo, again)
    assert trio.run(repo.get_blob, ids[2][49]) == again[2][49]


def test_an_interrupted_upload_keeps_what_it_stored(tmp_path):
    repo = make_repo(tmp_path, FlakyStore, slots=1)
    repo.packer.index_every = 2
    blobs = [os.urandom(4000) for _ in range(600)]     # about 9 chunks of 256 KiB
    FlakyStore.uploads = 0

    async def fail_after_five(name, data, *, exclusive=False, sha256=None):
        if name.startswith(CHUNKS_PREFIX) and FlakyStore.uploads >= 5:
            raise StoreUnavailable("the store went away")
        await FlakyStore.put(repo.store, name, data, exclusive=exclusive, sha256=sha256)

    repo.store.put = fail_after_five
    with pytest.raises(BaseException):
        store_from_threads(repo, [blobs])

    # A new session (as after a crash) finds the indexed chunks and stores only the rest.
    reopened = trio.run(lambda: Repository.open(LocalStore(tmp_path / "repo"), PASSPHRASE, use_cache=False))
    assert len(reopened.index) >= 4 * 60, "the first four chunks were indexed as the upload went"
    known = len(reopened.index)
    reopened.packer = Packer(reopened, slots=2)
    ids = store_from_threads(reopened, [blobs])[0]
    assert reopened.written.blobs == len(blobs) - known
    assert trio.run(reopened.get_blob, ids[0]) == blobs[0]


def test_a_chunk_of_tiny_blobs_closes_at_the_blob_limit_and_index_objects_follow(tmp_path, monkeypatch):
    """Tiny files would put a hundred thousand blobs in one chunk: its footer, index
    entries and pending locations would all be in memory at once."""
    from cloudfs.repo import packer as packer_module
    from cloudfs.repo.index import INDEX_PREFIX

    monkeypatch.setattr(packer_module, "MAX_BLOBS", 100)
    monkeypatch.setattr(packer_module, "INDEX_BLOBS", 250)
    repo = make_repo(tmp_path)
    blobs = [[b"tiny %d %d" % (thread, i) for i in range(300)] for thread in range(3)]
    ids = store_from_threads(repo, blobs)
    chunks = trio.run(repo.store.list, CHUNKS_PREFIX)
    assert len(chunks) >= 9
    counts = [record.blobs for record in repo.index.chunks()]
    assert len(counts) == len(chunks) and max(counts) <= 100 and sum(counts) == 900
    assert len(trio.run(repo.store.list, INDEX_PREFIX)) >= 3     # one per 250 blobs, not one at the end
    for blob_id, plaintext in zip(sum(ids, []), sum(blobs, [])):
        assert trio.run(repo.get_blob, blob_id) == plaintext


def test_the_first_chunks_of_each_upload_are_smaller_so_that_uploading_starts_early(tmp_path, monkeypatch):
    """A chunk uploads once complete: the first ones of each upload (until a flush)
    close at FIRST_CHUNK_BYTES, the rest at the chunk size (256 KiB here)."""
    from cloudfs.repo import packer as packer_module

    monkeypatch.setattr(packer_module, "FIRST_CHUNK_BYTES", (32 << 10, 64 << 10))
    repo = make_repo(tmp_path, RecordingStore, slots=3)
    blob = 8 << 10
    for upload in range(2):
        RecordingStore.sizes = []
        store_from_threads(repo, [[os.urandom(blob) for _ in range(100)]])   # random: stored as it is
        sizes = RecordingStore.sizes
        limits = [32 << 10, 64 << 10] + [256 << 10] * (len(sizes) - 3)
        assert len(sizes) >= 4, sizes
        for size, limit in zip(sizes, limits):
            assert limit <= size < limit + blob + (8 << 10), (upload, sizes)
        assert sizes[-1] < (256 << 10) + blob + (8 << 10)    # what the flush shipped


def store_kinds_from_threads(repo, threads: int, count: int) -> dict[bytes, BlobKind]:
    """Each thread stores `count` blobs, data and tree in turn; their ids and kinds."""
    def store(thread: int) -> dict[bytes, BlobKind]:
        stored = {}
        for index in range(count):
            kind = BlobKind.TREE if index % 2 else BlobKind.DATA
            stored[repo.packer.store_sync(kind, os.urandom(3000 + 31 * thread))] = kind
        return stored

    async def run():
        found: dict[bytes, BlobKind] = {}

        async def worker(thread):
            found.update(await trio.to_thread.run_sync(store, thread))

        async with trio.open_nursery() as nursery:
            for thread in range(threads):
                nursery.start_soon(worker, thread)
        await repo.flush()
        return found

    return trio.run(run)


def test_tree_blobs_fill_chunks_of_their_own(tmp_path):
    """Directory nodes and block lists stored among file data would be scattered
    over every chunk: a restore's or a browse mount's walk of the tree then costs a
    GET per group of nodes; in chunks of their own it costs a few."""
    repo = make_repo(tmp_path, slots=3)
    stored = store_kinds_from_threads(repo, threads=4, count=120)
    locations = repo.index.get_many(stored)
    tree_chunks = {loc.chunk_id for loc in locations.values() if loc.kind == BlobKind.TREE}
    data_chunks = {loc.chunk_id for loc in locations.values() if loc.kind == BlobKind.DATA}
    assert len(tree_chunks) >= 3 and len(data_chunks) >= 3, "1.4 MiB of blobs in 256 KiB chunks"
    assert not tree_chunks & data_chunks
    assert {loc.kind for loc in locations.values()} == {BlobKind.TREE, BlobKind.DATA}
    reopened = trio.run(lambda: Repository.open(repo.store, PASSPHRASE, use_cache=False))
    assert {blob_id: reopened.index.get(blob_id).kind for blob_id in stored} == stored


def test_with_one_slot_both_kinds_share_the_open_chunk_rather_than_wait_forever(tmp_path):
    repo = make_repo(tmp_path, slots=1)
    stored = store_kinds_from_threads(repo, threads=3, count=100)
    reopened = trio.run(lambda: Repository.open(repo.store, PASSPHRASE, use_cache=False))
    assert len(stored) == 300
    assert all(reopened.index.get(blob_id).kind == kind for blob_id, kind in stored.items())


def test_a_flush_that_fails_raises_the_store_error_itself(tmp_path):
    """A flush ships the open data and tree chunks side by side; a failure is the
    store's error, as callers catch it, not an exception group."""
    repo = make_repo(tmp_path, FlakyStore, slots=3)

    async def run():
        await trio.to_thread.run_sync(lambda: [repo.packer.store_sync(kind, os.urandom(2000))
                                               for kind in (BlobKind.DATA, BlobKind.TREE)])
        repo.store.failing = True
        await repo.packer.flush()

    with pytest.raises(StoreUnavailable):
        trio.run(run)
