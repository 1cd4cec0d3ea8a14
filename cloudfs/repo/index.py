"""The blob index: blob id -> where the blob is stored.

Remote form: `index/<random id>` objects, each listing the chunks of one upload
session with their size, SHA-256 and blobs (sealed, zstd-compressed msgpack).
Index objects are write-once; the whole index is the union of all of them, and
can always be rebuilt from the chunks' footers. Locally it is a dict held in
memory (about 200 bytes a blob).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cloudfs.crypto import MasterKey
from cloudfs.repo.chunk import BlobKind, BlobLocation
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
    value = open_object(Kind.INDEX, master.index_key, name, data)
    return [ChunkInfo.from_list(item) for item in value["chunks"]]


class BlobIndex:
    """Every blob and chunk the loaded index objects (and this session) know of."""

    def __init__(self):
        self._blobs: dict[bytes, BlobLocation] = {}
        self.chunks: dict[bytes, ChunkInfo] = {}
        self.loaded_objects: set[str] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        return self._blobs.get(blob_id)

    def add_chunk(self, chunk: ChunkInfo) -> None:
        self.chunks[chunk.chunk_id] = chunk
        for blob in chunk.blobs:
            # The first copy wins; a duplicate (two sessions stored the same blob) is harmless.
            self._blobs.setdefault(blob.blob_id, blob)

    def add_object(self, name: str, chunks: list[ChunkInfo]) -> None:
        for chunk in chunks:
            self.add_chunk(chunk)
        self.loaded_objects.add(name)

    def blobs_of_kind(self, kind: BlobKind) -> int:
        return sum(1 for blob in self._blobs.values() if blob.kind == kind)
