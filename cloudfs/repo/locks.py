"""Keeping objects locked: extending the S3 Object Lock retention of named objects.

Which objects must stay locked is decided above (cloudfs/snapshot/locks.py
walks the kept snapshots); this module only extends. Objects are write-once,
so the version to keep is each name's first one: a later version of the same
name was written by someone else (an attacker overwriting it), and locking
that one instead would let the genuine version's lock run out. Names with
more than one version are reported, as a sign of tampering.

Each object costs a HEAD (its retention) and, when its lock would run out
before `now + margin`, a PutObjectRetention to `now + days`. Retention is
only ever lengthened, and a compliance-mode object stays in compliance mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import trio

from cloudfs.repo.config import ObjectLock
from cloudfs.store.base import ObjectVersion, Retention, Store
from cloudfs.store.versions import first_version, versions_by_name

JOBS = 16     # objects checked at once (the store bounds its own connections too)


@dataclass
class LockReport:
    checked: int = 0                 # objects whose retention was looked at
    extended: int = 0                # ... and lengthened
    earliest: datetime | None = None     # the earliest retain-until date among them afterwards
    missing: list[str] = field(default_factory=list)       # needed, but no version holds data
    overwritten: list[str] = field(default_factory=list)   # more than one version holds data

    def saw(self, until: datetime) -> None:
        self.checked += 1
        self.earliest = until if self.earliest is None else min(self.earliest, until)


async def extend_retention(store: Store, lock: ObjectLock, needed: set[str], prefixes: Iterable[str], *,
                           now: datetime, margin: timedelta) -> LockReport:
    """Make the first version of every name in `needed` (all found below `prefixes`)
    locked until at least `now + margin`, extending it to `now + lock.days` when not."""
    report = LockReport()
    target = Retention(lock.mode, now + timedelta(days=lock.days))
    seen: set[str] = set()
    slots = trio.Semaphore(JOBS)

    async def keep(name: str, version: ObjectVersion) -> None:
        try:
            report.saw(await _keep_locked(store, name, version.version_id, target, now + margin, report))
        finally:
            slots.release()

    async with trio.open_nursery() as nursery:
        for prefix in prefixes:
            async for name, versions in versions_by_name(store, prefix):
                version = first_version(versions)
                if name not in needed or version is None:
                    continue
                seen.add(name)
                if sum(not v.deleted for v in versions) > 1:
                    report.overwritten.append(name)
                await slots.acquire()
                nursery.start_soon(keep, name, version)
    report.missing = sorted(needed - seen)
    return report


async def _keep_locked(store: Store, name: str, version_id: str, target: Retention,
                       deadline: datetime, report: LockReport) -> datetime:
    """Extend one object version's lock if it runs out before `deadline`; its retain-until date."""
    current = await store.retention(name, version_id)
    if current is not None and current.until >= deadline:
        return current.until
    mode = "compliance" if current is not None and current.mode == "compliance" else target.mode
    await store.extend_retention(name, Retention(mode, target.until), version_id)
    report.extended += 1
    return target.until


async def relock(store: Store, lock: ObjectLock, names: Iterable[str], *, now: datetime) -> int:
    """Lock the current version of each named object until `now + lock.days`, unless
    it is locked that long already (prune's rescued chunks: needed again, I10).
    Returns how many locks were extended."""
    until = now + timedelta(days=lock.days)
    extended = 0
    for name in names:
        current = await store.retention(name)
        if current is None or current.until < until:
            mode = "compliance" if current is not None and current.mode == "compliance" else lock.mode
            await store.extend_retention(name, Retention(mode, until))
            extended += 1
    return extended
