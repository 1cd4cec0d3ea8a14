"""What a seal freezes: everything the snapshot's builder will look at, as of the seal.

At the seal the journal's pending changes (by backing inode) are turned into the
builder's `PathChanges` (by path), and the part of the tree the builder will
examine is read now, in the same synchronous stretch, so that the snapshot is
the tree at that instant however long its upload takes (I2):

- listings (and the lstat of every entry) of the directories whose entries
  changed, and of new directories all the way down;
- lstat, xattrs and symlink targets of every changed entry and of every
  directory on the way to one;
- for every file whose content will be read, which byte ranges (the dirty
  blocks, or all of it): these are the obligations that copy-on-write keeps.

To decide that, `CaptureWalker` walks the tree exactly as `TreeBuilder` will,
by the same rules (`cloudfs.snapshot.rules`), with the manifest (the tree as of
the previous snapshot) standing in for the previous snapshot's tree. That is only valid when the manifest describes that
snapshot (its checkpoint says so); otherwise the seal is *full*: every
directory listed, every file planned whole.

Turning inodes into paths needs no scan: since the previous snapshot, names
changed only in the directories the journal lists (`dirs`), so an inode is
either still at one of its manifest paths whose parent did not change, or
appears in the fresh listing of a changed directory. A directory is found by
the same rule, from the root down. If what is found contradicts the journal
(changes made behind the mount's back), `Inconsistent` is raised and the
caller falls back to a full capture. docs/live.md, "Sealing", has the rules.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from cloudfs.live.capturestore import CaptureStore, LazyObligations
from cloudfs.live.changes import ChangeSet, RangeSet
from cloudfs.live.graveyard import is_graveyard
from cloudfs.live.manifest import EntryStat, Manifest, ManifestDelta, join, pack_stat, parent_of
from cloudfs.snapshot.rules import Content, PathChanges, WalkRules, blocks_to_update
from cloudfs.snapshot.source import DirectorySource

_DIR_LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 4096


class Inconsistent(Exception):
    """The tree does not match what the journal says (it changed behind the mount's back)."""


class FrozenStat(NamedTuple):
    """The lstat fields a snapshot records, under os.stat_result's names."""

    st_mode: int
    st_ino: int
    st_dev: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_rdev: int
    st_size: int
    st_mtime_ns: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st) -> FrozenStat:
        return cls(st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, st.st_rdev,
                   st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Capture:
    """The sealed state of the tree as far as the builder will look at it.

    `changes` is None for a full capture (the builder then compares everything).
    `reads` maps each file path the builder will open to the byte ranges it will
    read, a RangeSet clipped to the file's size at the seal. A full capture made
    with a state directory keeps its maps on disk (`store`, capturestore.py);
    they behave as the dicts of an incremental one.
    """

    time_ns: int
    changes: PathChanges | None
    root: FrozenStat
    stats: dict[bytes, FrozenStat] = field(default_factory=dict)
    listings: dict[bytes, list[bytes]] = field(default_factory=dict)
    xattrs: dict[bytes, dict[bytes, bytes]] = field(default_factory=dict)
    targets: dict[bytes, bytes] = field(default_factory=dict)
    reads: dict[bytes, RangeSet] = field(default_factory=dict)
    store: CaptureStore | None = None

    @classmethod
    def on_disk(cls, time_ns: int, root: FrozenStat, state_dir: Path) -> Capture:
        store = CaptureStore(state_dir)
        return cls(time_ns, None, root, store.stats, store.listings, store.xattrs, store.targets,
                   store.reads, store)

    @property
    def full(self) -> bool:
        return self.changes is None

    def plan_read(self, path: bytes, ino: int, ranges: RangeSet) -> None:
        """The builder will read `ranges` of the file at `path` (inode `ino`)."""
        if self.store is not None:
            self.store.reads.plan(path, ino, ranges)
        else:
            self.reads[path] = ranges

    def finish(self) -> None:
        """The walk is done: what is buffered goes to disk."""
        if self.store is not None:
            self.store.finish()

    def close(self) -> None:
        """Its snapshot is committed or given up: free what it holds."""
        if self.store is not None:
            self.store.close()

    def obligations(self):
        """By inode: the bytes the builder will read (hard links merged); a mapping
        with get/pop/clear and `in` for what the builder will open."""
        if self.store is not None:
            return LazyObligations(self.store.reads)
        needed: dict[int, RangeSet] = {}
        for path, ranges in self.reads.items():
            ino = self.stats[path].st_ino
            if ino in needed:
                needed[ino].update(ranges)
            else:
                needed[ino] = ranges.copy()
        return needed

    def bytes_to_read(self) -> int:
        if self.store is not None:
            return self.store.read_bytes
        return sum(ranges.total() for ranges in self.reads.values())


def blocks_to_read(ranges, size: int, old_size: int, block_size: int) -> RangeSet:
    """The bytes the builder's UPDATE reads of a file of `size` (was `old_size`)
    whose dirty ranges are `ranges`."""
    return RangeSet((index * block_size, min(size, (index + 1) * block_size))
                    for index in blocks_to_update(ranges, size, old_size, block_size))


class CaptureWalker:
    """Reads, through SOURCE's descriptor, what one seal must freeze.

    `manifest` is the tree as of the previous snapshot when `trusted` (its
    checkpoint names that snapshot); `has_previous` says whether the builder
    will have a previous snapshot at all. Synchronous: the caller runs it in
    the stretch between `journal.seal()` and the next request.
    """

    def __init__(self, root_fd: int, manifest: Manifest, *, block_size: int, has_previous: bool,
                 trusted: bool, exclude: Callable[[bytes], bool] | None, time_ns: int,
                 state_dir: Path | None = None):
        self.root_fd = root_fd
        self.manifest = manifest
        self.block_size = block_size
        self.has_previous = has_previous
        self.trusted = trusted and has_previous
        self.exclude = exclude or (lambda path: False)
        root = os.fstat(root_fd)
        self.device = root.st_dev
        self.root_ino = root.st_ino
        self.capture = Capture(time_ns, None, FrozenStat.of(root))
        self.state_dir = state_dir
        self._live = DirectorySource(root_fd)
        self._rules = WalkRules(None)
        # Resolution of inodes to paths (incremental captures).
        self._changed_dirs: set[int] = set()
        self._dir_paths: dict[int, bytes] = {}
        self._found_in: dict[int, list[tuple[int, bytes, FrozenStat]]] = {}

    # -- the two kinds of capture ----------------------------------------------------

    def full(self) -> Capture:
        """Everything: the builder lists every directory and compares every entry.
        With a state directory, on disk (memory does not grow with the tree)."""
        if self.state_dir is not None:
            self.capture = Capture.on_disk(self.capture.time_ns, self.capture.root, self.state_dir)
        try:
            self._walk_directory(b"", self.has_previous)
        except BaseException:
            self.capture.close()
            raise
        self.capture.finish()
        return self.capture

    def incremental(self, pending: ChangeSet) -> Capture:
        """What the builder needs for `pending`, the changes since the previous snapshot
        (which the manifest must describe). Raises Inconsistent."""
        if not self.trusted:
            raise ValueError("an incremental capture needs the manifest of the previous snapshot")
        changes = self.resolve(pending)
        self.capture.changes = changes
        self._rules = WalkRules(changes)
        self._walk_directory(b"", True)
        return self.capture

    # -- inodes to paths -----------------------------------------------------------------

    def resolve(self, pending: ChangeSet) -> PathChanges:
        """The journal's changes (by inode) as the builder's PathChanges (by path)."""
        self._changed_dirs = set(pending.dirs)
        self._dir_paths = {self.root_ino: b""}
        self._list_changed_directories()
        changes = PathChanges()
        for ino in self._changed_dirs:
            if ino in self._dir_paths and self._dir_paths[ino] in self.capture.listings:
                changes.listings.add(self._dir_paths[ino])
        for ino in pending.whole | pending.data.keys() | pending.meta:
            if ino == self.root_ino:
                continue  # the root has no entry of its own in a snapshot
            for path, st in self._paths_of(ino):
                self._classify(changes, pending, ino, path, st)
        self._mark_replaced_directories(changes)
        return changes

    def _classify(self, changes: PathChanges, pending: ChangeSet, ino: int, path: bytes,
                  st: FrozenStat) -> None:
        if stat.S_ISREG(st.st_mode):
            if ino in pending.whole:
                changes.data[path] = None
            elif ino in pending.data:
                changes.data[path] = list(pending.data[ino])
            else:
                changes.meta.add(path)
            return
        changes.meta.add(path)
        if stat.S_ISDIR(st.st_mode) and ino in pending.whole:
            changes.listings.add(path)  # a new directory, perhaps where another one was

    def _mark_replaced_directories(self, changes: PathChanges) -> None:
        """A directory in a changed listing that is not the one the manifest has at that
        path is relisted (the builder builds it afresh anyway; this also makes its
        parents 'touched', so the walk reaches it)."""
        for directory, names in list(self.capture.listings.items()):
            for name in names:
                path = join(directory, name)
                st = self.capture.stats[path]
                if not stat.S_ISDIR(st.st_mode):
                    continue
                before = self.manifest.get(path)
                if before is None or before.ino != st.st_ino or not before.is_dir:
                    changes.listings.add(path)

    def _list_changed_directories(self) -> None:
        """List every changed directory that can be found, parents first where that
        is how they are found."""
        waiting = set(self._changed_dirs)
        progress = True
        while waiting and progress:
            progress = False
            stack = sorted(waiting)
            while stack:
                ino = stack.pop()
                if ino not in waiting:
                    continue
                path = self._dir_path(ino)
                if path is None:
                    continue
                self._list_changed(ino, path)
                waiting.discard(ino)
                progress = True
                stack.extend(child for child in self._subdirectories(path) if child in waiting)

    def _subdirectories(self, path: bytes) -> list[int]:
        return [self.capture.stats[join(path, name)].st_ino for name in self.capture.listings[path]
                if stat.S_ISDIR(self.capture.stats[join(path, name)].st_mode)]

    def _list_changed(self, ino: int, path: bytes) -> None:
        names = self._list(path, expect_ino=ino)
        for name in names:
            st = self.capture.stats[join(path, name)]
            self._found_in.setdefault(st.st_ino, []).append((ino, name, st))

    def _dir_path(self, ino: int, depth: int = 0) -> bytes | None:
        """Where directory `ino` is now, or None if it cannot be found (removed)."""
        known = self._dir_paths.get(ino)
        if known is not None:
            return known
        if depth > _MAX_DEPTH:
            raise Inconsistent("directories nested in a loop")
        for parent, name, st in self._found_in.get(ino, ()):
            if stat.S_ISDIR(st.st_mode):
                parent_path = self._dir_path(parent, depth + 1)
                if parent_path is not None:
                    return self._remember_dir(ino, join(parent_path, name))
        for old_path in self.manifest.paths_of(ino):
            before = self.manifest.get(old_path)
            if not old_path or not before.is_dir:
                continue
            parent = self.manifest.get(parent_of(old_path)).ino
            if parent in self._changed_dirs:
                continue  # its listing changed: the fresh listings say where it is
            parent_path = self._dir_path(parent, depth + 1)
            if parent_path is not None:
                return self._remember_dir(ino, join(parent_path, old_path.rpartition(b"/")[2]))
        return None

    def _remember_dir(self, ino: int, path: bytes) -> bytes:
        self._dir_paths[ino] = path
        return path

    def _paths_of(self, ino: int) -> list[tuple[bytes, FrozenStat]]:
        """Every path of inode `ino` now, with its stat: its names in changed
        directories, and its manifest names in directories that did not change."""
        found = []
        for parent, name, st in self._found_in.get(ino, ()):
            found.append((join(self._dir_paths[parent], name), st))
        for old_path in self.manifest.paths_of(ino):
            if not old_path:
                continue
            parent = self.manifest.get(parent_of(old_path)).ino
            if parent in self._changed_dirs:
                continue
            parent_path = self._dir_path(parent)
            if parent_path is None:
                raise Inconsistent(f"the directory of {old_path!r} is gone but its listing did not change")
            path = join(parent_path, old_path.rpartition(b"/")[2])
            st = self._stat(path)
            if st.st_ino != ino:
                raise Inconsistent(f"{path!r} is another inode than the journal says")
            found.append((path, st))
        return found

    # -- the builder's walk, mirrored ---------------------------------------------------------

    def _walk_directory(self, path: bytes, has_previous: bool) -> None:
        if self._rules.reuses_subtree(path, has_previous):
            return  # the builder reuses the previous node
        relist = self._rules.relists(path, has_previous)
        names = self._listing(path) if relist else self._previous_names(path)
        for name in names:
            child = join(path, name)
            if self.exclude(child):
                continue
            before = self.manifest.get(child) if has_previous and self.trusted else None
            self._walk_child(child, before, relist)

    def _previous_names(self, path: bytes) -> list[bytes]:
        return [name for name in self.manifest.children(path) if not is_graveyard(path, name)]

    def _walk_child(self, path: bytes, before: EntryStat | None, relisted: bool) -> None:
        if self._rules.unchanged(path, before.ino if before is not None else None, relisted,
                                 lambda: self._stat(path).st_ino):
            return
        st = self._stat(path)
        self._capture_xattrs(path)
        if stat.S_ISREG(st.st_mode):
            self._plan_read(path, st, before)
        elif stat.S_ISDIR(st.st_mode):
            # As TreeBuilder._subdirectory: another directory inode at this path is built afresh.
            self._walk_directory(path, before is not None and before.is_dir and before.ino == st.st_ino)
        elif stat.S_ISLNK(st.st_mode):
            self.capture.targets[path] = self._live.readlink(path)

    def _plan_read(self, path: bytes, st: FrozenStat, before: EntryStat | None) -> None:
        same_file = before is not None and stat.S_ISREG(before.mode) and before.ino == st.st_ino
        plan = self._rules.content(path, same_file, lambda: _same_stat(before, st))
        if plan is Content.REUSE:
            return
        if plan is Content.UPDATE:
            needed = blocks_to_read(self.capture.changes.data[path], st.st_size, before.size, self.block_size)
        else:
            needed = RangeSet([(0, st.st_size)])
        if needed:
            self.capture.plan_read(path, st.st_ino, needed)

    # -- reading the live tree ------------------------------------------------------------------

    def _listing(self, path: bytes) -> list[bytes]:
        listed = self.capture.listings.get(path)
        return listed if listed is not None else self._list(path)

    def _list(self, path: bytes, expect_ino: int | None = None) -> list[bytes]:
        """List a directory and lstat every entry (other filesystems and the graveyard
        left out); recorded in the capture."""
        try:
            fd = os.open(path or b".", _DIR_LIST_FLAGS, dir_fd=self.root_fd)
        except OSError as error:
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                raise Inconsistent(f"directory {path!r} is gone") from None
            raise
        try:
            if expect_ino is not None and os.fstat(fd).st_ino != expect_ino:
                raise Inconsistent(f"{path!r} is another directory than the journal says")
            names = []
            with os.scandir(fd) as listing:
                for entry in listing:
                    name = os.fsencode(entry.name)
                    if is_graveyard(path, name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if st.st_dev != self.device:
                        continue  # another filesystem mounted inside: not protected
                    names.append(name)
                    self.capture.stats[join(path, name)] = FrozenStat.of(st)
        finally:
            os.close(fd)
        self.capture.listings[path] = names
        return names

    def _stat(self, path: bytes) -> FrozenStat:
        known = self.capture.stats.get(path)
        if known is not None:
            return known
        try:
            st = FrozenStat.of(self._live.lstat(path))
        except FileNotFoundError:
            raise Inconsistent(f"{path!r} is gone") from None
        self.capture.stats[path] = st
        return st

    def _capture_xattrs(self, path: bytes) -> None:
        try:
            values = self._live.xattrs(path)
        except OSError as error:
            if error.errno == errno.ENOENT:
                raise Inconsistent(f"{path!r} is gone") from None
            values = {}
        if values:
            self.capture.xattrs[path] = values


def _same_stat(before: EntryStat, st: FrozenStat) -> bool:
    """`Entry.same_stat` of the builder, against the manifest's entry."""
    return (before.ino == st.st_ino and before.size == st.st_size and before.mode == st.st_mode
            and before.mtime_ns == st.st_mtime_ns and before.ctime_ns == st.st_ctime_ns)


def manifest_delta(manifest: Manifest, capture: Capture) -> ManifestDelta:
    """What turns the manifest into the tree as of the seal: what the capture saw.

    Relisted directories get exactly their fresh entries (the subtrees of names
    that are gone, or that changed type, are removed; a directory replaced by
    another is relisted itself, deeper); every captured stat replaces the old
    one. An incremental capture's delta is computed here, in a worker thread
    while the snapshot uploads; a full capture's is streamed from its store
    when the daemon applies it in the commit step (a list of every entry would
    be the memory the store saves).
    """
    if capture.store is not None:
        return ManifestDelta(_removed(manifest, capture), _entries(capture))
    with manifest.reading():
        removed = list(_removed(manifest, capture))
    entries = dict(_entries(capture))
    return ManifestDelta(removed, sorted(entries.items()))


def _removed(manifest: Manifest, capture: Capture) -> Iterator[bytes]:
    """Names of relisted directories that are gone, or of another type now (parents first)."""
    listings = capture.listings.items()   # on disk: in path order already, and streamed
    for directory, names in (listings if capture.store is not None else sorted(listings)):
        fresh = set(names)
        for name, packed in manifest.listing(directory).items():
            if name not in fresh or stat.S_ISDIR(_mode(packed)) != stat.S_ISDIR(
                    capture.stats[join(directory, name)].st_mode):
                yield join(directory, name)


def _entries(capture: Capture) -> Iterator[tuple[bytes, bytes]]:
    yield b"", pack_stat(capture.root)
    for path, st in capture.stats.items():
        yield path, pack_stat(st)


def _mode(packed: bytes) -> int:
    return int.from_bytes(packed[:4], "little")
