"""From what changed to a committed snapshot.

`commit_snapshot` builds the new tree (from the previous snapshot's tree and
the changes, or by scanning), stores every blob, and writes the snapshot
object last (I4).
"""

from __future__ import annotations

import os
import socket
import time

from cloudfs.repo import Repository, Snapshot
from cloudfs.snapshot.builder import PathChanges, TreeBuilder
from cloudfs.snapshot.reader import TreeReader
from cloudfs.snapshot.sink import RepositorySink
from cloudfs.snapshot.source import DirectorySource, Source


async def commit_snapshot(repo: Repository, source: Source, *, source_path: str,
                          previous: Snapshot | None = None, changes: PathChanges | None = None,
                          time_ns: int | None = None, reader: TreeReader | None = None) -> Snapshot:
    """Build and commit one snapshot; `time_ns` is its sealing instant."""
    time_ns = time_ns or time.time_ns()
    before = (repo.written.raw_bytes, repo.written.chunk_bytes + repo.written.metadata_bytes)
    builder = TreeBuilder(source, RepositorySink(repo), reader or TreeReader(repo), repo.config.block_size)
    root = await builder.build(previous.tree if previous else None, changes if previous else None)
    await repo.flush()
    stats = builder.stats
    snapshot = Snapshot(
        tree=root, time_ns=time_ns, host=socket.gethostname(), source=source_path,
        parent=previous.name if previous else None,
        stats={"files": stats.files, "directories": stats.directories, "bytes": stats.bytes,
               "bytes_read": stats.bytes_read, "bytes_added": repo.written.raw_bytes - before[0],
               "bytes_stored": repo.written.chunk_bytes + repo.written.metadata_bytes - before[1]},
    )
    return await repo.save_snapshot(snapshot)


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
