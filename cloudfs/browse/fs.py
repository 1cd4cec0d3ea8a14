"""The snapshot mount's FUSE handlers: thin translations to the namespace and reader.

Each handler finds the node, asks the namespace or the content reader, and
turns the answer into pyfuse3's types. A snapshot never changes, so what is
inside one is given long kernel timeouts and keep_cache; the top level, the
Samba view and the history folders change when snapshots arrive, so theirs
are short. Every write of any kind fails with EROFS (the mount is also
mounted `ro`, so the kernel mostly refuses before asking). A blob that fails
verification or cannot be fetched fails the request with EIO and one log line
naming the snapshot, the path and the object (I5).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat

import pyfuse3
import trio
from pyfuse3 import FUSEError

from cloudfs.browse.content import ContentReader, ReadAhead
from cloudfs.browse.namespace import ROOT_INO, Kind, Listing, Namespace, Node
from cloudfs.errors import CloudfsError

log = logging.getLogger(__name__)

assert ROOT_INO == pyfuse3.ROOT_INODE

IMMUTABLE_TIMEOUT = 24 * 3600.0   # seconds the kernel may keep what a snapshot holds
CHANGING_TIMEOUT = 1.0            # ... and the views that grow with new snapshots
NAME_MAX = 255
INODE_FIRST = {"lookup", "getattr", "readlink", "getxattr", "listxattr", "opendir", "open"}
# Asked of every entry by `ls -l` (GNU ls, through libselinux and gnulib's
# file_has_acl) and cached by no kernel: answered "not supported" where the
# snapshot recorded none, ls stops asking for the rest of the mount (it
# remembers the device) instead of making two round trips per entry.
LABEL_AND_ACL_XATTRS = frozenset({b"security.selinux", b"system.posix_acl_access", b"system.posix_acl_default"})


def _answers(handler):
    """Errors at the edge: repository trouble becomes EIO with a log line that
    names what failed; anything unexpected is logged with its traceback. Each
    request counts as the mount being busy (background guesses wait)."""

    @functools.wraps(handler)
    async def wrapper(self, *args):
        try:
            with self.namespace.background.serving():
                return await handler(self, *args)
        except FUSEError:
            raise
        except CloudfsError as error:
            log.error("%s: %s", self.describe(handler.__name__, args), error)
            raise FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s failed", self.describe(handler.__name__, args))
            raise FUSEError(errno.EIO) from None

    return wrapper


class OpenFile:
    __slots__ = ("node", "ahead")

    def __init__(self, node: Node):
        self.node = node
        self.ahead = ReadAhead()


class BrowseOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, namespace: Namespace, content: ContentReader, *, uid: int, gid: int, block_size: int):
        super().__init__()
        self.namespace = namespace
        self.content = content
        self.uid, self.gid = uid, gid
        self.block_size = block_size
        self._files: dict[int, OpenFile] = {}
        self._listings: dict[int, Listing] = {}
        self._next_handle = 1
        self.initialized = trio.Event()

    def init(self):
        """The kernel's INIT was answered: the mount is usable (and tunable)."""
        self.initialized.set()

    def describe(self, operation: str, args: tuple) -> str:
        """What a failed request was about, e.g. `read of snapshots/…:/docs/a.txt`."""
        first = args[0] if args else None
        where = None
        if operation == "read":
            where = self._files[first].node.label() if first in self._files else None
        elif operation in INODE_FIRST:
            where = self.namespace.label(first)
        where = where or "?"
        if operation == "lookup" and len(args) > 1:
            where = f"{where.rstrip('/')}/{os.fsdecode(args[1])}"
        return f"{operation} of {where}"

    # -- attributes -----------------------------------------------------------------------

    def attributes(self, node: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = node.ino
        attrs.generation = 0
        attrs.entry_timeout = attrs.attr_timeout = IMMUTABLE_TIMEOUT if node.immutable else CHANGING_TIMEOUT
        attrs.st_blksize = self.block_size
        entry = node.entry
        if entry is not None:
            attrs.st_mode, attrs.st_uid, attrs.st_gid = entry.mode, entry.uid, entry.gid
            attrs.st_size, attrs.st_nlink, attrs.st_rdev = entry.size, entry.nlink, entry.rdev
            attrs.st_mtime_ns = attrs.st_atime_ns = entry.mtime_ns
            attrs.st_ctime_ns = entry.ctime_ns
            attrs.st_blocks = self._allocated_sectors(entry)
            return attrs
        if node.kind is Kind.LATEST:
            attrs.st_mode, attrs.st_nlink, attrs.st_size = stat.S_IFLNK | 0o777, 1, len(node.target)
        else:
            attrs.st_mode, attrs.st_nlink = stat.S_IFDIR | 0o555, 2
        moment = node.snapshot.time_ns if node.snapshot is not None else self.namespace.history_time()
        attrs.st_uid, attrs.st_gid = self.uid, self.gid
        attrs.st_mtime_ns = attrs.st_atime_ns = attrs.st_ctime_ns = moment
        return attrs

    def _allocated_sectors(self, entry) -> int:
        """512-byte sectors the file holds: holes count nothing (so `du` and
        `cp --sparse` see sparse files); files with a block-list tree are
        reported whole rather than reading their whole block list."""
        if not entry.is_file:
            return 0
        if entry.blocks is None:
            return (entry.size + 511) // 512
        stored = sum(min(self.block_size, entry.size - index * self.block_size)
                     for index, block_id in enumerate(entry.blocks) if block_id is not None)
        return (stored + 511) // 512

    def _negative(self, parent: Node) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = IMMUTABLE_TIMEOUT if parent.immutable else 0
        return attrs

    async def _node(self, ino: int) -> Node:
        node = await self.namespace.node(ino)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    # -- names and attributes ---------------------------------------------------------------

    @_answers
    async def lookup(self, parent_inode, name, ctx=None):
        parent = await self._node(parent_inode)
        node = await self.namespace.child(parent, name)
        if node is None:
            return self._negative(parent)
        self.namespace.remember(node)
        return self.attributes(node)

    async def forget(self, inode_list):
        for ino, count in inode_list:
            self.namespace.forget(ino, count)

    @_answers
    async def getattr(self, inode, ctx=None):
        return self.attributes(await self._node(inode))

    @_answers
    async def readlink(self, inode, ctx):
        node = await self._node(inode)
        if node.kind is not Kind.LATEST and not (node.entry and node.entry.is_symlink):
            raise FUSEError(errno.EINVAL)
        return self.namespace.readlink(node)

    @_answers
    async def getxattr(self, inode, name, ctx):
        node = await self._node(inode)
        value = node.entry.xattrs.get(name) if node.entry is not None else None
        if value is None:
            raise FUSEError(errno.ENOTSUP if name in LABEL_AND_ACL_XATTRS else errno.ENODATA)
        return value

    @_answers
    async def listxattr(self, inode, ctx):
        node = await self._node(inode)
        return list(node.entry.xattrs) if node.entry is not None else []

    async def statfs(self, ctx):
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = stats.f_frsize = self.block_size
        stats.f_namemax = NAME_MAX
        return stats

    # -- directories ------------------------------------------------------------------------

    @_answers
    async def opendir(self, inode, ctx):
        node = await self._node(inode)
        if not node.is_directory:
            raise FUSEError(errno.ENOTDIR)
        listing = await self.namespace.children(node)
        handle = self._new_handle()
        self._listings[handle] = listing
        return handle

    @_answers
    async def readdir(self, fh, start_id, token):
        listing = self._listings[fh]
        for index in range(start_id, len(listing)):
            name, node = listing.at(index)
            if not pyfuse3.readdir_reply(token, name, self.attributes(node), index + 1):
                break
            self.namespace.remember(node)

    async def releasedir(self, fh):
        listing = self._listings.pop(fh, None)
        if listing is not None:
            listing.close()

    # -- files ------------------------------------------------------------------------------

    @_answers
    async def open(self, inode, flags, ctx):
        node = await self._node(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FUSEError(errno.EROFS)
        if node.entry is None or not node.entry.is_file:
            raise FUSEError(errno.EISDIR if node.is_directory else errno.EINVAL)
        if node.parent_tree is not None:
            self.content.prefetch_neighbours(node.parent_tree, node.entry.name)
        handle = self._new_handle()
        self._files[handle] = OpenFile(node)
        return pyfuse3.FileInfo(fh=handle, keep_cache=True)

    @_answers
    async def read(self, fh, off, size):
        handle = self._files[fh]
        return await self.content.read(handle.node.entry, off, size, handle.ahead)

    async def release(self, fh):
        self._files.pop(fh, None)

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    # -- everything that would write ------------------------------------------------------------

    async def _read_only(self, *args):
        raise FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only
