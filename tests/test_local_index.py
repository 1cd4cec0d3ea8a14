"""The local blob index on disk: reopened, shared by processes, rebuilt, flat in memory."""

import hashlib
import logging
import os
import subprocess
import sys
import textwrap

import pytest
import trio

from cloudfs.errors import IntegrityError, StoreUnavailable
from cloudfs.repo import BlobKind, RepoConfig, Repository
from cloudfs.repo.chunk import BlobLocation
from cloudfs.repo.index import INDEX_PREFIX, ChunkInfo
from cloudfs.repo.localindex import CACHE_KIB, INDEX_FILE, PAGE_BYTES, READ_AHEAD_SHARE, BlobIndex
from cloudfs.store import LocalStore
from tests.repo_helpers import PASSPHRASE, CountingStore, fast_kdf, s3_store

pytestmark = pytest.mark.timeout(300)

REPO_ID = b"0123456789abcdef"
SMALL = RepoConfig(chunk_size=256 << 10, block_size=4096)


def synthetic_chunk(seed: str, blobs: int, first: int = 0) -> ChunkInfo:
    chunk_id = hashlib.sha256(seed.encode()).digest()
    return ChunkInfo(chunk_id, 8 + blobs * 100, hashlib.sha256(chunk_id).digest(), tuple(
        BlobLocation(hashlib.sha256(b"blob %d" % (first + i)).digest(), BlobKind.DATA, chunk_id, 8 + 100 * i,
                     100, 72) for i in range(blobs)))


def new_repo(store, cache_root) -> Repository:
    return trio.run(lambda: Repository.init(store, PASSPHRASE, config=SMALL, kdf=fast_kdf(),
                                            create_container=True, cache_root=cache_root))


def reopen(store, cache_root, **options) -> Repository:
    return trio.run(lambda: Repository.open(store, PASSPHRASE, cache_root=cache_root, **options))


def store_sessions(repo: Repository, sessions: int, blobs: int = 40) -> list[bytes]:
    """`sessions` uploads (one index object each) of random 3,000-byte blobs."""
    ids = []

    async def session():
        for _ in range(blobs):
            ids.append(await repo.put_blob(BlobKind.DATA, os.urandom(3000)))
        await repo.flush()

    for _ in range(sessions):
        trio.run(session)
    return ids


def everything(repo: Repository, ids: list[bytes]) -> tuple:
    """What the index says, comparable between two machines."""
    return (repo.index.get_many(ids), sorted(repo.index.chunks(), key=lambda c: c.chunk_id),
            repo.index.loaded_objects, len(repo.index))


def index_gets(store: CountingStore) -> list[str]:
    return [name for name, *_ in store.gets if name.startswith(INDEX_PREFIX)]


# -- on one machine ---------------------------------------------------------------------------


def test_the_index_survives_reopening_and_reads_no_index_object_again(tmp_path):
    store = LocalStore(tmp_path / "repo")
    repo = new_repo(store, tmp_path / "cache")
    ids = store_sessions(repo, 3)
    trio.run(repo.close)
    assert (tmp_path / "cache" / repo.config.repo_id_hex / INDEX_FILE).exists()

    counting = CountingStore(LocalStore(tmp_path / "repo"))
    again = reopen(counting, tmp_path / "cache")
    assert index_gets(counting) == []
    assert len(again.index) == len(ids) and all(i in again.index for i in ids)
    assert trio.run(again.get_blob, ids[-1])


def test_chunks_not_named_by_an_index_object_stay_out_of_the_file(tmp_path):
    store = LocalStore(tmp_path / "repo")
    repo = new_repo(store, tmp_path / "cache")
    [first] = store_sessions(repo, 1, blobs=1)
    chunk = synthetic_chunk("unnamed", 3)
    repo.index.add_chunk(chunk)
    assert chunk.blobs[0].blob_id in repo.index
    other = BlobIndex(repo.index.path, repo.config.repo_id)     # another process's view
    assert first in other and chunk.blobs[0].blob_id not in other
    repo.index.add_object("index/" + "ab" * 16, [chunk])
    assert chunk.blobs[0].blob_id in other and repo.index.unnamed_chunks() == []


