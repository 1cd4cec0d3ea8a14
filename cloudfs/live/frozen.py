"""The sealed state of the tree while its snapshot is built, and copy-on-write that keeps it.

`FrozenState` owns one seal's capture and what must still be preserved:
`obligations[ino]` are the bytes of inode `ino` that the builder will read and
that nothing has overwritten yet. The FUSE handlers call it before they change
data (`before_write`, `before_truncate`, `before_open_truncating`) and before
they remove the last name of a file (`before_last_name_removed`): the old bytes
are copied into the spool, or the inode is linked into the graveyard, in the
same synchronous stretch as the change that follows (Rule 1 of docs/live.md
applied to copy-on-write: copy, then modify, no await in between).

`FrozenSource` is the `Source` the builder reads: listings and stats from the
capture, file content as it was at the seal — from the file where it is now,
with the preserved pieces from the spool laid over it.

If the spool fills up (or the disk refuses), `fail()` gives the snapshot up:
obligations are dropped, so application writes go on without copying and never
wait or fail because of it, and every later read of the frozen state raises
SpoolFull, so no snapshot mixing two instants can be committed.

Threads: `FrozenReader.pread` runs in the builder's worker threads. It reads
the live file first and then, under `_lock`, the table of preserved pieces and
the failure flag; a handler publishes a piece (under `_lock`) before it lets
the change proceed. So a read that saw changed bytes also sees the piece that
holds the old ones. Everything else here runs on the trio thread.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from bisect import bisect_right

from cloudfs.live.capture import Capture
from cloudfs.live.changes import TO_END, RangeSet
from cloudfs.live.graveyard import NAME as GRAVEYARD_NAME
from cloudfs.live.graveyard import Graveyard
from cloudfs.live.inodes import InodeTable
from cloudfs.live.spool import Spool, SpoolFull
from cloudfs.snapshot.source import FileReader, prefetch

log = logging.getLogger(__name__)

_NO_ATIME = os.O_NOATIME if os.geteuid() == 0 else 0
_READ_FLAGS = os.O_RDONLY | os.O_CLOEXEC | _NO_ATIME


class FrozenStateLost(Exception):
    """A file of the sealed state cannot be found any more (changed behind the mount)."""


class CaptureMiss(RuntimeError):
    """The builder asked for something the seal did not capture: a bug, reported loudly."""


class _Pieces:
    """Preserved byte ranges of one inode: (start, end, spool offset), disjoint, sorted."""

    __slots__ = ("starts", "ends", "offsets")

    def __init__(self):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.offsets: list[int] = []

    def add(self, start: int, end: int, offset: int) -> None:
        index = bisect_right(self.starts, start)
        self.starts.insert(index, start)
        self.ends.insert(index, end)
        self.offsets.insert(index, offset)

    def overlapping(self, start: int, end: int) -> list[tuple[int, int, int]]:
        index = max(0, bisect_right(self.starts, start) - 1)
        found = []
        while index < len(self.starts) and self.starts[index] < end:
            if self.ends[index] > start:
                found.append((self.starts[index], self.ends[index], self.offsets[index]))
            index += 1
        return found


class FrozenState:
    """One seal's capture plus copy-on-write; see the module docstring for the rules."""

    def __init__(self, capture: Capture, spool: Spool, graveyard: Graveyard, table: InodeTable,
                 root_fd: int):
        self.capture = capture
        self.spool = spool
        self.graveyard = graveyard
        self.table = table
        self.root_fd = root_fd
        #: Trio thread only: bytes still to preserve, by inode (for a full capture, looked
        #: up on disk as handlers ask: capturestore.LazyObligations).
        self.obligations = capture.obligations()
        #: Trio thread only: inodes the builder will open (kept alive if their last name goes).
        self.readable = set(self.obligations) if isinstance(self.obligations, dict) else self.obligations
        self._lock = threading.Lock()
        self._preserved: dict[int, _Pieces] = {}
        self.failure: str | None = None
        self.copies = 0
        self.copied_bytes = 0

    # -- the handlers' side (trio thread) ------------------------------------------------

    def before_write(self, ino: int, fd: int, start: int, end: int) -> None:
        """Preserve what of [start, end) the sealed state still needs, read through `fd`."""
        needed = self.obligations.get(ino)
        if needed is None:
            return
        parts = needed.intersection(start, end)
        if parts:
            self._preserve(ino, needed, parts, lambda: fd, close=False)

    def before_truncate(self, ino: int, size: int, open_reader) -> None:
        """Preserve the needed bytes from `size` on; `open_reader()` gives a readable
        descriptor (closed here) only if something must be copied."""
        needed = self.obligations.get(ino)
        if needed is None:
            return
        parts = needed.intersection(size, TO_END)
        if parts:
            self._preserve(ino, needed, parts, open_reader, close=True)

    def before_last_name_removed(self, parent_fd: int, name: bytes, st: os.stat_result) -> bool:
        """Keep a file the builder will read alive in the graveyard before its last
        name goes (unlink, or rename over it). True if it was linked there: if the
        removal then fails, the caller undoes it with `removal_failed`."""
        if st.st_ino not in self.readable or not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            return False
        try:
            return self.graveyard.keep(parent_fd, name, st.st_ino)
        except OSError as error:
            self.fail(f"cannot keep a removed file in {GRAVEYARD_NAME.decode()}: {error}")
            return False

    def removal_failed(self, ino: int) -> None:
        self.graveyard.release(ino)

    def _preserve(self, ino: int, needed: RangeSet, parts, open_reader, close: bool) -> None:
        try:
            fd = open_reader()
        except OSError as error:
            self.fail(f"cannot read a file to preserve it: {error}")
            return
        try:
            for start, end in parts:
                data = _read_exactly(fd, start, end - start)
                offset = self.spool.append(data)
                with self._lock:
                    self._preserved.setdefault(ino, _Pieces()).add(start, end, offset)
                needed.remove(start, end)
                self.copies += 1
                self.copied_bytes += end - start
        except SpoolFull as error:
            self.fail(str(error))
        except OSError as error:
            self.fail(f"cannot preserve sealed data in the spool: {error}")
        finally:
            if close:
                os.close(fd)
        if not needed:
            self.obligations.pop(ino, None)

    def fail(self, reason: str) -> None:
        """Give the snapshot up: stop preserving; every later read raises SpoolFull."""
        if self.failure is not None:
            return
        with self._lock:
            self.failure = reason
        self.obligations.clear()
        self.readable.clear()
        log.warning("snapshot of the seal at %d given up: %s; a new seal will follow",
                    self.capture.time_ns, reason)

    # -- the builder's side ---------------------------------------------------------------

    def source(self) -> "FrozenSource":
        return FrozenSource(self)

    def preserved_pieces(self, ino: int, start: int, end: int) -> list[tuple[int, int, int]]:
        """The preserved pieces of `ino` overlapping [start, end): (start, end, spool
        offset). Raises SpoolFull if the state was given up. Any thread."""
        with self._lock:
            if self.failure is not None:
                raise SpoolFull(self.failure)
            pieces = self._preserved.get(ino)
            return pieces.overlapping(start, end) if pieces else []

    def open_live(self, ino: int, path: bytes) -> int:
        """A read-only descriptor of inode `ino` (sealed at `path`) wherever it is now:
        its sealed path (where nearly every file still is: one open), the graveyard,
        a name the inode table knows, or a scan. Whatever is opened is checked to be
        that inode: an inode the graveyard keeps cannot be reused for another file.
        Trio thread (the inode table)."""
        fd = self.open_sealed_path(ino, path)
        if fd is not None:
            return fd
        for opener in (lambda: self.graveyard.open(ino, _READ_FLAGS),
                       lambda: self._open_by_table(ino),
                       lambda: self._open_by_scan(ino)):
            try:
                fd = opener()
            except OSError:
                continue
            if fd >= 0 and self._is(fd, ino):
                return fd
            if fd >= 0:
                os.close(fd)
        raise FrozenStateLost(f"{os.fsdecode(path)} (inode {ino}) cannot be found any more")

    def open_sealed_path(self, ino: int, path: bytes) -> int | None:
        """`open_live`'s first try alone, for any thread: a descriptor of inode `ino`
        if it is still at its sealed path, else None. Safe beside the loop: what is
        opened is checked to be the inode (which the graveyard keeps from reuse)."""
        try:
            fd = os.open(path, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=self.root_fd)
        except OSError:
            return None
        if self._is(fd, ino):
            return fd
        os.close(fd)
        return None

    def _is(self, fd: int, ino: int) -> bool:
        st = os.fstat(fd)
        return st.st_ino == ino and st.st_dev == self.table.device

    def _open_by_table(self, ino: int) -> int:
        inode = self.table.find_ino(ino)
        if inode is None:
            return -1
        if inode.links:
            parent_fd, name = self.table.locate(inode)
            return os.open(name, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=parent_fd)
        if inode.open_fds:
            return os.open(b"/proc/self/fd/%d" % inode.open_fds[0], _READ_FLAGS)
        return -1

    def _open_by_scan(self, ino: int) -> int:
        """Look for the inode everywhere (it lost its sealed name and the kernel forgot it)."""
        log.info("looking for inode %d by a scan of the tree", ino)
        stack = [b"."]
        while stack:
            directory = stack.pop()
            try:
                fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                             dir_fd=self.root_fd)
            except OSError:
                continue
            try:
                with os.scandir(fd) as listing:
                    entries = list(listing)
            finally:
                os.close(fd)
            for entry in entries:
                path = os.path.join(directory, os.fsencode(entry.name))
                if directory == b"." and entry.name == GRAVEYARD_NAME.decode():
                    continue
                if entry.inode() == ino and entry.is_file(follow_symlinks=False):
                    return os.open(path, _READ_FLAGS | os.O_NOFOLLOW, dir_fd=self.root_fd)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
        return -1


