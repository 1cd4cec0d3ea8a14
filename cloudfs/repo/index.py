"""The blob index: blob id -> where the blob is stored.

Remote form: `index/<random id>` objects, each listing the chunks of one upload
session with their size, SHA-256 and blobs (sealed, zstd-compressed msgpack).
Index objects are write-once; the whole index is the union of all of them, and
can always be rebuilt from the chunks' footers.

In memory each blob costs one dict entry whose value is its location packed
into 21 bytes (about 150 bytes a blob with the key and the dict's own
overhead, against ~265 for a location object); locations are unpacked when
asked for. The chunk of a location is stored as a number into a list of
chunk ids.
"""

from __future__ import annotations

import os
import struct
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


# chunk number, kind, offset, length, raw length
_PACKED = struct.Struct("<IBQII")


class IndexedChunk:
    """A chunk as the index keeps it: size, SHA-256 and which blobs it holds."""

    __slots__ = ("chunk_id", "size", "sha256", "blob_ids", "_own", "_index")

    def __init__(self, index: "BlobIndex", info: ChunkInfo):
        self.chunk_id, self.size, self.sha256 = info.chunk_id, info.size, info.sha256
        self.blob_ids = [blob.blob_id for blob in info.blobs]
        self._own: dict[bytes, BlobLocation] | None = None   # copies the index points elsewhere for
        self._index = index

    @property
    def blobs(self) -> tuple[BlobLocation, ...]:
        """Every blob of this chunk, where it is in this chunk."""
        own = self._own or {}
        return tuple(own.get(blob_id) or self._index.get(blob_id) for blob_id in self.blob_ids)


class BlobIndex:
    """Every blob and chunk the loaded index objects (and this session) know of."""

    def __init__(self):
        self._blobs: dict[bytes, bytes] = {}
        self._chunk_ids: list[bytes] = []
        self._chunk_numbers: dict[bytes, int] = {}
        self.chunks: dict[bytes, IndexedChunk] = {}
        self.loaded_objects: set[str] = set()

    def __len__(self) -> int:
        return len(self._blobs)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self._blobs

    def get(self, blob_id: bytes) -> BlobLocation | None:
        packed = self._blobs.get(blob_id)
        if packed is None:
            return None
        number, kind, offset, length, raw_length = _PACKED.unpack(packed)
        return BlobLocation(blob_id, BlobKind(kind), self._chunk_ids[number], offset, length, raw_length)

    def add_chunk(self, chunk: ChunkInfo) -> None:
        number = self._chunk_numbers.get(chunk.chunk_id)
        if number is None:
            number = self._chunk_numbers[chunk.chunk_id] = len(self._chunk_ids)
            self._chunk_ids.append(chunk.chunk_id)
        indexed = self.chunks[chunk.chunk_id] = IndexedChunk(self, chunk)
        for blob in chunk.blobs:
            # The first copy wins; a duplicate (two sessions stored the same blob) is harmless,
            # but its chunk remembers where its own copy is.
            if blob.blob_id in self._blobs:
                if self.get(blob.blob_id) != blob:
                    indexed._own = indexed._own or {}
                    indexed._own[blob.blob_id] = blob
                continue
            self._blobs[blob.blob_id] = _PACKED.pack(number, blob.kind, blob.offset, blob.length,
                                                     blob.raw_length)

    def add_object(self, name: str, chunks: list[ChunkInfo]) -> None:
        for chunk in chunks:
            self.add_chunk(chunk)
        self.loaded_objects.add(name)
