"""Recovery drills: restore a random sample of a snapshot, time it, and project
how long restoring all of it would take (the RTO).

The sample is restored by the restorer itself (`RestoreOptions.only`), so
every record is verified as in any restore (I5). The projection is stratified:

- the fixed part is measured whole: the command's start-up (given), loading
  the target's index, walking every directory node of the snapshot (`plan`,
  which also counts what a full restore creates and picks the sample) and a
  restore that selects nothing;
- small files (below LARGE_FILE) are sampled in clusters, as a full restore
  reads them: whole chunks picked at random (the uploader packs many small
  files into one, and a full restore reads each with a few large requests),
  the small files whose first block lies in them, until the sample holds the
  file budget, at least SMALL_FILES (found through the index in a second,
  untimed walk); it is restored SMALL_ROUNDS times, and the median taken. The
  first of them is also restored alone: what a restore's first file costs
  beyond the empty one (its first request) is paid once, and each further
  file's cost, from the sample, is multiplied by the small files of the
  snapshot (scaling the whole sample's time would scale that start cost too:
  +74% on the standard library);
- large files are sampled by their bytes: a contiguous stretch of each picked
  file, the budget's share of it but at least STRETCH_BYTES (or the file),
  the files picked with probability proportional to their size until the
  stretches make the byte budget. Their restore, less the empty one, is
  scaled by large bytes in the snapshot / large bytes restored.

RTO = fixed + small + large. A sample that covers the whole snapshot is
simply restored whole, and its time is the RTO.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field

from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import CloudfsError, IntegrityError, RepositoryError, first_cloudfs_error
from cloudfs.repo import Repository, Snapshot
from cloudfs.restore.restorer import TREE_ENTRIES, RestoreOptions, RestoreReport, restore
from cloudfs.restore.walk import HardLinks, Item, Selection, walk
from cloudfs.restore.writing import RestoreError
from cloudfs.snapshot.tree import subtree_totals

MIN_FILES = 200               # a smaller sample measures noise (or everything, if the snapshot is smaller)
MIN_BYTES = 16 << 20
SMALL_FILES = 1000            # the fewest small files sampled: fewer restore in too little time to measure
SMALL_ROUNDS = 3              # the small files' sample is restored this often, the median taken (noise)
LARGE_FILE = 4 << 20          # files this large are sampled by stretches of their bytes, smaller ones whole
STRETCH_BYTES = 32 << 20      # the shortest stretch of a large file restored (or all of it)
SPACE_MARGIN = 1.05           # restored files take a little more room than their bytes


@dataclass(frozen=True)
class SampleSize:
    """What `--sample` asks for: a share of the files and of the bytes (percent),
    or a number of files, or of bytes, or both (the one not given in proportion)."""

    files: int | None = None
    bytes: int | None = None
    percent: float | None = None

    def budgets(self, files: int, size: int) -> tuple[int, int]:
        """(files, bytes) to restore of a snapshot of `files` files and `size` bytes."""
        if self.percent is not None:
            share = self.percent / 100
            wanted = (math.ceil(share * files), int(share * size))
        elif self.files is not None and self.bytes is not None:
            wanted = (self.files, self.bytes)
        elif self.files is not None:
            wanted = (self.files, int(size * self.files / max(1, files)))
        else:
            wanted = (math.ceil(files * self.bytes / max(1, size)), self.bytes)
        return max(wanted[0], min(files, MIN_FILES)), max(wanted[1], min(size, MIN_BYTES))


@dataclass
class Stratum:
    """Files of one size class in the snapshot, and the sample taken of them."""

    files: int = 0
    bytes: int = 0
    sample: Selection = field(default_factory=lambda: Selection({}))


@dataclass
class Plan:
    """The snapshot's totals as a restore counts them, and the sample picked."""

    snapshot: Snapshot
    entries: int = 0
    files: int = 0
    bytes: int = 0
    whole: bool = True                  # restore the whole snapshot
    small: Stratum = field(default_factory=Stratum)
    large: Stratum = field(default_factory=Stratum)
    one: Selection = field(default_factory=lambda: Selection({}))     # the first small file of the sample
    seconds: float = 0.0                # walking every directory node (not picking the sample)