class FrozenSource:
    """The `Source` of one seal: answers from the capture, reads content as sealed."""

    def __init__(self, state: FrozenState):
        self.state = state
        self.capture = state.capture
        self._last_stat: tuple[bytes, object] | None = None   # the builder asks of one path in a row

    def listdir(self, path: bytes) -> list[bytes]:
        try:
            return list(self.capture.listings[path])
        except KeyError:
            raise CaptureMiss(f"the seal did not list {path!r}") from None

    def lstat(self, path: bytes):
        last = self._last_stat
        if last is not None and last[0] == path:
            return last[1]
        st = self.capture.stats.get(path)
        if st is None:
            raise CaptureMiss(f"the seal did not stat {path!r}")
        self._last_stat = (path, st)
        return st

    def readlink(self, path: bytes) -> bytes:
        try:
            return self.capture.targets[path]
        except KeyError:
            raise CaptureMiss(f"the seal did not read the link {path!r}") from None

    def xattrs(self, path: bytes) -> dict[bytes, bytes]:
        self.lstat(path)
        return dict(self.capture.xattrs.get(path, {}))

    def open(self, path: bytes) -> FileReader:
        return self.opening(path).open()

    def opening(self, path: bytes) -> "FrozenOpening":
        st = self.lstat(path)
        plan = self.capture.reads.get(path)
        if plan is None:
            raise CaptureMiss(f"the seal did not plan to read {path!r}")
        if self.state.failure is not None:
            raise SpoolFull(self.state.failure)
        return FrozenOpening(self.state, path, st.st_ino, plan)


