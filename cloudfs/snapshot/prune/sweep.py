"""Phase two of prune: delete what a doom list marked, less what is needed since.

Run at least the grace period after the doom list was stored (by the store's
clock). In order, so that a run killed anywhere leaves a repository `check`
finds clean and the next run finishes the job (R7):

1. List the snapshots, then read the index (so the blobs of every snapshot
   listed are in it). Walk the snapshots the mark did not see: a doomed
   chunk that holds the only copies of a blob one of them needs is
   **rescued** (R1, R2, R5: a writer committed a snapshot counting on it).
2. With Object Lock, a chunk or index object still locked is **skipped** and
   said so (its lock is not extended: nothing needs it, so it runs out, and
   a later prune takes it); rescued chunks get their locks extended (I10).
3. Every index object listing a chunk that goes is deleted; one that also
   lists chunks that stay, and is the only one listing some of them, is
   first **replaced** by an index object listing those.
4. Index objects go first, then the chunks, then the doom list: a crash in
   between leaves chunks no index names (`check` warns, harmless), never an
   index naming a missing chunk; the doom list, still there, makes the next
   run finish. Writers see the doom list until the very end (guard.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import trio

from cloudfs.repo import Repository
from cloudfs.repo.chunk import CHUNKS_PREFIX, chunk_id_from_name, chunk_name
from cloudfs.repo.doomlist import DoomList
from cloudfs.repo.index import ChunkInfo, new_index_name, seal_index
from cloudfs.repo.locks import relock
from cloudfs.snapshot.prune.reach import needed_blobs, refuse_damaged_objects

DELETES = 8        # deletions at once


@dataclass
class SweepPlan:
    doom: DoomList
    rescued: list[bytes] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)       # objects a lock keeps
    chunks: dict[bytes, int] = field(default_factory=dict)  # chunk id -> size: to delete
    index_deleted: list[str] = field(default_factory=list)
    replacements: list[list[ChunkInfo]] = field(default_factory=list)   # index objects to write first

    @property
    def chunk_bytes(self) -> int:
        return sum(self.chunks.values())


async def plan_sweep(repo: Repository, doom: DoomList, now: datetime) -> SweepPlan:
    plan = SweepPlan(doom)
    snapshots = await repo.snapshots()
    await repo.load_index()
    refuse_damaged_objects(repo)
    seen = set(doom.snapshots)
    with await needed_blobs(repo, [s for s in snapshots if s.name not in seen]) as needed:
        plan.rescued = sorted(needed.only_in(doom.chunks))
    stored = {chunk_id_from_name(info.name): info.size for info in await repo.store.list(CHUNKS_PREFIX)}
    rescued = set(plan.rescued)
    plan.chunks = {chunk: stored[chunk] for chunk in doom.chunks if chunk not in rescued and chunk in stored}
    if repo.config.object_lock is not None:
        await _skip_locked_chunks(repo, plan, now)
    listing = await _index_objects(repo, plan, now)
    plan.index_deleted = sorted(listing)
    plan.replacements = _replacements(repo, plan, listing)
    return plan


async def _skip_locked_chunks(repo: Repository, plan: SweepPlan, now: datetime) -> None:
    for chunk in list(plan.chunks):
        if await _locked(repo, chunk_name(chunk), now):
            plan.locked.append(chunk_name(chunk))
            del plan.chunks[chunk]


async def _index_objects(repo: Repository, plan: SweepPlan, now: datetime) -> dict[str, list[ChunkInfo]]:
    """The index objects to delete (each with its chunks); a locked one stays, and
    so do the chunks it lists."""
    listing: dict[str, list[ChunkInfo]] = {}
    while True:
        names = {name for chunk in plan.chunks for name in repo.index.objects_listing(chunk)} - set(plan.locked)
        for name in names - set(listing):
            if repo.config.object_lock is not None and await _locked(repo, name, now):
                plan.locked.append(name)
                for chunk in await repo.index_object(name):
                    plan.chunks.pop(chunk.chunk_id, None)
                break
            listing[name] = await repo.index_object(name)
        else:
            return {name: chunks for name, chunks in listing.items() if name in names}


def _replacements(repo: Repository, plan: SweepPlan, listing: dict[str, list[ChunkInfo]]) -> list[list[ChunkInfo]]:
    """For each index object that goes and alone lists some chunk that stays: those chunks."""
    going = set(listing)
    replacements = []
    for chunks in listing.values():
        staying = [chunk for chunk in chunks if chunk.chunk_id not in plan.chunks]
        if any(set(repo.index.objects_listing(chunk.chunk_id)) <= going for chunk in staying):
            replacements.append(staying)
    return replacements


async def _locked(repo: Repository, name: str, now: datetime) -> bool:
    retention = await repo.store.retention(name)
    return retention is not None and retention.until > now


async def carry_out(repo: Repository, plan: SweepPlan, still_held: Callable[[], None],
                    advance: Callable[[int], None] = lambda n: None) -> None:
    """Delete what `plan` says, in the order above; `still_held()` raises if this
    prune's lease may have run out (checked before each deletion)."""
    await _keep_rescued_locked(repo, plan)
    for chunks in plan.replacements:
        await _write_index(repo, chunks)
    for name in plan.index_deleted:
        still_held()
        await repo.store.delete(name)
    await trio.to_thread.run_sync(repo.index.forget_objects, plan.index_deleted)
    await _delete_chunks(repo, plan, still_held, advance)
    still_held()
    await repo.store.delete(plan.doom.name)


async def _write_index(repo: Repository, chunks: list[ChunkInfo]) -> None:
    name = new_index_name()
    data = seal_index(repo.master, name, chunks)
    await repo.store.put(name, data)
    repo.cache.put(name, data)
    await trio.to_thread.run_sync(repo.index.add_object, name, chunks)


async def _delete_chunks(repo: Repository, plan: SweepPlan, still_held: Callable[[], None],
                         advance: Callable[[int], None]) -> None:
    limit = trio.Semaphore(DELETES)

    async def delete(chunk: bytes, size: int) -> None:
        async with limit:
            still_held()
            await repo.store.delete(chunk_name(chunk))
            advance(size)

    async with trio.open_nursery() as nursery:
        for chunk, size in plan.chunks.items():
            nursery.start_soon(delete, chunk, size)


async def _keep_rescued_locked(repo: Repository, plan: SweepPlan) -> None:
    """Rescued chunks are needed again: lock them for the repository's period (I10)."""
    if repo.config.object_lock is not None and plan.rescued:
        await relock(repo.store, repo.config.object_lock, [chunk_name(chunk) for chunk in plan.rescued],
                     now=datetime.now(timezone.utc))
