"""Index objects: where the blobs of one upload session are stored.

`index/<random id>` objects, each listing the chunks of one upload session
with their size, SHA-256 and blobs (sealed, zstd-compressed msgpack). Index
objects are write-once; the whole index is the union of all of them, and can
always be rebuilt from the chunks' footers. This machine's copy of that union,
for lookups, is the local index (`localindex.py`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cloudfs.crypto import MasterKey
from cloudfs.repo.chunk import BlobLocation
from cloudfs.repo.format import Kind, open_object, seal_object

INDEX_PREFIX = "index/"


@dataclass(frozen=True)
class ChunkInfo:
    chunk_id: bytes
    size: int
    sha256: bytes
    blobs: tuple[BlobLocation, ...]

    def to_list(self) -> list:
        return [self.chunk_id, self.size, self.sha256, [b.to_list() for b in self.blobs]]

    @classmethod
    def from_list(cls, item: list) -> "ChunkInfo":
        chunk_id, size, sha256, blobs = item
        chunk_id = bytes(chunk_id)
        return cls(chunk_id, size, bytes(sha256),
                   tuple(BlobLocation.from_list(chunk_id, b) for b in blobs))


def new_index_name() -> str:
    return INDEX_PREFIX + os.urandom(16).hex()


def seal_index(master: MasterKey, name: str, chunks: list[ChunkInfo]) -> bytes:
    return seal_object(Kind.INDEX, master.index_key, name,
                       {"chunks": [c.to_list() for c in chunks]}, compress=True)


def open_index(master: MasterKey, name: str, data: bytes) -> list[ChunkInfo]:
    return [ChunkInfo.from_list(item) for item in open_index_listing(master, name, data)]


def open_index_listing(master: MasterKey, name: str, data: bytes) -> list[list]:
    """An index object's chunks as stored, `[chunk_id, size, sha256, [entry, ...]]`
    (docs/format.md), with no object made per blob: what absorbing millions of
    blobs into the local index needs, at a fraction of `open_index`'s cost."""
    return open_object(Kind.INDEX, master.index_key, name, data)["chunks"]
