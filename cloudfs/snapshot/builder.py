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

Concurrency: the tree is walked by trio tasks; each file to read is a task
(at most FILE_TASKS at once), and its content is read, hashed, compressed and
sealed in worker-thread jobs of READ_BATCH bytes (at most WORKER_THREADS at
once, several per large file); files of one block or less are grouped, up to
SMALL_FILES_PER_JOB per job. Directory nodes are written when all their
children are done, so the walk is depth-first and memory stays bounded.
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
from cloudfs.snapshot.source import FileReader, Source, join
from cloudfs.snapshot.tree import Entry, encode_directory, subtree_totals

READ_BATCH = 4 << 20
FILE_TASKS = 32
# Files of at most one block are read in groups, one worker-thread job per group:
# a thread hop costs more here than reading and sealing a small file.
SMALL_FILES_PER_JOB = 64
SMALL_BYTES_PER_JOB = 1 << 20
# Jobs in worker threads: about one per core, plus room for the jobs that are
# blocked while the chunk they completed uploads.
WORKER_THREADS = 4


class BlobSink(Protocol):
    def store_blocks_sync(self, data: bytes, block_size: int) -> list[bytes | None]:
        """Store each block of `data`, returning their ids (None for zero blocks).
        Called in worker threads only."""

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

    async def build(self, previous_root: bytes | None, changes: PathChanges | None) -> bytes:
        """The id of the new root directory node. Afterwards stats.files and
        stats.bytes are the totals of the whole new tree."""
        self._rules = WalkRules(changes)
        root, self.stats.files, self.stats.bytes = await self._directory(b"", previous_root)
        return root

    # -- directories ----------------------------------------------------------------

    async def _directory(self, path: bytes, previous: bytes | None) -> tuple[bytes, int, int]:
        """The node id of a directory's new version, and its subtree's file and byte totals."""
        old = {e.name: e for e in await self.reader.directory(previous)} if previous else {}
        relist = self._rules.relists(path, previous is not None)
        names = self.source.listdir(path) if relist else list(old)
        entries: dict[bytes, Entry] = {}
        small = _SmallFiles()
        async with trio.open_nursery() as nursery:
            for name in names:
                if not self.exclude(join(path, name)):
                    await self._child(nursery, path, name, old.get(name), relist, entries, small)
            await self._start_small_files(nursery, small, entries)
        self.stats.directories += 1
        children = list(entries.values())
        return (await self.sink.put_tree(encode_directory(children)), *subtree_totals(children))

    async def _child(self, nursery, directory: bytes, name: bytes, old: Entry | None,
                     relisted: bool, entries: dict[bytes, Entry], small: "_SmallFiles") -> None:
        """Fill entries[name]: copied from the old node, made here, or, for a file
        whose content must be read, by a task started in `nursery` (small files
        in groups)."""
        path = join(directory, name)
        try:
            if self._rules.unchanged(path, old.ino if old is not None else None, relisted,
                                     lambda: self.source.lstat(path).st_ino):
                entries[name] = old
                return
            st = self.source.lstat(path)
            entry = Entry(name=name, mode=st.st_mode).with_stat(st)
            entry.xattrs = self._xattrs(path)
            if stat.S_ISREG(st.st_mode):
                await self._file(nursery, path, st, old, entry, entries, small)
                return
            if stat.S_ISDIR(st.st_mode):
                await self._subdirectory(path, old, entry)
            elif stat.S_ISLNK(st.st_mode):
                entry.target = self.source.readlink(path)
            entries[name] = entry
        except FileNotFoundError:
            self.stats.vanished += 1   # removed while we looked: not part of this tree

    async def _subdirectory(self, path: bytes, old: Entry | None, entry: Entry) -> None:
        """Fill a directory entry's subtree: reused when no change lies below it."""
        previous = old.subtree if old is not None and old.is_dir and old.ino == entry.ino else None
        if self._rules.reuses_subtree(path, previous is not None):
            entry.subtree, entry.tree_files, entry.tree_bytes = previous, old.tree_files, old.tree_bytes
        else:
            entry.subtree, entry.tree_files, entry.tree_bytes = await self._directory(path, previous)

    def _xattrs(self, path: bytes) -> dict[bytes, bytes]:
        try:
            return self.source.xattrs(path)
        except OSError as error:
            if error.errno == errno.ENOENT:
                raise FileNotFoundError(path) from None
            return {}

    # -- file content -----------------------------------------------------------------

    async def _file(self, nursery, path: bytes, st, old: Entry | None, entry: Entry,
                    entries: dict[bytes, Entry], small: "_SmallFiles") -> None:
        same_file = old is not None and old.is_file and old.ino == st.st_ino
        plan = self._rules.content(path, same_file, lambda: old.same_stat(st))
        if plan is Content.REUSE or st.st_size == 0:
            entry.blocks, entry.block_list = (old.blocks, old.block_list) if plan is Content.REUSE else ([], None)
            entries[entry.name] = entry
        elif st.st_size <= self.block_size and plan is Content.WHOLE:
            small.add(path, entry)
            if small.full():
                await self._start_small_files(nursery, small, entries)
        else:
            await self._file_slots.acquire()
            nursery.start_soon(self._file_task, path, st, old, entry, entries, plan)

    async def _start_small_files(self, nursery, small: "_SmallFiles", entries: dict[bytes, Entry]) -> None:
        if small.files:
            await self._file_slots.acquire()
            nursery.start_soon(self._small_files_task, small.take(), entries)

    async def _small_files_task(self, files: list[tuple[bytes, Entry]], entries: dict[bytes, Entry]) -> None:
        """Read and store a group of small files in one worker-thread job."""
        try:
            opened = []
            for path, entry in files:
                try:
                    opened.append((self.source.open(path), entry))   # on the loop, like every open
                except FileNotFoundError:
                    self.stats.vanished += 1
            try:
                results = await trio.to_thread.run_sync(
                    self._read_small_files, [(reader, entry.size) for reader, entry in opened],
                    limiter=self._threads)
            finally:
                for reader, _ in opened:
                    reader.close()
            for (_, entry), (ids, read) in zip(opened, results):
                entry.blocks, entry.block_list = ids, None
                self.stats.bytes_read += read
                self.stats.files_read += 1
                entries[entry.name] = entry
        finally:
            self._file_slots.release()

    def _read_small_files(self, files: list[tuple[FileReader, int]]) -> list[tuple[list, int]]:
        return [self._read_and_store(reader, 0, size) for reader, size in files]

    async def _file_task(self, path: bytes, st, old: Entry | None, entry: Entry,
                         entries: dict[bytes, Entry], plan: Content) -> None:
        try:
            entry.blocks, entry.block_list = await self._content(path, st, old, plan)
        except FileNotFoundError:
            self.stats.vanished += 1
            return
        finally:
            self._file_slots.release()
        entries[entry.name] = entry

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
        data = reader.pread(length, offset)
        read = len(data)
        if read < length:
            data += bytes(length - read)   # shrank while read: zeros
        return self.sink.store_blocks_sync(data, self.block_size), read


def _runs(indices: list[int], limit: int) -> list[list[int]]:
    """Consecutive block numbers grouped, at most `limit` per group."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1 and len(runs[-1]) < limit:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class _SmallFiles:
    """Small files of one directory waiting to be read together."""

    def __init__(self):
        self.files: list[tuple[bytes, Entry]] = []
        self.bytes = 0

    def add(self, path: bytes, entry: Entry) -> None:
        self.files.append((path, entry))
        self.bytes += entry.size

    def full(self) -> bool:
        return len(self.files) >= SMALL_FILES_PER_JOB or self.bytes >= SMALL_BYTES_PER_JOB

    def take(self) -> list[tuple[bytes, Entry]]:
        files, self.files, self.bytes = self.files, [], 0
        return files
