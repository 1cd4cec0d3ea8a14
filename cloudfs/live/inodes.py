"""The inode table: which backing file each FUSE inode number stands for, and how to reach it.

An inode is identified by its backing (st_dev, st_ino) and reached through one of
its names: (parent inode, name), resolved with *at() syscalls relative to the
parent directory's descriptor. Only directories hold descriptors (O_PATH, in a
bounded LRU), so the daemon needs a handful of descriptors however many inodes
the kernel remembers: on this machine RLIMIT_NOFILE is 20,000 and cannot be
raised, and a per-inode descriptor (libfuse's passthrough_hp) would run out after
20,000 files. Files whose every name is gone stay reachable through their open
handles. docs/live.md has the rules.

FUSE inode numbers are the backing st_ino wherever that is free (so applications
see the same inode numbers as on the plain directory), else generated numbers.
"""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict

import pyfuse3

_DIR_OPEN_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GENERATED_BASE = 1 << 63


class Inode:
    """One backing inode the kernel knows (its lookup count is above zero)."""

    __slots__ = ("nodeid", "dev", "ino", "kind", "protected", "lookups", "links", "fd",
                 "open_fds", "gone")

    def __init__(self, nodeid: int, dev: int, ino: int, kind: int, protected: bool):
        self.nodeid = nodeid
        self.dev = dev
        #: The backing st_ino: the key the journal uses.
        self.ino = ino
        self.kind = kind
        #: On SOURCE's filesystem (journaled); mounts inside SOURCE are not.
        self.protected = protected
        self.lookups = 0
        #: Names known to lead to this inode: (parent Inode, name) pairs.
        self.links: list[tuple[Inode, bytes]] = []
        #: Cached O_PATH descriptor (directories and the root only), or -1.
        self.fd = -1
        #: Backing descriptors of the open handles of this inode.
        self.open_fds: list[int] = []
        #: We removed its last name: the backing inode number may be reused.
        self.gone = False

    @property
    def is_dir(self) -> bool:
        return self.kind == stat.S_IFDIR

    def __repr__(self) -> str:
        return f"<Inode {self.nodeid} ino={self.ino} lookups={self.lookups}>"


def stale() -> OSError:
    return OSError(errno.ESTALE, os.strerror(errno.ESTALE))


