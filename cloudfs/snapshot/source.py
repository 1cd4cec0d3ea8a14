"""What the tree builder reads: a protected tree as it was at one instant.

`DirectorySource` reads a directory as it is now, through a directory file
descriptor (so it works on a directory that a mount covers). The live mount
supplies another Source that answers from what it froze at the seal (I2).
Paths are relative bytes without a leading slash; b"" is the root.
"""

from __future__ import annotations

import errno
import os
from typing import Callable, Protocol


class FileReader(Protocol):
    def pread(self, length: int, offset: int) -> bytes: ...
    def prefetch(self, length: int, offset: int) -> None:
        """Ask the kernel to start reading this range now (it does not wait): a
        group of small files read one by one then finds them in the page cache,
        the disk having had all their reads at once."""
    def close(self) -> None: ...


class Opening(Protocol):
    """A file about to be opened, with what its source needed to know of it (asked
    for on the trio thread): the open itself can then happen in a worker thread,
    where the system calls run beside the loop instead of in its turn."""

    def open_in_thread(self) -> FileReader | None:
        """The reader, in any thread; None if only the trio thread can open it."""

    def open(self) -> FileReader:
        """The reader (trio thread)."""


class Source(Protocol):
    def listdir(self, path: bytes) -> list[bytes]: ...
    def lstat(self, path: bytes) -> os.stat_result: ...
    def readlink(self, path: bytes) -> bytes: ...
    def xattrs(self, path: bytes) -> dict[bytes, bytes]: ...
    def open(self, path: bytes) -> FileReader: ...
    def opening(self, path: bytes) -> Opening: ...


#: The live mount keeps files a sealed snapshot still needs here (cloudfs/live/graveyard.py);
#: it is never part of the protected tree.
GRAVEYARD_NAME = b".cloudfs-graveyard"

# Reading for a backup should not touch access times (allowed to the owner and root).
_NO_ATIME = os.O_NOATIME if os.geteuid() == 0 else 0


def join(directory: bytes, name: bytes) -> bytes:
    return directory + b"/" + name if directory else name


class _FdReader:
    def __init__(self, fd: int):
        self.fd = fd

    def pread(self, length: int, offset: int) -> bytes:
        return os.pread(self.fd, length, offset)

    def prefetch(self, length: int, offset: int) -> None:
        prefetch(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


def prefetch(fd: int, length: int, offset: int) -> None:
    """Start the kernel's read of a range (POSIX_FADV_WILLNEED queues it, unwaited)."""
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass   # only a hint


class DirectorySource:
    """A directory on local disk, read as it is now (a full scan, or a test)."""

    def __init__(self, root_fd: int):
        self.root_fd = root_fd

    @classmethod
    def at(cls, path: str | os.PathLike) -> "DirectorySource":
        return cls(os.open(path, os.O_RDONLY | os.O_DIRECTORY))

    def close(self) -> None:
        os.close(self.root_fd)

    def _at(self, path: bytes) -> bytes:
        return path or b"."

    def listdir(self, path: bytes) -> list[bytes]:
        fd = os.open(self._at(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=self.root_fd)
        try:
            names = [os.fsencode(name) for name in os.listdir(fd)]
        finally:
            os.close(fd)
        return [n for n in names if n != GRAVEYARD_NAME] if not path else names

    def lstat(self, path: bytes) -> os.stat_result:
        return os.stat(self._at(path), dir_fd=self.root_fd, follow_symlinks=False)

    def readlink(self, path: bytes) -> bytes:
        return os.readlink(path, dir_fd=self.root_fd)

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        proc = f"/proc/self/fd/{self.root_fd}/".encode() + self._at(path)
        try:
            names = os.listxattr(proc, follow_symlinks=False)
        except OSError as error:
            if error.errno in (errno.ENOTSUP, errno.ENODATA, errno.EPERM):
                return {}
            raise
        values = {}
        for name in names:
            try:
                values[os.fsencode(name)] = os.getxattr(proc, name, follow_symlinks=False)
            except OSError as error:
                if error.errno != errno.ENODATA:   # removed between list and get
                    raise
        return values

    def open(self, path: bytes) -> FileReader:
        return _FdReader(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | _NO_ATIME, dir_fd=self.root_fd))

    def opening(self, path: bytes) -> Opening:
        return _PathOpening(self, path)


class _PathOpening:
    """A directory's file: opened by path in whatever thread asks."""

    def __init__(self, source: DirectorySource, path: bytes):
        self.source, self.path = source, path

    def open(self) -> FileReader:
        return self.source.open(self.path)

    open_in_thread = open


def exclusion_matcher(patterns: list[str]) -> "Callable[[bytes], bool] | None":
    """A predicate for paths (relative bytes) matching any of the glob patterns.

    A pattern with a slash matches the whole relative path ("build/*.o",
    "cache/**" is written "cache/*" and excludes the directory's content); one
    without matches the last component anywhere ("*.tmp", ".cache"). Excluding a
    directory excludes everything below it."""
    import fnmatch

    if not patterns:
        return None
    by_name = [p for p in patterns if "/" not in p.strip("/")]
    by_path = [p.strip("/") for p in patterns if "/" in p.strip("/")]

    def excluded(path: bytes) -> bool:
        text = os.fsdecode(path)
        name = text.rsplit("/", 1)[-1]
        return (any(fnmatch.fnmatchcase(name, p) for p in by_name)
                or any(fnmatch.fnmatchcase(text, p) for p in by_path))

    return excluded
