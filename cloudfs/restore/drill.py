"""Recovery drills: restore a random sample of a snapshot, time it, and project
how long restoring all of it would take (the RTO).

The sample is restored by the restorer itself (`RestoreOptions.only`), so
every record is verified as in any restore (I5), and it is timed in parts:

- the fixed part, measured whole: the command's start-up (given), loading the
  target's index, walking every directory node of the snapshot (`plan`, which
  also counts what a full restore creates and picks the sample) and a restore
  that selects nothing;
- `few`: files smaller than the mean, as many as the file budget, that lie
  side by side in one chunk around a randomly picked one (found through the
  index in a second, untimed walk): the files a full restore reads with one
  request, so that the sample has its locality; and `one`, that picked file
  alone;
- `heavy`: files of at least the mean size, each byte equally likely, until
  they make the byte budget.

Each restore's time is modelled as per_place · places + per_entry · entries +
per_byte · bytes, where a place is a restore's reach into the tree: the
directories on its way, fetched level by level (all of a level together, so a
restore reaches its files' directories in one sweep), and the first requests
for its data; `one`, `few` and `heavy` are one place each. A full restore
reaches the whole tree in one sweep too, already timed in the fixed part, so
the three costs are solved from the three restores and the projection is the
fixed part plus one place, plus per entry and per byte times the snapshot's
entries and bytes.
A sample that covers the whole snapshot is simply restored whole, and its
time is the RTO.
"""

from __future__ import annotations

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
class Plan:
    """The snapshot's totals as a restore counts them, and the sample picked."""

    snapshot: Snapshot
    entries: int = 0
    files: int = 0
    bytes: int = 0
    few: Selection | None = None        # None: restore the whole snapshot
    one: Selection | None = None
    heavy: Selection | None = None
    seconds: float = 0.0                # walking every directory node


@dataclass
class Model:
    """Seconds to restore: fixed + per_entry · entries + per_byte · bytes (the
    fixed part includes the one place a full restore reaches)."""

    fixed: float
    per_entry: float
    per_byte: float
    per_place: float = 0.0

    def project(self, entries: int, size: int) -> float:
        return self.fixed + self.per_entry * entries + self.per_byte * size


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
            "model": None if model is None else {"fixed_seconds": round(model.fixed, 4),
                                                 "per_place_seconds": model.per_place,
                                                 "per_entry_seconds": model.per_entry,
                                                 "per_byte_seconds": model.per_byte},
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
    plan = await plan_sample(repo, snapshots[-1], size, rng)
    fixed = startup + time.monotonic() - started
    result.snapshot = plan.snapshot.name.removeprefix("snapshots/")
    result.snapshot_entries, result.snapshot_files, result.snapshot_bytes = plan.entries, plan.files, plan.bytes
    if plan.few is None:
        report = await _restore_into(repo, plan.snapshot, None, scratch, "all", plan.bytes, result)
        result.whole = True
        result.snapshot_entries, result.snapshot_files = _entries(report), report.files
        result.rto_seconds = fixed + report.seconds
        return
    empty = await _restore_into(repo, plan.snapshot, Selection({}), scratch, "none", 0, result)
    one = await _restore_into(repo, plan.snapshot, plan.one, scratch, "one", plan.one.bytes, result, count=False)
    few = await _restore_into(repo, plan.snapshot, plan.few, scratch, "few", plan.few.bytes, result)
    heavy = await _restore_into(repo, plan.snapshot, plan.heavy, scratch, "heavy", plan.heavy.bytes, result)
    result.model = fit(fixed + empty.seconds, empty.seconds,
                       [(min(1, one.files), one), (min(1, few.files), few), (min(1, heavy.files), heavy)])
    result.rto_seconds = result.model.project(plan.entries, plan.bytes)


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
        return plan
    large = total / max(1, files)
    sampler = _Sampler(byte_budget, large, rng)
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
                sampler.offer(item.path, item.entry.size)
    plan.seconds = time.monotonic() - started
    plan.heavy = Selection(sampler.heavy())
    anchor = sampler.anchor
    plan.one = Selection({} if anchor is None else {anchor[0]: anchor[1]})
    plan.few = Selection(await _chunk_neighbours(repo, trees, snapshot, anchor, file_budget, large))
    return plan


