"""The writer's side of prune: a snapshot never counts on a chunk prune deletes.

A writer refers to blobs it did not store: those it found in its index (dedup
hits) and whole subtrees of its parent snapshot. Prune marks chunks in a doom
list and deletes them a grace period later, less those that snapshots listed
by then need (docs/prune.md). A snapshot committed after that last listing
is this module's to protect, right before its object is put:

1. List `doomed/`; read the doom lists not seen before; if the set changed,
   read the index again (a repack's new copies, a sweep's removals).
2. Every blob the snapshot counts on must have a copy outside the doomed
   chunks, in a chunk that is still stored (a HEAD per chunk): a blob whose
   every copy is doomed is stored again (read from its doomed chunk, which
   still exists during the grace period), so the snapshot no longer needs
   the doomed chunk; a blob no longer stored anywhere fails the attempt
   (`PrunedMeanwhile`), and the retry reads it from the source again.
3. "Counts on" is the chunks this attempt stored (doomed, or gone, they fail
   it), and the dedup hits of this attempt, when the parent is safe:
   it is still listed and was either walked by each doom list's mark or
   committed by this guard after checking that doom list. Otherwise (or too
   many hits to remember) the whole new tree is walked.
4. The check counts for VALIDITY seconds of a clock that runs during suspend
   (CLOCK_BOOTTIME): if more passed before the put (the machine slept, the
   store hung), everything is checked again. Prune's grace period must be
   much longer than VALIDITY.

Only listings, gets and puts: the writer still never deletes (I9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import trio

from cloudfs.errors import CloudfsError, IntegrityError
from cloudfs.repo import Repository, Snapshot
from cloudfs.repo.blobset import BlobSet
from cloudfs.repo.chunk import BlobLocation, chunk_name
from cloudfs.repo.doomlist import DOOMED_PREFIX, DoomList
from cloudfs.snapshot.reachable import walk_blobs

log = logging.getLogger(__name__)

VALIDITY = 3600.0        # seconds a check stays good before the put
BATCH = 2000             # blob ids looked up at once while walking
HEADS = 8                # chunk existence checks at once


def boot_clock() -> float:
    """Seconds, counting time the machine spent suspended."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class PrunedMeanwhile(CloudfsError):
    """Blobs the snapshot counted on were deleted by a prune while it was built:
    the attempt is repeated, reading them from the source."""


class ParentPruned(CloudfsError):
    """The parent snapshot was forgotten and its data pruned: the snapshot must be
    built without reusing it."""


class DoomGuard:
    """One per writer of a protected directory (it remembers what its last
    committed snapshot is safe from)."""

    def __init__(self, repo: Repository, *, clock: Callable[[], float] = boot_clock,
                 validity: float = VALIDITY):
        self.repo = repo
        self.clock = clock
        self.validity = validity
        self._seen: dict[str, DoomList] = {}
        self._safe_snapshot: str | None = None    # the last snapshot committed here ...
        self._safe_from: set[str] = set()         # ... and the doom lists it was checked against
        self._checked: set[str] = set()
        self.restored = 0                         # blobs stored again, this process

    def start_attempt(self) -> None:
        """A new attempt at building a snapshot: forget the hits of the last one."""
        self.repo.packer.relied_on.clear()

    async def before_put(self, root: bytes, parent: Snapshot | None) -> None:
        """Make the snapshot of `root` independent of every doomed chunk (see above)."""
        while True:
            checked_at = self.clock()
            dooms = await self._doom_lists()
            await self._protect(root, parent, dooms)
            self._checked = {doom.name for doom in dooms}
            if self.clock() - checked_at <= self.validity:
                return
            log.warning("%.0f s passed since the check against prune's doom lists; checking again",
                        self.clock() - checked_at)

    def committed(self, snapshot: Snapshot) -> None:
        """The snapshot checked by the last `before_put` was put."""
        self._safe_snapshot, self._safe_from = snapshot.name, set(self._checked)

    async def _doom_lists(self) -> list[DoomList]:
        listed = {info.name for info in await self.repo.store.list(DOOMED_PREFIX)}
        if listed == set(self._seen):
            return [self._seen[name] for name in sorted(listed)]
        for name in listed - set(self._seen):
            self._seen[name] = await self.repo.doom_list(name)
        for name in set(self._seen) - listed:
            del self._seen[name]
        await self.repo.load_index()
        return [self._seen[name] for name in sorted(listed)]

    async def _protect(self, root: bytes, parent: Snapshot | None, dooms: list[DoomList]) -> None:
        doomed = {chunk for doom in dooms for chunk in doom.chunks}
        check = _Check(self.repo, doomed)
        relied_on = self.repo.packer.relied_on
        check.own_chunks(relied_on.chunks)
        parent_safe = parent is None or await self._parent_safe(parent, dooms)
        if parent_safe and not relied_on.overflowed:
            await check.blobs(relied_on.hits)
        else:
            log.info("checking every blob of the new snapshot against prune's doom lists")
            await self._walk(root, check, parent_listed=parent_safe or await self._listed(parent))
        await check.finish()
        self.restored += check.restored

    async def _parent_safe(self, parent: Snapshot, dooms: list[DoomList]) -> bool:
        checked = self._safe_from if parent.name == self._safe_snapshot else set()
        if any(doom.name not in checked and parent.name not in doom.snapshots for doom in dooms):
            return False
        return await self._listed(parent)

    async def _listed(self, snapshot: Snapshot | None) -> bool:
        return snapshot is None or await self.repo.store.exists(snapshot.name)

    async def _walk(self, root: bytes, check: "_Check", parent_listed: bool) -> None:
        with BlobSet(self.repo.index) as reached:
            collect = reached.collector()
            walked = await walk_blobs(self.repo, [root], collect)
            collect.flush()
            for page in reached.pages(BATCH):
                await check.blobs(page)
        if walked.unreadable or (check.missing and not parent_listed):
            raise ParentPruned(f"the snapshot this one is built on was forgotten and {check.missing} "
                               "of its blobs pruned; building it again without reusing it")