def test_a_failed_index_write_leaves_its_chunks_for_the_next_one(tmp_path):
    class IndexWritesFail(LocalStore):
        failing = True

        async def put(self, name, data, **options):
            if name.startswith(INDEX_PREFIX) and self.failing:
                raise StoreUnavailable("the store went away")
            await super().put(name, data, **options)

    store = IndexWritesFail(tmp_path / "repo")
    repo = new_repo(store, tmp_path / "cache")
    with pytest.raises(StoreUnavailable):
        store_sessions(repo, 1)
    store.failing = False
    trio.run(repo.flush)          # nothing new stored, but the chunks are named now
    fresh = reopen(LocalStore(tmp_path / "repo"), None, use_cache=False)
    assert len(fresh.index) == 40


def test_two_processes_absorb_and_look_up_at_once(tmp_path):
    path = tmp_path / INDEX_FILE
    script = textwrap.dedent(f"""
        import sys
        from tests.test_local_index import synthetic_chunk, REPO_ID
        from cloudfs.repo.localindex import BlobIndex
        index = BlobIndex(__import__("pathlib").Path({str(path)!r}), REPO_ID)
        me, other = sys.argv[1], sys.argv[2]
        for n in range(40):
            chunk = synthetic_chunk(f"{{me}} {{n}}", 500, first=int(me) * 100_000 + n * 500)
            index.add_object(f"index/{{me}}-{{n:04}}", [chunk])
            assert all(blob.blob_id in index for blob in chunk.blobs[::50])
            index.loaded_objects, len(index)
        # both processes also absorb the same objects: the second is a no-op
        for n in range(10):
            index.add_object(f"index/shared-{{n}}", [synthetic_chunk(f"shared {{n}}", 100, first=900_000 + n * 100)])
        print("ok")
    """)
    environment = dict(os.environ, PYTHONPATH=os.getcwd())
    workers = [subprocess.Popen([sys.executable, "-c", script, me, other], stdout=subprocess.PIPE, text=True,
                                env=environment) for me, other in (("1", "2"), ("2", "1"))]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0] and outputs == ["ok\n", "ok\n"]
    index = BlobIndex(path, REPO_ID)
    assert len(index.loaded_objects) == 90
    assert len(index) == 2 * 40 * 500 + 10 * 100 == sum(chunk.blobs for chunk in index.chunks())


def test_forgetting_an_object_moves_blobs_to_their_other_copy(tmp_path):
    index = BlobIndex(tmp_path / INDEX_FILE, REPO_ID)
    first, second = synthetic_chunk("first", 10), synthetic_chunk("second", 5, first=8)   # blobs 8, 9 twice
    index.add_object("index/one", [first])
    index.add_object("index/two", [second])
    shared = first.blobs[9].blob_id
    assert index.get(shared).chunk_id == first.chunk_id and len(index) == 13
    assert index.objects_listing(second.chunk_id) == ["index/two"]

    assert index.forget_objects(["index/one"]) == 1
    assert index.get(shared) == second.blobs[1]
    assert index.get(first.blobs[0].blob_id) is None and index.chunk(first.chunk_id) is None
    assert len(index) == 5 and index.loaded_objects == {"index/two"}


def test_an_object_deleted_from_the_store_is_forgotten(tmp_path):
    store = LocalStore(tmp_path / "repo")
    repo = new_repo(store, tmp_path / "cache")
    store_sessions(repo, 2)
    [gone, kept] = sorted(info.name for info in trio.run(store.list, INDEX_PREFIX))
    trio.run(store.delete, gone)
    trio.run(repo.load_index)
    assert repo.index.loaded_objects == {kept} and len(repo.index) == 40


