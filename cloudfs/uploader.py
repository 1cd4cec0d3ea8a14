"""From what changed to a committed snapshot.

`commit_snapshot` builds the new tree (from the previous snapshot's tree and
the changes, or by scanning), stores every blob, and writes the snapshot
object last (I4). `Uploader` is the daemon's side of it: one snapshot at a
time, retried with backoff while the store is unreachable (the backlog waits
on local disk, I6), with the figures `cloudfs status` shows.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from typing import Callable

import trio

from cloudfs.errors import AccessDenied, StoreUnavailable, leaf_errors
from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.builder import BuildStats, TreeBuilder
from cloudfs.snapshot.prune.guard import DoomGuard, PrunedMeanwhile
from cloudfs.snapshot.rules import PathChanges
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.sink import RepositorySink
from cloudfs.snapshot.source import DirectorySource, Source

log = logging.getLogger(__name__)


async def commit_snapshot(repo: Repository, source: Source, *, source_path: str,
                          previous: Snapshot | None = None, changes: PathChanges | None = None,
                          time_ns: int | None = None, reader: TreeReader | None = None,
                          builder_stats: BuildStats | None = None,
                          exclude: Callable[[bytes], bool] | None = None,
                          tags: tuple[str, ...] = (), guard: DoomGuard | None = None) -> Snapshot:
    """Build and commit one snapshot; `time_ns` is its sealing instant. `guard`
    keeps it off the chunks a prune is deleting (one per writer: it remembers
    what its last snapshot was checked against)."""
    time_ns = time_ns or time.time_ns()
    guard = guard or DoomGuard(repo)
    guard.start_attempt()
    before = (repo.written.raw_bytes, repo.written.chunk_bytes + repo.written.metadata_bytes)
    builder = TreeBuilder(source, RepositorySink(repo), reader or TreeReader(repo), repo.config.block_size,
                          exclude)
    if builder_stats is not None:
        builder.stats = builder_stats
    root = await builder.build(previous.tree if previous else None, changes if previous else None)
    await repo.flush()
    stats = builder.stats
    snapshot = Snapshot(
        tree=root, time_ns=time_ns, host=socket.gethostname(), source=source_path,
        parent=previous.name if previous else None, tags=tags,
        stats={"files": stats.files, "directories": stats.directories, "bytes": stats.bytes,
               "bytes_read": stats.bytes_read, "bytes_added": repo.written.raw_bytes - before[0],
               "bytes_stored": repo.written.chunk_bytes + repo.written.metadata_bytes - before[1]},
    )
    snapshot = await repo.save_snapshot(snapshot, before_put=lambda: guard.before_put(root, previous))
    guard.committed(snapshot)
    return snapshot


async def snapshot_directory(repo: Repository, path: str | os.PathLike, *,
                             previous: Snapshot | None = None,
                             changes: PathChanges | None = None) -> Snapshot:
    """A snapshot of a directory as it is now (a scan, or the given changes)."""
    source = DirectorySource.at(path)
    try:
        return await commit_snapshot(repo, source, source_path=os.path.abspath(path),
                                     previous=previous, changes=changes)
    finally:
        source.close()


def latest_snapshot_of(snapshots: list[Snapshot], host: str, source_path: str) -> Snapshot | None:
    """The newest snapshot this host took of this directory (the parent of the next)."""
    mine = [s for s in snapshots if s.host == host and s.source == source_path]
    return mine[-1] if mine else None


@dataclass
class UploadStatus:
    """What `cloudfs status` reports about uploads."""

    last_snapshot: str | None = None
    last_snapshot_time_ns: int | None = None
    snapshots_committed: int = 0
    repository_snapshots: int | None = None   # snapshot objects in the repository, as last listed
    uploading_since_ns: int | None = None
    current: BuildStats | None = None
    store_error: str | None = None
    store_error_since_ns: int | None = None
    bytes_stored: int = 0
    recent_rate: float = 0.0            # bytes/s of the last upload
    history: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        current = self.current
        return {
            "last_snapshot": self.last_snapshot,
            "last_snapshot_time_ns": self.last_snapshot_time_ns,
            "snapshots_committed": self.snapshots_committed,
            "repository_snapshots": self.repository_snapshots,
            "uploading": self.uploading_since_ns is not None,
            "uploading_since_ns": self.uploading_since_ns,
            "current_bytes_read": current.bytes_read if current else 0,
            "current_files": current.files_read if current else 0,
            "store_ok": self.store_error is None,
            "store_error": self.store_error,
            "store_error_since_ns": self.store_error_since_ns,
            "bytes_stored": self.bytes_stored,
            "upload_rate": self.recent_rate,
        }


class Uploader:
    """Commits snapshots of one protected directory, one at a time."""

    RETRY_BASE = 1.0
    RETRY_MAX = 60.0
    PRUNED_RETRIES = 3      # attempts repeated because a prune deleted what they counted on

    def __init__(self, repo: Repository, source_path: str, previous: Snapshot | None,
                 exclude: Callable[[bytes], bool] | None = None):
        self.repo = repo
        self.source_path = source_path
        self.previous = previous
        self.exclude = exclude
        self.status = UploadStatus()
        self._reader = TreeReader(repo)
        self.guard = DoomGuard(repo)
        if previous is not None:
            self.status.last_snapshot = previous.name
            self.status.last_snapshot_time_ns = previous.time_ns

    async def commit(self, source: Source, changes: PathChanges | None, time_ns: int,
                     tags: tuple[str, ...] = ()) -> Snapshot:
        """Build and commit the snapshot of a sealed state, retrying for as long as the
        store is unreachable or refuses us; other errors are raised to the caller."""
        failures = pruned = 0
        while True:
            # A failure the packer kept belongs to the attempt that hit it: a snapshot
            # given up mid-upload (its tasks cancelled) must not fail the next one.
            self.repo.packer.reset_failure()
            try:
                return await self._attempt(source, changes, time_ns, tags)
            except PrunedMeanwhile as error:
                pruned += 1
                if pruned > self.PRUNED_RETRIES:
                    raise
                log.warning("%s", error)
                continue
            except BaseException as raised:
                error = _transient_store_error(raised)
                if error is None:
                    raise
                failures += 1
                self._store_failed(error)
                delay = min(self.RETRY_MAX, self.RETRY_BASE * 2 ** min(failures - 1, 10))
                await trio.sleep(random.uniform(delay / 2, delay))

    async def _attempt(self, source: Source, changes: PathChanges | None, time_ns: int,
                       tags: tuple[str, ...]) -> Snapshot:
        status = self.status
        status.uploading_since_ns = time.time_ns()
        status.current = BuildStats()
        stored_before = self.repo.written.chunk_bytes + self.repo.written.metadata_bytes
        started = time.monotonic()
        try:
            snapshot = await commit_snapshot(self.repo, source, source_path=self.source_path,
                                             previous=self.previous, changes=changes, time_ns=time_ns,
                                             reader=self._reader, builder_stats=status.current,
                                             exclude=self.exclude, tags=tags, guard=self.guard)
        finally:
            status.uploading_since_ns = None
        stored = self.repo.written.chunk_bytes + self.repo.written.metadata_bytes - stored_before
        self.previous = snapshot
        status.store_error = status.store_error_since_ns = None
        status.last_snapshot, status.last_snapshot_time_ns = snapshot.name, snapshot.time_ns
        status.snapshots_committed += 1
        status.bytes_stored += stored
        status.recent_rate = stored / max(time.monotonic() - started, 1e-6)
        log.info("committed %s: %d files, %d bytes read, %d bytes stored", snapshot.name,
                 snapshot.stats["files"], snapshot.stats["bytes_read"], stored)
        return snapshot

    def _store_failed(self, error: Exception) -> None:
        status = self.status
        if status.store_error is None:
            status.store_error_since_ns = time.time_ns()
            log.warning("store unavailable, will retry: %s", error)
        status.store_error = str(error)


def _transient_store_error(raised: BaseException) -> BaseException | None:
    """The store error to wait out, if every error in `raised` is one (else None)."""
    leaves = leaf_errors(raised)
    if leaves and all(isinstance(leaf, (StoreUnavailable, AccessDenied)) for leaf in leaves):
        return leaves[0]
    return None
