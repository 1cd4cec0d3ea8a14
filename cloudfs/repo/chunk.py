"""Chunks: about 64 MiB of sealed blobs back to back, then a sealed footer.

    header   8 bytes            "CLFS", version, Kind.CHUNK, flags 0
    record*  nonce(12) || AES-256-GCM(payload) || tag(16), one per blob
    footer   nonce(12) || AES-256-GCM(msgpack {"blobs": [[id, kind, offset, length, raw_length], ...]}) || tag(16)
    trailer  8 bytes            footer length (u32 LE) || b"CLFE"

Each record is sealed on its own with the chunk's key (HKDF of the master key
with the chunk id as salt) and associated data blob id || kind, so one blob is
read with one ranged GET, and a record moved to another place, chunk or kind
does not open. The sealed payload is the plaintext, or its zstd compression
when that is strictly smaller; so a payload shorter than raw_length is
compressed, and no flag byte (and no copy to prepend one) is needed. The
footer's associated data is the header plus b"footer"; it makes every chunk
self-describing, so the index can always be rebuilt from the chunks.
"""

from __future__ import annotations

import enum
import os
import struct
import tempfile
import threading
from typing import NamedTuple

import zstandard

from cloudfs import crypto
from cloudfs.errors import IntegrityError
from cloudfs.repo.format import HEADER_SIZE, Kind, make_header, pack, parse_header, unpack
from cloudfs.store.base import FilePayload

CHUNKS_PREFIX = "chunks/"
CHUNK_ID_SIZE = 32
TRAILER = struct.Struct("<I4s")
TRAILER_MAGIC = b"CLFE"


class BlobKind(enum.IntEnum):
    DATA = 0      # file content
    TREE = 1      # directory nodes and block lists (see cloudfs.snapshot)


class BlobLocation(NamedTuple):
    """Where one blob is stored. A named tuple rather than a frozen dataclass: one
    is made per index lookup, and it costs a quarter as much to make."""

    blob_id: bytes
    kind: BlobKind
    chunk_id: bytes
    offset: int        # of the sealed record, from the start of the chunk
    length: int        # of the sealed record
    raw_length: int    # of the plaintext

    def to_list(self) -> list:
        return [self.blob_id, int(self.kind), self.offset, self.length, self.raw_length]

    @classmethod
    def from_list(cls, chunk_id: bytes, item: list) -> "BlobLocation":
        blob_id, kind, offset, length, raw_length = item
        return cls(bytes(blob_id), BlobKind(kind), chunk_id, offset, length, raw_length)


def chunk_name(chunk_id: bytes) -> str:
    hex_id = chunk_id.hex()
    return f"{CHUNKS_PREFIX}{hex_id[:2]}/{hex_id}"


def chunk_id_from_name(name: str) -> bytes:
    return bytes.fromhex(name.rsplit("/", 1)[-1])


# -- compression, one (de)compressor per thread (they are not thread-safe) -----------

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    compressors = getattr(_local, "compressors", None)
    if compressors is None:
        compressors = _local.compressors = {}
    if level not in compressors:
        compressors[level] = zstandard.ZstdCompressor(level=level)
    return compressors[level]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "decompressor"):
        _local.decompressor = zstandard.ZstdDecompressor()
    return _local.decompressor


def encode_payload(plaintext: bytes, compression_level: int | None) -> bytes:
    """The plaintext compressed if that makes it strictly smaller, else the plaintext."""
    if compression_level is not None and len(plaintext) > 64:
        compressed = _compressor(compression_level).compress(plaintext)
        if len(compressed) < len(plaintext):
            return compressed
    return plaintext


def decode_payload(payload: bytes, raw_length: int) -> bytes:
    if len(payload) == raw_length:
        return payload
    return _decompressor().decompress(payload, max_output_size=raw_length)


def blob_associated_data(blob_id: bytes, kind: BlobKind) -> bytes:
    return blob_id + bytes([kind])


def open_record(master: crypto.MasterKey, location: BlobLocation, record: bytes, name: str) -> bytes:
    """Decrypt, authenticate, decompress and hash-check one blob (I5)."""
    return open_record_payload(master, location, record, name)[1]


