"""Which chunks snapshots reach: directories, inline blocks and block-list trees, with a
bounded memory of what was walked, and the blobs the index lacks counted."""

from __future__ import annotations

import os

import pytest
import trio

from cloudfs.repo import BlobKind, RepoConfig, Repository, Snapshot
from cloudfs.snapshot import blocklist
from cloudfs.snapshot.reachable import reachable_chunks
from cloudfs.snapshot.tree import Entry, encode_directory
from cloudfs.store import LocalStore
from tests.repo_helpers import PASSPHRASE, fast_kdf

pytestmark = pytest.mark.timeout(60)


async def chunk_of(repo, blob_id: bytes) -> bytes:
    return repo.index.get(blob_id).chunk_id


def test_every_chunk_a_snapshot_reaches_and_no_other(tmp_path):
    async def run():
        repo = await Repository.init(LocalStore(tmp_path / "repo"), PASSPHRASE, kdf=fast_kdf(),
                                     config=RepoConfig(chunk_size=64 << 10, block_size=4096),
                                     create_container=True, use_cache=False)
        blocks = [await repo.put_blob(BlobKind.DATA, os.urandom(4096)) for _ in range(300)]
        _, root = await blocklist.build(blocks + [None], lambda data: repo.put_blob(BlobKind.TREE, data))
        big = Entry(name=b"big", mode=0o100644, size=301 * 4096, block_list=root)
        small = Entry(name=b"small", mode=0o100644, size=10,
                      blocks=[await repo.put_blob(BlobKind.DATA, b"small file")])
        inner = await repo.put_blob(BlobKind.TREE, encode_directory([small]))
        top = await repo.put_blob(BlobKind.TREE, encode_directory(
            [big, Entry(name=b"dir", mode=0o040755, subtree=inner)]))
        await repo.flush()
        unreachable = await repo.put_blob(BlobKind.DATA, os.urandom(4096))
        await repo.flush()
        snapshots = [Snapshot(tree=top), Snapshot(tree=inner)]
        expected = {await chunk_of(repo, blob) for blob in [*blocks, root, inner, top, small.blocks[0]]}
        assert len(expected) > 3 and await chunk_of(repo, unreachable) not in expected

        for remembered in (100_000, 1):    # forgetting what was walked costs time, not results
            found = await reachable_chunks(repo, snapshots, remembered=remembered)
            assert found.chunks == expected and found.missing_blobs == 0 and found.unreadable == 0

        lost = Snapshot(tree=await repo.put_blob(BlobKind.TREE, encode_directory(
            [Entry(name=b"x", mode=0o100644, size=4, blocks=[b"\1" * 32])])))
        await repo.flush()
        found = await reachable_chunks(repo, [lost])
        assert found.missing_blobs == 1

    trio.run(run)
