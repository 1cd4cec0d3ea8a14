import os
import random

import pytest
import trio

from cloudfs.check import check_repository
from cloudfs.errors import IntegrityError, RepositoryError, UsageError, WrongPassphrase
from cloudfs.repo import BlobKind, RepoConfig, Repository, Snapshot
from cloudfs.repo.chunk import CHUNKS_PREFIX
from cloudfs.repo.index import INDEX_PREFIX
from tests.repo_helpers import PASSPHRASE, CountingStore, fast_kdf, init_repo, open_repo, s3_store

SIZES = [0, 1, 15, 16, 17, 100, 4095, 4096, 4097, 65535, 65536, 65537, 300_000, 1 << 20, 3 << 20]
SMALL_CHUNKS = dict(chunk_size=1 << 20, block_size=64 << 10)


@pytest.fixture
def store(s3_env, bucket):
    return s3_store(s3_env, bucket)


def text_like(size: int, seed: int) -> bytes:
    rng = random.Random(seed)
    words = [b"def", b"return", b"self", b"import", b"class", b"value", b"(x)", b"\n    "]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words) + b" "
    return bytes(out[:size])


def put_all(repo: Repository, blobs: list[bytes]) -> list[bytes]:
    async def put():
        ids = [await repo.put_blob(BlobKind.DATA, data) for data in blobs]
        await repo.flush()
        return ids

    return trio.run(put)


