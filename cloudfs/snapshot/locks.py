"""`cloudfs locks extend`: keep every object a kept snapshot needs locked (I10).

A snapshot refers to chunks written long before it (dedup, and whole subtrees
reused from its parent), so the lock each object got when it was written
runs out while snapshots still need it. This walks every snapshot in the
repository (forget has removed the ones not kept) to the set of objects they
need, and extends each one's retention to `now + days` whenever it would run
out within `margin` (a third of the period unless told). Run it more often
than the margin (daily, for a period of weeks), and no object a kept snapshot
needs is ever deletable.

The objects a kept snapshot needs: the chunks holding any blob its trees
reach, the index objects listing those chunks, every snapshot and pin object,
the policy in force, every key slot and the config.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from cloudfs.errors import CloudfsError, UsageError
from cloudfs.repo import Repository
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_name
from cloudfs.repo.config import CONFIG_NAME
from cloudfs.repo.index import INDEX_PREFIX
from cloudfs.repo.keys import KEYS_PREFIX
from cloudfs.repo.locks import LockReport, extend_retention
from cloudfs.repo.pins import PINS_PREFIX
from cloudfs.repo.policy import POLICY_PREFIX
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX
from cloudfs.snapshot.reachable import Reachable, reachable_chunks

#: Where the needed objects are, smallest first.
PREFIXES = (CONFIG_NAME, KEYS_PREFIX, POLICY_PREFIX, SNAPSHOTS_PREFIX, PINS_PREFIX, INDEX_PREFIX, CHUNKS_PREFIX)


@dataclass
class KeptLocked:
    snapshots: int
    reachable: Reachable
    locks: LockReport
    unreadable: list[str]     # objects that could not be read to follow their references


async def extend_locks(repo: Repository, *, now: datetime | None = None,
                       margin: timedelta | None = None) -> KeptLocked:
    lock = repo.config.object_lock
    if lock is None:
        raise UsageError(f"the repository at {repo.store.location} was created without --object-lock: "
                         "it has no locks to extend")
    now = now or datetime.now(timezone.utc)
    margin = timedelta(days=lock.days) / 3 if margin is None else margin
    snapshots = await repo.snapshots()
    reachable = await reachable_chunks(repo, snapshots)
    needed, unreadable = await needed_objects(repo, reachable.chunks)
    report = await extend_retention(repo.store, lock, needed, PREFIXES, now=now, margin=margin)
    damaged = [f"{name}: {why}" for name, why in repo.damaged_objects.items()]
    return KeptLocked(len(snapshots), reachable, report, sorted(set(damaged + unreadable)))


async def needed_objects(repo: Repository, chunks: set[bytes]) -> tuple[set[str], list[str]]:
    """The names of every object the snapshots need, given the chunks they reach;
    and the index objects that could not be read to tell."""
    needed = {CONFIG_NAME, *(chunk_name(chunk_id) for chunk_id in chunks)}
    for prefix in (KEYS_PREFIX, SNAPSHOTS_PREFIX, PINS_PREFIX):
        needed.update(info.name for info in await repo.store.list(prefix))
    policies = [info.name for info in await repo.store.list(POLICY_PREFIX)]
    if policies:
        needed.add(max(policies))    # the one in force
    unreadable = []
    for info in await repo.store.list(INDEX_PREFIX):
        try:
            listed = await repo.index_object(info.name)
        except CloudfsError as error:
            unreadable.append(f"{info.name}: {error}")
            continue
        if any(chunk.chunk_id in chunks for chunk in listed):
            needed.add(info.name)
    return needed, unreadable