class _Check:
    """Blob ids in, checked against the doomed chunks; endangered ones stored again."""

    def __init__(self, repo: Repository, doomed: set[bytes]):
        self.repo = repo
        self.doomed = doomed
        self.missing = 0
        self.missing_own = False
        self.restored = 0
        self._chunks: set[bytes] = set()          # copies outside `doomed` counted on: still stored?
        self._endangered: list[BlobLocation] = []

    def own_chunks(self, chunk_ids: list[bytes]) -> None:
        """The chunks this attempt stored: doomed already (a grace period shorter than
        the upload), or deleted since, they fail the attempt."""
        if any(chunk_id in self.doomed for chunk_id in chunk_ids):
            self.missing_own = True
        self._chunks.update(chunk_ids)

    async def blobs(self, blob_ids: Iterable[bytes]) -> None:
        ids = list(blob_ids)
        if not ids:
            return
        found = await trio.to_thread.run_sync(self.repo.index.locations_many, ids)
        self.missing += len(set(ids) - set(found))
        for copies in found.values():
            outside = [copy for copy in copies if copy.chunk_id not in self.doomed]
            if not outside:
                self._endangered.append(copies[0])
            else:
                self._chunks.add(outside[0].chunk_id)

    async def finish(self) -> None:
        if self.missing:
            await self._gone(f"{self.missing} blobs it found in the index are no longer there")
        if self.missing_own:
            await self._gone("chunks it stored were marked for deletion (the grace period is shorter "
                             "than this upload)")
        await self._still_stored()
        for location in self._endangered:
            await self._store_again(location)
        if self.restored:
            log.info("stored %d blobs again whose only copies a prune doomed", self.restored)
            await self.repo.flush()

    async def _still_stored(self) -> None:
        gone: list[bytes] = []
        limit = trio.Semaphore(HEADS)

        async def head(chunk_id: bytes) -> None:
            async with limit:
                if not await self.repo.store.exists(chunk_name(chunk_id)):
                    gone.append(chunk_id)

        async with trio.open_nursery() as nursery:
            for chunk_id in self._chunks:
                nursery.start_soon(head, chunk_id)
        if gone:
            await self._gone(f"{len(gone)} chunks it counted on were deleted")

    async def _store_again(self, location: BlobLocation) -> None:
        try:
            plaintext = await self.repo.read_blob(location)
        except IntegrityError as error:
            if not await self.repo.store.exists(chunk_name(location.chunk_id)):
                await self._gone("a doomed chunk it counted on was deleted")
            raise error
        await trio.to_thread.run_sync(
            lambda: self.repo.packer.store_sync(location.kind, plaintext, blob_id=location.blob_id,
                                                force=True))
        self.restored += 1

    async def _gone(self, what: str) -> None:
        await self.repo.load_index()
        raise PrunedMeanwhile(f"a prune ran while this snapshot was built: {what}; building it again")

