"""A store in a local directory: a USB disk, a NAS mount, or the embedded default.

Writes are atomic and durable: a temporary file in the target directory,
fsync, then rename (or link, for exclusive writes), then fsync of the directory.
A crash leaves either the whole object or nothing under its name; stray
temporary files (".tmp-*") are ignored by list() and may be deleted.
"""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

import trio

from cloudfs.fsutil import fsync_directory, make_directories, write_durably
from cloudfs.errors import ObjectExists, ObjectNotFound, RepositoryError, StoreError, UsageError
from cloudfs.store.base import FilePayload, ObjectInfo, Store

TEMP_PREFIX = ".tmp-"


class LocalStore(Store):
    def __init__(self, root: str | os.PathLike, *, max_threads: int = 4):
        self.root = Path(root).absolute()
        self.location = str(self.root)
        self._limiter = trio.CapacityLimiter(max_threads)

    def _path(self, name: str) -> Path:
        parts = name.split("/")
        if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise StoreError(f"invalid object name {name!r}")
        return self.root.joinpath(*parts)

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    async def put(self, name: str, data: bytes, *, exclusive: bool = False,
                  sha256: bytes | None = None, retention=None) -> None:
        if retention is not None:
            raise UsageError(self._cannot_lock())
        await self._run(self._put_sync, name, data, exclusive)

    def _put_sync(self, name: str, data: bytes, exclusive: bool) -> None:
        path = self._path(name)
        try:
            make_directories(path.parent)
            temp = path.parent / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(6)}"
            try:
                write_durably(temp, data.slices() if isinstance(data, FilePayload) else (data,))
                if exclusive:
                    try:
                        os.link(temp, path)
                    except FileExistsError:
                        raise ObjectExists(name) from None
                else:
                    os.replace(temp, path)
            finally:
                temp.unlink(missing_ok=True)
            fsync_directory(path.parent)
        except OSError as error:
            raise StoreError(f"cannot write {name} in {self.location}: {error.strerror}") from error

    async def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return await self._run(self._get_sync, name, offset, length)

    def _get_sync(self, name: str, offset: int, length: int | None) -> bytes:
        path = self._path(name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectNotFound(name) from None
        except OSError as error:
            raise StoreError(f"cannot read {name} in {self.location}: {error.strerror}") from error
        try:
            if length is None:
                length = os.fstat(fd).st_size - offset
            return _pread_all(fd, max(length, 0), offset)
        finally:
            os.close(fd)

    async def head(self, name: str) -> ObjectInfo:
        try:
            size = (await self._run(os.stat, self._path(name))).st_size
        except FileNotFoundError:
            raise ObjectNotFound(name) from None
        return ObjectInfo(name, size)

    async def list(self, prefix: str = "") -> list[ObjectInfo]:
        return await self._run(self._list_sync, prefix)

    def _list_sync(self, prefix: str) -> list[ObjectInfo]:
        start_dir = self.root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self.root
        found = []
        for directory, _subdirs, files in os.walk(start_dir):
            for file_name in files:
                if file_name.startswith(TEMP_PREFIX):
                    continue
                path = Path(directory, file_name)
                name = path.relative_to(self.root).as_posix()
                if name.startswith(prefix):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    found.append(ObjectInfo(name, stat.st_size, _utc(stat.st_mtime_ns)))
        return sorted(found, key=lambda info: info.name)

    async def delete(self, name: str) -> None:
        await self._run(lambda: self._path(name).unlink(missing_ok=True))

    async def check(self) -> None:
        if not self.root.is_dir():
            raise RepositoryError(f"no repository at {self.location}: directory does not exist")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write to {self.location}: permission denied")

    async def create_container(self, *, object_lock: bool = False) -> None:
        """Create the directory (for init)."""
        if object_lock:
            raise UsageError(self._cannot_lock())
        try:
            await self._run(make_directories, self.root)
        except OSError as error:
            raise StoreError(f"cannot create {self.location}: {error.strerror}") from error


def _utc(time_ns: int) -> datetime:
    return datetime.fromtimestamp(time_ns / 1e9, timezone.utc)


def _pread_all(fd: int, length: int, offset: int) -> bytes:
    parts = []
    while length > 0:
        part = os.pread(fd, length, offset)
        if not part:
            break
        parts.append(part)
        length -= len(part)
        offset += len(part)
    return b"".join(parts)

