"""Building a snapshot's tree from the previous one and what changed.

Without a previous tree every directory is listed and every file read (the
initial snapshot). With one, only what `PathChanges` names is looked at
(the rules, shared with the live mount's capture, are `cloudfs.snapshot.rules`):
directories no change lies under are reused by id, unchanged entries are
copied from the previous node, and of a changed file only the blocks its dirty
ranges touch are read; its block list is updated leaf by leaf. With a
previous tree but `changes=None` (nothing known, e.g. a directory edited while
no journal watched it) every directory is listed and every entry compared by
(inode, size, mode, mtime, ctime) with the previous one: unchanged files are not
read again.

Concurrency: the tree is walked depth-first on the trio thread; each file to
read is a task (at most FILE_TASKS at once), and its content is read, hashed,
compressed and sealed in worker-thread jobs of READ_BATCH bytes (at most
WORKER_THREADS at once, several per large file); files read whole of at most
SMALL_BYTES_PER_JOB are grouped, up to SMALL_FILES_PER_JOB or about
SMALL_BYTES_PER_JOB per job, whatever directory they are in, and opened in
that job (`Source.opening`: what the source must look up is asked on the
trio thread, the open happens beside it). The walk never
waits for content: a directory's node is written by a task
of its own once its last child is done, while the walk goes on, so the
threads stay busy across many small directories. Memory stays bounded: the
directories not written yet are those with a file among the FILE_TASKS in
flight or in the group being filled, and their ancestors. An incremental
build fetches the previous nodes of the directories it will walk ahead of the
walk, a level at a time, each level's nodes with as few ranged GETs as their
places allow (`_prefetch_previous`); small files are hinted
to the kernel (`FileReader.prefetch`) before a group is read.
"""

from __future__ import annotations

import errno
import stat
from dataclasses import dataclass
from typing import Callable, Protocol

import trio

from cloudfs.snapshot import blocklist
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.rules import Content, PathChanges, WalkRules, block_count, blocks_to_update
from cloudfs.snapshot.source import FileReader, Opening, Source, join
from cloudfs.snapshot.tree import Entry, encode_directory, subtree_totals

READ_BATCH = 4 << 20
FILE_TASKS = 32
# Files read whole of at most SMALL_BYTES_PER_JOB are read in groups, one worker-thread
# job per group: a task, an open and a thread hop each cost more here than reading and
# sealing a file of a few blocks (a tenth of the standard library's files are 64 KiB-1 MiB).
SMALL_FILES_PER_JOB = 64
SMALL_BYTES_PER_JOB = 1 << 20
# Jobs in worker threads: about one per core, plus room for the jobs that are
# blocked while the chunk they completed uploads.
WORKER_THREADS = 4
# Previous directory nodes an incremental build fetches ahead of its walk, at most
# (a third of the tree reader's cache at ~3 KiB a node), and at once.
PREFETCH_NODES = 8192
PREFETCH_GROUP = 512


class BlobSink(Protocol):
    def store_buffers_sync(self, buffers: list[bytes], block_size: int) -> list[list[bytes | None]]:
        """Store each block of each buffer, returning their ids per buffer (None for
        zero blocks). Called in worker threads only."""

    async def put_tree(self, data: bytes) -> bytes:
        """Store one tree blob (a directory node or block-list node)."""


@dataclass
class BuildStats:
    files: int = 0            # in the whole new tree (set when the build ends)
    directories: int = 0      # directory nodes written
    bytes: int = 0            # total size of the files in the new tree
    bytes_read: int = 0       # read from the source to build it
    files_read: int = 0
    vanished: int = 0         # entries that disappeared while being read


