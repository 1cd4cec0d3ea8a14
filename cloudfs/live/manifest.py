"""The baseline: the stat of every entry of the protected tree, and the scan that makes it.

The manifest is what the tree looked like at the last checkpoint (the first mount;
later, the last committed snapshot). Reconcile compares a fresh scan against it to
find changes the journal never saw; the change view uses it to name what was removed.
It lives in the state directory as one msgpack file, replaced atomically.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import msgpack

from cloudfs.fsutil import replace_durably
from cloudfs.live.graveyard import is_graveyard

MANIFEST_NAME = "manifest"
FORMAT = "cloudfs-live-manifest"
VERSION = 1


class ManifestError(Exception):
    """The manifest file is damaged or of an unknown format."""


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


# A Tree keeps each EntryStat packed: 48 bytes instead of a tuple of eight ints
# (~250), which is what bounds the daemon's memory for large trees.
_PACKED = struct.Struct("<IQQqqIIQ")    # mode, ino, size, mtime_ns, ctime_ns, uid, gid, nlink
_PACKED_INO = struct.Struct("<4xQ")


def pack_stat(st) -> bytes:
    """An os.stat_result (or anything with its st_* fields) as a Tree keeps it."""
    return _PACKED.pack(st.st_mode, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
                        st.st_uid, st.st_gid, st.st_nlink)


def _unpack(packed: bytes) -> EntryStat:
    return EntryStat._make(_PACKED.unpack(packed))


def join(parent: bytes, name: bytes) -> bytes:
    """The relative path of `name` in directory `parent` (b"" is the root)."""
    return parent + b"/" + name if parent else name


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


@dataclass(frozen=True)
class Checkpoint:
    """What a manifest is the tree of: the first mount's baseline (snapshot None), or
    a committed snapshot of one repository taken with these exclusion patterns."""

    snapshot: str | None = None
    repo_id: str | None = None
    exclude: tuple[str, ...] = ()
    time_ns: int | None = None       # the snapshot's sealing time

    def describes_a_snapshot_of(self, repo_id: str, exclude: list[str]) -> bool:
        """Whether this is the tree of a snapshot in that repository, taken with
        those exclusions (what an incremental seal needs)."""
        return (self.snapshot is not None and self.repo_id == repo_id
                and list(self.exclude) == list(exclude))


class Tree:
    """Entries of the protected tree by relative path (bytes; b"" is the root itself).

    `entries` maps each path to its stat packed by `pack_stat`; `get` and `items`
    give EntryStats. Indexes by parent and by inode are built on first use
    (`index()` builds both now, e.g. in a worker thread before the tree is
    shared); a Tree is not modified after construction.
    """

    def __init__(self, entries: dict[bytes, bytes], checkpoint: Checkpoint | None = None):
        self.entries = entries
        self.checkpoint = checkpoint or Checkpoint()
        self._children: dict[bytes, list[bytes]] | None = None
        self._by_ino: dict[int, bytes | list[bytes]] | None = None

    def index(self) -> "Tree":
        self.children(b"")
        self.paths_of(0)
        return self

    def get(self, path: bytes) -> EntryStat | None:
        packed = self.entries.get(path)
        return None if packed is None else _unpack(packed)

    def items(self) -> Iterator[tuple[bytes, EntryStat]]:
        for path, packed in self.entries.items():
            yield path, _unpack(packed)

    def __contains__(self, path: bytes) -> bool:
        return path in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def children(self, path: bytes) -> list[bytes]:
        """Names directly inside directory `path`."""
        if self._children is None:
            index: dict[bytes, list[bytes]] = {}
            for entry_path in self.entries:
                if entry_path:
                    parent, _, name = entry_path.rpartition(b"/")
                    index.setdefault(parent, []).append(name)
            self._children = index
        return self._children.get(path, [])

    def paths_of(self, ino: int) -> list[bytes]:
        """Every path of inode `ino` (several for hard links)."""
        if self._by_ino is None:
            index: dict[int, bytes | list[bytes]] = {}
            for entry_path, packed in self.entries.items():
                number = _PACKED_INO.unpack_from(packed)[0]
                known = index.setdefault(number, entry_path)   # a list only for hard links
                if known is not entry_path:
                    index[number] = [*known, entry_path] if isinstance(known, list) else [known, entry_path]
            self._by_ino = index
        found = self._by_ino.get(ino)
        if found is None:
            return []
        return list(found) if isinstance(found, list) else [found]

    def subtree(self, path: bytes) -> Iterator[bytes]:
        """`path` and everything below it."""
        waiting = [path]
        while waiting:
            path = waiting.pop()
            yield path
            entry = self.get(path)
            if entry is not None and entry.is_dir:
                waiting.extend(join(path, name) for name in self.children(path))


# -- the scan -----------------------------------------------------------------------


def scan(root_fd: int) -> Tree:
    """Stat every entry below the directory `root_fd`, staying on its filesystem.

    Works through directory descriptors only, so it also works on a SOURCE the mount
    covers. Entries that vanish while being scanned are skipped; mount points of
    other filesystems inside the tree are left out (they are not protected).
    """
    root_stat = os.fstat(root_fd)
    entries = {b"": pack_stat(root_stat)}
    device = root_stat.st_dev
    top = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=root_fd)
    stack = [(top, b"", iter(_scan_directory(top, b"", device, entries)))]
    try:
        while stack:
            fd, path, subdirectories = stack[-1]
            name = next(subdirectories, None)
            if name is None:
                os.close(fd)
                stack.pop()
                continue
            try:
                child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                dir_fd=fd)
            except OSError as error:
                if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # replaced while we looked
                raise
            child_path = join(path, name)
            stack.append((child, child_path, iter(_scan_directory(child, child_path, device, entries))))
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return Tree(entries)


def _scan_directory(fd: int, path: bytes, device: int, entries: dict[bytes, bytes]) -> list[bytes]:
    """Record the entries of one directory; return the names of its subdirectories."""
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
            entries[join(path, name)] = pack_stat(st)
            if stat.S_ISDIR(st.st_mode):
                subdirectories.append(name)
    return subdirectories


def scan_path(source: Path) -> Tree:
    fd = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return scan(fd)
    finally:
        os.close(fd)


# -- persistence --------------------------------------------------------------------


def load_manifest(state_dir: Path) -> Tree | None:
    """The saved baseline, or None if there is none yet."""
    try:
        data = (state_dir / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        return None
    try:
        document = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if document.get("format") != FORMAT or document.get("version") != VERSION:
            raise ManifestError("unknown manifest format")
        checkpoint = document.get("checkpoint") or {}
        return Tree({row[0]: _PACKED.pack(*row[1:]) for row in document["entries"]},
                    Checkpoint(checkpoint.get("snapshot"), checkpoint.get("repo_id"),
                               tuple(checkpoint.get("exclude", ())), checkpoint.get("time_ns")))
    except (ValueError, KeyError, TypeError, struct.error, msgpack.UnpackException) as error:
        raise ManifestError(f"damaged manifest: {error}") from error


def save_manifest(state_dir: Path, tree: Tree) -> None:
    """Replace the baseline (with its checkpoint) atomically and durably."""
    checkpoint = tree.checkpoint
    document = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": {"snapshot": checkpoint.snapshot, "repo_id": checkpoint.repo_id,
                       "exclude": list(checkpoint.exclude), "time_ns": checkpoint.time_ns},
        "entries": [[path, *entry] for path, entry in tree.items()],
    }
    replace_durably(state_dir / MANIFEST_NAME, msgpack.packb(document, use_bin_type=True))
