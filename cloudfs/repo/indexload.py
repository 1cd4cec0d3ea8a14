"""Bringing the local index up to date with the index objects: absorb, forget.

A machine that has never seen the repository reads every index object here,
one at a time (never all of them in memory), with a progress bar on a
terminal; later opens read only the objects other sessions wrote since. The
objects' blobs wait in temporary tables and are merged in one transaction at
the end (`BlobIndex.absorbing`), which is what makes a first load of millions
of blobs take a minute rather than an hour.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Collection

import trio

from cloudfs.errors import IntegrityError, ObjectNotFound, RepositoryError
from cloudfs.repo.localindex import BlobIndex

log = logging.getLogger(__name__)

Fetch = Callable[[str], Awaitable[list]]      # name -> the object's chunks as stored (open_index_listing)


async def absorb_objects(index: BlobIndex, names: Collection[str], fetch: Fetch,
                         damaged: dict[str, str]) -> int:
    """Absorb every object of `names` the index lacks, each read with `fetch`; one
    that cannot be read is skipped with a warning and noted in `damaged` (its
    blobs are still in their chunks; `check` reports it, `repair index` replaces
    it). Returns how many objects were absorbed."""
    new = sorted(set(names) - index.loaded_objects)
    if not new:
        return 0
    if len(new) > 1:
        log.info("reading %d index objects into the local index %s", len(new), index.path)
    batch = index.absorbing()
    absorbed = 0
    try:
        with progress_bar(sys.stderr.isatty(), total=len(new), unit="object", desc="reading the index",
                          file=sys.stderr, delay=1.0, leave=False) as bar:
            for name in new:
                try:
                    chunks = await fetch(name)
                except (IntegrityError, ObjectNotFound, RepositoryError) as error:
                    log.warning("skipping index object: %s", error)
                    damaged[name] = str(error)
                    continue
                await trio.to_thread.run_sync(batch.add, name, chunks)
                damaged.pop(name, None)
                absorbed += 1
                bar.update()
        await trio.to_thread.run_sync(batch.commit)
    finally:
        batch.discard()
    return absorbed


async def forget_unlisted(index: BlobIndex, listed: Collection[str], mark: int) -> None:
    """Forget the objects absorbed up to `mark` (taken before the store was listed)
    that the store no longer lists: they were deleted (by repair or prune), and
    their chunks may be gone. Objects absorbed after the mark are newer than the
    listing and are kept."""
    gone = index.absorbed_before(mark) - set(listed)
    if gone:
        dropped = await trio.to_thread.run_sync(index.forget_objects, gone)
        log.info("forgot %d index objects the store no longer has (%d chunks)", len(gone), dropped)


def progress_bar(shown: bool, **options):
    """A tqdm bar with `options` if `shown`, else one that does nothing: tqdm is
    imported only for a bar that shows (a disabled tqdm still costs its ~40
    modules and a multiprocessing lock, ~0.1 s of a cold start)."""
    if not shown:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(**options)


class _NoBar:
    total = None

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        pass