@dataclass
class Model:
    """Seconds to restore: the fixed part, measured whole, and each stratum's
    sample time scaled up by the share of it restored."""

    fixed: float
    small: float
    large: float
    small_share: float
    large_share: float

    @property
    def seconds(self) -> float:
        return self.fixed + self.small + self.large

    def as_dict(self) -> dict:
        return {"fixed_seconds": round(self.fixed, 4), "small_files_seconds": round(self.small, 4),
                "large_files_seconds": round(self.large, 4), "small_files_share": round(self.small_share, 6),
                "large_bytes_share": round(self.large_share, 6)}


@dataclass
class TargetDrill:
    """What one target's drill measured and projects, or why it failed."""

    target: str | None
    snapshot: str = ""
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0                # the drill of this target, start to end
    restore_seconds: float = 0.0        # of which restoring the sample
    whole: bool = False                 # the sample was the whole snapshot
    snapshot_entries: int = 0
    snapshot_files: int = 0
    snapshot_bytes: int = 0
    model: Model | None = None
    rto_seconds: float | None = None
    damaged: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and not self.damaged

    @property
    def throughput(self) -> float:
        return self.bytes / self.restore_seconds if self.restore_seconds else 0.0

    def as_dict(self) -> dict:
        model = self.model
        return {
            "target": self.target, "ok": self.ok, "error": self.error, "snapshot": self.snapshot or None,
            "files": self.files, "bytes": self.bytes, "seconds": round(self.seconds, 3),
            "restore_seconds": round(self.restore_seconds, 3),
            "throughput_bytes_per_second": round(self.throughput), "whole": self.whole,
            "snapshot_entries": self.snapshot_entries, "snapshot_files": self.snapshot_files,
            "snapshot_bytes": self.snapshot_bytes,
            "rto_seconds": None if self.rto_seconds is None else round(self.rto_seconds, 3),
            "model": None if model is None else model.as_dict(),
            "damaged": [{"path": path, "why": why} for path, why in self.damaged],
        }


async def drill_target(name: str | None, repo: Repository, size: SampleSize, scratch: str,
                       startup: float, rng: random.Random) -> TargetDrill:
    """Drill the latest snapshot `repo` holds (one target's view of the repository,
    read without the local cache) into a new directory in `scratch`, removed after.
    `startup` is what the command took to get here (a restore pays it too)."""
    result = TargetDrill(name)
    started = time.monotonic()
    try:
        await _drill(repo, size, scratch, startup, rng, result)
    except (CloudfsError, BaseExceptionGroup) as raised:
        error = first_cloudfs_error(raised)
        if error is None:
            raise
        result.error = str(error)
    result.seconds = time.monotonic() - started
    return result


async def _drill(repo: Repository, size: SampleSize, scratch: str, startup: float, rng: random.Random,
                 result: TargetDrill) -> None:
    started = time.monotonic()
    await repo.load_index()
    snapshots = await repo.snapshots()
    if not snapshots:
        raise RepositoryError("it holds no snapshot")
    loaded = time.monotonic() - started
    plan = await plan_sample(repo, snapshots[-1], size, rng)
    fixed = startup + loaded + plan.seconds
    result.snapshot = plan.snapshot.name.removeprefix("snapshots/")
    result.snapshot_entries, result.snapshot_files, result.snapshot_bytes = plan.entries, plan.files, plan.bytes
    if plan.whole:
        report = await _restore_into(repo, plan.snapshot, None, scratch, "all", plan.bytes, result)
        result.whole = True
        result.snapshot_entries, result.snapshot_files = _entries(report), report.files
        result.rto_seconds = fixed + report.seconds
        return
    empty = await _restore_into(repo, plan.snapshot, Selection({}), scratch, "none", 0, result)
    ones, smalls = [], []
    for round in range(SMALL_ROUNDS):
        ones.append(await _restore_into(repo, plan.snapshot, plan.one, scratch, "one", plan.one.bytes, result,
                                        count=False))
        smalls.append(await _restore_into(repo, plan.snapshot, plan.small.sample, scratch, "small",
                                          plan.small.sample.bytes, result, count=round == 0))
    one, small = _median(ones), _median(smalls)
    large = await _restore_into(repo, plan.snapshot, plan.large.sample, scratch, "large",
                                plan.large.sample.bytes, result)
    small_share = small.files / plan.small.files if plan.small.files else 1.0
    large_share = large.bytes_written / plan.large.bytes if plan.large.bytes else 1.0
    result.model = Model(fixed + empty.seconds, _small_files(plan.small.files, small, one, empty),
                         _scaled(large, empty, large_share), small_share, large_share)
    result.rto_seconds = result.model.seconds