def test_blobs_of_many_sizes_round_trip_through_chunks(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    blobs = [os.urandom(size) for size in SIZES] + [text_like(size, size) for size in SIZES]
    ids = put_all(repo, blobs)
    chunks = trio.run(store.list, CHUNKS_PREFIX)
    assert len(chunks) >= 3, "1 MiB chunks: ~5 MiB of random blobs must span several"
    assert all(info.size < (1 << 20) + max(SIZES) + 4096 for info in chunks)

    reopened = open_repo(store)
    for blob_id, data in zip(ids, blobs):
        assert trio.run(reopened.get_blob, blob_id) == data


def test_one_blob_is_read_with_one_ranged_get_of_just_its_record(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    blobs = [os.urandom(200_000) for _ in range(12)]
    ids = put_all(repo, blobs)
    counting = CountingStore(store)
    reopened = open_repo(counting)
    counting.gets.clear()
    assert trio.run(reopened.get_blob, ids[7]) == blobs[7]
    [(name, offset, length, received)] = counting.gets
    assert name.startswith(CHUNKS_PREFIX) and offset > 0
    assert length == received < 200_000 + 64


def test_identical_plaintext_is_stored_once_even_across_sessions(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    data = text_like(500_000, 1)
    first, second = put_all(repo, [data, data])
    assert first == second
    stored = sum(info.size for info in trio.run(store.list, CHUNKS_PREFIX))
    assert stored < 500_000

    again = open_repo(store)
    [third] = put_all(again, [data])
    assert third == first
    assert sum(info.size for info in trio.run(store.list, CHUNKS_PREFIX)) == stored
    assert len(trio.run(store.list, INDEX_PREFIX)) == 1, "nothing new to index, no new index object"


def test_compression_applies_only_when_it_shrinks(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    put_all(repo, [text_like(1 << 20, 2)])
    text_bytes = sum(info.size for info in trio.run(store.list, CHUNKS_PREFIX))
    assert text_bytes < (1 << 20) // 3
    put_all(repo, [os.urandom(1 << 20)])
    random_bytes = sum(info.size for info in trio.run(store.list, CHUNKS_PREFIX)) - text_bytes
    assert (1 << 20) < random_bytes < (1 << 20) + 1024


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_no_plaintext_marker_reaches_any_stored_byte(s3_env, bucket, tmp_path, compression):
    store = s3_store(s3_env, bucket)
    markers = [b"MARKER-%d-cloudfs-plaintext" % i for i in range(4)]
    repo = trio.run(lambda: Repository.init(store, PASSPHRASE, config=RepoConfig(compression=compression, **SMALL_CHUNKS),
                                            kdf=fast_kdf(), cache_root=tmp_path / "cache"))
    blobs = [markers[0] * 1000,                                # compressible
             os.urandom(70_000) + markers[1] + os.urandom(10),  # incompressible around it
             markers[2],                                        # tiny
             text_like(200_000, 3) + markers[3]]
    put_all(repo, blobs)
    trio.run(repo.save_snapshot, Snapshot(tree=repo.blob_id(blobs[2]), source="/home/MARKER-3-cloudfs-plaintext"))
    client = s3_env.client()
    stored = b""
    for item in client.list_objects_v2(Bucket=bucket)["Contents"]:
        stored += client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    cached = b"".join(p.read_bytes() for p in (tmp_path / "cache").rglob("*") if p.is_file())
    assert len(stored) > 100_000 and cached
    for secret in [*markers, PASSPHRASE, b"MARKER-"]:
        assert secret not in stored
        assert secret not in cached


def test_snapshots_are_saved_last_and_listed_in_time_order(store):
    repo = init_repo(store)
    trees = put_all(repo, [b"tree one", b"tree two"])
    first = trio.run(repo.save_snapshot, Snapshot(tree=trees[0], source="/data", stats={"files": 1}))
    second = trio.run(repo.save_snapshot, Snapshot(tree=trees[1], source="/data", parent=first.name))
    listed = trio.run(open_repo(store).snapshots)
    assert [s.name for s in listed] == [first.name, second.name]
    assert listed[1].parent == first.name and listed[0].stats == {"files": 1}
    assert listed[0].name.startswith("snapshots/") and ":" not in listed[0].name
    with pytest.raises(IntegrityError, match="not stored"):
        trio.run(repo.save_snapshot, Snapshot(tree=b"\0" * 32))


def test_init_refuses_an_existing_repository_and_changes_nothing(store):
    init_repo(store)
    config_before = trio.run(store.get, "config")
    keys_before = trio.run(store.list, "keys/")
    with pytest.raises(RepositoryError, match="already exists"):
        init_repo(store)
    assert trio.run(store.get, "config") == config_before
    assert trio.run(store.list, "keys/") == keys_before
    open_repo(store)


def test_init_refuses_a_location_with_other_objects(store):
    trio.run(store.put, "something-else", b"data")
    with pytest.raises(RepositoryError, match="not empty"):
        init_repo(store)


def test_init_completes_after_an_init_that_stopped_before_its_config(store):
    trio.run(store.put, "keys/" + "0" * 64, b"left by a crashed init")
    init_repo(store)
    assert len(trio.run(store.list, "keys/")) == 1
    open_repo(store)


def test_opening_an_empty_location_says_there_is_no_repository(store):
    with pytest.raises(RepositoryError, match="no cloudfs repository"):
        open_repo(store)


def test_wrong_passphrase_is_refused(store):
    init_repo(store)
    with pytest.raises(WrongPassphrase, match="wrong passphrase"):
        open_repo(store, b"not the passphrase")


def test_key_slots_add_remove_and_change_passphrase(store):
    repo = init_repo(store)
    [initial] = trio.run(repo.key_slots)
    second = trio.run(lambda: repo.add_key(b"second passphrase", label="laptop", kdf=fast_kdf()))
    assert {s.name for s in trio.run(repo.key_slots)} == {initial.name, second.name}
    via_second = open_repo(store, b"second passphrase")
    assert via_second.slot.name == second.name and via_second.slot.label == "laptop"
    assert via_second.master.secret == repo.master.secret

    with pytest.raises(UsageError, match="in use"):
        trio.run(via_second.remove_key, second.slot_id[:8])
    trio.run(via_second.remove_key, initial.slot_id[:8])
    with pytest.raises(WrongPassphrase):
        open_repo(store, PASSPHRASE)

    trio.run(lambda: via_second.change_passphrase(b"third passphrase", kdf=fast_kdf()))
    with pytest.raises(WrongPassphrase):
        open_repo(store, b"second passphrase")
    assert open_repo(store, b"third passphrase").master.secret == repo.master.secret
    assert len(trio.run(store.list, "keys/")) == 1


def test_unknown_format_version_is_refused_with_a_clear_message(store):
    init_repo(store)
    config = bytearray(trio.run(store.get, "config"))
    config[4] = 9
    trio.run(store.delete, "config")
    trio.run(store.put, "config", bytes(config))
    with pytest.raises(RepositoryError, match="format version 9.*upgrade cloudfs"):
        open_repo(store)


def test_a_key_slot_from_another_repository_does_not_open_this_one(s3_env, bucket):
    first, second = s3_store(s3_env, bucket, "one"), s3_store(s3_env, bucket, "two")
    init_repo(first)
    init_repo(second)
    [slot] = trio.run(first.list, "keys/")
    trio.run(second.put, slot.name, trio.run(first.get, slot.name))
    for info in trio.run(second.list, "keys/"):
        if info.name != slot.name:
            trio.run(second.delete, info.name)
    with pytest.raises(IntegrityError, match="another repository"):
        open_repo(second)


def test_damaged_chunks_give_integrity_errors_naming_the_chunk(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    blobs = [os.urandom(100_000) for _ in range(3)]
    ids = put_all(repo, blobs)
    [chunk] = trio.run(store.list, CHUNKS_PREFIX)
    original = trio.run(store.get, chunk.name)
    location = repo.index.get(ids[1])

    def replace(data: bytes):
        trio.run(store.delete, chunk.name)
        if data is not None:
            trio.run(store.put, chunk.name, data)

    flipped = bytearray(original)
    flipped[location.offset + 40] ^= 0x80
    replace(bytes(flipped))
    with pytest.raises(IntegrityError, match=chunk.name):
        trio.run(repo.get_blob, ids[1])
    assert trio.run(repo.get_blob, ids[0]) == blobs[0], "other blobs stay readable"

    replace(original[: location.offset + 1000])
    with pytest.raises(IntegrityError, match=f"{chunk.name}.*truncated"):
        trio.run(repo.get_blob, ids[1])

    replace(None)
    with pytest.raises(IntegrityError, match=f"{chunk.name}.*missing"):
        trio.run(repo.get_blob, ids[1])


def test_index_is_rebuilt_from_chunk_footers(store):
    repo = init_repo(store, **SMALL_CHUNKS)
    blobs = [os.urandom(150_000) for _ in range(20)]
    ids = put_all(repo, blobs)
    for info in trio.run(store.list, INDEX_PREFIX):
        trio.run(store.delete, info.name)
    bare = open_repo(store)
    assert len(bare.index) == 0
    indexed, _ = trio.run(bare.rebuild_index)
    assert indexed == len(trio.run(store.list, CHUNKS_PREFIX)) >= 2
    rebuilt = open_repo(store)
    assert all(trio.run(rebuilt.get_blob, i) == b for i, b in zip(ids, blobs))
    assert trio.run(lambda: check_repository(rebuilt, read_data=True)).ok


def test_pins_and_policies_are_sealed_objects_that_cannot_be_moved_or_edited():
    from cloudfs.crypto import MasterKey
    from cloudfs.repo.pins import Pin, pinned_snapshot
    from cloudfs.repo.policy import PolicyRecord

    master = MasterKey.generate()
    pin = Pin("snapshots/2026-11-26T054000.711247Z-50c0d921", note="why").with_name()
    assert pinned_snapshot(pin.name) == pin.snapshot
    data = pin.seal(master)
    assert data[:8] == b"CLFS\x01\x07\x00\x00" and Pin.open(master, pin.name, data) == pin
    elsewhere = "pins/2026-11-27T000000.000000Z-00000000/" + pin.name.rsplit("/", 1)[1]
    with pytest.raises(IntegrityError):
        Pin.open(master, elsewhere, data)
    assert pinned_snapshot("pins/x") is None and pinned_snapshot("pins/a/b/c") is None

    record = PolicyRecord({"last": 3}).with_name()
    data = record.seal(master)
    assert data[:8] == b"CLFS\x01\x06\x00\x00" and PolicyRecord.open(master, record.name, data) == record
    with pytest.raises(IntegrityError):
        PolicyRecord.open(master, record.name, data[:-1] + bytes([data[-1] ^ 1]))


def test_a_snapshot_with_keys_this_reader_does_not_know_still_opens():
    from cloudfs.crypto import MasterKey
    from cloudfs.repo.format import Kind, seal_object

    master = MasterKey.generate()
    snapshot = Snapshot(tree=bytes(32), time_ns=1, host="h", source="/s", tags=("a",)).with_name()
    assert Snapshot.open(master, snapshot.name, snapshot.seal(master)) == snapshot
    newer = {"tree": bytes(32), "time_ns": 1, "host": "h", "source": "/s", "parent": None, "stats": {},
             "tags": ["a"], "added_by_a_newer_writer": True}
    assert Snapshot.open(master, snapshot.name, seal_object(Kind.SNAPSHOT, master.snapshot_key,
                                                            snapshot.name, newer)) == snapshot
    del newer["tree"]
    with pytest.raises(IntegrityError):
        Snapshot.open(master, snapshot.name, seal_object(Kind.SNAPSHOT, master.snapshot_key, snapshot.name, newer))