async def _chunk_neighbours(repo: Repository, trees: TreeCache, snapshot: Snapshot,
                            anchor: tuple[bytes, int] | None, count: int, large: float) -> dict[bytes, int]:
    """Up to `count` files smaller than `large` whose first block lies in the same
    chunk as the anchor's, the nearest to it: the files a full restore reads with one
    request (a second walk, untimed; it keeps `count` files at most)."""
    if anchor is None:
        return {}
    first = await trees.block_ids((await trees.lookup(snapshot.tree, anchor[0])), 0, 1)
    where = repo.index.get_many(first).get(first[0]) if first and first[0] else None
    if where is None:
        return {anchor[0]: anchor[1]}
    nearest: list[tuple[int, bytes, int]] = []          # a max-heap by distance: (-distance, path, size)
    async for items in walk(trees, snapshot, Item(b"", None, b""), _unreadable):
        small = [item for item in items if item.has_data and 0 < item.entry.size < large and item.entry.nlink < 2]
        firsts = [(item, (await trees.block_ids(item.entry, 0, 1) or [None])[0]) for item in small]
        found = repo.index.get_many(block for _, block in firsts if block is not None)
        for item, block in firsts:
            location = found.get(block)
            if location is not None and location.chunk_id == where.chunk_id:
                heapq.heappush(nearest, (-abs(location.offset - where.offset), item.path, item.entry.size))
                if len(nearest) > count:
                    heapq.heappop(nearest)
    return {path: size for _, path, size in nearest}


def _unreadable(item: Item, error: Exception) -> None:
    raise IntegrityError(f"directory {item.shown}", f"cannot be read: {error}")


class _Sampler:
    """Picks from a stream of files: `anchor`, one file smaller than the mean
    (`large`), each equally likely (`few` is its neighbours in the chunks);
    `heavy`, of the others, those that win an exponential race weighted by size
    (a weighted sample without replacement, Efraimidis and Spirakis) until they
    make `byte_budget`. A file larger than the budget is never picked, unless
    the others cannot make half of it: then `heavy` takes the smallest such
    file too (a sample of next to no bytes would measure nothing)."""

    def __init__(self, byte_budget: int, large: float, rng: random.Random):
        self.byte_budget = byte_budget
        self.large = large
        self.rng = rng
        self.anchor: tuple[bytes, int] | None = None
        self._small = 0
        self._heavy: list[tuple[float, bytes, int]] = []     # a max-heap by key: (-key, path, size)
        self._heavy_bytes = 0
        self._smallest_too_large: tuple[int, bytes] | None = None

    def offer(self, path: bytes, size: int) -> None:
        if size > self.byte_budget:
            self._smallest_too_large = min(self._smallest_too_large or (size, path), (size, path))
        elif size >= self.large:
            self._weigh(path, size)
        elif size:
            self._small += 1
            if self.rng.random() * self._small < 1:
                self.anchor = (path, size)

    def _weigh(self, path: bytes, size: int) -> None:
        key = -math.log(1.0 - self.rng.random()) / size
        heapq.heappush(self._heavy, (-key, path, size))
        self._heavy_bytes += size
        while self._heavy_bytes - self._heavy[0][2] >= self.byte_budget:
            self._heavy_bytes -= heapq.heappop(self._heavy)[2]

    def heavy(self) -> dict[bytes, int]:
        picked = {path: size for _, path, size in self._heavy}
        if self._heavy_bytes < self.byte_budget / 2 and self._smallest_too_large:
            size, path = self._smallest_too_large
            picked[path] = size
        return picked


async def _restore_into(repo: Repository, snapshot: Snapshot, only: Selection | None, scratch: str,
                        part: str, size: int, result: TargetDrill, count: bool = True) -> RestoreReport:
    """Restore (a part of) the sample into scratch/part, count it (unless it is
    restored again in another part), and remove it."""
    destination = os.path.join(scratch, part)
    _check_space(scratch, size)
    try:
        report = await restore(repo, snapshot, b"", destination, RestoreOptions(only=only))
    finally:
        remove_tree(destination)
    result.restore_seconds += report.seconds
    result.damaged += report.damaged
    if count:
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


def fit(fixed: float, overhead: float, runs: list[tuple[int, RestoreReport]]) -> Model:
    """The costs through the timed restores, each given with its places and less
    `overhead` (what a restore of nothing took): the linear system solved by
    Gauss-Seidel sweeps, each cost kept at or above zero (noise can push one
    below). A cost that no restore measured (no bytes, say) stays zero."""
    rows = [(places, _entries(report), report.bytes_written, max(0.0, report.seconds - overhead))
            for places, report in runs]
    costs = [0.0, 0.0, 0.0]                  # per place, per entry, per byte
    for _ in range(100):
        for unknown, row in enumerate(rows):              # one prices places, few entries, heavy bytes
            weights, spent = row[:3], row[3]
            if weights[unknown]:
                others = sum(w * c for i, (w, c) in enumerate(zip(weights, costs)) if i != unknown)
                costs[unknown] = max(0.0, (spent - others) / weights[unknown])
    per_place, per_entry, per_byte = costs
    return Model(fixed + per_place, per_entry, per_byte, per_place)


def _entries(report: RestoreReport) -> int:
    return report.files + report.directories + report.symlinks + report.hard_links + report.other


def remove_tree(path: str) -> None:
    """Remove a restored tree, also where the snapshot made a directory read-only."""

    def writable_again(function, failed, info) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        function(failed)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=writable_again)