def _median(reports: list[RestoreReport]) -> RestoreReport:
    return sorted(reports, key=lambda report: report.seconds)[len(reports) // 2]


def _small_files(files: int, sample: RestoreReport, one: RestoreReport, empty: RestoreReport) -> float:
    """The small files' restore time: the cost of a restore's first small file
    (its first request, its writers), which a full restore pays once, from `one`;
    the cost of each further file from the sample, less its first."""
    if not sample.files:
        return 0.0
    first = max(0.0, one.seconds - empty.seconds)
    each = max(0.0, sample.seconds - one.seconds) / max(1, sample.files - 1)
    return first + each * (files - 1)


def _scaled(sample: RestoreReport, empty: RestoreReport, share: float) -> float:
    """A stratum's restore time from its sample's (less what restoring nothing takes)."""
    return max(0.0, sample.seconds - empty.seconds) / share if share else 0.0


async def plan_sample(repo: Repository, snapshot: Snapshot, size: SampleSize, rng: random.Random) -> Plan:
    """Walk every directory of `snapshot`, count what a restore would create, and
    pick the sample (in memory that grows with the sample, not with the tree)."""
    started = time.monotonic()
    trees = TreeCache(BlobFetcher(repo, memory_bytes=32 << 20), max_entries=TREE_ENTRIES)
    root = (await trees.directories([snapshot.tree]))[snapshot.tree]
    if isinstance(root, Exception):
        raise root
    files, total = subtree_totals(root.entries)
    plan = Plan(snapshot, files=files, bytes=total)
    file_budget, byte_budget = size.budgets(files, total)
    if file_budget >= files and byte_budget >= total:
        plan.seconds = time.monotonic() - started
        return plan
    plan.whole = False
    stretches = _Stretches(byte_budget / max(1, total), total, repo.config.block_size, rng)
    plan.files = plan.bytes = 0
    links = HardLinks()
    async for items in walk(trees, snapshot, Item(b"", None, b""), _unreadable):
        for item in items:
            if item.entry is None:
                continue
            plan.entries += 1
            links.group(item)
            if item.has_data:
                plan.files, plan.bytes = plan.files + 1, plan.bytes + item.entry.size
                stratum = plan.large if item.entry.size >= LARGE_FILE else plan.small
                stratum.files, stratum.bytes = stratum.files + 1, stratum.bytes + item.entry.size
                if stratum is plan.large:
                    stretches.offer(item.path, item.entry.size)
    plan.seconds = time.monotonic() - started
    plan.large.sample = stretches.pick(plan.large.bytes)
    salt = rng.randbytes(16)
    small = await _in_random_chunks(repo, trees, snapshot, max(file_budget, SMALL_FILES), salt)
    plan.small.sample, plan.one = Selection(dict(small)), Selection(dict(small[:1]))
    return plan


async def _in_random_chunks(repo: Repository, trees: TreeCache, snapshot: Snapshot, count: int,
                            salt: bytes) -> list[tuple[bytes, int]]:
    """`count` small files, taken whole chunks at a time, the chunks in a random
    order (a keyed hash of their names), and in a chunk by where their first block
    lies: the files a full restore reads with the same few requests, in that order
    (a second walk, untimed; it keeps `count` files at most)."""
    kept: list[tuple[bytes, int, bytes, int]] = []      # a max-heap by (chunk key, offset), negated
    async for items in walk(trees, snapshot, Item(b"", None, b""), _unreadable):
        small = [item for item in items if item.has_data and 0 < item.entry.size < LARGE_FILE
                 and item.entry.nlink < 2]
        firsts = [(item, (await trees.block_ids(item.entry, 0, 1) or [None])[0]) for item in small]
        found = repo.index.get_many(block for _, block in firsts if block is not None)
        for item, block in firsts:
            location = found.get(block)
            if location is None:
                continue
            key = hashlib.blake2b(location.chunk_id, key=salt, digest_size=8).digest()
            heapq.heappush(kept, (_negated(key), -location.offset, item.path, item.entry.size))
            if len(kept) > count:
                heapq.heappop(kept)
    return [(path, size) for _, _, path, size in sorted(kept, reverse=True)]


def _negated(key: bytes) -> bytes:
    return bytes(255 - byte for byte in key)


def _unreadable(item: Item, error: Exception) -> None:
    raise IntegrityError(f"directory {item.shown}", f"cannot be read: {error}")


class _Stretches:
    """Picks stretches of large files from a stream of them: each file wins an
    exponential race weighted by its size (a weighted sample without replacement,
    Efraimidis and Spirakis), and of each winner a contiguous run of blocks at a
    random place is taken: `share` of the file, at least STRETCH_BYTES (or all of
    it); winners are taken until the stretches make `share` of all large bytes,
    at least STRETCH_BYTES."""

    def __init__(self, share: float, total: int, block_size: int, rng: random.Random):
        self.share = share
        self.block_size = block_size
        self.rng = rng
        self._most = self._budget(total)                     # large bytes are at most all bytes
        self._kept: list[tuple[float, bytes, int]] = []     # a max-heap by key: (-key, path, size)
        self._kept_bytes = 0

    def _stretch(self, size: int) -> int:
        return min(size, max(STRETCH_BYTES, int(self.share * size)))

    def offer(self, path: bytes, size: int) -> None:
        key = -math.log(1.0 - self.rng.random()) / size
        heapq.heappush(self._kept, (-key, path, size))
        self._kept_bytes += self._stretch(size)
        while self._kept_bytes - self._stretch(self._kept[0][2]) >= self._most:
            self._kept_bytes -= self._stretch(heapq.heappop(self._kept)[2])

    def _budget(self, large_bytes: int) -> int:
        return min(large_bytes, max(STRETCH_BYTES, int(self.share * large_bytes)))

    def pick(self, large_bytes: int) -> Selection:
        paths, blocks, taken = {}, {}, 0
        for _, path, size in sorted(self._kept, reverse=True):
            if taken >= self._budget(large_bytes):
                break
            count = -(-size // self.block_size)
            length = -(-self._stretch(size) // self.block_size)
            first = self.rng.randrange(count - length + 1)
            blocks[path] = (first, first + length)
            paths[path] = min(size, (first + length) * self.block_size) - first * self.block_size
            taken += paths[path]
        return Selection(paths, blocks)


async def _restore_into(repo: Repository, snapshot: Snapshot, only: Selection | None, scratch: str,
                        part: str, size: int, result: TargetDrill, count: bool = True) -> RestoreReport:
    """Restore (a part of) the sample into scratch/part, count it (unless it is
    restored again in another part or round), and remove it."""
    destination = os.path.join(scratch, part)
    _check_space(scratch, size)
    try:
        report = await restore(repo, snapshot, b"", destination, RestoreOptions(only=only))
    finally:
        remove_tree(destination)
    result.damaged += report.damaged
    if count:
        result.restore_seconds += report.seconds
        result.files += report.files
        result.bytes += report.bytes_written
    return report


def _check_space(scratch: str, size: int) -> None:
    try:
        fs = os.statvfs(scratch)
    except OSError as error:
        raise RestoreError(f"cannot use the scratch directory {scratch}: {error.strerror}") from None
    free = fs.f_bavail * fs.f_frsize
    if size * SPACE_MARGIN > free:
        raise RestoreError(f"not enough space in the scratch directory {scratch}: the sample needs "
                           f"{size / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free "
                           "(use --scratch elsewhere or a smaller --sample)")


def _entries(report: RestoreReport) -> int:
    return report.files + report.directories + report.symlinks + report.hard_links + report.other


def remove_tree(path: str) -> None:
    """Remove a restored tree, also where the snapshot made a directory read-only."""

    def writable_again(function, failed, info) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        function(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=writable_again)
