"""The one small interface every object store implements.

Names are flat strings with '/' as separator ("chunks/ab/abcd..."), relative to
the repository's root in the store. Objects are written once: the repository
never rewrites an object in place, so a store may assume that an object it has
seen does not change. All methods are trio-async; blocking work runs in worker
threads inside the store, never on the caller's event loop.
"""

from __future__ import annotations

import io
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Awaitable, Callable, TypeVar

from cloudfs.errors import ObjectNotFound, UsageError

LOCK_MODES = ("governance", "compliance")
T = TypeVar("T")


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    #: when the store received the object (S3's LastModified, a file's mtime): the
    #: store's clock, which prune's grace periods are measured by (docs/prune.md).
    #: Not compared: two listings of one object are equal whatever their precision.
    modified: datetime | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Retention:
    """An S3 Object Lock retention: until `until` (an aware datetime) the object
    version cannot be deleted, and its retention not shortened. In "governance"
    mode a user granted s3:BypassGovernanceRetention can still do both; in
    "compliance" mode nobody can, the account's root user included."""

    mode: str
    until: datetime

    def __post_init__(self):
        if self.mode not in LOCK_MODES:
            raise ValueError(f"unknown Object Lock mode {self.mode!r} (governance or compliance)")


@dataclass(frozen=True)
class ObjectVersion:
    """One version of an object in a versioned bucket; a delete marker has `deleted`."""

    name: str
    version_id: str
    modified: datetime       # when the store received it (its LastModified)
    size: int
    deleted: bool = False


@dataclass(frozen=True)
class VersionPage:
    """One page of a version listing: versions sorted by name, each name's newest
    first; `after` is where the next page starts (None: this was the last)."""

    versions: list[ObjectVersion]
    after: tuple[str, str] | None


class FilePayload:
    """Object content kept in a file (a chunk on its way up), read in slices so it
    never has to be in memory whole. Owns the file: close() releases it."""

    SLICE = 1 << 20

    def __init__(self, file: io.IOBase, size: int):
        self.file = file
        self.size = size

    def __len__(self) -> int:
        return self.size

    def slices(self):
        for offset in range(0, self.size, self.SLICE):
            yield os.pread(self.file.fileno(), min(self.SLICE, self.size - offset), offset)

    def reader(self) -> "PayloadReader":
        return PayloadReader(self)

    def close(self) -> None:
        self.file.close()


class PayloadReader:
    """A seekable reader over a FilePayload for HTTP clients.

    read() returns slices of at least 1 MiB whatever size is asked for: the HTTP
    layers read request bodies 8-16 KiB at a time, and sending a 64 MiB chunk in
    such pieces cost more CPU here than sealing it."""

    def __init__(self, payload: FilePayload):
        self._payload = payload
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        remaining = self._payload.size - self._position
        count = remaining if size is None or size < 0 else min(remaining, max(size, FilePayload.SLICE))
        if count <= 0:
            return b""
        data = os.pread(self._payload.file.fileno(), count, self._position)
        self._position += len(data)
        return data

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._payload.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._payload.size


class Store(ABC):
    #: Where the store is, for messages: "s3://bucket/prefix", "/mnt/usb/backup".
    location: str

    @abstractmethod
    async def put(self, name: str, data: bytes, *, exclusive: bool = False,
                  sha256: bytes | None = None, retention: Retention | None = None) -> None:
        """Store `data` (bytes-like, or a FilePayload) under `name`.

        With exclusive=True the call fails with ObjectExists instead of replacing
        an existing object (best effort on stores that cannot do it atomically).
        `sha256`, the data's digest if the caller has it, saves the store from
        computing it again for an upload checksum. With a `retention` the object
        is stored locked (S3 Object Lock); a store that cannot lock refuses.
        """

    @abstractmethod
    async def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes, or `length` bytes from `offset` (one ranged read).

        Raises ObjectNotFound if there is no such object.
        """

    async def get_verified(self, name: str, verify: Callable[[bytes], Awaitable[T]], offset: int = 0,
                           length: int | None = None) -> T:
        """`await verify(bytes)` of what get() returns. `verify` raises IntegrityError
        when the bytes are damaged; a store with several copies (the replicated store
        of a repository's targets) then tries the next copy, so one damaged copy is
        not a read error while another is good."""
        return await verify(await self.get(name, offset, length))

    @abstractmethod
    async def head(self, name: str) -> ObjectInfo:
        """Size of one object; raises ObjectNotFound if there is none."""

    @abstractmethod
    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose name starts with `prefix`, sorted by name."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Remove one object; removing a missing object is not an error."""

    @abstractmethod
    async def check(self) -> None:
        """Fail early with a clear error if the store cannot be used at all
        (missing bucket or directory, refused credentials, unreachable endpoint)."""

    # -- Object Lock and versions: S3 only; the defaults say so --------------------

    async def check_object_lock(self) -> None:
        """Fail with one clear line unless objects put here can be locked."""
        raise UsageError(self._cannot_lock())

    async def retention(self, name: str, version_id: str | None = None) -> Retention | None:
        """The Object Lock retention of an object (its current version, or `version_id`),
        or None if it has none. Prune asks this before deleting (a locked object is
        skipped); lock extension before extending."""
        return None

    async def extend_retention(self, name: str, retention: Retention,
                               version_id: str | None = None) -> None:
        """Set an object version's retention (S3 PutObjectRetention). Callers only ever
        lengthen one: compliance-mode retention cannot be shortened."""
        raise UsageError(self._cannot_lock())

    async def version_page(self, prefix: str = "",
                           after: tuple[str, str] | None = None) -> VersionPage:
        """One page of the versions (delete markers included) of the objects whose
        names start with `prefix`; `after` is the previous page's."""
        raise UsageError(self._no_versions())

    async def get_version(self, name: str, version_id: str, offset: int = 0,
                          length: int | None = None) -> bytes:
        """Like get(), of one version of the object."""
        raise UsageError(self._no_versions())

    def _cannot_lock(self) -> str:
        return (f"{self.location} cannot lock objects: Object Lock needs an S3 bucket with "
                "versioning and Object Lock enabled")

    def _no_versions(self) -> str:
        return f"{self.location} keeps no object versions: reading the past needs a versioned S3 bucket"

    async def exists(self, name: str) -> bool:
        try:
            await self.head(name)
        except ObjectNotFound:
            return False
        return True

    async def aclose(self) -> None:
        """Release connections; the store is unusable afterwards."""