class TreeBuilder:
    def __init__(self, source: Source, sink: BlobSink, reader: TreeReader, block_size: int,
                 exclude: Callable[[bytes], bool] | None = None):
        self.source = source
        self.sink = sink
        self.reader = reader
        self.block_size = block_size
        self.exclude = exclude or (lambda path: False)
        self.stats = BuildStats()
        self._rules = WalkRules(None)
        self._file_slots = trio.Semaphore(FILE_TASKS)
        self._threads = trio.CapacityLimiter(WORKER_THREADS)
        self._nursery: trio.Nursery | None = None
        self._small = _SmallFiles()

    async def build(self, previous_root: bytes | None, changes: PathChanges | None) -> bytes:
        """The id of the new root directory node. Afterwards stats.files and
        stats.bytes are the totals of the whole new tree."""
        self._rules = WalkRules(changes)
        root = _Directory(b"", Entry(name=b"", mode=stat.S_IFDIR), None)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if previous_root is not None and changes is not None:
                nursery.start_soon(self._prefetch_previous, previous_root)
            await self._walk(root, *await self._listing(b"", previous_root))
            await self._start_small_files()
        self.stats.files, self.stats.bytes = root.entry.tree_files, root.entry.tree_bytes
        return root.entry.subtree

    # -- directories ----------------------------------------------------------------
    #
    # The walk goes depth-first on the trio thread and never waits for content: files
    # to read become tasks (and small files groups), and a directory's node is written
    # by a task of its own once the last of its children is done (`_Directory`), so
    # the walk goes on to the next directory while the files of the last one are read.

    async def _listing(self, path: bytes, previous: bytes | None) -> tuple[dict[bytes, Entry], bool, list[bytes]]:
        """A directory's previous entries by name, whether it is listed afresh, and the
        names to examine."""
        old = {e.name: e for e in await self.reader.directory(previous)} if previous else {}
        relist = self._rules.relists(path, previous is not None)
        return old, relist, self.source.listdir(path) if relist else list(old)

    async def _walk(self, directory: "_Directory", old: dict[bytes, Entry], relist: bool,
                    names: list[bytes]) -> None:
        """Examine a directory's names; its node is written once its children are done."""
        for name in names:
            if not self.exclude(join(directory.path, name)):
                await self._child(directory, name, old.get(name), relist)
        directory.release(self._finish)   # the walk's own hold

    async def _child(self, directory: "_Directory", name: bytes, old: Entry | None, relisted: bool) -> None:
        """Fill directory.entries[name]: copied from the old node, made here, or, for a
        file whose content must be read, by a task (small files in groups); for a
        subdirectory, once its own node is written."""
        path = join(directory.path, name)
        try:
            if self._rules.unchanged(path, old.ino if old is not None else None, relisted,
                                     lambda: self.source.lstat(path).st_ino):
                directory.entries[name] = old
                return
            st = self.source.lstat(path)
            entry = Entry(name=name, mode=st.st_mode).with_stat(st)
            entry.xattrs = self._xattrs(path)
            if stat.S_ISREG(st.st_mode):
                await self._file(directory, path, st, old, entry)
                return
            if stat.S_ISDIR(st.st_mode):
                await self._subdirectory(directory, path, old, entry)
                return
            if stat.S_ISLNK(st.st_mode):
                entry.target = self.source.readlink(path)
            directory.entries[name] = entry
        except FileNotFoundError:
            self.stats.vanished += 1   # removed while we looked: not part of this tree

    async def _subdirectory(self, parent: "_Directory", path: bytes, old: Entry | None, entry: Entry) -> None:
        """A directory entry's subtree: reused when no change lies below it, else walked
        now and finished (entry filled, in `parent`) when its children are done."""
        previous = old.subtree if old is not None and old.is_dir and old.ino == entry.ino else None
        if self._rules.reuses_subtree(path, previous is not None):
            entry.subtree, entry.tree_files, entry.tree_bytes = previous, old.tree_files, old.tree_bytes
            parent.entries[entry.name] = entry
            return
        listing = await self._listing(path, previous)   # may raise FileNotFoundError: nothing held yet
        parent.hold()
        await self._walk(_Directory(path, entry, parent), *listing)

    async def _prefetch_previous(self, root: bytes) -> None:
        """Fetch the previous nodes of the directories the walk will visit (those a
        change lies under) ahead of the walk, which would otherwise wait for them one
        by one, a GET each: a level at a time, each level's nodes in one round of
        coalesced ranged GETs (a snapshot's nodes sit together in tree chunks: an
        edit of 100 files across the standard library took 83 GETs, one per node).
        Only a head start, of at most PREFETCH_NODES nodes: a node that cannot be
        read here is left to the walk, which reads it again and fails as it would
        have, if it needs it at all."""
        level, budget = [(b"", root)], PREFETCH_NODES
        while level and budget > 0:
            level = level[:budget]
            budget -= len(level)
            try:
                for start in range(0, len(level), PREFETCH_GROUP):
                    await self.reader.prefetch([node for _, node in level[start:start + PREFETCH_GROUP]])
                below = []
                for path, node in level:
                    for entry in await self.reader.directory(node):
                        child = join(path, entry.name)
                        if entry.subtree is not None and not self._rules.reuses_subtree(child, True):
                            below.append((child, entry.subtree))
            except Exception:   # noqa: BLE001 - see above
                return
            level = below

    def _finish(self, directory: "_Directory") -> None:
        self._nursery.start_soon(self._write_node, directory)

    async def _write_node(self, directory: "_Directory") -> None:
        """Write a directory's node (all its children are done), then count it in its parent."""
        children = list(directory.entries.values())
        entry = directory.entry
        entry.subtree = await self.sink.put_tree(encode_directory(children))
        entry.tree_files, entry.tree_bytes = subtree_totals(children)
        self.stats.directories += 1
        parent = directory.parent
        if parent is not None:
            parent.entries[entry.name] = entry
            parent.release(self._finish)

    def _xattrs(self, path: bytes) -> dict[bytes, bytes]:
        try:
            return self.source.xattrs(path)
        except OSError as error:
            if error.errno == errno.ENOENT:
                raise FileNotFoundError(path) from None
            return {}

    # -- file content -----------------------------------------------------------------

    async def _file(self, directory: "_Directory", path: bytes, st, old: Entry | None, entry: Entry) -> None:
        same_file = old is not None and old.is_file and old.ino == st.st_ino
        plan = self._rules.content(path, same_file, lambda: old.same_stat(st))
        if plan is Content.REUSE or st.st_size == 0:
            entry.blocks, entry.block_list = (old.blocks, old.block_list) if plan is Content.REUSE else ([], None)
            directory.entries[entry.name] = entry
        elif plan is Content.WHOLE and self._read_in_group(st.st_size):
            directory.hold()
            self._small.add(directory, path, entry)
            if self._small.full():
                await self._start_small_files()
        else:
            await self._file_slots.acquire()
            directory.hold()
            self._nursery.start_soon(self._file_task, directory, path, st, old, entry, plan)

    def _read_in_group(self, size: int) -> bool:
        """Small enough for a group, and for its block ids to stay inline (no block list)."""
        return size <= SMALL_BYTES_PER_JOB and block_count(size, self.block_size) <= blocklist.FANOUT

    async def _start_small_files(self) -> None:
        if self._small.files:
            await self._file_slots.acquire()
            self._nursery.start_soon(self._small_files_task, self._small.take())

    async def _small_files_task(self, files: list[tuple["_Directory", bytes, Entry]]) -> None:
        """Read and store a group of small files (of any directories) in one worker-thread
        job, which opens and closes them too: only the capture's answers are the loop's."""
        try:
            openings = []
            for directory, path, entry in files:
                try:
                    openings.append((self.source.opening(path), directory, entry))
                except FileNotFoundError:
                    self.stats.vanished += 1
            results = await trio.to_thread.run_sync(
                self._read_small_files, [(opening, entry.size) for opening, _, entry in openings],
                limiter=self._threads)
            for (_, directory, entry), result in zip(openings, results):
                if result is None:
                    self.stats.vanished += 1
                    continue
                entry.blocks, entry.block_list = result[0], None
                self.stats.bytes_read += result[1]
                self.stats.files_read += 1
                directory.entries[entry.name] = entry
        finally:
            self._file_slots.release()
            for directory, _, _ in files:
                directory.release(self._finish)

    def _read_small_files(self, files: list[tuple[Opening, int]]) -> list[tuple[list, int] | None]:
        """In a worker thread: (block ids, bytes read) of each file, None for one gone."""
        readers: list[FileReader | None] = []
        try:
            for opening, size in files:
                readers.append(reader := _open_in_thread(opening))
                if reader is not None:
                    reader.prefetch(size, 0)   # the disk gets the group's reads at once, not one by one
            read = [_read(reader, 0, size) for reader, (_, size) in zip(readers, files) if reader is not None]
        finally:
            for reader in readers:
                if reader is not None:
                    reader.close()
        stored = iter(self.sink.store_buffers_sync([data for data, _ in read], self.block_size))
        lengths = iter(length for _, length in read)
        return [None if reader is None else (next(stored), next(lengths)) for reader in readers]

    async def _file_task(self, directory: "_Directory", path: bytes, st, old: Entry | None, entry: Entry,
                         plan: Content) -> None:
        try:
            entry.blocks, entry.block_list = await self._content(path, st, old, plan)
            directory.entries[entry.name] = entry
        except FileNotFoundError:
            self.stats.vanished += 1
        finally:
            self._file_slots.release()
            directory.release(self._finish)

    async def _content(self, path: bytes, st, old: Entry | None, plan: Content):
        """(blocks, block_list) of a file to read: UPDATE or WHOLE."""
        if plan is Content.UPDATE:
            return await self._update(path, st, old, self._rules.changes.data[path])
        ids = await self._read_blocks(path, range(block_count(st.st_size, self.block_size)), st.st_size)
        return await blocklist.build([ids[i] for i in range(len(ids))], self.sink.put_tree)

    async def _update(self, path: bytes, st, old: Entry, ranges: list[tuple[int, int]]):
        indices = blocks_to_update(ranges, st.st_size, old.size, self.block_size)
        changed = await self._read_blocks(path, indices, st.st_size)
        return await blocklist.update(old.blocks, old.block_list, block_count(old.size, self.block_size),
                                      block_count(st.st_size, self.block_size), changed,
                                      self.reader.tree_blob, self.sink.put_tree)

    async def _read_blocks(self, path: bytes, indices, size: int) -> dict[int, bytes | None]:
        """Read and store the given blocks, several jobs at once; their ids (None: zeros)."""
        ids: dict[int, bytes | None] = {}
        indices = list(indices)
        if not indices:
            return ids
        reader = self.source.open(path)
        try:
            window = trio.Semaphore(WORKER_THREADS)
            async with trio.open_nursery() as nursery:
                for run in _runs(indices, READ_BATCH // self.block_size):
                    await window.acquire()
                    nursery.start_soon(self._read_run, reader, run, size, ids, window)
        finally:
            reader.close()
        self.stats.files_read += 1
        return ids

    async def _read_run(self, reader: FileReader, run: list[int], size: int, ids: dict,
                        window: trio.Semaphore) -> None:
        try:
            offset = run[0] * self.block_size
            length = min(size, (run[-1] + 1) * self.block_size) - offset
            stored, read = await trio.to_thread.run_sync(self._read_and_store, reader, offset, length,
                                                         limiter=self._threads)
            ids.update(zip(run, stored))
            self.stats.bytes_read += read
        finally:
            window.release()

    def _read_and_store(self, reader: FileReader, offset: int, length: int):
        """In a worker thread: one pread, then every block of it into the sink.
        Returns the block ids and how many bytes were read."""
        data, read = _read(reader, offset, length)
        return self.sink.store_buffers_sync([data], self.block_size)[0], read


def _open_in_thread(opening: Opening) -> FileReader | None:
    """The reader of an opening, from a worker thread (asking the trio thread if it
    must); None if the file is gone."""
    try:
        return opening.open_in_thread() or trio.from_thread.run_sync(opening.open)
    except FileNotFoundError:
        return None


def _read(reader: FileReader, offset: int, length: int) -> tuple[bytes, int]:
    """`length` bytes at `offset` (zeros where the file shrank while read), and how
    many were read."""
    data = reader.pread(length, offset)
    read = len(data)
    if read < length:
        data += bytes(length - read)
    return data, read


def _runs(indices: list[int], limit: int) -> list[list[int]]:
    """Consecutive block numbers grouped, at most `limit` per group."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < limit:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class _Directory:
    """A directory being built: its entries so far, and how many of its children
    (files being read, subdirectories being built, and the walk of its own names)
    are not done yet. When the last is done, `release` hands it to be written."""

    def __init__(self, path: bytes, entry: Entry, parent: "_Directory | None"):
        self.path = path
        self.entry = entry                 # in the parent: subtree and totals filled when written
        self.parent = parent
        self.entries: dict[bytes, Entry] = {}
        self._holds = 1                    # the walk of its names

    def hold(self) -> None:
        self._holds += 1

    def release(self, finish: Callable[["_Directory"], None]) -> None:
        self._holds -= 1
        if self._holds == 0:
            finish(self)


class _SmallFiles:
    """Small files waiting to be read together (of one or several directories)."""

    def __init__(self):
        self.files: list[tuple[_Directory, bytes, Entry]] = []
        self.bytes = 0

    def add(self, directory: _Directory, path: bytes, entry: Entry) -> None:
        self.files.append((directory, path, entry))
        self.bytes += entry.size

    def full(self) -> bool:
        return len(self.files) >= SMALL_FILES_PER_JOB or self.bytes >= SMALL_BYTES_PER_JOB

    def take(self) -> list[tuple[_Directory, bytes, Entry]]:
        files, self.files, self.bytes = self.files, [], 0
        return files
