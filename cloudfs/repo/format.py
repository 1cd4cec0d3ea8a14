"""The envelope every repository object starts with, and sealed small objects.

Every object begins with an 8-byte header, in the clear and authenticated:

    offset 0  4 bytes  magic b"CLFS"
    offset 4  1 byte   format version (FORMAT_VERSION)
    offset 5  1 byte   object kind (Kind)
    offset 6  2 bytes  flags, little-endian (bit 0: payload is zstd-compressed)

Config, index, snapshot, policy, pin, doom-list, lease and target objects are a header followed by one sealed message
whose associated data is the header and the object's name, so an object cannot
be altered, swapped for another, or renamed without detection. Their plaintext
is msgpack. See docs/format.md.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import struct
from datetime import datetime, timezone

import msgpack
import zstandard

from cloudfs import crypto
from cloudfs.errors import IntegrityError, RepositoryError

MAGIC = b"CLFS"
FORMAT_VERSION = 1
HEADER = struct.Struct("<4sBBH")
HEADER_SIZE = HEADER.size
FLAG_ZSTD = 0x0001


class Kind(enum.IntEnum):
    CONFIG = 1
    KEY = 2
    CHUNK = 3
    INDEX = 4
    SNAPSHOT = 5
    POLICY = 6
    PIN = 7
    DOOM_LIST = 8
    LEASE = 9
    TARGET = 10


def make_header(kind: Kind, flags: int = 0) -> bytes:
    return HEADER.pack(MAGIC, FORMAT_VERSION, kind, flags)


def parse_header(data: bytes, name: str, expected: Kind) -> int:
    """Check magic, version and kind; return the flags."""
    if len(data) < HEADER_SIZE:
        raise IntegrityError(name, "object is truncated")
    magic, version, kind, flags = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise IntegrityError(name, "not a cloudfs object (bad magic)")
    if version != FORMAT_VERSION:
        raise RepositoryError(
            f"{name} has repository format version {version}; this cloudfs reads version "
            f"{FORMAT_VERSION}" + (": upgrade cloudfs" if version > FORMAT_VERSION else ""))
    if kind != expected:
        raise IntegrityError(name, f"expected a {expected.name.lower()} object, found kind {kind}")
    return flags


def time_stamped_name(prefix: str, time_ns: int) -> str:
    """`prefix` + the UTC time as YYYY-MM-DDTHHMMSS.ffffffZ + `-` + 4 random bytes in hex:
    unique, sorted by time, and free of colons."""
    stamp = datetime.fromtimestamp(time_ns // 1_000_000_000, timezone.utc)
    micros = (time_ns // 1000) % 1_000_000
    return f"{prefix}{stamp:%Y-%m-%dT%H%M%S}.{micros:06d}Z-{os.urandom(4).hex()}"


def seal_dataclass(kind: Kind, key: bytes, record, compress: bool = False) -> bytes:
    """A dataclass with a `name` field, sealed under that name as the map of its other fields."""
    value = {field: item for field, item in dataclasses.asdict(record).items() if field != "name"}
    return seal_object(kind, key, record.name, value, compress=compress)


def open_dataclass(cls, kind: Kind, key: bytes, name: str, data: bytes):
    """The inverse of seal_dataclass: keys the dataclass does not know are ignored (a newer
    writer may add some); a missing one is an IntegrityError."""
    value = open_object(kind, key, name, data)
    known = {field.name for field in dataclasses.fields(cls)} - {"name"}
    try:
        return cls(**{field: item for field, item in value.items() if field in known}, name=name)
    except (TypeError, AttributeError) as error:
        raise IntegrityError(name, f"unusable {kind.name.lower()} object ({error})") from None


def pack(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


def seal_object(kind: Kind, key: bytes, name: str, value, compress: bool = False) -> bytes:
    plaintext = pack(value)
    flags = 0
    if compress:
        plaintext = zstandard.ZstdCompressor(level=3).compress(plaintext)
        flags |= FLAG_ZSTD
    header = make_header(kind, flags)
    return header + crypto.seal(key, plaintext, header + name.encode())


def open_object(kind: Kind, key: bytes, name: str, data: bytes):
    flags = parse_header(data, name, kind)
    header = data[:HEADER_SIZE]
    try:
        plaintext = crypto.unseal(key, data[HEADER_SIZE:], header + name.encode())
    except crypto.AuthenticationFailed:
        raise IntegrityError(name, "authentication failed: the object was modified or damaged") from None
    if flags & FLAG_ZSTD:
        plaintext = zstandard.ZstdDecompressor().decompress(plaintext)
    try:
        return unpack(plaintext)
    except Exception as error:  # authenticated but unreadable: written by a broken writer
        raise IntegrityError(name, f"unreadable content ({error})") from None
