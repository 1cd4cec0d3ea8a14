"""Damaged or missing data in the store (I5): through the mount, EIO on exactly
the files that need a damaged blob, with a log line naming the snapshot, the
path and the object; the rest reads back exactly. A restore of the same
snapshot reports exactly those paths, restores everything else, and exits
non-zero. The store going away in the middle of a copy fails it with EIO after
bounded retries; nothing hangs."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import time
from urllib.parse import urlsplit

import pytest
import trio

from cloudfs.browse.names import Catalog
from cloudfs.repo.chunk import chunk_name
from tests.browse_fixtures import (
    BrowseMount,
    blobs_in_chunk,
    expected_damage,
    listing_error,
    new_repo,
    read_error,
    snapshot_needs,
)
from tests.faults import FaultyProxy
from tests.tree_helpers import capture_directory

pytestmark = pytest.mark.timeout(120)
BLOCK = 4096


def make_tree(root) -> None:
    """Files of one to a few blocks in nested folders, a duplicate (one blob,
    two files), a sparse file and one large enough for a block-list tree."""
    files = {
        "top.txt": b"top\n",
        "a/one.txt": b"one\n" * 100,
        "a/two.bin": os.urandom(3 * BLOCK),
        "a/deep/three.txt": b"three\n" * 1000,
        "b/four.bin": b"4" * BLOCK + os.urandom(BLOCK),
        "b/same-as-four.bin": None,
        "big.bin": os.urandom(300 * BLOCK + 5),
    }
    files["b/same-as-four.bin"] = files["b/four.bin"]
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty").write_bytes(b"")
    with open(root / "sparse", "wb") as handle:
        handle.seek(20 * BLOCK)
        handle.write(b"end")


@pytest.fixture
def stored(s3_env, tmp_path):
    """A snapshot in a repository of tiny chunks (two blocks each), so that
    damaging one chunk damages only a blob or two."""
    repo = new_repo(s3_env, tmp_path, block_size=BLOCK, chunk_size=2 * BLOCK)
    source = tmp_path / "source"
    make_tree(source)
    repo.take_snapshot(source)
    return repo


def _location(repo, snapshot, path: bytes, block: int = 0):
    from cloudfs.snapshot.reader import TreeReader

    reader = TreeReader(repo)
    entry = trio.run(reader.lookup, snapshot.tree, path)
    if block == "node":
        return repo.index.get(entry.subtree)
    if block == "leaf":
        from cloudfs.snapshot import blocklist

        level, ids = blocklist.decode_node(trio.run(reader.tree_blob, entry.block_list))
        return repo.index.get(ids[1])
    return repo.index.get(trio.run(reader.block_ids, entry, block, block + 1)[0])


def flip_a_byte(repo, store, snapshot) -> set:
    location = _location(repo, snapshot, b"a/two.bin", 1)
    name = chunk_name(location.chunk_id)
    data = bytearray(trio.run(store.get, name))
    data[location.offset + 20] ^= 0x40
    trio.run(store.put, name, bytes(data))
    return {location.blob_id}


def truncate_a_chunk(repo, store, snapshot) -> set:
    location = _location(repo, snapshot, b"b/four.bin", 1)
    name = chunk_name(location.chunk_id)
    cut = location.offset + location.length // 2
    trio.run(store.put, name, trio.run(store.get, name)[:cut])
    return {blob.blob_id for blob in blobs_in_chunk(repo, location.chunk_id) if blob.offset + blob.length > cut}


def delete_a_chunk(repo, store, snapshot) -> set:
    location = _location(repo, snapshot, b"a/deep/three.txt", 0)
    trio.run(store.delete, chunk_name(location.chunk_id))
    return {blob.blob_id for blob in blobs_in_chunk(repo, location.chunk_id)}


def delete_a_directory_node(repo, store, snapshot) -> set:
    location = _location(repo, snapshot, b"a", "node")
    trio.run(store.delete, chunk_name(location.chunk_id))
    return {blob.blob_id for blob in blobs_in_chunk(repo, location.chunk_id)}


def delete_a_block_list_leaf(repo, store, snapshot) -> set:
    location = _location(repo, snapshot, b"big.bin", "leaf")
    trio.run(store.delete, chunk_name(location.chunk_id))
    return {blob.blob_id for blob in blobs_in_chunk(repo, location.chunk_id)}


DAMAGE = [flip_a_byte, truncate_a_chunk, delete_a_chunk, delete_a_directory_node, delete_a_block_list_leaf]


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_damage_fails_exactly_the_files_that_need_it(stored, damage, tmp_path):
    repo, snapshot = stored, stored.snapshots[0]
    opened = repo.open()
    needs = snapshot_needs(opened, snapshot)
    damaged = damage(opened, repo.store(), snapshot)
    broken, unlistable, reachable = expected_damage(needs, damaged)
    assert broken or unlistable, "the damage should matter to some file"
    reference = repo.references[0]["entries"]
    name = Catalog(repo.snapshots).time_name(snapshot)

    with BrowseMount(repo) as mount:
        root = mount / name
        for path in sorted(reachable):
            error = read_error(root / os.fsdecode(path))
            assert error == (errno.EIO if path in broken else None), f"{path}: {error}"
        for path in unlistable:
            assert listing_error(root / os.fsdecode(path)) == errno.EIO, path
        example = sorted(broken)[0] if broken else sorted(unlistable)[0]
        log = mount.wait_for_log(f"/{os.fsdecode(example)}")
        line = next((line for line in log.splitlines() if f"/{os.fsdecode(example)}" in line), "")
        assert snapshot.name in line and "chunks/" in line, log

    target = tmp_path / "restored"
    result = repo.cloudfs("restore", name, target)
    assert result.returncode == 1, result.stdout + result.stderr
    reported = {line.split(": ", 2)[1] for line in result.stdout.splitlines() if line.startswith("damaged: ")}
    assert reported == {"/" + os.fsdecode(p) for p in broken | unlistable}, result.stdout
    assert "could not be restored" in result.stderr
    restored = capture_directory(target)["entries"]
    for path in reachable - broken:
        assert restored.get(path) == reference[path], path
    for path in broken:
        assert path not in restored, f"{path} was left behind with wrong bytes"


def test_only_reads_that_touch_a_damaged_block_fail_and_no_wrong_byte_is_returned(stored, tmp_path):
    repo, snapshot = stored, stored.snapshots[0]
    original = (tmp_path / "source" / "big.bin").read_bytes()
    location = _location(repo.open(), snapshot, b"big.bin", 150)
    chunk = chunk_name(location.chunk_id)
    data = bytearray(trio.run(repo.store().get, chunk))
    data[location.offset + location.length - 1] ^= 1       # the last byte of its tag
    trio.run(repo.store().put, chunk, bytes(data))
    with BrowseMount(repo) as mount:
        with open(mount / Catalog(repo.snapshots).time_name(snapshot) / "big.bin", "rb", buffering=0) as handle:
            got = bytearray()
            with pytest.raises(OSError) as caught:
                while piece := handle.read(BLOCK):
                    got += piece
            assert caught.value.errno == errno.EIO
            assert len(got) <= 150 * BLOCK and got == original[:len(got)]
            handle.seek(151 * BLOCK)
            assert handle.read() == original[151 * BLOCK:]


def _store_goes_away(proxy: FaultyProxy) -> None:
    """Reset every connection and refuse new ones, as a server that died would.
    (FaultyProxy.close() alone leaves connections in flight hanging, a stall.)"""
    for sock in list(proxy._sockets):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    proxy.close()


def test_the_store_going_away_mid_copy_fails_with_eio_and_nothing_hangs(s3_env, tmp_path):
    repo = new_repo(s3_env, tmp_path, block_size=64 << 10, chunk_size=8 << 20)
    source = tmp_path / "source"
    source.mkdir()
    (source / "big.bin").write_bytes(os.urandom(96 << 20))
    (source / "small.txt").write_text("small\n")
    repo.take_snapshot(source)
    proxy = FaultyProxy(urlsplit(s3_env.endpoint).port)
    repo.endpoint = proxy.endpoint
    try:
        with BrowseMount(repo, None, "--retries", "2", "--no-cache") as mount:
            big = mount / "latest" / "big.bin"
            assert (mount / "latest" / "small.txt").read_text() == "small\n"
            with open(big, "rb") as handle:
                assert len(handle.read(1 << 20)) == 1 << 20          # the copy has begun
                _store_goes_away(proxy)
                started = time.monotonic()
                copy = subprocess.run(["cp", "-a", str(big), str(tmp_path / "copy")],
                                      capture_output=True, text=True, timeout=90)
            assert copy.returncode != 0 and "Input/output error" in copy.stderr, copy.stderr
            assert time.monotonic() - started < 30
            assert (mount / "latest" / "small.txt").read_text() == "small\n"   # cached: still served
            log = mount.wait_for_log("big.bin")
            assert "big.bin" in log and ("cannot reach" in log or "kept failing" in log), log[-2000:]
    finally:
        proxy.close()
