"""`cloudfs prune`: sweep what is ripe, then mark anew; one prune at a time.

One run, under a lease (lease.py):

1. Each doom list whose grace period is over (by the store's clock) is swept
   (sweep.py); one still within it is reported as waiting, and then nothing
   new is marked: at most one doom list is pending at any time, so two
   marks never judge each other's chunks.
2. Otherwise the snapshots are walked, and a new doom list is written
   (mark.py), with sparse chunks repacked first.
3. With a grace period of zero (no writer may run: tests, a repository only
   this machine uses), the new doom list is swept at once.

A dry run takes no lease and writes nothing: it plans both phases, judging
ages by this machine's clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cloudfs.errors import IntegrityError
from cloudfs.repo import Repository
from cloudfs.repo.doomlist import DOOMED_PREFIX, DoomList
from cloudfs.snapshot.prune.lease import DURATION, holding_lease
from cloudfs.snapshot.prune.mark import MarkPlan, mark, plan_mark, stored_chunks
from cloudfs.snapshot.prune.reach import needed_blobs, refuse_damaged_objects
from cloudfs.snapshot.prune.repack import Repacked
from cloudfs.snapshot.prune.sweep import SweepPlan, carry_out, plan_sweep

log = logging.getLogger(__name__)

GRACE = timedelta(days=7)
MAX_UNUSED = 0.10


class Progress:
    """What a prune tells its caller as it goes (a terminal's bars); by default nothing."""

    def stage(self, description: str, total: int, unit: str) -> Callable[[int], None]:
        return lambda n: None


@dataclass
class PruneOptions:
    grace: timedelta = GRACE
    max_unused: float | None = MAX_UNUSED     # None: never repack
    dry_run: bool = False
    lease: timedelta = DURATION


@dataclass
class Waiting:
    doom: DoomList
    ripe_at: datetime


@dataclass
class PruneReport:
    dry_run: bool
    swept: list[SweepPlan] = field(default_factory=list)
    waiting: list[Waiting] = field(default_factory=list)
    marked: MarkPlan | None = None
    doom: DoomList | None = None               # the doom list written (None: dry run, or nothing to doom)
    repacked: Repacked | None = None


async def prune(repo: Repository, options: PruneOptions, progress: Progress = Progress()) -> PruneReport:
    if options.dry_run:
        return await _plan_only(repo, options)
    report = PruneReport(dry_run=False)
    async with holding_lease(repo, options.lease) as lease:
        now = lease.store_now
        for doom, stored_at in await _doom_lists(repo):
            ripe_at = stored_at + timedelta(microseconds=doom.grace_ns / 1000)
            if ripe_at > now:
                report.waiting.append(Waiting(doom, ripe_at))
                continue
            report.swept.append(await _sweep(repo, doom, now, lease.check_held, progress))
        if report.waiting:
            return report
        report.marked, report.doom, report.repacked = await _mark(repo, now, options, progress)
        if report.doom is not None and options.grace <= timedelta(0):
            report.swept.append(await _sweep(repo, report.doom, now, lease.check_held, progress))
    return report


async def _doom_lists(repo: Repository, *, void_unreadable: bool = True) -> list[tuple[DoomList, datetime]]:
    """The doom lists with their store times. One that cannot be read is removed
    (`void_unreadable`): that cancels its mark, deleting nothing it named, and
    writers, which refuse to commit beside a doom list they cannot read, go on."""
    found = []
    for info in await repo.store.list(DOOMED_PREFIX):
        try:
            found.append((await repo.doom_list(info.name), info.modified))
        except IntegrityError as error:
            log.warning("%s; removing it: its mark is void and nothing it named is deleted", error)
            if void_unreadable:
                await repo.store.delete(info.name)
    return found


async def _sweep(repo: Repository, doom: DoomList, now: datetime, still_held, progress: Progress) -> SweepPlan:
    plan = await plan_sweep(repo, doom, now)
    advance = progress.stage("deleting chunks", plan.chunk_bytes, "B")
    await carry_out(repo, plan, still_held, advance)
    return plan


async def _mark(repo: Repository, now: datetime, options: PruneOptions, progress: Progress):
    snapshots = await repo.snapshots()
    await repo.load_index()
    refuse_damaged_objects(repo)
    with await needed_blobs(repo, snapshots) as live:
        chunks = await stored_chunks(repo, live)
        plan = plan_mark([s.name for s in snapshots], chunks, now, options.grace, options.max_unused)
        advance = progress.stage("repacking chunks", len(plan.repack), "chunk")
        doom, repacked = await mark(repo, plan, live, options.grace, advance)
    return plan, doom, repacked


async def _plan_only(repo: Repository, options: PruneOptions) -> PruneReport:
    report = PruneReport(dry_run=True)
    now = datetime.now(timezone.utc)
    pending = await _doom_lists(repo, void_unreadable=False)
    for doom, stored_at in pending:
        ripe_at = stored_at + timedelta(microseconds=doom.grace_ns / 1000)
        if ripe_at > now:
            report.waiting.append(Waiting(doom, ripe_at))
        else:
            report.swept.append(await plan_sweep(repo, doom, now))
    if report.waiting:
        return report
    snapshots = await repo.snapshots()
    await repo.load_index()
    refuse_damaged_objects(repo)
    doomed = {chunk for doom, _ in pending for chunk in doom.chunks}
    with await needed_blobs(repo, snapshots) as live:
        chunks = await stored_chunks(repo, live, excluded=doomed)
    report.marked = plan_mark([s.name for s in snapshots], chunks, now, options.grace, options.max_unused)
    return report