class FrozenOpening:
    """A sealed file to open: at its sealed path from any thread (nearly every file
    is still there), anywhere else from the trio thread (`FrozenState.open_live`)."""

    def __init__(self, state: FrozenState, path: bytes, ino: int, plan: RangeSet):
        self.state, self.path, self.ino, self.plan = state, path, ino, plan

    def open_in_thread(self) -> "FrozenReader | None":
        fd = self.state.open_sealed_path(self.ino, self.path)
        return None if fd is None else FrozenReader(self.state, self.ino, fd, self.plan)

    def open(self) -> "FrozenReader":
        return FrozenReader(self.state, self.ino, self.state.open_live(self.ino, self.path), self.plan)


class FrozenReader:
    """Reads one file as it was at the seal; `pread` runs in worker threads."""

    def __init__(self, state: FrozenState, ino: int, fd: int, plan: RangeSet):
        self.state = state
        self.ino = ino
        self.fd = fd
        self.plan = plan

    def pread(self, length: int, offset: int) -> bytes:
        """`length` bytes at `offset` as sealed. The common case (nothing preserved
        there, nothing cut off) returns the live read itself: no copy under the GIL,
        which the FUSE loop needs."""
        _yield_to_the_loop()
        if not self.plan.covers(offset, offset + length):
            raise CaptureMiss(f"read of [{offset}, {offset + length}) of inode {self.ino} "
                              "outside what the seal planned (and protects)")
        live = os.pread(self.fd, length, offset)  # live first, then the pieces: see the docstring
        pieces = self.state.preserved_pieces(self.ino, offset, offset + length)
        if not pieces and len(live) == length:
            return live
        data = bytearray(live)
        data.extend(bytes(length - len(live)))
        spool = self.state.spool
        for start, end, spool_offset in pieces:
            low, high = max(start, offset), min(end, offset + length)
            data[low - offset:high - offset] = spool.read(spool_offset + low - start, high - low)
        return bytes(data)

    def prefetch(self, length: int, offset: int) -> None:
        """Only a hint to the kernel: what is read is checked by `pread`."""
        prefetch(self.fd, length, offset)

    def close(self) -> None:
        os.close(self.fd)


_background = threading.local()
BACKGROUND_NICE = 10


def _yield_to_the_loop() -> None:
    """Lower this worker thread's CPU priority, once: the snapshot's reading, hashing,
    compressing and sealing are background work, and on a busy machine the FUSE loop
    thread should win the CPU (and so the GIL) whenever it has a request."""
    if getattr(_background, "niced", False):
        return
    _background.niced = True
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
    except OSError:
        pass


def _read_exactly(fd: int, offset: int, length: int) -> bytes:
    """`length` bytes at `offset`, zeros past the end of the file."""
    try:
        data = os.pread(fd, length, offset)
    except OSError as error:
        if error.errno != errno.EBADF:
            raise
        # A write-only handle (a daemon that is not root): read through its /proc link.
        reader = os.open(b"/proc/self/fd/%d" % fd, os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.pread(reader, length, offset)
        finally:
            os.close(reader)
    if len(data) < length:
        data += bytes(length - len(data))
    return data
