"""`cloudfs restore`: a snapshot, or one path in it, back onto local disk.

The tree below PATH is walked as a stream (walk.py), in batches of at most
BATCH_ITEMS entries or BATCH_BLOCKS blocks, so memory does not grow with the
number of files (I8). Before anything is written, if TARGET has content, a
first walk checks it for conflicts (existing files are refused unless
--overwrite or --resume). Then, while the next batch is being created, the
batch before it is filled and finished (at most two batches are held):

1. create: directories (owner-only until the end), every file at its final
   size with ftruncate (so holes stay holes), symlinks, fifos, devices.
2. fill: a batch's blobs are sorted by chunk and offset and fetched as spans
   (one ranged GET each, small gaps included), JOBS at a time; each record is
   verified (I5) and its plaintext written to every place that needs it, so a
   block stored once in a batch is fetched once. With --resume, blocks already
   on disk with the right keyed hash are skipped: an interrupted restore picks
   up where it stopped.
3. finish: hard links, then xattrs, owners (as root), modes and times of the
   batch's files (a new file of one block gets them from the thread that wrote
   it, through the descriptor it wrote with); the directories at the very end,
   deepest first (writing into one changes its times).

A blob that fails verification or is missing, or a directory node that cannot
be read, damages the files that need it: they are removed (never left with
wrong bytes), everything else is restored, and the report names them by path.
A store that cannot be reached at all stops the restore with an error.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import trio

from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import CloudfsError, IntegrityError, StoreError, UsageError, first_cloudfs_error
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.chunk import BlobLocation, open_record
from cloudfs.repo.spans import STORE_DOWN, Span, fetch_span_bytes, plan_spans
from cloudfs.restore.walk import DirectoryFinishes, HardLinks, Item, Selection, walk
from cloudfs.restore.writing import RestoreError, RunWriter, remove
from cloudfs.snapshot.tree import subtree_totals

log = logging.getLogger(__name__)

BATCH_BLOCKS = 1 << 16        # blocks planned at once (bounded memory for huge restores)
BATCH_ITEMS = 8192            # entries created, filled and finished together
FIRST_BATCH_ITEMS = 512       # ... the first batch, so fetching starts early; each next one doubles
TREE_ENTRIES = 16_384         # decoded directory entries kept (the walk reads each node once)
SPAN_BYTES = 16 << 20         # the largest ranged GET
SPAN_FLOOR = 1 << 20          # ... and the largest a batch's share per job may make it
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
    only: Selection | None = None   # restore these files (or blocks of them) alone (a drill's sample)


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
        self.trees = TreeCache(self.fetcher, max_entries=TREE_ENTRIES)
        self.block_size = repo.config.block_size
        self.as_root = os.geteuid() == 0
        self.report = RestoreReport()
        self.links = HardLinks()
        self._target_had_content = False
        self._warned: set[tuple] = set()

    async def run(self, snapshot: Snapshot, path: bytes, target: bytes, on_total) -> None:
        top = await self._top_item(snapshot, path, target)
        self._target_had_content = _has_content(target)
        if self._target_had_content:
            await self._refuse_conflicts(snapshot, top)
        on_total(await self._total_bytes(snapshot, top))
        if self.options.dry_run:
            await self._dry_run(snapshot, top)
            return
        with DirectoryFinishes() as directories:
            send, receive = trio.open_memory_channel(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._fill_batches, receive)
                await self._create_batches(snapshot, top, directories, send)
            await trio.to_thread.run_sync(self._finish_directories, directories)

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

    async def _refuse_conflicts(self, snapshot: Snapshot, top: Item) -> None:
        """A first walk: refuse, before anything is written, to touch existing
        files unless told (a directory where a file should go is always refused)."""
        conflicts, first = 0, None
        async for items in walk(self.trees, snapshot, top, lambda item, error: None, self.options.only):
            for item in items:
                if self._decide(item, top):
                    conflicts, first = conflicts + 1, first or item
        if conflicts:
            raise UsageError(f"{conflicts} of the paths to restore already exist "
                             f"(first: {os.fsdecode(first.destination)}); "
                             "use --overwrite to replace them or --resume to finish an earlier restore")

    def _decide(self, item: Item, top: Item) -> bool:
        """What to do with what is at an item's destination (item.existing,
        item.replace); True if it is a conflict the options do not allow."""
        try:
            st = os.lstat(item.destination)
        except FileNotFoundError:
            return False
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
            return True
        return False

    async def _total_bytes(self, snapshot: Snapshot, top: Item) -> int:
        """What the progress bar counts to, from the totals directories record."""
        if self.options.only is not None:
            return self.options.only.bytes
        if top.entry is not None:
            return top.entry.tree_bytes if top.is_dir else top.entry.size if top.entry.is_file else 0
        root = (await self.trees.directories([snapshot.tree]))[snapshot.tree]
        return 0 if isinstance(root, Exception) else subtree_totals(root.entries)[1]

    def _unreadable(self, item: Item, error: Exception) -> None:
        self._damage(item, f"its listing cannot be read, nothing in it was restored: {error}")

    async def _dry_run(self, snapshot: Snapshot, top: Item) -> None:
        """The report a restore would give, nothing written (bytes_written is
        what would be fetched and written), and a sample of its first batch."""
        first_batch: list[Item] = []
        async for items in walk(self.trees, snapshot, top, self._unreadable, self.options.only):
            for item in items:
                self.links.group(item)
                self._count(item)
                if item.has_data and len(first_batch) < BATCH_ITEMS:
                    first_batch.append(item)
        await self._sample(first_batch)

    def _count(self, item: Item) -> None:
        report, entry = self.report, item.entry
        if entry is None:
            return
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

    async def _create_batches(self, snapshot: Snapshot, top: Item, directories: DirectoryFinishes,
                              batches: trio.MemorySendChannel) -> None:
        """Walk, create each listed directory's entries, and pass them on in batches."""
        async with batches:
            batch = _Batch(FIRST_BATCH_ITEMS)
            async for items in walk(self.trees, snapshot, top, self._unreadable, self.options.only):
                for item in items:
                    self.links.group(item)
                await trio.to_thread.run_sync(self._create_all, items, top, directories)
                batch.add(items, self.block_size)
                if batch.full:
                    await batches.send(batch)
                    batch = _Batch(min(BATCH_ITEMS, 2 * batch.item_limit))
            if batch.items:
                await batches.send(batch)

    def _create_all(self, items: list[Item], top: Item, directories: DirectoryFinishes) -> None:
        for item in items:
            if self._target_had_content and self._decide(item, top):
                raise UsageError(f"{os.fsdecode(item.destination)} appeared during the restore")
            try:
                self._create(item)
            except OSError as error:
                raise RestoreError(f"cannot create {os.fsdecode(item.destination)}: "
                                   f"{error.strerror}") from None
            if item.is_dir and item.entry is not None:
                directories.add(item)

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
        self.report.files += 1
        if _created_by_its_blocks(item):
            return
        flags = os.O_WRONLY | os.O_CLOEXEC | os.O_NOFOLLOW | (0 if item.existing else os.O_CREAT | os.O_EXCL)
        fd = os.open(item.destination, flags, 0o600)
        try:
            os.ftruncate(fd, item.entry.size)
        finally:
            os.close(fd)

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

    async def _fill_batches(self, batches: trio.MemoryReceiveChannel) -> None:
        """Fill, verify (--verify) and finish each batch of created entries."""
        async with batches:
            async for batch in batches:
                files = [item for item in batch.items if item.has_data]
                await self._fill(files)
                if self.options.verify:
                    await self._verify([item for item in files if item.damage is None])
                await trio.to_thread.run_sync(self._finish_items, batch.items)

    async def _fill(self, files: list[Item]) -> None:
        await self.trees.prefetch_block_lists(item.entry for item in files)
        async for batch in self._batches(files):
            await self._fetch_and_write(batch)
        for item in files:
            if item.damage is not None:
                remove(item.destination)

    async def _batches(self, files: list[Item]) -> AsyncIterator[dict[bytes, list[tuple[Item, int]]]]:
        """Where each blob goes ({blob id: [(item, offset)]}), a batch at a time."""
        batch: dict[bytes, list[tuple[Item, int]]] = defaultdict(list)
        planned = 0
        for item in files:
            count = (item.entry.size + self.block_size - 1) // self.block_size
            start, end = self.options.only.block_range(item, count) if self.options.only else (0, count)
            for first in range(start, end, BATCH_BLOCKS):
                blocks = await self._blocks_to_write(item, first, min(end, first + BATCH_BLOCKS))
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
        known = self.repo.index.get_many(batch)
        for blob_id, places in batch.items():
            location = known.get(blob_id)
            if location is None:
                self._damage_places(places, IntegrityError(f"blob {blob_id.hex()[:16]}", "not in the index"))
            else:
                locations.append(location)
        return plan_spans(locations, max_bytes=self._span_bytes(locations), max_gap=SPAN_GAP)

    def _span_bytes(self, locations: list[BlobLocation]) -> int:
        """The largest GET for a batch: SPAN_BYTES, or less, so that a batch of
        small files still makes a span per job, and its files are created and
        written by all the jobs at once rather than by one."""
        share = sum(location.length for location in locations) // max(1, self.options.jobs)
        return max(SPAN_FLOOR, min(SPAN_BYTES, share))

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
            with RunWriter() as writer:
                self._write_places(writer, batch[location.blob_id], plaintext)
            return writer.written

        return await trio.to_thread.run_sync(write)

    def _write_span(self, span: Span, data, batch) -> tuple[int, list]:
        """Verify a span's records one by one and write each to its places (a
        worker thread); only the current run of consecutive blocks is held."""
        if isinstance(data, IntegrityError):
            return 0, [(location, data) for location in span.locations]
        failures = []
        with RunWriter() as writer:
            for location, plaintext in self._open_records(span, data):
                if isinstance(plaintext, IntegrityError):
                    failures.append((location, plaintext))
                    continue
                self._write_places(writer, batch[location.blob_id], plaintext)
        return writer.written, failures

    def _write_places(self, writer: RunWriter, places: list[tuple[Item, int]], plaintext: bytes) -> None:
        for item, offset in places:
            if item.damage is not None:
                continue
            if self._whole_in_one_block(item):
                writer.write_new_file(item.destination, plaintext, lambda fd: self._apply_metadata(item, fd))
                item.finished = True
            else:
                writer.add(item.destination, offset, plaintext)

    def _whole_in_one_block(self, item: Item) -> bool:
        """A new file that is one stored block (most small files), which its writer
        creates, writes and finishes through one descriptor: four system calls
        fewer than a write, then a pass by path. Not with --verify, which reads
        the files back before their modes apply, nor for a drill's block ranges."""
        return len(item.entry.blocks or ()) == 1 and _created_by_its_blocks(item) \
            and not self.options.verify and self.options.only is None

    async def _verify(self, files: list[Item]) -> None:
        """Read every restored file back and compare each block's keyed hash."""
        for item in files:
            count = (item.entry.size + self.block_size - 1) // self.block_size
            for first in range(0, count, BATCH_BLOCKS):
                ids = await self.trees.block_ids(item.entry, first, min(count, first + BATCH_BLOCKS))
                wrong = await trio.to_thread.run_sync(self._differing, item, list(enumerate(ids, first)), False)
                if wrong:
                    self._damage(item, f"block {wrong[0][0]} reads back different from the snapshot")
                    remove(item.destination)
                    break

    # -- 4. finish ---------------------------------------------------------------------------

    def _finish_items(self, items: list[Item]) -> None:
        """Links and metadata of a batch's entries other than directories."""
        for item in items:
            if item.is_dir or item.damage is not None or item.finished:
                continue
            try:
                if item.link_to is not None:
                    self._link(item)
                else:
                    self._apply_metadata(item)
            except OSError as error:
                raise RestoreError(f"cannot finish {os.fsdecode(item.destination)}: {error.strerror}") from None

    def _finish_directories(self, directories: DirectoryFinishes) -> None:
        for item in directories.deepest_first():
            self._apply_metadata(item)

    def _link(self, item: Item) -> None:
        if item.link_to.damage is not None:
            self._damage(item, f"it is a hard link of {item.link_to.shown}, which is damaged")
            return
        if os.path.lexists(item.destination):     # allowed by _refuse_conflicts
            os.unlink(item.destination)
        os.link(item.link_to.destination, item.destination)
        self.report.hard_links += 1

    def _apply_metadata(self, item: Item, fd: int | None = None) -> None:
        """xattrs, then owner (as root), mode and times, by path or through `fd`;
        in that order because chown clears set-id bits and a read-only mode
        would stop xattrs."""
        entry = item.entry
        where, nofollow = (item.destination, {"follow_symlinks": False}) if fd is None else (fd, {})
        for name, value in entry.xattrs.items():
            try:
                os.setxattr(where, name, value, **nofollow)
            except OSError as error:
                self._warn(("xattr", name, error.errno),
                           f"cannot set xattr {os.fsdecode(name)} ({error.strerror}), e.g. on {item.shown}")
        if self.as_root:
            os.chown(where, entry.uid, entry.gid, **nofollow)
        if not entry.is_symlink:
            os.chmod(where, stat.S_IMODE(entry.mode))
        os.utime(where, ns=(entry.mtime_ns, entry.mtime_ns), **nofollow)

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


@dataclass
class _Batch:
    """Created entries waiting to be filled and finished together."""

    item_limit: int = BATCH_ITEMS
    items: list[Item] = field(default_factory=list)
    blocks: int = 0

    def add(self, items: list[Item], block_size: int) -> None:
        self.items += items
        self.blocks += sum((item.entry.size + block_size - 1) // block_size for item in items if item.has_data)

    @property
    def full(self) -> bool:
        return len(self.items) >= self.item_limit or self.blocks >= BATCH_BLOCKS


def _created_by_its_blocks(item: Item) -> bool:
    """A new file whose every block is stored (no hole, its last block ends it):
    writing the blocks creates it at its size, so creating it first would only
    cost an open, an ftruncate and a close more (most small files)."""
    blocks = item.entry.blocks
    return not item.existing and bool(blocks) and None not in blocks


def _has_content(target: bytes) -> bool:
    """True if restoring into `target` could meet something already there."""
    if not os.path.lexists(target):
        return False
    if not os.path.isdir(target) or os.path.islink(target):
        return True
    with os.scandir(target) as entries:
        return next(entries, None) is not None