def open_record_payload(master: crypto.MasterKey, location: BlobLocation, record: bytes,
                        name: str) -> tuple[bytes, bytes]:
    """open_record, also giving the payload as sealed (maybe compressed): what a
    repack seals again under another chunk's key without compressing it again."""
    if len(record) != location.length:
        raise IntegrityError(name, f"blob {location.blob_id.hex()[:16]} is truncated")
    try:
        payload = crypto.unseal(master.chunk_key(location.chunk_id), record,
                                blob_associated_data(location.blob_id, location.kind))
        plaintext = decode_payload(payload, location.raw_length)
    except crypto.AuthenticationFailed:
        raise IntegrityError(name, f"blob {location.blob_id.hex()[:16]} failed authentication") from None
    except (ValueError, zstandard.ZstdError) as error:
        raise IntegrityError(name, f"blob {location.blob_id.hex()[:16]} is unreadable ({error})") from None
    if len(plaintext) != location.raw_length or master.blob_id(plaintext) != location.blob_id:
        raise IntegrityError(name, f"blob {location.blob_id.hex()[:16]} does not match its hash")
    return payload, plaintext


class ChunkBuilder:
    """Lays out one chunk in a temporary file: reserve a record's place, then seal into it.

    Reserving is cheap and must be serialized by the caller; sealing into a
    reserved place (one pwrite) may happen on several threads at once, which is
    how the packer fills one chunk from many workers. The chunk lives in an
    unnamed temporary file, not in memory: the daemon's memory does not grow
    with the chunk size or the number of chunks on their way up, and a crash
    leaves nothing behind."""

    def __init__(self, master: crypto.MasterKey, directory: str | None = None):
        self.chunk_id = os.urandom(CHUNK_ID_SIZE)
        self.name = chunk_name(self.chunk_id)
        self._key = master.chunk_key(self.chunk_id)
        self.file = tempfile.TemporaryFile(dir=directory)
        self._header = make_header(Kind.CHUNK)
        os.pwrite(self.file.fileno(), self._header, 0)
        self.size = HEADER_SIZE
        self.blobs: list[BlobLocation] = []

    def reserve(self, blob_id: bytes, kind: BlobKind, payload_length: int, raw_length: int) -> BlobLocation:
        """Claim the place of one record."""
        location = BlobLocation(blob_id, kind, self.chunk_id, self.size,
                                payload_length + crypto.SEAL_OVERHEAD, raw_length)
        self.size += location.length
        self.blobs.append(location)
        return location

    def seal_into(self, location: BlobLocation, payload: bytes) -> None:
        """Seal a payload into its reserved place (thread-safe for distinct places)."""
        record = crypto.seal(self._key, payload, blob_associated_data(location.blob_id, location.kind))
        os.pwrite(self.file.fileno(), record, location.offset)

    def add(self, blob_id: bytes, kind: BlobKind, plaintext: bytes,
            compression_level: int | None = None) -> BlobLocation:
        """Reserve and seal in one step (single-threaded use)."""
        payload = encode_payload(plaintext, compression_level)
        location = self.reserve(blob_id, kind, len(payload), len(plaintext))
        self.seal_into(location, payload)
        return location

    def finish(self) -> FilePayload:
        """Append footer and trailer (every reserved record must be sealed); the
        returned payload owns the file."""
        footer = crypto.seal(self._key, pack({"blobs": [b.to_list() for b in self.blobs]}),
                             self._header + b"footer")
        os.pwrite(self.file.fileno(), footer + TRAILER.pack(len(footer), TRAILER_MAGIC), self.size)
        self.size += len(footer) + TRAILER.size
        return FilePayload(self.file, self.size)

    def discard(self) -> None:
        self.file.close()


def parse_footer(master: crypto.MasterKey, name: str, chunk: bytes) -> list[BlobLocation]:
    """The blobs a whole chunk says it holds (used to rebuild the index and by check)."""
    parse_header(chunk, name, Kind.CHUNK)
    if len(chunk) < HEADER_SIZE + TRAILER.size:
        raise IntegrityError(name, "chunk is truncated")
    footer_length, magic = TRAILER.unpack_from(chunk, len(chunk) - TRAILER.size)
    footer_start = len(chunk) - TRAILER.size - footer_length
    if magic != TRAILER_MAGIC or footer_start < HEADER_SIZE:
        raise IntegrityError(name, "chunk is truncated or its trailer is damaged")
    chunk_id = chunk_id_from_name(name)
    try:
        footer = crypto.unseal(master.chunk_key(chunk_id), chunk[footer_start:-TRAILER.size],
                               chunk[:HEADER_SIZE] + b"footer")
    except crypto.AuthenticationFailed:
        raise IntegrityError(name, "chunk footer failed authentication") from None
    blobs = [BlobLocation.from_list(chunk_id, item) for item in unpack(footer)["blobs"]]
    for blob in blobs:
        if blob.offset < HEADER_SIZE or blob.offset + blob.length > footer_start:
            raise IntegrityError(name, "chunk footer points outside the chunk")
    return blobs
