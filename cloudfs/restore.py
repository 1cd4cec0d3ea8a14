"""`cloudfs restore`: a snapshot, or one path in it, back onto local disk.

Four phases:

1. plan: walk the tree below PATH, a level of directory nodes at a time, and
   decide where each entry goes; check TARGET for conflicts before anything
   is written (existing files are refused unless --overwrite or --resume).
2. create: directories (owner-only until the end), every file at its final
   size with ftruncate (so holes stay holes), symlinks, fifos, devices.
3. fill: the files' blocks in batches of at most BATCH_BLOCKS. A batch's blobs
   are sorted by chunk and offset and fetched as spans (one ranged GET each,
   small gaps included), JOBS at a time; each record is verified (I5) and its
   plaintext written to every place that needs it, so a block stored once is
   fetched once. With --resume, blocks already on disk with the right keyed
   hash are skipped: an interrupted restore picks up where it stopped.
4. finish: hard links, then xattrs, owners (as root), modes and times; files
   first, then directories deepest first (writing into one changes its times).

A blob that fails verification or is missing, or a directory node that cannot
be read, damages the files that need it: they are removed (never left with
wrong bytes), everything else is restored, and the report names them by path.
A store that cannot be reached at all stops the restore with an error.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import trio

from cloudfs.browse.blobs import STORE_DOWN, BlobFetcher, Span, fetch_span_bytes, plan_spans
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import CloudfsError, IntegrityError, StoreError, UsageError, first_cloudfs_error
from cloudfs.repo.chunk import BlobLocation, open_record
from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.source import join
from cloudfs.snapshot.tree import Entry

log = logging.getLogger(__name__)

BATCH_BLOCKS = 1 << 16        # blocks planned at once (bounded memory for huge restores)
SPAN_BYTES = 16 << 20         # the largest ranged GET
SPAN_GAP = 1 << 20            # unwanted bytes a ranged GET may include to save a request
JOBS = 4                      # spans fetched and written at once
SAMPLE_SECONDS = 1.0          # --dry-run: fetch for a time estimate for at most this long,
SAMPLE_BYTES = 64 << 20       # ... and this much (downloads may cost money)


@dataclass
class RestoreOptions:
    overwrite: bool = False   # replace existing files
    resume: bool = False      # keep identical blocks of existing files, rewrite the rest
    verify: bool = False      # read every restored file back and check it
    dry_run: bool = False     # plan and check TARGET, count what would be restored, write nothing
    jobs: int = JOBS


@dataclass
class RestoreReport:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    hard_links: int = 0
    other: int = 0                # fifos, devices, sockets
    bytes_written: int = 0
    bytes_kept: int = 0           # --resume: already there and identical
    damaged: list[tuple[str, str]] = field(default_factory=list)   # (path, why)
    sample: tuple[int, float] | None = None   # --dry-run: bytes fetched and verified, in seconds
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(eq=False)
class Item:
    """One entry to restore and where it goes."""

    path: bytes                   # inside the snapshot (b"" for its root)
    entry: Entry | None           # None: the snapshot's root directory (nothing recorded)
    destination: bytes
    existing: bool = False        # --resume: a regular file is already there
    replace: bool = False         # something else is there and goes first
    link_to: "Item | None" = None
    damage: str | None = None

    @property
    def is_dir(self) -> bool:
        return self.entry is None or self.entry.is_dir

    @property
    def has_data(self) -> bool:
        return self.entry is not None and self.entry.is_file and self.link_to is None

    @property
    def shown(self) -> str:
        return "/" + os.fsdecode(self.path)


Progress = Callable[[int], None]


def split_argument(text: str) -> tuple[str, bytes]:
    """SNAPSHOT[:PATH] (snapshot names never contain a colon)."""
    snapshot, _, path = text.partition(":")
    return snapshot, os.fsencode(path).strip(b"/")


async def restore(repo: Repository, snapshot: Snapshot, path: bytes, target: str | os.PathLike,
                  options: RestoreOptions | None = None, progress: Progress = lambda n: None,
                  on_total: Callable[[int], None] = lambda n: None) -> RestoreReport:
    """Restore `path` of `snapshot` (b"" for all of it) to `target`; see the module doc."""
    restorer = Restorer(repo, options or RestoreOptions(), progress)
    started = time.monotonic()
    await restorer.run(snapshot, path, os.fsencode(os.path.abspath(target)), on_total)
    restorer.report.seconds = time.monotonic() - started
    return restorer.report


class Restorer:
    def __init__(self, repo: Repository, options: RestoreOptions, progress: Progress):
        self.repo = repo
        self.options = options
        self.progress = progress
        self.fetcher = BlobFetcher(repo, memory_bytes=32 << 20)
        self.trees = TreeCache(self.fetcher)
        self.block_size = repo.config.block_size
        self.as_root = os.geteuid() == 0
        self.report = RestoreReport()
        self._warned: set[tuple] = set()

    async def run(self, snapshot: Snapshot, path: bytes, target: bytes, on_total) -> None:
        top = await self._top_item(snapshot, path, target)
        items = await self._plan(snapshot, top)
        if os.path.lexists(target):
            self._check_target(items, top)
        on_total(sum(item.entry.size for item in items if item.has_data))
        if self.options.dry_run:
            self._count(items)
            await self._sample([item for item in items if item.has_data])
            return
        await trio.to_thread.run_sync(self._create_all, items)
        await self._fill([item for item in items if item.has_data])
        if self.options.verify:
            await self._verify([item for item in items if item.has_data and item.damage is None])
        await trio.to_thread.run_sync(self._finish, items)

    # -- 1. plan ------------------------------------------------------------------------

    async def _top_item(self, snapshot: Snapshot, path: bytes, target: bytes) -> Item:
        if not path:
            return Item(b"", None, target)
        entry = await self.trees.lookup(snapshot.tree, path)
        if entry is None:
            raise UsageError(f"/{os.fsdecode(path)} is not in snapshot {snapshot.name}")
        if os.path.isdir(target):
            target = os.path.join(target, entry.name)
        return Item(path, entry, target)

    async def _plan(self, snapshot: Snapshot, top: Item) -> list[Item]:
        """Every item below `top`, parents before children; hard links grouped."""
        items, level = [top], [top] if top.is_dir else []
        while level:
            node_ids = [item.entry.subtree if item.entry else snapshot.tree for item in level]
            found = await self.trees.directories(list(dict.fromkeys(node_ids)))
            next_level = []
            for item, node_id in zip(level, node_ids):
                directory = found[node_id]
                if isinstance(directory, Exception):
                    self._damage(item, f"its listing cannot be read, nothing in it was restored: {directory}")
                    continue
                for entry in directory.entries:
                    child = Item(join(item.path, entry.name), entry, join(item.destination, entry.name))
                    items.append(child)
                    if entry.is_dir:
                        next_level.append(child)
            level = next_level
        _group_hard_links(items)
        return items

    def _check_target(self, items: list[Item], top: Item) -> None:
        """Refuse to touch existing files unless told; decide what gets replaced."""
        conflicts = []
        for item in items:
            try:
                st = os.lstat(item.destination)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                if not item.is_dir:
                    raise UsageError(f"{os.fsdecode(item.destination)} is a directory; "
                                     f"{item.shown} is not (move it away first)")
            elif self.options.resume and item.entry is not None and item.entry.is_file and stat.S_ISREG(st.st_mode):
                item.existing = True
            elif self.options.overwrite or self.options.resume:
                item.replace = True
            elif item is top and item.is_dir:
                raise UsageError(f"TARGET {os.fsdecode(item.destination)} is not a directory")
            else:
                conflicts.append(item)
        if conflicts:
            first = os.fsdecode(conflicts[0].destination)
            raise UsageError(f"{len(conflicts)} of the paths to restore already exist (first: {first}); "
                             "use --overwrite to replace them or --resume to finish an earlier restore")

    def _count(self, items: list[Item]) -> None:
        """--dry-run: the report a restore of `items` would give, nothing written
        (bytes_written is what would be fetched and written)."""
        report = self.report
        for item in items:
            entry = item.entry
            if entry is None:
                continue
            if entry.is_dir:
                report.directories += 1
            elif item.link_to is not None:
                report.hard_links += 1
            elif entry.is_file:
                report.files += 1
                report.bytes_written += entry.size
            elif entry.is_symlink:
                report.symlinks += 1
            else:
                report.other += 1

    async def _sample(self, files: list[Item]) -> None:
        """--dry-run: fetch and verify what a restore would fetch first, as many spans
        at once as it would, for about SAMPLE_SECONDS or SAMPLE_BYTES, writing
        nothing. The connections are opened first (a one-byte GET each), so that
        starting up is not taken for slowness."""
        batches = self._batches(files)
        try:
            batch = await anext(batches, None)
        finally:
            await batches.aclose()
        if not batch:
            return
        planned = self._spans(batch)
        if not planned:
            return
        spans, jobs = iter(planned), max(1, self.options.jobs)
        verified = 0

        async def worker() -> None:
            nonlocal verified
            for span in spans:
                data = await fetch_span_bytes(self.repo, span)
                if not isinstance(data, IntegrityError):
                    verified += await trio.to_thread.run_sync(self._verified_bytes, span, data)
                if time.monotonic() > deadline or verified >= SAMPLE_BYTES:
                    return

        try:
            async with trio.open_nursery() as nursery:
                for _ in range(min(jobs, len(planned))):
                    nursery.start_soon(self.repo.store.get, planned[0].name, 0, 1)
            started = time.monotonic()
            deadline = started + SAMPLE_SECONDS
            async with trio.open_nursery() as nursery:
                for _ in range(jobs):
                    nursery.start_soon(worker)
        except (CloudfsError, BaseExceptionGroup) as raised:   # e.g. the store cannot be reached
            error = first_cloudfs_error(raised)
            if error is None:
                raise
            self._warn(("sample",), f"no time estimate: {error}")
            return
        if verified:
            self.report.sample = (verified, time.monotonic() - started)

    def _verified_bytes(self, span: Span, data) -> int:
        return sum(len(plaintext) for _, plaintext in self._open_records(span, data)
                   if not isinstance(plaintext, IntegrityError))

    # -- 2. create ----------------------------------------------------------------------

    def _create_all(self, items: list[Item]) -> None:
        for item in items:
            try:
                self._create(item)
            except OSError as error:
                raise RestoreError(f"cannot create {os.fsdecode(item.destination)}: "
                                   f"{error.strerror}") from None

    def _create(self, item: Item) -> None:
        destination, entry = item.destination, item.entry
        if item.replace:
            os.unlink(destination)
        if item.is_dir:
            if entry is None:
                os.makedirs(destination, exist_ok=True)
            elif not os.path.isdir(destination):
                os.mkdir(destination, 0o700)
            else:
                os.chmod(destination, stat.S_IMODE(os.stat(destination).st_mode) | stat.S_IRWXU)
            self.report.directories += entry is not None
        elif entry.is_file:
            if item.link_to is None:
                self._create_file(item)
        elif entry.is_symlink:
            os.symlink(entry.target, destination)
            self.report.symlinks += 1
        else:
            self._create_special(item)

    def _create_file(self, item: Item) -> None:
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if item.existing else os.O_CREAT | os.O_EXCL)
        fd = os.open(item.destination, flags, 0o600)
        try:
            os.ftruncate(fd, item.entry.size)
        finally:
            os.close(fd)
        self.report.files += 1

    def _create_special(self, item: Item) -> None:
        mode = item.entry.mode
        try:
            if stat.S_ISFIFO(mode):
                os.mkfifo(item.destination, 0o600)
            else:
                os.mknod(item.destination, stat.S_IFMT(mode) | 0o600, item.entry.rdev)
            self.report.other += 1
        except PermissionError:
            self._warn(("special", item.path), f"{item.shown}: creating a device node needs root; skipped")
            item.damage = "skipped"

    # -- 3. fill ---------------------------------------------------------------------------

    async def _fill(self, files: list[Item]) -> None:
        async for batch in self._batches(files):
            await self._fetch_and_write(batch)
        for item in files:
            if item.damage is not None:
                _remove(item.destination)

    async def _batches(self, files: list[Item]) -> AsyncIterator[dict[bytes, list[tuple[Item, int]]]]:
        """Where each blob goes ({blob id: [(item, offset)]}), a batch at a time."""
        batch: dict[bytes, list[tuple[Item, int]]] = defaultdict(list)
        planned = 0
        for item in files:
            count = (item.entry.size + self.block_size - 1) // self.block_size
            for first in range(0, count, BATCH_BLOCKS):
                blocks = await self._blocks_to_write(item, first, min(count, first + BATCH_BLOCKS))
                if blocks is None:
                    break
                for index, block_id in blocks:
                    batch[block_id].append((item, index * self.block_size))
                planned += len(blocks)
                if planned >= BATCH_BLOCKS:
                    yield batch
                    batch, planned = defaultdict(list), 0
        if batch:
            yield batch

    async def _blocks_to_write(self, item: Item, first: int, last: int) -> list[tuple[int, bytes]] | None:
        """The stored blocks first..last-1 of a file that still need writing
        (None if the file is damaged); counts the rest as done."""
        try:
            ids = await self.trees.block_ids(item.entry, first, last)
            if len(ids) != last - first:
                raise IntegrityError(f"the block list of {item.shown}", f"has {len(ids)} of {last - first} ids")
        except IntegrityError as error:
            self._damage(item, str(error))
            return None
        blocks = list(enumerate(ids, first))
        if item.existing:
            blocks = await trio.to_thread.run_sync(self._differing, item, blocks, not self.options.dry_run)
        done = sum(self._length(item, index) for index, block_id in enumerate(ids, first)) \
            - sum(self._length(item, index) for index, block_id in blocks if block_id is not None)
        self.report.bytes_kept += done if item.existing else 0
        self.progress(done)
        return [(index, block_id) for index, block_id in blocks if block_id is not None]

    def _length(self, item: Item, index: int) -> int:
        return min(self.block_size, item.entry.size - index * self.block_size)

    def _differing(self, item: Item, blocks: list[tuple[int, bytes | None]], rewrite_zeros: bool):
        """Blocks whose bytes on disk do not match the snapshot (keyed hash);
        with rewrite_zeros, blocks that should be zeros but are not are zeroed here."""
        out = []
        fd = os.open(item.destination, os.O_RDWR if rewrite_zeros else os.O_RDONLY)
        try:
            for index, block_id in blocks:
                length = self._length(item, index)
                data = os.pread(fd, length, index * self.block_size)
                if block_id is None:
                    if data.count(0) != length:
                        if not rewrite_zeros:
                            out.append((index, block_id))
                            continue
                        os.pwrite(fd, bytes(length), index * self.block_size)
                elif len(data) != length or self.repo.blob_id(data) != block_id:
                    out.append((index, block_id))
        finally:
            os.close(fd)
        return out

    def _spans(self, batch: dict[bytes, list[tuple[Item, int]]]) -> list[Span]:
        """The ranged GETs that fetch a batch's blobs; a blob the index lacks damages
        the files that need it."""
        locations = []
        for blob_id, places in batch.items():
            location = self.repo.index.get(blob_id)
            if location is None:
                self._damage_places(places, IntegrityError(f"blob {blob_id.hex()[:16]}", "not in the index"))
            else:
                locations.append(location)
        return plan_spans(locations, max_bytes=SPAN_BYTES, max_gap=SPAN_GAP)

    def _open_records(self, span: Span, data) -> Iterator[tuple[BlobLocation, bytes | IntegrityError]]:
        """Each record of a fetched span, verified (I5): its plaintext, or why not."""
        view = memoryview(data)
        for location in span.locations:
            start = location.offset - span.start
            try:
                yield location, open_record(self.repo.master, location, view[start:start + location.length],
                                            span.name)
            except IntegrityError as error:
                yield location, error

    async def _fetch_and_write(self, batch: dict[bytes, list[tuple[Item, int]]]) -> None:
        spans = self._spans(batch)
        send, receive = trio.open_memory_channel(0)
        async with trio.open_nursery() as nursery:
            for _ in range(max(1, self.options.jobs)):
                nursery.start_soon(self._span_worker, receive.clone(), batch)
            receive.close()
            async with send:
                for span in spans:
                    await send.send(span)

    async def _span_worker(self, spans, batch) -> None:
        async with spans:
            async for span in spans:
                data = await fetch_span_bytes(self.repo, span)
                written, failures = await trio.to_thread.run_sync(self._write_span, span, data, batch)
                for location, error in failures:
                    written += await self._from_another_copy(location, error, batch)
                self.report.bytes_written += written
                self.progress(written)

    async def _from_another_copy(self, location: BlobLocation, error: IntegrityError, batch) -> int:
        """A record that failed verification, read alone: a repository kept on several
        targets reads it from the next one (Repository.read_blob). Returns the bytes
        written, or damages the files that need it."""
        try:
            plaintext = await self.repo.read_blob(location)
        except STORE_DOWN:
            raise
        except (IntegrityError, StoreError):
            self._damage_places(batch[location.blob_id], error)
            return 0

        def write() -> int:
            with _RunWriter() as writer:
                for item, offset in batch[location.blob_id]:
                    if item.damage is None:
                        writer.add(item.destination, offset, plaintext)
            return writer.written

        return await trio.to_thread.run_sync(write)

    def _write_span(self, span: Span, data, batch) -> tuple[int, list]:
        """Verify a span's records one by one and write each to its places (a
        worker thread); only the current run of consecutive blocks is held."""
        if isinstance(data, IntegrityError):
            return 0, [(location, data) for location in span.locations]
        failures = []
        with _RunWriter() as writer:
            for location, plaintext in self._open_records(span, data):
                if isinstance(plaintext, IntegrityError):
                    failures.append((location, plaintext))
                    continue
                for item, offset in batch[location.blob_id]:
                    if item.damage is None:
                        writer.add(item.destination, offset, plaintext)
        return writer.written, failures

    async def _verify(self, files: list[Item]) -> None:
        """Read every restored file back and compare each block's keyed hash."""
        for item in files:
            count = (item.entry.size + self.block_size - 1) // self.block_size
            for first in range(0, count, BATCH_BLOCKS):
                ids = await self.trees.block_ids(item.entry, first, min(count, first + BATCH_BLOCKS))
                wrong = await trio.to_thread.run_sync(self._differing, item, list(enumerate(ids, first)), False)
                if wrong:
                    self._damage(item, f"block {wrong[0][0]} reads back different from the snapshot")
                    _remove(item.destination)
                    break

    # -- 4. finish ---------------------------------------------------------------------------

    def _finish(self, items: list[Item]) -> None:
        for item in items:
            if item.is_dir or item.damage is not None:
                continue
            try:
                if item.link_to is not None:
                    self._link(item)
                else:
                    self._apply_metadata(item)
            except OSError as error:
                raise RestoreError(f"cannot finish {os.fsdecode(item.destination)}: {error.strerror}") from None
        for item in reversed(items):
            if item.is_dir and item.entry is not None:
                self._apply_metadata(item)

    def _link(self, item: Item) -> None:
        if item.link_to.damage is not None:
            self._damage(item, f"it is a hard link of {item.link_to.shown}, which is damaged")
            return
        if os.path.lexists(item.destination):     # allowed by _check_target
            os.unlink(item.destination)
        os.link(item.link_to.destination, item.destination)
        self.report.hard_links += 1

    def _apply_metadata(self, item: Item) -> None:
        """xattrs, then owner (as root), mode and times; in that order because
        chown clears set-id bits and a read-only mode would stop xattrs."""
        entry, destination = item.entry, item.destination
        symlink = entry.is_symlink
        for name, value in entry.xattrs.items():
            try:
                os.setxattr(destination, name, value, follow_symlinks=False)
            except OSError as error:
                self._warn(("xattr", name, error.errno),
                           f"cannot set xattr {os.fsdecode(name)} ({error.strerror}), e.g. on {item.shown}")
        if self.as_root:
            os.chown(destination, entry.uid, entry.gid, follow_symlinks=False)
        if not symlink:
            os.chmod(destination, stat.S_IMODE(entry.mode))
        os.utime(destination, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)

    # -- bookkeeping -------------------------------------------------------------------------

    def _damage(self, item: Item, why: str) -> None:
        if item.damage is None:
            item.damage = why
            self.report.damaged.append((item.shown, why))
            log.error("cannot restore %s: %s", item.shown, why)

    def _damage_places(self, places: list[tuple[Item, int]], error: Exception) -> None:
        for item, _ in places:
            self._damage(item, str(error))

    def _warn(self, key: tuple, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self.report.warnings.append(message)


class RestoreError(CloudfsError):
    """The local side of a restore failed (a file could not be created or finished)."""


def _group_hard_links(items: list[Item]) -> None:
    """Files of one snapshot with the same recorded inode are one file: the
    first keeps the data, the others become links to it."""
    first_of: dict[int, Item] = {}
    for item in items:
        entry = item.entry
        if entry is not None and entry.is_file and entry.nlink > 1:
            first = first_of.setdefault(entry.ino, item)
            if first is not item:
                item.link_to = first


class _RunWriter:
    """Writes blocks, joining consecutive ones of a file into one pwritev of up
    to RUN_BYTES; keeps the current file open until another comes."""

    RUN_BYTES = 1 << 20

    def __init__(self):
        self.written = 0
        self._path: bytes | None = None
        self._fd = -1
        self._start = self._end = 0
        self._buffers: list = []

    def __enter__(self) -> "_RunWriter":
        return self

    def __exit__(self, kind, *exc) -> None:
        try:
            if kind is None:
                self._flush()
        finally:
            if self._fd >= 0:
                os.close(self._fd)

    def add(self, path: bytes, offset: int, data: bytes) -> None:
        if path != self._path or offset != self._end or self._end - self._start >= self.RUN_BYTES:
            self._flush()
            if path != self._path:
                if self._fd >= 0:
                    os.close(self._fd)
                    self._fd = -1
                try:
                    self._fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
                except OSError as error:
                    raise RestoreError(_write_failure(path, error)) from None
                self._path = path
            self._start = self._end = offset
        self._buffers.append(data)
        self._end += len(data)

    def _flush(self) -> None:
        if self._buffers:
            try:
                self.written += _pwritev_all(self._fd, self._buffers, self._start)
            except OSError as error:
                raise RestoreError(_write_failure(self._path, error)) from None
            self._buffers = []


def _write_failure(path: bytes, error: OSError) -> str:
    """One line for a write to the target that failed; the restore stops there, and
    what it wrote is kept for --resume."""
    message = f"cannot write {os.fsdecode(path)}: {error.strerror}"
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        message += "; free some space, then run the same restore with --resume to finish it"
    return message


def _pwritev_all(fd: int, buffers: list, offset: int) -> int:
    """pwritev every buffer at `offset` (it may write less than asked, and takes
    at most IOV_MAX buffers at a time)."""
    done = 0
    for first in range(0, len(buffers), 512):
        group = buffers[first:first + 512]
        size = sum(len(buffer) for buffer in group)
        count = os.pwritev(fd, group, offset + done)
        if count < size:
            rest = b"".join(group)[count:]
            while rest:
                step = os.pwrite(fd, rest, offset + done + count)
                count += step
                rest = rest[step:]
        done += size
    return done


def _remove(path: bytes) -> None:
    try:
        os.unlink(path)
    except OSError as error:
        if error.errno != errno.ENOENT:
            log.warning("cannot remove damaged %s: %s", os.fsdecode(path), error.strerror)
