"""Reading the protected tree as it is now: one directory at a time, in bounded memory.

`walk(root_fd)` yields a `Listing` per directory — its path, its own stat and
the packed stat of every entry — depth first, holding only the directories on
the current path and their names. Reconcile and the rescan compare each listing
with the manifest's listing of the same directory and forget it; a first mount
streams the listings into a new manifest. Nothing here holds an entry per file.

The walk works through directory descriptors only, so it also reads a SOURCE
the mount covers. Entries that vanish while being read are skipped; mount
points of other filesystems inside the tree are left out (they are not
protected), and so is the graveyard.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from typing import NamedTuple

from cloudfs.live.graveyard import is_graveyard

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

# A stat packed into 48 bytes: what the manifest keeps of it, and what a listing
# carries (comparing two packed stats is one bytes comparison).
PACKED = struct.Struct("<IQQqqIIQ")    # mode, ino, size, mtime_ns, ctime_ns, uid, gid, nlink


class EntryStat(NamedTuple):
    """The part of a stat that says whether an entry changed."""

    mode: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    uid: int
    gid: int
    nlink: int

    @property
    def kind(self) -> int:
        """The file type bits (stat.S_IFREG, S_IFDIR, ...)."""
        return stat.S_IFMT(self.mode)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)


def pack_stat(st) -> bytes:
    """An os.stat_result (or anything with its st_* fields), packed."""
    return PACKED.pack(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                       st.st_uid, st.st_gid, st.st_nlink)


def unpack_stat(packed: bytes) -> EntryStat:
    return EntryStat._make(PACKED.unpack(packed))


def join(parent: bytes, name: bytes) -> bytes:
    """The relative path of `name` in directory `parent` (b"" is the root)."""
    return parent + b"/" + name if parent else name


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


class Listing(NamedTuple):
    """One directory as it is now: its path (b"" for the root), its own packed stat,
    and its entries' packed stats by name."""

    path: bytes
    stat: bytes
    entries: dict[bytes, bytes]


def walk(root_fd: int) -> Iterator[Listing]:
    """Every directory below (and including) the directory `root_fd`, parents first,
    staying on its filesystem. Only the directories on the way down are open."""
    root_stat = os.fstat(root_fd)
    device = root_stat.st_dev
    top = os.open(".", _DIRECTORY_FLAGS, dir_fd=root_fd)
    stack: list[tuple[int, bytes, Iterator[tuple[bytes, bytes]]]] = []
    try:
        entries, subdirectories = _read_directory(top, b"", device)
        stack.append((top, b"", iter(subdirectories)))
        yield Listing(b"", pack_stat(root_stat), entries)
        while stack:
            fd, path, pending = stack[-1]
            name, own = next(pending, (None, None))
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            child = _open_child(fd, name)
            if child is None:
                continue
            child_path = join(path, name)
            try:
                entries, subdirectories = _read_directory(child, child_path, device)
            except BaseException:
                os.close(child)
                raise
            stack.append((child, child_path, iter(subdirectories)))
            yield Listing(child_path, own, entries)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def _read_directory(fd: int, path: bytes, device: int) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    """The packed stats of one directory's entries, and its subdirectories (name, packed stat)."""
    entries: dict[bytes, bytes] = {}
    subdirectories = []
    with os.scandir(fd) as listing:
        for dir_entry in listing:
            try:
                st = dir_entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_dev != device:
                continue
            name = os.fsencode(dir_entry.name)
            if is_graveyard(path, name):
                continue
            packed = entries[name] = pack_stat(st)
            if stat.S_ISDIR(st.st_mode):
                subdirectories.append((name, packed))
    return entries, sorted(subdirectories)


def _open_child(fd: int, name: bytes) -> int | None:
    try:
        return os.open(name, _DIRECTORY_FLAGS, dir_fd=fd)
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None   # replaced while we looked
        raise


def walk_entries(root_fd: int) -> Iterator[tuple[bytes, bytes]]:
    """Every entry as (path, packed stat), the root (b"") first."""
    for listing in walk(root_fd):
        if not listing.path:
            yield b"", listing.stat
        for name, packed in listing.entries.items():
            yield join(listing.path, name), packed


def walk_path(path) -> Iterator[Listing]:
    """`walk` of the directory at `path`."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield from walk(fd)
    finally:
        os.close(fd)
