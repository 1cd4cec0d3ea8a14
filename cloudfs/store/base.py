"""The one small interface every object store implements.

Names are flat strings with '/' as separator ("chunks/ab/abcd..."), relative to
the repository's root in the store. Objects are written once: the repository
never rewrites an object in place, so a store may assume that an object it has
seen does not change. All methods are trio-async; blocking work runs in worker
threads inside the store, never on the caller's event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Store(ABC):
    #: Where the store is, for messages: "s3://bucket/prefix", "/mnt/usb/backup".
    location: str

    @abstractmethod
    async def put(self, name: str, data: bytes, *, exclusive: bool = False,
                  sha256: bytes | None = None) -> None:
        """Store `data` (bytes-like) under `name`.

        With exclusive=True the call fails with ObjectExists instead of replacing
        an existing object (best effort on stores that cannot do it atomically).
        `sha256`, the data's digest if the caller has it, saves the store from
        computing it again for an upload checksum.
        """

    @abstractmethod
    async def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Return the object's bytes, or `length` bytes from `offset` (one ranged read).

        Raises ObjectNotFound if there is no such object.
        """

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

    async def exists(self, name: str) -> bool:
        from cloudfs.errors import ObjectNotFound

        try:
            await self.head(name)
        except ObjectNotFound:
            return False
        return True

    async def aclose(self) -> None:
        """Release connections; the store is unusable afterwards."""
