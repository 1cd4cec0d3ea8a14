"""Phase one of prune: the chunks no snapshot needs, and the sparse ones to repack.

`plan_mark` is pure: given each stored chunk's size, store time and live bytes
(the first copies of blobs the snapshots need), it dooms

- every chunk older than the grace period with no live blob (including chunks
  no index names, left by uploads that died: the walk proved no snapshot
  needs a blob the index does not know);
- among the older chunks with some live blobs, the sparsest first, until
  the unused bytes left in the others are at most `max_unused` of the live
  bytes (restic's `--max-unused`): those are repacked, then doomed.

Chunks younger than the grace period are never doomed: they may belong to an
upload whose snapshot or index object is not written yet (R2, R3).
`mark` carries the plan out: repack, then the doom list, written last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cloudfs.repo import Repository
from cloudfs.repo.blobset import BlobSet
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_id_from_name
from cloudfs.repo.doomlist import DoomList
from cloudfs.snapshot.prune.repack import Repacked, repack


@dataclass(frozen=True)
class StoredChunk:
    chunk_id: bytes
    size: int
    modified: datetime
    live_bytes: int | None        # None: no index names the chunk

    @property
    def unused_bytes(self) -> int:
        return self.size - (self.live_bytes or 0)


@dataclass
class MarkPlan:
    snapshots: list[str]
    delete: list[StoredChunk] = field(default_factory=list)    # nothing live in them
    repack: list[StoredChunk] = field(default_factory=list)    # live blobs copied first
    young: list[StoredChunk] = field(default_factory=list)     # within the grace period: not judged
    kept: list[StoredChunk] = field(default_factory=list)

    @property
    def doomed(self) -> list[StoredChunk]:
        return self.delete + self.repack

    @property
    def unused_left(self) -> int:
        """Unused bytes in the old chunks that stay."""
        return sum(chunk.unused_bytes for chunk in self.kept)


async def stored_chunks(repo: Repository, live: BlobSet, excluded: set[bytes] = frozenset()) -> list[StoredChunk]:
    """Every chunk in the store (but `excluded`) with its live bytes."""
    usage = {row.chunk_id: row.bytes for row in live.usage()}
    chunks = []
    for info in await repo.store.list(CHUNKS_PREFIX):
        chunk_id = chunk_id_from_name(info.name)
        if chunk_id in excluded:
            continue
        indexed = repo.index.chunk(chunk_id) is not None
        chunks.append(StoredChunk(chunk_id, info.size, info.modified, usage.get(chunk_id, 0) if indexed else None))
    return chunks


def plan_mark(snapshots: list[str], chunks: list[StoredChunk], now: datetime, grace: timedelta,
              max_unused: float | None) -> MarkPlan:
    plan = MarkPlan(snapshots)
    partial = []
    for chunk in chunks:
        if chunk.modified > now - grace:
            plan.young.append(chunk)
        elif not chunk.live_bytes:
            plan.delete.append(chunk)
        elif chunk.live_bytes < chunk.size:
            partial.append(chunk)
        else:
            plan.kept.append(chunk)
    live = sum(chunk.live_bytes or 0 for chunk in chunks)
    unused = sum(chunk.unused_bytes for chunk in partial)
    allowed = None if max_unused is None else max_unused * live
    for chunk in sorted(partial, key=lambda c: c.unused_bytes / c.size, reverse=True):
        if allowed is not None and unused > allowed:
            plan.repack.append(chunk)
            unused -= chunk.unused_bytes
        else:
            plan.kept.append(chunk)
    return plan


async def mark(repo: Repository, plan: MarkPlan, live: BlobSet, grace: timedelta,
               advance: Callable[[int], None] = lambda n: None) -> tuple[DoomList | None, Repacked]:
    """Repack, then write the doom list (none if nothing is doomed)."""
    moved = await repack(repo, [chunk.chunk_id for chunk in plan.repack], live, advance)
    if not plan.doomed:
        return None, moved
    doom = DoomList(chunks=[chunk.chunk_id for chunk in plan.doomed], snapshots=plan.snapshots,
                    grace_ns=int(grace.total_seconds() * 1e9), repacked=len(plan.repack),
                    chunk_bytes=sum(chunk.size for chunk in plan.doomed))
    return await repo.save_doom_list(doom), moved
