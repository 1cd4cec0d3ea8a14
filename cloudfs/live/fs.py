"""The live mount's FUSE handlers: a passthrough to SOURCE that journals every change.

Each handler translates one FUSE request into the matching *at() syscall on the
backing tree, records what changed, and turns OSError into FUSEError at the edge.
Handlers are synchronous inside (plain os calls, no thread hop: ~100 us each would
dominate) and contain no `await` between a backing syscall and its journal record,
so no other request can run in between. Only fsync awaits, for the disk.

While a snapshot is in flight, `frozen` (a FrozenState) is set: before a handler
destroys content the sealed state still has to read, it preserves it (copy into
the spool, or a graveyard link for a file losing its last name), in the same
synchronous stretch as the change. The graveyard's reserved name at SOURCE's root
is invisible through the mount. docs/live.md has the rules.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat

import pyfuse3
import trio
from pyfuse3 import FUSEError

from cloudfs.live import backing
from cloudfs.system import syscalls
from cloudfs.live.graveyard import NAME as GRAVEYARD_NAME
from cloudfs.live.inodes import Inode, InodeTable
from cloudfs.live.records import FinalStat

log = logging.getLogger(__name__)

#: How long the kernel may cache names and attributes. Every change goes through
#: the mount, which tells the kernel, so this only delays seeing changes made to
#: SOURCE behind the mount's back (which the journal cannot see either).
CACHE_TIMEOUT = 10.0

_DIR_READ_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def _fuse_errors(method):
    """Run a synchronous handler body as the async handler pyfuse3 calls; errno at the edge."""

    @functools.wraps(method)
    async def handler(self, *args):
        try:
            return method(self, *args)
        except OSError as error:
            raise FUSEError(error.errno or errno.EIO) from None
        except FUSEError:
            raise
        except Exception:
            log.exception("%s%r failed", method.__name__, args)
            raise FUSEError(errno.EIO) from None
        finally:
            self.table.trim()

    return handler


class DirHandle:
    __slots__ = ("inode", "fd", "names")

    def __init__(self, inode: Inode, fd: int):
        self.inode = inode
        self.fd = fd
        self.names: list[bytes] | None = None


class LiveOperations(pyfuse3.Operations):
    """The pyfuse3 handlers. `journal` is a Journal or a NullJournal."""

    enable_writeback_cache = True
    supports_dot_lookup = False

    def __init__(self, table: InodeTable, journal):
        super().__init__()
        self.table = table
        self.journal = journal
        self._files: dict[int, Inode] = {}  # fh (the backing fd) -> inode
        self._dirs: dict[int, DirHandle] = {}
        #: Final stats of dirty inodes the kernel forgot (for the clean-stop record).
        self.last_seen: dict[int, FinalStat] = {}
        #: Set when the kernel's INIT request has been handled (mount tuning waits for it).
        self.initialized = trio.Event()
        #: The sealed state of the snapshot in flight (copy-on-write), or None.
        self.frozen = None
        #: The ransomware tripwire (cloudfs.live.tripwire.Tripwire), or None.
        self.tripwire = None

    # -- replies ------------------------------------------------------------------

    def _attributes(self, st: os.stat_result, inode: Inode) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        # The root's FUSE number must be 1, but what stat() shows is its real st_ino.
        entry.st_ino = inode.ino if inode is self.table.root else inode.nodeid
        entry.generation = 0
        entry.entry_timeout = CACHE_TIMEOUT
        entry.attr_timeout = CACHE_TIMEOUT
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _reserved(self, parent: Inode, name: bytes) -> bool:
        return name == GRAVEYARD_NAME and parent is self.table.root

    def _refuse_reserved(self, parent: Inode, name: bytes) -> None:
        if self._reserved(parent, name):
            raise OSError(errno.EPERM, "name reserved by cloudfs")

    def _readable(self, inode: Inode):
        """Opens `inode` for reading (for copy-on-write before a truncate)."""

        def open_reader() -> int:
            path, follow = self.table.path(inode)
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW))

        return open_reader

    @contextlib.contextmanager
    def _keeping_if_sealed(self, parent: Inode, parent_fd: int, name: bytes, st):
        """Around the removal of `name` (stat `st`, or None): keep the file alive for
        the snapshot in flight if this is its last name (synchronous, no await)."""
        frozen = self.frozen
        kept = (frozen is not None and st is not None and parent.protected
                and frozen.before_last_name_removed(parent_fd, name, st))
        try:
            yield
        except OSError:
            if kept:
                frozen.removal_failed(st.st_ino)
            raise

    def _new_entry(self, parent: Inode, name: bytes, st: os.stat_result) -> Inode:
        """Remember a newly created name and journal the new inode."""
        inode = self.table.remember(st, parent, name)
        if inode.protected:
            self.journal.record_dir(parent.ino)
            self.journal.record_whole(inode.ino)
            if self.tripwire is not None:
                self.tripwire.created(inode.ino)
        return inode

    def init(self):
        self.initialized.set()

    # -- lookups and attributes ---------------------------------------------------

    @_fuse_errors
    def lookup(self, parent_nodeid, name, ctx):
        parent = self.table[parent_nodeid]
        try:
            if self._reserved(parent, name):
                raise FileNotFoundError(errno.ENOENT, "hidden")
            st = os.stat(name, dir_fd=self.table.dir_fd(parent), follow_symlinks=False)
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = CACHE_TIMEOUT
            return negative
        return self._attributes(st, self.table.remember(st, parent, name))

    async def forget(self, inode_list):
        for nodeid, count in inode_list:
            inode = self.table.forget(nodeid, count)
            if inode is not None and inode.protected and self.journal.is_pending(inode.ino):
                self._remember_final(inode)

    def _remember_final(self, inode: Inode) -> None:
        try:
            st = self.table.stat(inode)
        except OSError:
            return  # gone: nothing to compare at the next mount
        self.last_seen[inode.ino] = FinalStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @_fuse_errors
    def getattr(self, nodeid, ctx):
        inode = self.table[nodeid]
        return self._attributes(self.table.stat(inode), inode)

    @_fuse_errors
    def setattr(self, nodeid, attr, fields, fh, ctx):
        inode = self.table[nodeid]
        path, follow = self.table.path(inode)
        if fields.update_mode:
            backing.chmod(path, stat.S_IMODE(attr.st_mode), follow)
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1,
                     attr.st_gid if fields.update_gid else -1, follow_symlinks=follow)
        if fields.update_size:
            if self.frozen is not None and inode.protected:
                opener = (lambda: os.dup(fh)) if fh is not None else self._readable(inode)
                self.frozen.before_truncate(inode.ino, attr.st_size, opener)
            backing.truncate(path, follow, fh, attr.st_size)
            if inode.protected:
                self.journal.record_truncate(inode.ino, attr.st_size)
        if fields.update_atime or fields.update_mtime:
            syscalls.set_times(path, attr.st_atime_ns if fields.update_atime else None,
                               attr.st_mtime_ns if fields.update_mtime else None, follow)
        if inode.protected and (fields.update_mode or fields.update_uid or fields.update_gid
                                or fields.update_atime or fields.update_mtime):
            self.journal.record_meta(inode.ino)
        return self._attributes(self.table.stat(inode), inode)

    @_fuse_errors
    def readlink(self, nodeid, ctx):
        parent_fd, name = self.table.locate(self.table[nodeid])
        return os.readlink(name, dir_fd=parent_fd)

    @_fuse_errors
    def statfs(self, ctx):
        st = os.fstatvfs(self.table.root.fd)
        result = pyfuse3.StatvfsData()
        for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                      "f_files", "f_ffree", "f_favail", "f_namemax"):
            setattr(result, field, getattr(st, field))
        return result

    # -- creating and removing names ----------------------------------------------

    def _made(self, parent: Inode, parent_fd: int, name: bytes, ctx, mode: int):
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        try:
            st = backing.give_to_caller(parent_fd, name, st, ctx, mode)
        except OSError:
            backing.remove_quietly(parent_fd, name, st)
            raise
        return self._attributes(st, self._new_entry(parent, name, st))

    @_fuse_errors
    def mknod(self, parent_nodeid, name, mode, rdev, ctx):
        parent = self.table[parent_nodeid]
        self._refuse_reserved(parent, name)
        parent_fd = self.table.dir_fd(parent)
        mode &= ~ctx.umask
        os.mknod(name, mode, rdev, dir_fd=parent_fd)
        return self._made(parent, parent_fd, name, ctx, mode)

    @_fuse_errors
    def mkdir(self, parent_nodeid, name, mode, ctx):
        parent = self.table[parent_nodeid]
        self._refuse_reserved(parent, name)
        parent_fd = self.table.dir_fd(parent)
        mode &= ~ctx.umask
        os.mkdir(name, mode, dir_fd=parent_fd)
        return self._made(parent, parent_fd, name, ctx, mode | stat.S_IFDIR)

    @_fuse_errors
    def symlink(self, parent_nodeid, name, target, ctx):
        parent = self.table[parent_nodeid]
        self._refuse_reserved(parent, name)
        parent_fd = self.table.dir_fd(parent)
        os.symlink(target, name, dir_fd=parent_fd)
        return self._made(parent, parent_fd, name, ctx, stat.S_IFLNK | 0o777)

    @_fuse_errors
    def link(self, nodeid, new_parent_nodeid, new_name, ctx):
        inode = self.table[nodeid]
        new_parent = self.table[new_parent_nodeid]
        self._refuse_reserved(new_parent, new_name)
        new_parent_fd = self.table.dir_fd(new_parent)
        if inode.links:
            parent_fd, name = self.table.locate(inode)
            os.link(name, new_name, src_dir_fd=parent_fd, dst_dir_fd=new_parent_fd,
                    follow_symlinks=False)
        else:
            source, _ = self.table.path(inode)  # a nameless open file: its /proc link
            os.link(source, new_name, dst_dir_fd=new_parent_fd, follow_symlinks=True)
        st = os.stat(new_name, dir_fd=new_parent_fd, follow_symlinks=False)
        linked = self.table.remember(st, new_parent, new_name)
        if linked.protected:
            self.journal.record_dir(new_parent.ino)
            self.journal.record_meta(linked.ino)
        return self._attributes(st, linked)

    @_fuse_errors
    def unlink(self, parent_nodeid, name, ctx):
        self._remove(parent_nodeid, name, os.unlink)

    @_fuse_errors
    def rmdir(self, parent_nodeid, name, ctx):
        self._remove(parent_nodeid, name, os.rmdir)

    def _remove(self, parent_nodeid, name, remove) -> None:
        parent = self.table[parent_nodeid]
        parent_fd = self.table.dir_fd(parent)
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        with self._keeping_if_sealed(parent, parent_fd, name, st):
            remove(name, dir_fd=parent_fd)
        self.table.unlinked(parent, name, st)
        if parent.protected:
            self.journal.record_dir(parent.ino)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                self.journal.record_meta(st.st_ino)  # its other names lost a link

    @_fuse_errors
    def rename(self, old_parent_nodeid, old_name, new_parent_nodeid, new_name, flags, ctx):
        old_parent = self.table[old_parent_nodeid]
        new_parent = self.table[new_parent_nodeid]
        self._refuse_reserved(new_parent, new_name)
        old_fd = self.table.dir_fd(old_parent)
        new_fd = self.table.dir_fd(new_parent)
        moved = os.stat(old_name, dir_fd=old_fd, follow_symlinks=False)
        try:
            replaced = os.stat(new_name, dir_fd=new_fd, follow_symlinks=False)
        except FileNotFoundError:
            replaced = None
        doomed = None if flags & pyfuse3.RENAME_EXCHANGE else replaced
        with self._keeping_if_sealed(new_parent, new_fd, new_name, doomed):
            if flags:
                syscalls.renameat2(old_fd, old_name, new_fd, new_name, flags)
            else:
                os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        exchanged = bool(flags & pyfuse3.RENAME_EXCHANGE)
        self.table.renamed(old_parent, old_name, new_parent, new_name, moved, replaced, exchanged)
        if old_parent.protected:
            self._journal_rename(old_parent, new_parent, moved, replaced, exchanged)
            if self.tripwire is not None and stat.S_ISREG(moved.st_mode):
                self.tripwire.renamed(moved.st_ino, old_name, new_name)

    def _journal_rename(self, old_parent, new_parent, moved, replaced, exchanged) -> None:
        journal = self.journal
        journal.record_dir(old_parent.ino)
        if new_parent is not old_parent:
            journal.record_dir(new_parent.ino)
        journal.record_meta(moved.st_ino)  # rename changes the moved inode's ctime
        if replaced is not None and (exchanged or (replaced.st_nlink > 1 and not stat.S_ISDIR(
                replaced.st_mode))):
            journal.record_meta(replaced.st_ino)

    # -- files ----------------------------------------------------------------------

    def _opened(self, inode: Inode, fd: int) -> pyfuse3.FileInfo:
        self._files[fd] = inode
        inode.open_fds.append(fd)
        return pyfuse3.FileInfo(fh=fd)

    @_fuse_errors
    def open(self, nodeid, flags, ctx):
        inode = self.table[nodeid]
        if flags & os.O_TRUNC and self.frozen is not None and inode.protected:
            self.frozen.before_truncate(inode.ino, 0, self._readable(inode))
        if inode.links:
            parent_fd, name = self.table.locate(inode)
            fd = backing.open_file(name, flags, parent_fd)
        else:  # every name is gone: reopen one of its open handles through /proc
            path, _ = self.table.path(inode)
            fd = backing.open_file(path, flags & ~os.O_NOFOLLOW, None)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (inode.dev, inode.ino):
            os.close(fd)
            raise OSError(errno.ESTALE, "changed behind the mount's back")
        if flags & os.O_TRUNC and inode.protected:
            self.journal.record_truncate(inode.ino, 0)
        return self._opened(inode, fd)

    @_fuse_errors
    def create(self, parent_nodeid, name, mode, flags, ctx):
        parent = self.table[parent_nodeid]
        self._refuse_reserved(parent, name)
        parent_fd = self.table.dir_fd(parent)
        mode &= ~ctx.umask
        fd = os.open(name, backing.open_flags(flags) | os.O_CREAT | (flags & os.O_EXCL),
                     stat.S_IMODE(mode), dir_fd=parent_fd)
        try:
            st = backing.give_to_caller(parent_fd, name, os.fstat(fd), ctx, mode, fd)
        except OSError:
            os.close(fd)
            backing.remove_quietly(parent_fd, name, None)
            raise
        inode = self._new_entry(parent, name, st)
        return self._opened(inode, fd), self._attributes(st, inode)

    @_fuse_errors
    def read(self, fh, offset, size):
        return os.pread(fh, size, offset)

    @_fuse_errors
    def write(self, fh, offset, data):
        inode = self._files[fh]
        if self.frozen is not None and inode.protected:
            self.frozen.before_write(inode.ino, fh, offset, offset + len(data))
        written = os.pwrite(fh, data, offset)
        if written != len(data):
            return self._write_rest(fh, inode, offset, data, written)
        if inode.protected:
            self.journal.record_write(inode.ino, offset, written)
            if offset == 0 and self.tripwire is not None:
                self.tripwire.wrote_start(inode.ino, data)
        return written

    def _write_rest(self, fh: int, inode: Inode, offset: int, data, written: int) -> int:
        """A short write (the disk filled up): retry the rest to get the error, and
        journal whatever did reach the file either way."""
        view = memoryview(data)
        try:
            while written < len(data):
                progress = os.pwrite(fh, view[written:], offset + written)
                if progress == 0:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                written += progress
            return written
        finally:
            if inode.protected and written:
                self.journal.record_write(inode.ino, offset, written)

    async def flush(self, fh):
        # Nothing is buffered here, and the kernel writes dirty pages back (and reports
        # their errors) before it would send FLUSH; ENOSYS tells it to stop sending
        # it, which saves a round trip on every close().
        raise FUSEError(errno.ENOSYS)

    @_fuse_errors
    def release(self, fh):
        inode = self._files.pop(fh)
        inode.open_fds.remove(fh)
        os.close(fh)

    async def fsync(self, fh, datasync):
        await self._sync(fh, datasync)

    async def _sync(self, fd: int, datasync: bool) -> None:
        """fsync the backing file and the journal (concurrently); both before replying (I1)."""
        backing_error: list[OSError] = []

        async def sync_backing():
            try:
                await trio.to_thread.run_sync(os.fdatasync if datasync else os.fsync, fd)
            except OSError as error:
                backing_error.append(error)

        journal_error = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sync_backing)
            try:
                await self.journal.sync()
            except OSError as error:
                journal_error = error
        for error in (journal_error, *backing_error):
            if error is not None:
                raise FUSEError(error.errno or errno.EIO)

    # -- directories ---------------------------------------------------------------

    @_fuse_errors
    def opendir(self, nodeid, ctx):
        inode = self.table[nodeid]
        fd = os.open(".", _DIR_READ_FLAGS, dir_fd=self.table.dir_fd(inode))
        self._dirs[fd] = DirHandle(inode, fd)
        return fd

    @_fuse_errors
    def readdir(self, fh, start_id, token):
        handle = self._dirs[fh]
        if start_id == 0 or handle.names is None:
            # One listing per pass: offsets index into it, so entries added or removed
            # meanwhile can neither be skipped nor repeated.
            handle.names = [os.fsencode(name) for name in os.listdir(handle.fd)]
        names = handle.names
        for index in range(start_id, len(names)):
            name = names[index]
            if self._reserved(handle.inode, name):
                continue
            try:
                st = os.stat(name, dir_fd=handle.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            inode = self.table.remember(st, handle.inode, name)
            if not pyfuse3.readdir_reply(token, name, self._attributes(st, inode), index + 1):
                self.table.forget(inode.nodeid, 1)  # not sent: the kernel did not count it
                break

    @_fuse_errors
    def releasedir(self, fh):
        del self._dirs[fh]
        os.close(fh)

    async def fsyncdir(self, fh, datasync):
        await self._sync(fh, datasync)

    # -- extended attributes ---------------------------------------------------------

    @_fuse_errors
    def getxattr(self, nodeid, name, ctx):
        path, follow = self.table.path(self.table[nodeid])
        return os.getxattr(path, name, follow_symlinks=follow)

    @_fuse_errors
    def listxattr(self, nodeid, ctx):
        path, follow = self.table.path(self.table[nodeid])
        return [os.fsencode(name) for name in os.listxattr(path, follow_symlinks=follow)]

    @_fuse_errors
    def setxattr(self, nodeid, name, value, ctx):
        if name.startswith(b"system.posix_acl_"):
            raise OSError(errno.EOPNOTSUPP, "ACLs are not supported on the live mount")
        inode = self.table[nodeid]
        path, follow = self.table.path(inode)
        os.setxattr(path, name, value, follow_symlinks=follow)
        if inode.protected:
            self.journal.record_meta(inode.ino)

    @_fuse_errors
    def removexattr(self, nodeid, name, ctx):
        inode = self.table[nodeid]
        path, follow = self.table.path(inode)
        os.removexattr(path, name, follow_symlinks=follow)
        if inode.protected:
            self.journal.record_meta(inode.ino)

    # -- stopping ------------------------------------------------------------------

    def final_stats(self) -> dict[int, FinalStat]:
        """The stat of every dirty inode now (for the clean-stop record)."""
        finals = dict(self.last_seen)
        pending = self.journal.pending().inodes()
        for inode in list(self.table.inodes()):
            if inode.protected and inode.ino in pending:
                try:
                    st = self.table.stat(inode)
                except OSError:
                    continue
                if st.st_nlink:
                    finals[inode.ino] = FinalStat(st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return {ino: final for ino, final in finals.items() if ino in pending}

    def close(self) -> None:
        for fd in list(self._files) + list(self._dirs):
            os.close(fd)
        self._files.clear()
        self._dirs.clear()
        self.table.close()
