"""What snapshots need, as a set of blob ids on disk; or a refusal to delete anything.

Prune may delete only what it knows no snapshot needs. If a tree node cannot
be read, what lies below it is unknown; if a needed blob is in no index, the
chunk holding it looks unused; if an index object is damaged, its chunks look
unindexed; if a snapshot object is damaged, what it refers to looks unneeded,
though the object could still be healed (from a replica, or an older version
with `--as-of`). In each case prune stops before deleting anything, with one
line saying what to run first.
"""

from __future__ import annotations

from cloudfs.errors import CloudfsError
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.blobset import BlobSet
from cloudfs.repo.index import INDEX_PREFIX
from cloudfs.repo.snapshots import SNAPSHOTS_PREFIX
from cloudfs.snapshot.reachable import walk_blobs


class PruneRefused(CloudfsError):
    """Prune cannot tell what the snapshots need, so it deletes nothing."""


def refuse_damaged_objects(repo: Repository) -> None:
    """Refuse while an index or snapshot object the repository lists cannot be read."""
    damaged = sorted(name for name in repo.damaged_objects if name.startswith(INDEX_PREFIX))
    if damaged:
        raise PruneRefused(f"prune deletes nothing while index objects are damaged ({damaged[0]}"
                           f"{' and more' if len(damaged) > 1 else ''}): run `cloudfs repair index` first")
    damaged = sorted(name for name in repo.damaged_objects if name.startswith(SNAPSHOTS_PREFIX))
    if damaged:
        raise PruneRefused(f"prune deletes nothing while snapshot objects are damaged ({damaged[0]}"
                           f"{' and more' if len(damaged) > 1 else ''}): heal them from a replica or an "
                           "older version, or drop them with `cloudfs forget --damaged`")


async def needed_blobs(repo: Repository, snapshots: list[Snapshot]) -> BlobSet:
    """Every blob the trees of `snapshots` reach, in a BlobSet the caller drops."""
    needed = BlobSet(repo.index)
    try:
        collect = needed.collector()
        walked = await walk_blobs(repo, [snapshot.tree for snapshot in snapshots], collect)
        collect.flush()
        if walked.unreadable:
            raise PruneRefused(f"prune deletes nothing: {walked.unreadable} tree nodes of the snapshots "
                               f"cannot be read ({walked.problems[0]}); run `cloudfs check`")
        unindexed = needed.unindexed()
        if unindexed:
            raise PruneRefused(f"prune deletes nothing: {unindexed} blobs the snapshots need are in no "
                               "index; run `cloudfs repair index`, then `cloudfs check`")
    except BaseException:
        needed.drop()
        raise
    return needed