class InodeTable:
    """FUSE inode number <-> backing inode, with the bookkeeping FUSE asks for.

    Callers may rely on: `dir_fd()` descriptors stay valid until `trim()`, which the
    FUSE handlers call when they return (never in the middle of one); one backing
    inode has one FUSE number while the kernel remembers it.
    """

    def __init__(self, root_fd: int, dir_fd_cache: int = 1024):
        root_stat = os.fstat(root_fd)
        self.device = root_stat.st_dev
        self.root = Inode(pyfuse3.ROOT_INODE, root_stat.st_dev, root_stat.st_ino, stat.S_IFDIR, True)
        self.root.fd = root_fd
        self.root.lookups = 1 << 62  # never forgotten
        self._by_nodeid: dict[int, Inode] = {self.root.nodeid: self.root}
        self._by_key: dict[tuple[int, int], Inode] = {(self.root.dev, self.root.ino): self.root}
        self._cached: OrderedDict[Inode, None] = OrderedDict()
        self._cache_size = dir_fd_cache
        self._next_generated = _GENERATED_BASE

    def __getitem__(self, nodeid: int) -> Inode:
        try:
            return self._by_nodeid[nodeid]
        except KeyError:
            raise stale() from None

    def __len__(self) -> int:
        return len(self._by_nodeid)

    def inodes(self):
        return self._by_nodeid.values()

    # -- lookup counts ----------------------------------------------------------

    def remember(self, st: os.stat_result, parent: Inode, name: bytes) -> Inode:
        """The inode for `st`, found as `name` in `parent`; counts one kernel lookup."""
        key = (st.st_dev, st.st_ino)
        inode = self._by_key.get(key)
        if inode is not None and inode.gone and not inode.open_fds:
            # Its number was freed and reused by a new file: give the new file a new
            # FUSE number so the kernel cannot mix the two (their page caches!).
            del self._by_key[key]
            inode = None
        if inode is None:
            inode = self._new_inode(st)
        inode.lookups += 1
        inode.gone = False
        link = (parent, name)
        if link not in inode.links:
            inode.links.append(link)
        return inode

    def _new_inode(self, st: os.stat_result) -> Inode:
        protected = st.st_dev == self.device
        nodeid = st.st_ino
        if not protected or nodeid in self._by_nodeid or nodeid == pyfuse3.ROOT_INODE:
            nodeid = self._generate_nodeid()
        inode = Inode(nodeid, st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), protected)
        self._by_nodeid[nodeid] = inode
        self._by_key[(st.st_dev, st.st_ino)] = inode
        return inode

    def _generate_nodeid(self) -> int:
        while self._next_generated in self._by_nodeid:
            self._next_generated += 1
        self._next_generated += 1
        return self._next_generated - 1

    def forget(self, nodeid: int, count: int) -> Inode | None:
        """Drop `count` kernel lookups; return the inode if the kernel no longer knows it."""
        inode = self._by_nodeid.get(nodeid)
        if inode is None or inode is self.root:
            return None
        inode.lookups -= count
        if inode.lookups > 0:
            return None
        del self._by_nodeid[nodeid]
        key = (inode.dev, inode.ino)
        if self._by_key.get(key) is inode:
            del self._by_key[key]
        if inode.fd >= 0:
            self._cached.pop(inode, None)
            os.close(inode.fd)
            inode.fd = -1
        return inode

    def find(self, st: os.stat_result) -> Inode | None:
        return self._by_key.get((st.st_dev, st.st_ino))

    def find_ino(self, ino: int) -> Inode | None:
        """The inode of the protected filesystem with backing number `ino`, if the kernel knows it."""
        return self._by_key.get((self.device, ino))

    # -- reaching the backing inode ---------------------------------------------

    def dir_fd(self, inode: Inode) -> int:
        """An O_PATH descriptor of directory `inode`, valid until the next `trim()`."""
        if inode.fd >= 0:
            if inode is not self.root:
                self._cached.move_to_end(inode)
            return inode.fd
        chain = [inode]  # walk up to an ancestor that has a descriptor, then open down
        while chain[-1].fd < 0:
            if not chain[-1].links:
                raise stale()
            chain.append(chain[-1].links[0][0])
        for child in reversed(chain[:-1]):
            parent, name = child.links[0]
            fd = os.open(name, _DIR_OPEN_FLAGS, dir_fd=parent.fd)
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (child.dev, child.ino):
                os.close(fd)
                raise stale()  # changed behind the mount's back
            child.fd = fd
            self._cached[child] = None
        return inode.fd

    def locate(self, inode: Inode) -> tuple[int, bytes]:
        """(parent directory descriptor, name) of one of `inode`'s names."""
        if not inode.links:
            raise stale()
        parent, name = inode.links[0]
        return self.dir_fd(parent), name

    def path(self, inode: Inode) -> tuple[bytes, bool]:
        """A path for path-based syscalls, and whether to follow a symlink at its end.

        Directories and nameless open files go through their descriptor's /proc
        magic link (which names the inode itself, even a symlink); other inodes
        through their parent's descriptor plus their name (not followed).
        """
        if inode.is_dir:
            return b"/proc/self/fd/%d" % self.dir_fd(inode), True
        if inode.links:
            parent_fd, name = self.locate(inode)
            return b"/proc/self/fd/%d/%s" % (parent_fd, name), False
        if inode.open_fds:
            return b"/proc/self/fd/%d" % inode.open_fds[0], True
        raise stale()

    def stat(self, inode: Inode) -> os.stat_result:
        """The backing stat of `inode`, checked to still be the same inode."""
        if inode.fd >= 0:
            return os.fstat(inode.fd)
        if inode.open_fds:
            return os.fstat(inode.open_fds[0])
        parent_fd, name = self.locate(inode)
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        if st.st_ino != inode.ino or st.st_dev != inode.dev:
            raise stale()
        return st

    def trim(self) -> None:
        """Close cached directory descriptors beyond the cache size (least recent first)."""
        cached = self._cached
        while len(cached) > self._cache_size:
            inode, _ = cached.popitem(last=False)
            os.close(inode.fd)
            inode.fd = -1

    # -- names ------------------------------------------------------------------

    def unlinked(self, parent: Inode, name: bytes, st: os.stat_result) -> None:
        """`name` in `parent`, which had stat `st`, was removed."""
        inode = self.find(st)
        if inode is None:
            return
        _drop_link(inode, parent, name)
        if stat.S_ISDIR(st.st_mode) or st.st_nlink <= 1:
            inode.gone = True

    def renamed(self, old_parent: Inode, old_name: bytes, new_parent: Inode, new_name: bytes,
                moved: os.stat_result, replaced: os.stat_result | None, exchanged: bool) -> None:
        """Keep names right after rename(old → new); `replaced` is what `new` named before."""
        moved_inode = self.find(moved)
        replaced_inode = self.find(replaced) if replaced is not None else None
        if replaced_inode is not None:
            _drop_link(replaced_inode, new_parent, new_name)
            if exchanged:
                replaced_inode.links.append((old_parent, old_name))
            elif stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1:
                replaced_inode.gone = True
        if moved_inode is not None:
            _drop_link(moved_inode, old_parent, old_name)
            moved_inode.links.append((new_parent, new_name))

    def close(self) -> None:
        """Close every cached descriptor except the root's (which the caller owns)."""
        for inode in self._cached:
            os.close(inode.fd)
            inode.fd = -1
        self._cached.clear()


def _drop_link(inode: Inode, parent: Inode, name: bytes) -> None:
    try:
        inode.links.remove((parent, name))
    except ValueError:
        pass