# -- damage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["deleted", "garbage", "truncated", "another version", "torn pages"])
def test_a_damaged_or_missing_index_is_rebuilt_with_one_line(tmp_path, caplog, damage):
    store = LocalStore(tmp_path / "repo")
    repo = new_repo(store, tmp_path / "cache")
    ids = store_sessions(repo, 3, blobs=300)
    path = repo.index.path
    trio.run(repo.close)
    size = path.stat().st_size
    if damage == "deleted":
        path.unlink()
    elif damage == "garbage":
        path.write_bytes(os.urandom(size))
    elif damage == "truncated":
        os.truncate(path, size // 2 + 100)
    elif damage == "another version":
        import sqlite3
        with sqlite3.connect(path) as db:
            db.execute("UPDATE meta SET value = 0 WHERE key = 'format'")
    else:
        with open(path, "r+b") as handle:        # every page but the first, scribbled on
            for offset in range(4096, size, 4096):
                handle.seek(offset + 8)
                handle.write(os.urandom(64))

    caplog.set_level(logging.INFO)
    opened, errors = None, 0
    for _ in range(2):            # damage found by a lookup is rebuilt by the next load
        try:
            opened = opened or reopen(LocalStore(tmp_path / "repo"), tmp_path / "cache")
            assert len(opened.index.get_many(ids)) == len(ids)
            assert all(i in opened.index for i in ids)
            break
        except IntegrityError as error:
            assert str(path) in str(error)
            errors += 1
            if opened is not None:
                trio.run(opened.load_index)
    assert errors <= 1
    assert len(opened.index) == len(ids)
    lines = [r.getMessage() for r in caplog.records if "local index" in r.getMessage()]
    if damage == "deleted":
        assert lines == [f"reading 3 index objects into the local index {path}"]
    else:
        assert len([line for line in lines if "rebuilding" in line]) == 1, lines
        assert any(word in lines[0] for word in ("damaged", "format")), lines


# -- a new machine, memory -----------------------------------------------------------------------


def test_a_new_machine_builds_the_same_index_from_the_store(s3_env, bucket, tmp_path):
    store = s3_store(s3_env, bucket)
    repo = new_repo(store, tmp_path / "first")
    ids = store_sessions(repo, 4, blobs=150)
    counting = CountingStore(s3_store(s3_env, bucket))
    elsewhere = reopen(counting, tmp_path / "elsewhere")
    assert everything(elsewhere, ids) == everything(repo, ids)
    assert len(index_gets(counting)) == 4, "each index object read once"
    assert trio.run(elsewhere.get_blob, ids[123])


MEMORY_SCRIPT = """
import hashlib, sys, trio
from pathlib import Path
from tests.test_local_index import synthetic_chunk, REPO_ID
from cloudfs.repo.localindex import BlobIndex
from cloudfs.repo.indexload import absorb_objects

blobs, path = int(sys.argv[1]), Path(sys.argv[2])
index = BlobIndex(path, REPO_ID)
objects = [f"index/{n:06}" for n in range(blobs // 16000)]

async def fetch(name):
    n = int(name[6:])
    return [synthetic_chunk(f"{n} {k}", 1000, first=(n * 16 + k) * 1000).to_list() for k in range(16)]

trio.run(absorb_objects, index, objects, fetch, {})
ids = [hashlib.sha256(b"blob %d" % (n * 7919 % blobs)).digest() for n in range(20000)]
assert all(index.get(i) is not None for i in ids) and len(index.get_many(ids)) == len(ids)
assert len(index) == blobs
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmHWM"].split()[0]))
"""


def test_memory_is_flat_in_the_number_of_blobs(tmp_path):
    def peak_kib(blobs: int) -> int:
        result = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(blobs), str(tmp_path / f"{blobs}.sqlite")],
                                capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()),
                                timeout=280)
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    small, large = peak_kib(208_000), peak_kib(1_008_000)
    assert large - small < 15 * 1024, f"peak RSS {small} KiB at 208 k blobs, {large} KiB at 1,008 k"


def test_many_lookups_read_a_large_index_ahead_once(tmp_path):
    """A cold index answers a random id with a random read; a process about to look
    up a large share of its pages has the file read sequentially instead, once."""
    index = BlobIndex(tmp_path / INDEX_FILE, REPO_ID)
    batch = index.absorbing()
    for n in range(200):
        batch.add(f"index/{n:04}", [synthetic_chunk(f"chunk {n}", 1000, first=n * 1000).to_list()])
    batch.commit()
    size = index.path.stat().st_size
    assert size > CACHE_KIB * 1024, "a file SQLite's own cache cannot hold"
    share = int(size * READ_AHEAD_SHARE / PAGE_BYTES)
    stored = [hashlib.sha256(b"blob %d" % (n * 7919 % 200_000)).digest() for n in range(share)]
    absent = [os.urandom(32) for _ in range(share)]

    assert len(index.get_many(stored[:share // 2])) == share // 2
    assert index.reading_ahead is None, "a few lookups do not read the whole file"
    assert index.get_many(absent) == {}
    reading = index.reading_ahead
    assert reading is not None and reading.name == "index-read-ahead"
    reading.join(timeout=60)
    assert not reading.is_alive()
    assert len(index.get_many(stored)) == share
    assert index.reading_ahead is reading, "read once per process"
    index.close()


def test_a_small_index_is_never_read_ahead(tmp_path):
    index = BlobIndex(tmp_path / INDEX_FILE, REPO_ID)
    index.add_object("index/0000", [synthetic_chunk("chunk", 1000)])
    ids = [os.urandom(32) for _ in range(20_000)]
    assert index.get_many(ids) == {}
    assert index.reading_ahead is None, "SQLite's cache holds it"
    index.close()
