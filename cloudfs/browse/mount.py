"""The snapshot mount process: check the mount point, open the repository, serve, stop.

`plan()` checks the mount point before anything is contacted (each problem a
one-line MountError). `serve()` opens the repository, reads the snapshot list
and mounts only then, so a wrong passphrase or an unreachable store is an
error on the command line, not an empty mount; then it serves until unmounted
(`cloudfs umount`, `fusermount3 -u`, SIGTERM, SIGINT). `run()` does that in the
foreground or, with --daemon, in a detached process (cloudfs.fuseproc).

`cloudfs umount` stops a snapshot mount as it stops a live one: the mount's
fsname is a state directory, `$XDG_STATE_HOME/cloudfs/browse-<hash of the
mount point>`, whose lock this process holds while it serves.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from cloudfs.system import fuseproc
from cloudfs.browse.background import Background
from cloudfs.browse.blobs import BlobFetcher
from cloudfs.browse.content import ContentReader
from cloudfs.browse.diskcache import DiskCache
from cloudfs.browse.fs import BrowseOperations
from cloudfs.browse.history import History
from cloudfs.browse.names import SnapshotFilter
from cloudfs.browse.namespace import Namespace
from cloudfs.browse.trees import TreeCache
from cloudfs.errors import MountError
from cloudfs.system import mounttable
from cloudfs.system.statedir import Holder, StateDir, browse_state_dir
from cloudfs.repo import Repository

log = logging.getLogger(__name__)

READ_AHEAD_KB = 1024       # the kernel then asks in 1 MiB reads (256 KiB otherwise)
MAX_REQUESTS = 64          # FUSE requests served at once


@dataclass
class BrowseSettings:
    memory_cache_bytes: int = 128 << 20
    disk_cache_bytes: int = 2 << 30          # 0: no disk cache
    refresh_seconds: float = 60.0
    allow_other: bool = False
    default_permissions: bool = True
    snapshots: SnapshotFilter = field(default_factory=SnapshotFilter)   # which ones to show


@dataclass
class BrowsePlan:
    mountpoint: Path
    state: StateDir
    settings: BrowseSettings


OpenRepository = Callable[[], Awaitable[Repository]]


def plan(mountpoint: str, settings: BrowseSettings) -> BrowsePlan:
    """Check the mount point; raise MountError with one line if it cannot be used."""
    path = fuseproc.checked_directory(mountpoint, "MOUNTPOINT")
    entry = mounttable.mounted_at(str(path))
    if entry is not None:
        raise MountError(f"MOUNTPOINT {path} is busy: {entry.fstype} is mounted there")
    if os.listdir(path):
        raise MountError(f"MOUNTPOINT {path} is not empty")
    fuseproc.check_fuse_device()
    return BrowsePlan(path, StateDir(browse_state_dir(path)), settings)


# -- serving -----------------------------------------------------------------------------


def run(plan: BrowsePlan, open_repository: OpenRepository, daemon: bool) -> int:
    """Serve in the foreground, or in a detached process once it is mounted."""
    if not daemon:
        def announce():
            print(f"cloudfs: snapshots mounted on {plan.mountpoint}; stop with: "
                  f"cloudfs umount {plan.mountpoint}", flush=True)

        serve(plan, open_repository, announce)
        return 0
    return fuseproc.run_detached(plan.state.log_path(),
                                 lambda ready: serve(plan, open_repository, ready))


def serve(plan: BrowsePlan, open_repository: OpenRepository, on_ready: Callable[[], None]) -> None:
    """Open, mount, serve until unmounted, stop. Returns after the mount is gone."""
    plan.state.acquire(plan.mountpoint)
    try:
        fuseproc.raise_descriptor_limit()
        trio.run(_serve, plan, open_repository, on_ready)
    finally:
        plan.state.release()


async def _serve(plan: BrowsePlan, open_repository: OpenRepository, on_ready) -> None:
    repo = await open_repository()
    gc.freeze()   # start-up's objects live as long as the mount: kept out of every full collection
    disk = None
    try:
        disk = await _open_disk_cache(repo, plan.settings)
        background = Background()
        fetcher = BlobFetcher(repo, memory_bytes=plan.settings.memory_cache_bytes, disk=disk,
                              background=background)
        trees = TreeCache(fetcher)
        namespace = Namespace(repo, trees, History(trees), background, select=plan.settings.snapshots.apply)
        await namespace.refresh()
        if not namespace.catalog.snapshots:
            log.warning("the repository has no snapshots yet; they appear here once committed")
        operations = BrowseOperations(namespace, ContentReader(trees, fetcher, repo.config.block_size,
                                                               background),
                                      uid=os.getuid(), gid=os.getgid(), block_size=repo.config.block_size)
        await _mount_and_serve(plan, operations, background, on_ready)
        log.info("stopped: %s", fetcher.stats)
    finally:
        if disk is not None:
            disk.close()
        await repo.close()


async def _open_disk_cache(repo: Repository, settings: BrowseSettings) -> DiskCache | None:
    if repo.cache.directory is None or settings.disk_cache_bytes <= 0:
        return None
    disk = DiskCache(repo.cache.directory / "blobs", settings.disk_cache_bytes)
    try:
        await trio.to_thread.run_sync(disk.load)
    except OSError as error:
        log.warning("no disk cache (%s)", error)
        return None
    return disk


async def _mount_and_serve(plan: BrowsePlan, operations: BrowseOperations, background: Background,
                           on_ready) -> None:
    mountpoint = str(plan.mountpoint)
    try:
        pyfuse3.init(operations, mountpoint, _mount_options(plan))
    except RuntimeError as error:
        raise MountError(f"cannot mount on {mountpoint}: {error}") from None
    mounted = True
    try:
        async with trio.open_nursery() as nursery:
            background.start(nursery)
            nursery.start_soon(_serve_until_unmounted, nursery)
            await nursery.start(fuseproc.unmount_on_signal, mountpoint)
            await operations.initialized.wait()
            # Only now: the kernel sets the read-ahead from the INIT reply, which
            # would undo an earlier setting.
            fuseproc.tune_read_ahead(mountpoint, READ_AHEAD_KB)
            plan.state.announce(Holder(os.getpid(), mountpoint, mountpoint, -1))
            on_ready()
            operations.namespace.prefetch_tree(operations.namespace.catalog.latest)
            nursery.start_soon(operations.content.fetcher.write_disk_cache)
            nursery.start_soon(operations.namespace.refresh_periodically, plan.settings.refresh_seconds)
        mounted = _still_mounted(plan)
    finally:
        pyfuse3.close(unmount=mounted)


async def _serve_until_unmounted(nursery: trio.Nursery) -> None:
    await pyfuse3.main(1, MAX_REQUESTS)
    nursery.cancel_scope.cancel()


def _mount_options(plan: BrowsePlan) -> set[str]:
    options = {"ro", "subtype=cloudfs", f"fsname={mounttable.fsname_for(str(plan.state.path))}"}
    if plan.settings.default_permissions:
        options.add("default_permissions")
    if plan.settings.allow_other:
        options.add("allow_other")
    return options


def _still_mounted(plan: BrowsePlan) -> bool:
    entry = mounttable.mounted_at(str(plan.mountpoint))
    return entry is not None and entry.fstype == mounttable.FSTYPE and entry.source == str(plan.state.path)
