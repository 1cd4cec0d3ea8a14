"""What an incremental snapshot costs, measured from the store's own bytes.

The issue's goal: after 16 scattered 64 KiB writes to a large file, the next
snapshot reads at most 2 MiB, and uploads at most 2 MiB of data plus 256 KiB of
metadata. Bytes are counted in the S3 server's own directory (every object the
snapshot added), and split into data and the rest with the chunk index (the
plaintext of the data blobs in the new chunks; everything else — tree blobs,
record and chunk overhead, the index and snapshot objects — is metadata).
"""

from __future__ import annotations

import hashlib
import os
import random

import pytest
import trio

from cloudfs.repo.chunk import BlobKind
from cloudfs.snapshot.reader import TreeReader
from tests.snapshot_fixtures import protected  # noqa: F401 - fixture

pytestmark = pytest.mark.timeout(240)

FILE_SIZE = 256 << 20
REGION = 64 << 10


def write_random_file(path, size: int) -> None:
    with open(path, "wb") as handle:
        for _ in range(size // (16 << 20)):
            handle.write(os.urandom(16 << 20))


def test_16_scattered_64k_writes_to_a_large_file_cost_little(protected, tmp_path):
    write_random_file(protected.source / "large.bin", FILE_SIZE)
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    protected.mount(mountpoint, "--interval", "3600")
    protected.flush(timeout=200)
    before = protected.stored_objects()

    rng = random.Random(16)
    offsets = [rng.randrange(0, FILE_SIZE - REGION) // 4096 * 4096 for _ in range(16)]
    regions = {offset: os.urandom(REGION) for offset in offsets}
    fd = os.open(mountpoint / "large.bin", os.O_RDWR)
    try:
        for offset, data in regions.items():
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
    reply = protected.request("snapshot", wait=True)
    assert reply["committed"]

    added = {name: size for name, size in protected.stored_objects().items() if name not in before}
    repo = protected.repository()
    data_bytes = sum(blob.raw_length for name in added if name.startswith("chunks/")
                     for blob in trio.run(repo.chunk_blobs, bytes.fromhex(name.rsplit("/", 1)[1]))
                     if blob.kind == BlobKind.DATA)
    metadata_bytes = sum(added.values()) - data_bytes
    history = protected.status()["history"][-1]
    print(f"\nincremental: read {history['bytes_read']} B, stored {sum(added.values())} B "
          f"({data_bytes} data + {metadata_bytes} metadata) in {len(added)} objects; "
          f"seal-to-commit {history['seal_to_commit_s'] * 1000:.0f} ms, stall {history['stall_ms']:.2f} ms")
    assert history["bytes_read"] <= 2 << 20
    assert data_bytes <= 2 << 20
    assert metadata_bytes <= 256 << 10
    assert not history["full"]

    # The snapshot holds the new regions and the old bytes around them.
    snapshot = protected.snapshots(repo)[-1]
    reader = TreeReader(repo)

    async def read_back():
        entry = await reader.lookup(snapshot.tree, b"large.bin")
        samples = list(regions) + [rng.randrange(0, FILE_SIZE - REGION) for _ in range(8)]
        return entry, {offset: await reader.read(entry, offset, REGION) for offset in samples}

    entry, stored = trio.run(read_back)
    assert entry.size == FILE_SIZE
    with open(protected.source / "large.bin", "rb") as handle:
        for offset, data in stored.items():
            handle.seek(offset)
            assert hashlib.sha256(data).digest() == hashlib.sha256(handle.read(REGION)).digest(), offset
